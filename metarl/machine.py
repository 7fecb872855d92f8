"""What a benchmark ran on (BENCHMARKS.md compares figures from one machine only), and timing its phases on a device."""

from __future__ import annotations

import os
import platform
from typing import Any

import torch


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux), else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(device: torch.device | str = "cpu") -> dict[str, Any]:
    """CPU model, cores (all and usable), Python and torch versions, torch's CPU threads, and the device (GPU name on CUDA)."""
    device = torch.device(device)
    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "device": str(device),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def synchronize(device: torch.device | str) -> None:
    """Wait for the work queued on ``device``, so that a host clock read next counts it (no-op off CUDA).

    CUDA kernels run asynchronously: without this, a timer read between two
    phases (sampling, then the update) charges the first phase's kernels to the
    second. Called at phase boundaries only, never inside a rollout.
    """
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)

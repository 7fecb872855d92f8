"""The machine record every benchmark writes beside its figures."""

from __future__ import annotations

import torch

from metarl.machine import machine_info


def test_machine_info_names_the_cpu_cores_versions_and_threads() -> None:
    info = machine_info()
    assert isinstance(info["cpu"], str) and info["cpu"]
    assert info["cores"] >= info["usable_cores"] >= 1
    assert info["torch"] == torch.__version__ and info["threads"] == torch.get_num_threads()
    assert info["device"] == "cpu" and "gpu" not in info

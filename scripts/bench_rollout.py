"""Rollout throughput: metarl's batched envs against Gymnasium's vector envs.

Measures env-steps per second for two families, ``metarl/Navigation2D-v0`` and
``metarl/CartPole-v0`` (physics sampled per env from the train split, one task
per env), at several numbers of envs N, side by side in one run:

* **ours, env-only**: ``metarl.make_env(...).step`` on pre-generated random
  actions already on the device (eager, and with ``compile=True`` unless
  ``--no-compile``; compile time is reported separately, not timed);
* **ours, env+policy**: :func:`metarl.rollout.collect` with a tanh 64x64
  :class:`~metarl.policies.MLPPolicy` (policy forward, action sampling, env step
  and trajectory storage); every ``collect`` of T steps counts N*T env-steps;
* **SyncVectorEnv**: ``gymnasium.vector.SyncVectorEnv`` over the scalar env,
  same-step autoreset like ours: ``gymnasium.make("CartPole-v1")`` for CartPole;
  for Navigation2D, which has no Gymnasium scalar env, :class:`PointRobotEnv`
  below, a small numpy port of the MAML point robot written for this benchmark;
* **numpy CartPoleVectorEnv**: Gymnasium's own vectorized numpy CartPole
  (CartPole only; it autoresets on the next step and has one physics for all envs).

Gymnasium's baselines get pre-generated numpy actions. Each measurement warms
up, then times a fixed number of steps with ``time.perf_counter`` (after
``torch.cuda.synchronize()`` on CUDA), about ``--steps-budget-s`` seconds and at
least ``--min-steps`` steps per configuration, in ``--repeats`` repeats; the
median is reported. The run ends with the targets of the issue: at 4096 envs
ours >= 50x SyncVectorEnv and ours >= numpy CartPoleVectorEnv; on CUDA,
Navigation2D at 65,536 envs >= 1e8 env-steps/s.

Run::

    python scripts/bench_rollout.py                       # CPU, N = 64, 1024, 4096, 16384
    python scripts/bench_rollout.py --device cuda         # GPU, N = 4096, 16384, 65536
    python scripts/bench_rollout.py --num-envs 64 1024 --no-compile --json-out bench.json

On a small machine that is also doing other work, pass ``--threads 1``: with
torch's default of one thread per core, a busy core stalls every parallel op
(steps then vary by 10-100x from one repeat to the next).
"""

from __future__ import annotations

import dataclasses
import functools
import gc
import json
import math
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import gymnasium
import numpy as np
import torch
import tyro
from gymnasium import spaces
from gymnasium.envs.classic_control.cartpole import CartPoleVectorEnv
from gymnasium.vector import AutoresetMode, SyncVectorEnv
from gymnasium.wrappers import TimeLimit

import envs  # noqa: F401  (registers the built-in families)
import metarl
import metarl.machine
from metarl.policies import MLPPolicy
from metarl.rollout import collect, start

Family = Literal["Navigation2D", "CartPole"]
FAMILY_IDS: dict[str, str] = {"Navigation2D": "metarl/Navigation2D-v0", "CartPole": "metarl/CartPole-v0"}
CPU_NUM_ENVS = (64, 1024, 4096, 16384)
CUDA_NUM_ENVS = (4096, 16384, 65536)
ACTION_POOL = 8  # distinct pre-generated action batches, cycled
TARGET_SYNC_RATIO = 50.0
TARGET_CUDA_NAV = 1e8

StepCall = Callable[[], None]
Builder = Callable[[], tuple[StepCall, int, int]]  # () -> (step call, env-steps per call, steps per call)


@dataclasses.dataclass
class Config:
    """Throughput of metarl's batched envs against Gymnasium's SyncVectorEnv and numpy CartPoleVectorEnv."""

    device: str = "cpu"
    """torch device for our envs ("cpu", "cuda", "cuda:1"); Gymnasium's baselines always run on the CPU."""
    num_envs: tuple[int, ...] | None = None
    """numbers of envs; default (64, 1024, 4096, 16384) on CPU, (4096, 16384, 65536) on CUDA."""
    families: tuple[Family, ...] = ("Navigation2D", "CartPole")
    """task families to measure (metarl/<name>-v0)."""
    threads: int | None = None
    """torch.set_num_threads (default: torch's own choice)."""
    compile: bool = True
    """also measure our env built with compile=True (--no-compile skips it)."""
    steps_budget_s: float = 1.5
    """seconds of timed stepping per configuration, split over the repeats."""
    min_steps: int = 10
    """at least this many steps per repeat, however slow the configuration."""
    repeats: int = 3
    """timed repeats per configuration; the median is reported."""
    warmup_steps: int = 5
    """untimed steps before timing (for compile=True, building and warming up is the compile time reported)."""
    rollout_steps: int = 32
    """T of each collect call in the env+policy rows."""
    json_out: Path | None = None
    """write all results (and the machine) to this JSON file."""
    skip_sync: bool = False
    """skip the SyncVectorEnv baseline (slow at large N)."""


@dataclasses.dataclass
class Result:
    """One configuration: median env-steps/s over the repeats, or why there is none."""

    family: str
    num_envs: int
    impl: str  # "ours", "ours_compiled", "ours_policy", "sync", "numpy_cartpole"
    steps_per_s: float | None = None
    repeats_steps_per_s: list[float] = dataclasses.field(default_factory=list)
    env_steps_per_repeat: int = 0
    setup_s: float = 0.0  # building the env(s)
    warmup_s: float = 0.0  # untimed warm-up (for "ours_compiled", setup + warm-up is the compile time)
    error: str | None = None


# --- Navigation2D as a scalar Gymnasium env, for the SyncVectorEnv baseline --------------


class PointRobotEnv(gymnasium.Env[np.ndarray, np.ndarray]):
    """The MAML 2-D point robot as a scalar numpy env (a port written for this benchmark).

    Same dynamics as ``metarl/Navigation2D-v0`` for one goal: the position
    (float32, (2,)) starts at the origin, the action is clipped to
    ``[-0.1, 0.1]^2`` and added to it, the reward is minus the Euclidean
    distance to the goal, and the episode terminates within 0.01 of the goal on
    both axes. Wrap it in ``TimeLimit(env, 100)`` for the 100-step truncation.
    """

    observation_space = spaces.Box(-np.inf, np.inf, (2,), np.float32)
    action_space = spaces.Box(-0.1, 0.1, (2,), np.float32)

    def __init__(self, goal: np.ndarray) -> None:
        self.goal = np.asarray(goal, dtype=np.float32)
        self.position = np.zeros(2, dtype=np.float32)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        self.position = np.zeros(2, dtype=np.float32)
        return self.position.copy(), {}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        self.position = self.position + np.clip(action, -0.1, 0.1).astype(np.float32)
        offset = self.position - self.goal
        reward = -float(np.linalg.norm(offset))
        terminated = bool((np.abs(offset) < 0.01).all())
        return self.position.copy(), reward, terminated, False, {}


# --- timing ---------------------------------------------------------------------------------


def timed(
    call: Callable[[], None], sync: Callable[[], None], env_steps_per_call: int, steps_per_call: int, cfg: Config
) -> tuple[list[float], int]:
    """Env-steps/s of ``call`` for each repeat, and the env-steps per repeat.

    A doubling calibration (also a warm-up) sizes each repeat to about
    ``steps_budget_s / repeats`` seconds and at least ``min_steps`` steps.
    """
    per_repeat_s = cfg.steps_budget_s / cfg.repeats
    calls, elapsed = 1, 0.0
    while True:
        sync()
        t0 = time.perf_counter()
        for _ in range(calls):
            call()
        sync()
        elapsed = time.perf_counter() - t0
        if elapsed >= min(0.1, per_repeat_s / 4):
            break
        calls *= 2
    calls = max(math.ceil(cfg.min_steps / steps_per_call), round(per_repeat_s * calls / elapsed), 1)
    rates = []
    for _ in range(cfg.repeats):
        sync()
        t0 = time.perf_counter()
        for _ in range(calls):
            call()
        sync()
        rates.append(calls * env_steps_per_call / (time.perf_counter() - t0))
    return rates, calls * env_steps_per_call


def run_measurement(result: Result, build: Builder, sync: Callable[[], None], cfg: Config) -> Result:
    """Build (timed as setup), warm up (timed as warm-up/compile) and time one configuration.

    ``build`` returns the step call, its env-steps per call and its steps per call.
    """
    t0 = time.perf_counter()
    try:
        call, env_steps_per_call, steps_per_call = build()
        sync()
        result.setup_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        for _ in range(max(1, math.ceil(cfg.warmup_steps / steps_per_call))):
            call()
        sync()
        result.warmup_s = time.perf_counter() - t0
        rates, result.env_steps_per_repeat = timed(call, sync, env_steps_per_call, steps_per_call, cfg)
    except Exception as exc:  # a failed configuration (e.g. compile unavailable) is reported; the others still run
        result.error = f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
        print(f"  ! {result.family} N={result.num_envs} {result.impl}: {result.error}", flush=True)
        return result
    finally:
        gc.collect()
    result.repeats_steps_per_s = rates
    result.steps_per_s = statistics.median(rates)
    spread = f"{human(min(rates))}-{human(max(rates))}"
    times = f"setup {result.setup_s:.1f}s, warm-up {result.warmup_s:.1f}s"
    print(f"  {result.impl:<15} {human(result.steps_per_s):>6} env-steps/s ({spread}; {times})", flush=True)
    return result


# --- the implementations --------------------------------------------------------------------


def make_ours(family: str, num_envs: int, device: torch.device, compiled: bool) -> metarl.TensorEnv:
    """Our env with ``num_envs`` sampled train tasks, one per env, reset; ``compile`` passed only when set.

    Compiled envs start from empty compile caches, so each configuration's compile
    time is its own, and earlier sizes and families cannot use up Dynamo's
    recompile limit (past it, the step silently runs eagerly).
    """
    extra: dict[str, Any] = {}
    if compiled:
        torch.compiler.reset()
        extra["compile"] = True
    env = metarl.make_env(FAMILY_IDS[family], num_envs=num_envs, device=device, seed=0, validate_actions=False, **extra)
    env.set_tasks(env.sample_tasks(num_envs, generator=torch.Generator().manual_seed(0)))
    env.reset(seed=0)
    return env


def torch_actions(space: spaces.Space, num_envs: int, device: torch.device) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    if isinstance(space, spaces.Discrete):
        pool = torch.randint(int(space.n), (ACTION_POOL, num_envs), generator=g)
    else:
        low, high = torch.as_tensor(space.low), torch.as_tensor(space.high)
        pool = low + (high - low) * torch.rand((ACTION_POOL, num_envs, *space.shape), generator=g)
    return list(pool.to(device).unbind(0))


def numpy_actions(space: spaces.Space, num_envs: int) -> list[np.ndarray]:
    rng = np.random.default_rng(1)
    if isinstance(space, spaces.Discrete):
        return [rng.integers(int(space.n), size=num_envs, dtype=np.int64) for _ in range(ACTION_POOL)]
    return [rng.uniform(space.low, space.high, (num_envs, *space.shape)).astype(np.float32) for _ in range(ACTION_POOL)]


def cycling(step: Callable[[Any], object], actions: list[Any]) -> Callable[[], None]:
    """A no-argument call that steps with the next pre-generated action batch."""
    state = {"i": 0}

    def call() -> None:
        i = state["i"]
        step(actions[i])
        state["i"] = (i + 1) % len(actions)

    return call


def build_ours(family: str, num_envs: int, device: torch.device, compiled: bool) -> tuple[StepCall, int, int]:
    env = make_ours(family, num_envs, device, compiled)
    return cycling(env.step, torch_actions(env.single_action_space, num_envs, device)), num_envs, 1


def build_ours_policy(family: str, num_envs: int, device: torch.device, rollout_steps: int) -> tuple[StepCall, int, int]:
    env = make_ours(family, num_envs, device, compiled=False)
    obs_dim = int(np.prod(env.single_observation_space.shape))
    policy = MLPPolicy(obs_dim, env.single_action_space).to(device)
    params = dict(policy.named_parameters())
    generator = torch.Generator(device=device).manual_seed(0)
    state = {"carry": start(env, policy, seed=0)}

    def call() -> None:
        _, state["carry"] = collect(env, policy, params, num_steps=rollout_steps, carry=state["carry"], generator=generator)

    return call, num_envs * rollout_steps, rollout_steps


def build_sync(family: str, num_envs: int) -> tuple[StepCall, int, int]:
    if family == "CartPole":
        fns = [lambda: gymnasium.make("CartPole-v1")] * num_envs
    else:
        # Same goals as our env gets (the train tasks sampled with seed 0).
        goals = metarl.make_family(FAMILY_IDS[family]).task_space.sample(num_envs, generator=torch.Generator().manual_seed(0))
        fns = [lambda goal=goal: TimeLimit(PointRobotEnv(goal), max_episode_steps=100) for goal in goals.goal.numpy()]
    venv = SyncVectorEnv(fns, autoreset_mode=AutoresetMode.SAME_STEP)
    venv.reset(seed=0)
    return cycling(venv.step, numpy_actions(venv.single_action_space, num_envs)), num_envs, 1


def build_numpy_cartpole(num_envs: int) -> tuple[StepCall, int, int]:
    venv = CartPoleVectorEnv(num_envs=num_envs)
    venv.reset(seed=0)
    return cycling(venv.step, numpy_actions(spaces.Discrete(2), num_envs)), num_envs, 1


# --- reporting ------------------------------------------------------------------------------


def human(rate: float | None) -> str:
    if rate is None:
        return "n/a"
    for scale, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if rate >= scale:
            return f"{rate / scale:.3g}{unit}"
    return f"{rate:.3g}"


def ratio(a: float | None, b: float | None) -> str:
    return "n/a" if a is None or not b else f"{a / b:.3g}x"


def best(*rates: float | None) -> float | None:
    present = [r for r in rates if r is not None]
    return max(present) if present else None


def machine_info(device: torch.device) -> dict[str, Any]:
    """:func:`metarl.machine.machine_info` plus the versions of the libraries this benchmark compares against."""
    return {**metarl.machine.machine_info(device), "gymnasium": gymnasium.__version__, "numpy": np.__version__}


def lookup(results: list[Result], family: str, num_envs: int, impl: str) -> float | None:
    return next((r.steps_per_s for r in results if (r.family, r.num_envs, r.impl) == (family, num_envs, impl)), None)


def print_table(results: list[Result], family: str, num_envs: tuple[int, ...]) -> None:
    header = ("N", "ours env", "ours compiled", "compile s", "ours env+MLP", "SyncVecEnv", "numpy CPVec", "best/Sync", "best/np")
    rows = [header]
    for n in num_envs:
        get = lambda impl, n=n: lookup(results, family, n, impl)  # noqa: E731
        ours = best(get("ours"), get("ours_compiled"))
        compiled = next((r for r in results if (r.family, r.num_envs, r.impl) == (family, n, "ours_compiled")), None)
        # Building and warming up a compiled env is its compile time (eager ones take milliseconds).
        compile_s = f"{compiled.setup_s + compiled.warmup_s:.1f}" if compiled and compiled.steps_per_s is not None else "n/a"
        rows.append(
            (
                str(n),
                human(get("ours")),
                human(get("ours_compiled")),
                compile_s,
                human(get("ours_policy")),
                human(get("sync")),
                human(get("numpy_cartpole")) if family == "CartPole" else "-",
                ratio(ours, get("sync")),
                ratio(ours, get("numpy_cartpole")) if family == "CartPole" else "-",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    print(f"\n{family} (env-steps/s, median of repeats)")
    for i, row in enumerate(rows):
        print("  " + " | ".join(cell.rjust(w) for cell, w in zip(row, widths, strict=True)))
        if i == 0:
            print("  " + "-+-".join("-" * w for w in widths))


@dataclasses.dataclass
class Target:
    """One of the issue's targets: the measured figure against its threshold."""

    name: str
    value: float | None  # a ratio, or env-steps/s
    threshold: float
    detail: str
    status: str = ""


def targets(results: list[Result], cfg: Config, num_envs: tuple[int, ...], device: torch.device) -> list[Target]:
    """The issue's targets at 4096 envs (and 65,536 on CUDA), each met / NOT MET / not measured."""
    n, n_gpu = 4096, 65536
    checks: list[Target] = []
    for family in cfg.families:
        eager, compiled, sync = (lookup(results, family, n, impl) for impl in ("ours", "ours_compiled", "sync"))
        ours = best(eager, compiled)
        value = ours / sync if ours is not None and sync else None
        detail = f"{ratio(value, 1.0)}; eager {ratio(eager, sync)}, compiled {ratio(compiled, sync)}"
        checks.append(Target(f"{family} N={n}: ours / SyncVectorEnv >= {TARGET_SYNC_RATIO:g}x", value, TARGET_SYNC_RATIO, detail))
    if "CartPole" in cfg.families:
        eager, compiled, numpy_rate = (lookup(results, "CartPole", n, i) for i in ("ours", "ours_compiled", "numpy_cartpole"))
        ours = best(eager, compiled)
        value = ours / numpy_rate if ours is not None and numpy_rate else None
        detail = f"{ratio(value, 1.0)}; eager {ratio(eager, numpy_rate)}, compiled {ratio(compiled, numpy_rate)}"
        checks.append(Target(f"CartPole N={n}: best of ours eager/compiled >= numpy CartPoleVectorEnv", value, 1.0, detail))
    if "Navigation2D" in cfg.families:
        value = best(*(lookup(results, "Navigation2D", n_gpu, impl) for impl in ("ours", "ours_compiled")))
        name = f"CUDA Navigation2D N={n_gpu}: ours >= {TARGET_CUDA_NAV:.0e} env-steps/s"
        checks.append(Target(name, value, TARGET_CUDA_NAV, f"{human(value)} env-steps/s"))
    for check in checks:
        if check.name.startswith("CUDA") and device.type != "cuda":
            check.status, check.detail = "n/a on CPU (run with --device cuda)", "n/a"
        elif check.value is None:
            size = n_gpu if check.name.startswith("CUDA") else n
            check.status = "not measured" + ("" if size in num_envs else f" ({size} not in --num-envs)")
            check.detail = "n/a"
        else:
            check.status = "met" if check.value >= check.threshold else "NOT MET"
    return checks


# --- main -----------------------------------------------------------------------------------


def main(cfg: Config) -> list[Result]:
    device = torch.device(cfg.device)
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    num_envs = cfg.num_envs or (CUDA_NUM_ENVS if device.type == "cuda" else CPU_NUM_ENVS)
    sync_device = functools.partial(metarl.machine.synchronize, device)
    sync_cpu = functools.partial(metarl.machine.synchronize, "cpu")
    info = machine_info(device)
    print("machine: " + ", ".join(f"{k}={v}" for k, v in info.items()))
    print(f"N = {num_envs}; ~{cfg.steps_budget_s}s of timed steps per configuration in {cfg.repeats} repeats (median),")
    print(f">= {cfg.min_steps} steps per repeat; env+MLP rows: collect() of {cfg.rollout_steps} steps, N*T env-steps per call.")
    print("SyncVectorEnv (same-step autoreset) over gymnasium.make('CartPole-v1') / PointRobotEnv, this script's numpy port")
    print("of the MAML point robot (Navigation2D has no Gymnasium scalar env); best = best of ours eager/compiled env-only.")

    results: list[Result] = []
    started = time.perf_counter()
    for family in cfg.families:
        for n in num_envs:
            print(f"{family} N={n} ...", flush=True)
            jobs: list[tuple[str, Builder, Callable[[], None]]] = [
                ("ours", functools.partial(build_ours, family, n, device, False), sync_device),
            ]
            if cfg.compile:
                jobs.append(("ours_compiled", functools.partial(build_ours, family, n, device, True), sync_device))
            jobs.append(("ours_policy", functools.partial(build_ours_policy, family, n, device, cfg.rollout_steps), sync_device))
            if not cfg.skip_sync:
                jobs.append(("sync", functools.partial(build_sync, family, n), sync_cpu))
            if family == "CartPole":
                jobs.append(("numpy_cartpole", functools.partial(build_numpy_cartpole, n), sync_cpu))
            for impl, build, sync in jobs:
                results.append(run_measurement(Result(family, n, impl), build, sync, cfg))

    for family in cfg.families:
        print_table(results, family, num_envs)
    print("\ntargets")
    checks = targets(results, cfg, num_envs, device)
    for check in checks:
        print(f"  {check.name}: {check.status} ({check.detail})")
    failed = [r for r in results if r.error]
    if failed:
        print("\nfailed configurations")
        for r in failed:
            print(f"  {r.family} N={r.num_envs} {r.impl}: {r.error}")
    total_s = time.perf_counter() - started
    print(f"\ntotal {total_s:.0f}s")

    if cfg.json_out is not None:
        payload = {
            "machine": info,
            "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(cfg).items()},
            "num_envs": list(num_envs),
            "results": [dataclasses.asdict(r) for r in results],
            "targets": [dataclasses.asdict(c) for c in checks],
            "total_s": total_s,
        }
        cfg.json_out.parent.mkdir(parents=True, exist_ok=True)
        cfg.json_out.write_text(json.dumps(payload, indent=2))
        print(f"wrote {cfg.json_out}")
    return results


if __name__ == "__main__":
    main(tyro.cli(Config))

"""CartPole and Pendulum task families: parity with Gymnasium, sampled physics, task ranges, validation."""

from __future__ import annotations

import math
import re

import gymnasium
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env

import envs  # noqa: F401  (registers the families)
from envs.classic_control import CartPole, CartPoleState, CartPoleTasks, Pendulum, PendulumState, PendulumTasks
from metarl.registry import make_env

# Documented task ranges (the class docstrings): name -> (low, high, default).
CARTPOLE_RANGES = {
    "gravity": (4.9, 14.7, 9.8),
    "masscart": (0.5, 2.0, 1.0),
    "masspole": (0.05, 0.5, 0.1),
    "length": (0.25, 1.0, 0.5),
    "force_mag": (5.0, 15.0, 10.0),
}
PENDULUM_RANGES = {"gravity": (5.0, 15.0, 10.0), "mass": (0.5, 2.0, 1.0), "length": (0.5, 2.0, 1.0)}

# Ours runs in float32, Gymnasium in float64: one step agrees to float32 rounding,
# a free-running trajectory accumulates that rounding, hence the looser tolerance.
SINGLE_STEP_ATOL = 1e-5
TRAJECTORY_ATOL = 1e-4


def _state(state_type, gym_states) -> CartPoleState | PendulumState:
    """Our batched state from Gymnasium states (one row per env, cast to float32)."""
    columns = torch.tensor(np.stack(gym_states), dtype=torch.float32).unbind(dim=1)
    return state_type(*columns)


class _Case:
    """One family next to its Gymnasium reference."""

    def __init__(self, gym_id: str, family, state_type, tasks_type) -> None:
        self.gym_id, self.family, self.state_type, self.tasks_type = gym_id, family, state_type, tasks_type

    def gym_env(self):
        return gymnasium.make(self.gym_id).unwrapped

    def action(self, rng: np.random.Generator):
        """A random action in Gymnasium's form."""
        if self.gym_id == "CartPole-v1":
            return int(rng.integers(2))
        return rng.uniform(-2.0, 2.0, size=(1,)).astype(np.float32)

    def torch_actions(self, actions) -> torch.Tensor:
        if self.gym_id == "CartPole-v1":
            return torch.tensor(actions, dtype=torch.long)
        return torch.tensor(np.stack(actions), dtype=torch.float32)

    def set_physics(self, env, tasks, i: int) -> None:
        """Give a Gymnasium env the physics of task ``i`` (the very float32 values we use)."""
        p = {name: float(t[i]) for name, t in tasks.tensors().items()}
        if self.gym_id == "CartPole-v1":
            env.gravity, env.masscart, env.masspole, env.length, env.force_mag = (
                p["gravity"],
                p["masscart"],
                p["masspole"],
                p["length"],
                p["force_mag"],
            )
            env.total_mass = env.masspole + env.masscart  # derived in Gymnasium's __init__
            env.polemass_length = env.masspole * env.length
        else:
            env.g, env.m, env.l = p["gravity"], p["mass"], p["length"]


CASES = {
    "CartPole": _Case("CartPole-v1", CartPole(), CartPoleState, CartPoleTasks),
    "Pendulum": _Case("Pendulum-v1", Pendulum(), PendulumState, PendulumTasks),
}
parametrize_cases = pytest.mark.parametrize("case", list(CASES.values()), ids=list(CASES))


def _check_step(out, gym_results, atol: float) -> None:
    """Every row of our transition against Gymnasium's (obs, reward, terminated, truncated, info) tuples."""
    expected_obs = torch.tensor(np.stack([r[0] for r in gym_results]))
    expected_reward = torch.tensor([float(r[1]) for r in gym_results], dtype=torch.float32)
    expected_terminated = torch.tensor([r[2] for r in gym_results])
    torch.testing.assert_close(out.obs, expected_obs, atol=atol, rtol=0)
    torch.testing.assert_close(out.reward, expected_reward, atol=atol, rtol=1e-6)
    assert torch.equal(out.terminated, expected_terminated)


# --- parity with Gymnasium at the default physics -----------------------------------------


@parametrize_cases
@pytest.mark.parametrize("num_envs", [1, 7])
def test_single_step_parity_at_default_physics(case: _Case, num_envs: int) -> None:
    """Set our state from Gymnasium's before each step; the next obs, reward and terminated agree.

    With ``num_envs > 1`` every row gets the same state and action: each row must match Gymnasium.
    """
    env = case.gym_env()
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    tasks = case.family.task_space.default().repeat_interleave(num_envs)
    generator = torch.Generator().manual_seed(0)
    terminations = 0
    for t in range(300):
        state = _state(case.state_type, [env.state] * num_envs)
        action = case.action(rng)
        expected = env.step(action)
        out = case.family.step(state, case.torch_actions([action] * num_envs), tasks, generator)
        _check_step(out, [expected] * num_envs, SINGLE_STEP_ATOL)
        if expected[2] or (t + 1) % 200 == 0:  # start a new episode where Gymnasium's would end
            terminations += expected[2]
            env.reset(seed=t + 1)
    if case.gym_id == "CartPole-v1":
        assert terminations > 0, "random actions should end several CartPole episodes (tests the terminated path)"


@parametrize_cases
def test_single_step_parity_over_wide_states(case: _Case) -> None:
    """States spread over (and past) the termination box and speed limit, which episodes rarely reach."""
    n = 500
    rng = np.random.default_rng(3)
    if case.gym_id == "CartPole-v1":
        high = np.array([2.6, 3.0, 0.25, 3.0])  # just past x = 2.4 and 12 degrees
    else:
        high = np.array([10.0, 8.0])  # several turns; full speed, so the clip to [-8, 8] matters
    # float32-representable states, so that both implementations start from the very same numbers
    gym_states = list(rng.uniform(-high, high, size=(n, len(high))).astype(np.float32).astype(np.float64))
    actions = [case.action(rng) for _ in range(n)]
    env = case.gym_env()
    env.reset(seed=0)
    expected = []
    for s, a in zip(gym_states, actions, strict=True):
        env.state = s.copy()
        env.steps_beyond_terminated = None  # CartPole's "stepped past the end" flag: each step starts afresh
        expected.append(env.step(a))
    tasks = case.family.task_space.default().repeat_interleave(n)
    out = case.family.step(_state(case.state_type, gym_states), case.torch_actions(actions), tasks, torch.Generator())
    _check_step(out, expected, SINGLE_STEP_ATOL)
    if case.gym_id == "CartPole-v1":
        x, theta = out.state.x.abs(), out.state.theta.abs()
        assert bool(((x > 2.4) & (theta < 0.2)).any()) and bool(((theta > 0.21) & (x < 2.3)).any()), "both end conditions"


@parametrize_cases
def test_trajectory_parity_at_default_physics(case: _Case) -> None:
    """Start from Gymnasium's reset state and let ours run freely for 30 steps of the same actions."""
    env = case.gym_env()
    env.reset(seed=1)
    rng = np.random.default_rng(1)
    tasks = case.family.task_space.default()
    generator = torch.Generator().manual_seed(0)
    state = _state(case.state_type, [env.state])
    for _ in range(30):
        action = case.action(rng)
        expected = env.step(action)
        out = case.family.step(state, case.torch_actions([action]), tasks, generator)
        _check_step(out, [expected], TRAJECTORY_ATOL)
        if expected[2]:
            break
        state = out.state


# --- sampled physics ---------------------------------------------------------------------


@parametrize_cases
def test_single_step_parity_at_sampled_physics(case: _Case) -> None:
    """One batch of differently parameterized envs steps like Gymnasium envs given the same physics."""
    n = 12
    tasks = case.tasks_type.cat(
        [
            case.family.task_space.sample(n // 2, generator=torch.Generator().manual_seed(2), split="train"),
            case.family.task_space.sample(n // 2, generator=torch.Generator().manual_seed(3), split="test"),
        ]
    )
    gym_envs = [case.gym_env() for _ in range(n)]
    for i, env in enumerate(gym_envs):
        case.set_physics(env, tasks, i)
        env.reset(seed=100 + i)
    rng = np.random.default_rng(2)
    generator = torch.Generator().manual_seed(0)
    for t in range(60):
        state = _state(case.state_type, [env.state for env in gym_envs])
        actions = [case.action(rng) for _ in range(n)]
        expected = [env.step(a) for env, a in zip(gym_envs, actions, strict=True)]
        out = case.family.step(state, case.torch_actions(actions), tasks, generator)
        _check_step(out, expected, SINGLE_STEP_ATOL)
        for i, (env, result) in enumerate(zip(gym_envs, expected, strict=True)):
            if result[2]:
                env.reset(seed=1000 * t + i)


@parametrize_cases
def test_batched_step_equals_one_env_at_a_time(case: _Case) -> None:
    """Row i of a batch of mixed tasks is what a batch of one with task i computes."""
    n = 9
    tasks = case.family.task_space.sample(n, generator=torch.Generator().manual_seed(4))
    generator = torch.Generator().manual_seed(4)
    state, _ = case.family.reset(tasks, generator)
    actions = case.torch_actions([case.action(np.random.default_rng(i)) for i in range(n)])
    batched = case.family.step(state, actions, tasks, generator)
    for i in range(n):
        single = case.family.step(state[i], actions[i : i + 1], tasks[i], generator)
        assert single.state.equal(batched.state[i])
        torch.testing.assert_close(single.obs, batched.obs[i : i + 1], atol=1e-6, rtol=0)
        torch.testing.assert_close(single.reward, batched.reward[i : i + 1], atol=1e-6, rtol=0)
        assert torch.equal(single.terminated, batched.terminated[i : i + 1])


def _cartpole_tasks(**overrides: list[float]) -> CartPoleTasks:
    n = len(next(iter(overrides.values())))
    values = {name: overrides.get(name, [default] * n) for name, (_, _, default) in CARTPOLE_RANGES.items()}
    return CartPoleTasks(**{name: torch.tensor(v, dtype=torch.float32) for name, v in values.items()})


def _cartpole_steps_to_fall(tasks: CartPoleTasks) -> torch.Tensor:
    """Steps until termination from a slightly tilted pole, pushing left and right in turn."""
    n = len(tasks)
    family = CartPole()
    state = CartPoleState(torch.zeros(n), torch.zeros(n), torch.full((n,), 0.05), torch.zeros(n))
    fell_at = torch.full((n,), -1)
    for t in range(200):
        out = family.step(state, torch.full((n,), t % 2), tasks, torch.Generator())
        fell_at = torch.where((fell_at < 0) & out.terminated, t + 1, fell_at)
        state = out.state
    assert bool((fell_at > 0).all()), f"every pole should fall within 200 steps, got {fell_at.tolist()}"
    return fell_at


def test_cartpole_physics_changes_the_dynamics() -> None:
    # Stronger gravity: the pole falls sooner.
    by_gravity = _cartpole_steps_to_fall(_cartpole_tasks(gravity=[4.9, 9.8, 14.7]))
    assert by_gravity[0] > by_gravity[1] > by_gravity[2], by_gravity
    # A longer pole falls later.
    by_length = _cartpole_steps_to_fall(_cartpole_tasks(length=[0.25, 0.5, 1.0]))
    assert by_length[0] < by_length[1] < by_length[2], by_length
    # A stronger push accelerates the cart more; a heavier cart less.
    tasks = _cartpole_tasks(force_mag=[5.0, 10.0, 15.0, 10.0], masscart=[1.0, 1.0, 1.0, 2.0])
    state = CartPoleState(*torch.zeros(4, 4))
    x_dot = CartPole().step(state, torch.ones(4, dtype=torch.long), tasks, torch.Generator()).state.x_dot
    assert x_dot[0] < x_dot[1] < x_dot[2] and x_dot[3] < x_dot[1], x_dot


def test_pendulum_physics_changes_the_dynamics() -> None:
    family, n = Pendulum(), 3
    # Unpowered, from 0.5 rad off upright: stronger gravity and a shorter rod make it fall faster.
    for tasks in [
        PendulumTasks(torch.tensor([15.0, 10.0, 5.0]), torch.ones(n), torch.ones(n)),
        PendulumTasks(torch.full((n,), 10.0), torch.ones(n), torch.tensor([0.5, 1.0, 2.0])),
    ]:
        state = PendulumState(torch.full((n,), 0.5), torch.zeros(n))
        for _ in range(5):
            state = family.step(state, torch.zeros(n, 1), tasks, torch.Generator()).state
        assert state.theta[0] > state.theta[1] > state.theta[2] > 0.5, state.theta
    # Full torque from rest at the top: a heavier rod turns more slowly.
    tasks = PendulumTasks(torch.full((n,), 10.0), torch.tensor([0.5, 1.0, 2.0]), torch.ones(n))
    state = PendulumState(torch.zeros(n), torch.zeros(n))
    theta_dot = family.step(state, torch.full((n, 1), 2.0), tasks, torch.Generator()).state.theta_dot
    assert theta_dot[0] > theta_dot[1] > theta_dot[2] > 0, theta_dot


@pytest.mark.parametrize(
    "family, ranges", [(CartPole(), CARTPOLE_RANGES), (Pendulum(), PENDULUM_RANGES)], ids=["CartPole", "Pendulum"]
)
@pytest.mark.parametrize("split", ["train", "test"])
def test_sampled_tasks_stay_in_their_documented_ranges(family, ranges, split: str) -> None:
    space = family.task_space
    tasks = space.sample(4000, generator=torch.Generator().manual_seed(5), split=split)
    for name, (low, high, _) in ranges.items():
        values = getattr(tasks, name)
        assert values.dtype == torch.float32 and values.shape == (4000,)
        assert float(values.min()) >= np.float32(low) and float(values.max()) <= np.float32(high), name
        span = high - low
        assert float(values.min()) < low + 0.05 * span and float(values.max()) > high - 0.05 * span, (
            f"{name} does not cover its range"
        )
    assert bool((space.held_out(tasks) == (split == "test")).all())
    default = space.default()
    for name, (_, _, value) in ranges.items():
        assert getattr(default, name).tolist() == [np.float32(value)], name


@parametrize_cases
def test_reset_draws_gymnasiums_initial_distribution(case: _Case) -> None:
    tasks = case.family.task_space.default().repeat_interleave(5000)
    state, obs = case.family.reset(tasks, torch.Generator().manual_seed(6))
    again, _ = case.family.reset(tasks, torch.Generator().manual_seed(6))
    assert state.equal(again), "same generator seed, same initial states"
    assert obs.dtype == torch.float32 and obs.shape == (5000, *case.family.observation_space.shape)
    columns = torch.stack(list(state.tensors().values()), dim=1)
    bound = torch.tensor([0.05] * 4 if case.gym_id == "CartPole-v1" else [math.pi, 1.0])
    assert bool((columns.abs() <= bound).all())
    assert bool((columns.abs().amax(dim=0) > 0.95 * bound).all()), "initial states should fill their box"
    assert bool(torch.from_numpy(np.stack([case.family.observation_space.contains(o) for o in obs.numpy()])).all())


@parametrize_cases
def test_spaces_match_gymnasium(case: _Case) -> None:
    reference = gymnasium.make(case.gym_id)
    assert case.family.observation_space == reference.observation_space
    assert case.family.action_space == reference.action_space
    assert case.family.max_episode_steps == reference.spec.max_episode_steps


# --- the registered envs ---------------------------------------------------------------------


@pytest.mark.parametrize("family_id", ["metarl/CartPole-v0", "metarl/Pendulum-v0"])
def test_registered_env_passes_gymnasiums_checker(family_id: str) -> None:
    check_env(gymnasium.make(family_id).unwrapped)


def test_tensor_env_episodes_end_like_gymnasium() -> None:
    pendulum = make_env("metarl/Pendulum-v0", num_envs=4, seed=0)
    pendulum.reset()
    for _ in range(200):
        out = pendulum.step(torch.full((4, 1), 5.0))  # clipped to 2 by the env
    assert bool(out.truncated.all()) and not bool(out.terminated.any())
    assert out.episode_length.tolist() == [200] * 4

    cartpole = make_env("metarl/CartPole-v0", num_envs=4, seed=0)
    cartpole.reset()
    lengths = []
    for _ in range(100):
        out = cartpole.step(torch.ones(4, dtype=torch.long))  # always push right: falls fast
        lengths += out.episode_length[out.terminated].tolist()
        assert torch.equal(out.episode_return, out.episode_length.float()), "reward 1 per step, terminal step included"
    assert lengths and all(5 <= n <= 30 for n in lengths), lengths


def test_make_accepts_custom_ranges() -> None:
    env = gymnasium.make("metarl/Pendulum-v0", gravity=(9.0, 11.0))
    tasks = env.unwrapped.sample_tasks(100, generator=torch.Generator().manual_seed(7))
    assert float(tasks.gravity.min()) >= 9.0 and float(tasks.gravity.max()) <= 11.0


@pytest.mark.parametrize(
    "factory, kwargs, shown",
    [
        (CartPole, {"gravity": (12.0, 20.0)}, "(12.0, 20.0)"),  # excludes Gymnasium's 9.8
        (CartPole, {"masspole": (0.0, 0.5)}, "(0.0, 0.5)"),  # a massless pole
        (CartPole, {"length": (1.0, 0.25)}, "(1.0, 0.25)"),  # low above high
        (CartPole, {"force_mag": 10.0}, "10.0"),  # not a pair
        (Pendulum, {"mass": (0.5, float("nan"))}, "(0.5, nan)"),
        (Pendulum, {"length": (0.5, 1.0, 2.0)}, "(0.5, 1.0, 2.0)"),
        (Pendulum, {"gravity": ("a", "b")}, "('a', 'b')"),
    ],
)
def test_bad_ranges_raise_naming_the_value(factory, kwargs, shown: str) -> None:
    (name,) = kwargs
    with pytest.raises(ValueError, match=rf"{name}.*{re.escape(shown)}"):
        factory(**kwargs)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@parametrize_cases
def test_runs_on_cuda_like_on_cpu(case: _Case) -> None:
    tasks = case.family.task_space.sample(64, generator=torch.Generator().manual_seed(8))
    state, _ = case.family.reset(tasks, torch.Generator().manual_seed(8))
    actions = case.torch_actions([case.action(np.random.default_rng(i)) for i in range(64)])
    cpu = case.family.step(state, actions, tasks, torch.Generator())
    gpu = case.family.step(state.to("cuda"), actions.cuda(), tasks.to("cuda"), torch.Generator("cuda"))
    assert gpu.obs.device.type == "cuda" and gpu.terminated.device.type == "cuda"
    torch.testing.assert_close(gpu.obs.cpu(), cpu.obs, atol=1e-5, rtol=0)
    torch.testing.assert_close(gpu.reward.cpu(), cpu.reward, atol=1e-5, rtol=1e-6)
    fresh, obs = case.family.reset(tasks.to("cuda"), torch.Generator("cuda").manual_seed(0))
    assert fresh.device.type == "cuda" and obs.device.type == "cuda"

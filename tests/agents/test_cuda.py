"""Every agent meta-trains and evaluates on CUDA with the CPU's code (skipped where there is no CUDA device).

The first run of the benchmarks on a lent H100 found the Stable-Baselines3 inner
learner of Reptile returning its per-task returns on the CPU while the rest of
the step ran on the GPU; these runs would have caught it.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch

import envs  # noqa: F401
from agents.fewshot import FewShotMAML, FewShotMAMLConfig, ProtoNet, ProtoNetConfig
from agents.maml import MAML, MAMLConfig
from agents.ppo import PPOSettings
from agents.reptile import Reptile, ReptileConfig
from agents.rl2 import RL2, RL2Config
from envs.omniglot import synthetic_glyph_classes
from metarl.agent import MetaLearner

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"),
]

PPO = PPOSettings(num_minibatches=2, epochs=2)
GLYPHS = dict(classes=synthetic_glyph_classes(30, 20, image_size=16, drawers=6, seed=0), image_size=16, num_ways=5, shots=1)

AGENTS: dict[str, Callable[[], MetaLearner]] = {
    "maml": lambda: MAML(MAMLConfig(meta_batch_size=3, episodes_per_task=2, horizon=6, hidden_sizes=(8,), device="cuda")),
    "rl2": lambda: RL2(RL2Config(env_kwargs={"num_arms": 2, "num_pulls": 4}, num_envs=8, hidden_size=16, ppo=PPO, device="cuda")),
    "rl2-separate-critic": lambda: RL2(
        RL2Config(
            env_kwargs={"num_arms": 2, "num_pulls": 4}, num_envs=8, hidden_size=16, ppo=PPO, separate_critic=True, device="cuda"
        )
    ),
    "reptile-native": lambda: Reptile(
        ReptileConfig(meta_batch_size=2, envs_per_task=2, rollout_steps=20, ppo=PPO, device="cuda")
    ),
    "reptile-sb3": lambda: Reptile(
        ReptileConfig(meta_batch_size=2, envs_per_task=2, rollout_steps=20, ppo=PPO, inner_learner="sb3", device="cuda")
    ),
    "fewshot-maml": lambda: FewShotMAML(
        FewShotMAMLConfig(env_kwargs=GLYPHS, meta_batch_size=2, width=8, blocks=3, device="cuda")
    ),
    "protonet": lambda: ProtoNet(ProtoNetConfig(env_kwargs=GLYPHS, meta_batch_size=2, width=8, blocks=3, device="cuda")),
}


@pytest.mark.parametrize("name", AGENTS)
def test_agent_meta_trains_and_evaluates_on_cuda(name: str) -> None:
    agent = AGENTS[name]()
    key = "net" if name in ("fewshot-maml", "protonet") else "policy"  # where each agent keeps its weights
    before = {k: v.clone() for k, v in agent.state_dict()[key].items()}
    for _ in range(2):
        metrics = agent.meta_train_step()
    assert metrics and all(isinstance(v, float) and not math.isnan(v) for v in metrics.values()), metrics
    after = agent.state_dict()[key]
    assert all(v.device.type == "cuda" for v in after.values())
    assert any(not torch.equal(before[k], after[k]) for k in before), "meta-training moved no weight"
    tasks = agent.family.task_space.sample(2, generator=torch.Generator().manual_seed(0), split="test")
    curve = agent.adaptation_curve(tasks, 1, torch.Generator().manual_seed(0))
    assert curve.shape == (2, 2) and curve.device.type == "cpu" and torch.isfinite(curve).all()

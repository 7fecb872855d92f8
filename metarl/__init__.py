"""metarl: Gymnasium-based meta-reinforcement learning in PyTorch.

The engine room: contracts (tasks, batched envs, registry) and machinery
(rollouts, returns, policies). Concrete families live in ``envs``, agents in
``agents``; importing ``envs`` registers the built-in families.
"""

from metarl.env import RescaledActions, StepOutput, TaskFamily, TensorEnv, Transition
from metarl.registry import FamilySpec, UnknownFamilyError, make_env, make_family, register, registered, spec, unregister
from metarl.structs import TensorStruct
from metarl.tasks import BoxTaskSpace, ParamRange, Tasks, TaskSpace, load_manifest, save_manifest

__all__ = [
    "BoxTaskSpace",
    "FamilySpec",
    "ParamRange",
    "RescaledActions",
    "StepOutput",
    "TaskFamily",
    "TaskSpace",
    "Tasks",
    "TensorEnv",
    "TensorStruct",
    "Transition",
    "UnknownFamilyError",
    "load_manifest",
    "make_env",
    "make_family",
    "register",
    "registered",
    "save_manifest",
    "spec",
    "unregister",
]

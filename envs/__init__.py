"""Built-in task families. Importing this package registers each of them."""

from envs import (
    bandits,  # noqa: F401  (registers metarl/BernoulliBandit-v0, metarl/TabularMDP-v0)
    classic_control,  # noqa: F401  (registers metarl/CartPole-v0, metarl/Pendulum-v0)
    navigation,  # noqa: F401  (registers metarl/Navigation2D-v0)
    omniglot,  # noqa: F401  (registers metarl/OmniglotBandit-v0)
)

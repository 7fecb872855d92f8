"""Built-in task families. Importing this package registers each of them."""

from envs import navigation  # noqa: F401  (registers metarl/Navigation2D-v0)

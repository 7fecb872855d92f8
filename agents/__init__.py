"""Meta-learners: one per module, each a readable top-to-bottom algorithm."""

"""The node daemon: model loading, rollouts, strategies, training step, contributing, claiming."""

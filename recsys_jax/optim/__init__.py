"""Optimizers and learning-rate schedules: Optax transformations the engine and the
self-training models build their steps from."""

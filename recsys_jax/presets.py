"""Training regimens per model: ``default`` (tuned here) and ``notebook`` (the course's).

``default`` for dot, bias and mlp was chosen by a small search on a validation slice (10%)
carved from the training split of ml-latest-small (random 80/20, split seed 0); the test
split of seed 0 was not looked at. The test rows of other split seeds overlap seed 0's
training data, so for them these defaults are not strictly held out; the accuracy
benchmark's ``tuned`` rows are (nested: each split tuned on its own training split). The later models start from the bias model's regimen (SVD++ with
larger batches); ``python -m benchmarks.tune`` runs the documented grid for every model on
a slice of the training split and the accuracy benchmark reports its choice as ``tuned``.
Regularisation is L2 on the touched rows, per example (`recsys_jax.penalties`); the
schedule is one-cycle.

``notebook`` transcribes the course notebook's cells: Adam, batch 64, ``l2(1e-4)`` on the
embeddings, and its hand annealing as a piecewise schedule of ``(epochs, lr)`` phases:

- dot: 1 epoch at 1e-3, 3 at 1e-2, 6 at 1e-3;
- bias: 1 epoch at 1e-3, 6 at 1e-2, 10 at 1e-3, 5 at 1e-4;
- mlp: 8 epochs at 1e-3.

Two differences are unavoidable and stated: Keras' ``l2(1e-4)`` penalised the whole
embedding matrix every batch, ours penalises the rows the batch touches; and the notebook
scored its last epoch on the validation set, we keep the best epoch on a slice of the
training split and score the test split once.
"""
from __future__ import annotations

from recsys_jax.train import TrainConfig

PRESETS: dict[str, dict[str, TrainConfig]] = {
    "default": {
        "dot": TrainConfig(epochs=10, batch_size=1024, lr=1e-2, schedule="one_cycle", l2=0.1),
        "bias": TrainConfig(epochs=5, batch_size=1024, lr=1e-2, schedule="one_cycle", l2=0.1),
        "mlp": TrainConfig(epochs=8, batch_size=1024, lr=3e-3, schedule="one_cycle"),
        "gmf": TrainConfig(epochs=10, batch_size=1024, lr=1e-2, schedule="one_cycle", l2=0.1),
        "neumf": TrainConfig(epochs=8, batch_size=1024, lr=3e-3, schedule="one_cycle", l2=0.01),
        # SVD++ sums the implicit factors of every training pair once per step: big batches.
        "svdpp": TrainConfig(epochs=10, batch_size=4096, lr=1e-2, schedule="one_cycle", l2=0.1),
        "timesvd": TrainConfig(epochs=5, batch_size=1024, lr=1e-2, schedule="one_cycle", l2=0.1),
        "fm": TrainConfig(epochs=5, batch_size=1024, lr=1e-2, schedule="one_cycle", l2=0.1),
    },
    "notebook": {
        "dot": TrainConfig(
            epochs=10, batch_size=64, schedule="piecewise", l2=1e-4,
            phases=((1, 1e-3), (3, 1e-2), (6, 1e-3)),
        ),
        "bias": TrainConfig(
            epochs=22, batch_size=64, schedule="piecewise", l2=1e-4,
            phases=((1, 1e-3), (6, 1e-2), (10, 1e-3), (5, 1e-4)),
        ),
        "mlp": TrainConfig(epochs=8, batch_size=64, schedule="piecewise", l2=1e-4, phases=((8, 1e-3),)),
    },
}


def get_preset(preset: str, model: str) -> TrainConfig:
    """The ``TrainConfig`` of ``preset`` for ``model``; a clear error for unknown names."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; known presets: {', '.join(PRESETS)}")
    if model not in PRESETS[preset]:
        raise ValueError(f"the {preset!r} preset has no regimen for {model!r}; it has: {', '.join(PRESETS[preset])}")
    return PRESETS[preset][model]

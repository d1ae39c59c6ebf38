r"""Linear blends of heterogeneous models, weights fitted on a validation slice of the training split.

A blend of :math:`K` trained models predicts

.. math::

   \hat r_{ui} = \operatorname{clip}\Bigl(w_0 + \sum_{k=1}^{K} w_k\, \hat r^{(k)}_{ui}\Bigr),

:math:`\hat r^{(k)}` the :math:`k`-th model's prediction (clipped to the rating scale, as it
is scored alone). The weights are ridge regression on a validation slice :math:`V`
carved from the training split:

.. math::

   (w_0, w) = \arg\min \sum_{(u,i) \in V} \bigl(r_{ui} - w_0 - w^\top \hat r_{ui}\bigr)^2
             + \lambda\,|V|\,\lVert w \rVert^2,

with :math:`w_0` not penalised (solved in closed form on the centred predictions). The
procedure, `fit_blend`, mirrors `recsys_jax.training.experiment.run_experiment` for every member:

1. carve the validation slice (the same rows `run_experiment` carves for the same seed);
2. fit each member on the rest, choosing its epoch count on the slice, and predict the slice;
3. fit the weights on those predictions (the slice is then data the members never saw);
4. refit each member on the whole training split for its chosen epoch count
   (`recsys_jax.training.experiment.refit_on`) and blend the refitted models with those weights.

A seed ensemble is a blend whose members are one model with different seeds
(``BlendMember(name, seed=s)``); with ``mean=True`` the weights are fixed at
:math:`1/K` and :math:`w_0 = 0` (plain averaging) instead of fitted.
"""
from __future__ import annotations

from typing import Any, NamedTuple, Sequence

import jax
import numpy as np

from recsys_jax.eval import metrics
from recsys_jax.data.ratings import Ratings
from recsys_jax.training.experiment import carve_validation, predict_result, refit_on
from recsys_jax.training.presets import get_preset
from recsys_jax.engine.config import TrainConfig
from recsys_jax.training.fit import fit


class BlendMember(NamedTuple):
    """One model of a blend: its name, settings (None: the ``default`` preset and the model's
    defaults) and the seed of its training key (None: the blend's seed)."""

    model: str
    train_config: TrainConfig | None = None
    model_config: Any = None
    seed: int | None = None

    def label(self) -> str:
        return self.model if self.seed is None else f"{self.model}@{self.seed}"


class Blend(NamedTuple):
    members: list  # FitResult per member (refitted on the whole training split unless refit=False)
    labels: list  # str per member
    intercept: float  # w_0
    weights: np.ndarray  # float64[K]
    rating_scale: tuple  # (lo, hi): every prediction is clipped to it
    val_rmse: float  # the blend's RMSE on the validation slice, with the selection fits
    member_val_rmse: list  # each member's RMSE on the validation slice

    def member_predictions(self, ratings: Ratings) -> np.ndarray:
        """float32[K, N]: each member's clipped predictions of ``ratings``' pairs."""
        return np.stack([predict_result(r, ratings, self.rating_scale) for r in self.members])

    def predict(self, ratings: Ratings) -> np.ndarray:
        """float32[N]: the blend's predictions of ``ratings``' (user, item) pairs (and times,
        for time-aware members), in the training data's index space."""
        return combine(self.member_predictions(ratings), self.intercept, self.weights, self.rating_scale)


def combine(preds: np.ndarray, intercept: float, weights: np.ndarray, scale) -> np.ndarray:
    """``clip(w_0 + w . preds)``: ``preds`` float[K, N] -> float32[N]."""
    out = intercept + np.tensordot(np.asarray(weights, np.float64), np.asarray(preds, np.float64), axes=1)
    return np.clip(out, scale[0], scale[1]).astype(np.float32)


def fit_weights(preds: np.ndarray, targets: np.ndarray, l2: float = 1e-4) -> tuple[float, np.ndarray]:
    """``(w_0, w)`` minimising ``sum (t - w_0 - w . p)^2 + l2 * N * |w|^2`` (w_0 free).

    ``preds`` float[K, N], ``targets`` float[N]. Closed form: centre both, solve the
    K x K normal equations, ``w_0 = mean(t) - w . mean(p)``.
    """
    p = np.asarray(preds, np.float64)
    t = np.asarray(targets, np.float64)
    if p.ndim != 2 or t.ndim != 1 or p.shape[1] != t.shape[0]:
        raise ValueError(f"fit_weights: preds must be [K, N] and targets [N], got {p.shape} and {t.shape}")
    if t.shape[0] < 2:
        raise ValueError("fit_weights: at least 2 validation ratings are needed")
    if l2 < 0:
        raise ValueError(f"fit_weights: l2 must be >= 0, got {l2}")
    pm, tm = p.mean(axis=1), t.mean()
    pc, tc = p - pm[:, None], t - tm
    n = t.shape[0]
    gram = pc @ pc.T + l2 * n * np.eye(p.shape[0])
    w = np.linalg.lstsq(gram, pc @ tc, rcond=None)[0]  # lstsq: identical members make gram singular at l2=0
    return float(tm - w @ pm), w


def fit_blend(train_all: Ratings, members: Sequence[BlendMember], *, seed: int, val_frac: float = 0.1,
              l2: float = 1e-4, mean: bool = False, refit: bool = True, progress: bool = False) -> Blend:
    """Steps 1-4 above on ``train_all`` (the whole training split); returns the `Blend`."""
    if not members:
        raise ValueError("fit_blend: no members")
    if not 0.0 < val_frac < 1.0:
        raise ValueError(f"fit_blend: val_frac must be in (0, 1): the weights are fitted on that slice, got {val_frac}")
    train, val = carve_validation(train_all, seed, val_frac)
    scale = train_all.rating_scale
    selections, preds = [], []
    for m in members:
        tc = m.train_config if m.train_config is not None else get_preset("default", m.model)
        key = seed if m.seed is None else m.seed
        result = fit(m.model, train, val, key=jax.random.key(key), model_config=m.model_config, train_config=tc,
                     progress=progress)
        if result.stop_reason is not None:
            raise ValueError(f"fit_blend: member {m.label()} diverged: {result.stop_reason}")
        selections.append(result)
        preds.append(predict_result(result, val, scale))
    preds = np.stack(preds)
    if mean:
        intercept, weights = 0.0, np.full(len(members), 1.0 / len(members))
    else:
        intercept, weights = fit_weights(preds, val.ratings, l2)
    val_rmse = metrics.rmse(combine(preds, intercept, weights, scale), val.ratings)
    member_val = [metrics.rmse(p, val.ratings) for p in preds]
    final = selections
    if refit:
        final = [refit_on(train_all, s, seed=seed if m.seed is None else m.seed, progress=progress)
                 for m, s in zip(members, selections)]
    return Blend(final, [m.label() for m in members], intercept, weights, scale, val_rmse, member_val)

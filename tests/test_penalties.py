"""Every model's penalty is the regulariser its docstring writes (differential tests).

For each model in MODELS the penalty that `recsys_jax.objectives.penalties.make_model_penalty` returns
(the one `recsys_jax.training.fit.fit` trains with) is compared, in value and in gradient, with a
naive implementation of the written objective: a Python loop over the batch's examples
that adds up each example's terms (for SVD++, a loop over j in N(u) too). N(u) and the
time bins are derived here from the training ratings, not read from the model's ``aux``.
The batch has repeated users and items, fractional weights and a padding example of
weight 0.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

from recsys_jax.data import Ratings
from recsys_jax.objectives.losses import mse
from conftest import configured_model
from recsys_jax.models import MODELS, make_apply, make_config, svdpp
from recsys_jax.objectives.penalties import make_l2_penalty, make_model_penalty
from recsys_jax.engine.step import Batch, make_objective, make_penalty
from recsys_jax.engine.config import TrainConfig
from recsys_jax.training.fit import fit

NUM_USERS, NUM_ITEMS = 4, 6
L2, BIAS_L2 = 0.3, 0.07  # different, so that a term under the wrong weight shows
# Duplicated users and items; the last example is padding (weight 0) at row 0, as in fit.
USERS = jnp.array([1, 3, 1, 2, 0, 1, 0], jnp.int32)
ITEMS = jnp.array([4, 4, 0, 5, 2, 4, 0], jnp.int32)
WEIGHT = jnp.array([1.0, 0.5, 2.0, 1.0, 1.5, 1.0, 0.0], jnp.float32)


def tiny_train() -> Ratings:
    """Ratings with timestamps, titles/genres and user side information (for fm)."""
    rng = np.random.default_rng(0)
    pairs = [(u, i) for u in range(NUM_USERS) for i in range(NUM_ITEMS) if (u + 2 * i) % 3]
    users, items = np.array(pairs).T
    movies = pd.DataFrame(
        {"title": [f"Film {i} ({1980 + 7 * i})" for i in range(NUM_ITEMS)],
         "genres": ["Drama|Comedy", "Action", "(no genres listed)", "Drama", "Sci-Fi|Action|Drama", "Comedy"]},
        index=pd.Index(np.arange(NUM_ITEMS), name="movieId"))
    user_info = pd.DataFrame({"gender": ["F", "M", "M", "F"], "occupation": ["a", "b", "a", "c"]},
                             index=pd.Index(np.arange(NUM_USERS), name="userId"))
    train = Ratings.from_raw(users, items, rng.integers(1, 11, len(users)) / 2,
                             rng.integers(8e8, 1.4e9, len(users)), movies=movies)
    return dataclasses.replace(train, user_info=user_info)


TRAIN = tiny_train()
TRAIN_DAYS = TRAIN.timestamps / 86_400.0
# Days inside the training range, and one before and one after it (clipped to the end bins).
TIMES = jnp.asarray([TRAIN_DAYS.min() - 50.0, np.median(TRAIN_DAYS), TRAIN_DAYS.max() + 50.0,
                     TRAIN_DAYS.min() + 1.0, np.percentile(TRAIN_DAYS, 30), TRAIN_DAYS.max() - 1.0,
                     np.median(TRAIN_DAYS)], jnp.float32)


class Ctx:
    """A model with a tiny config, its aux, and random parameters off the init."""

    def __init__(self, name):
        self.name = name
        self.module, self.config, self.aux = configured_model(name, TRAIN, embedding_dim=3)
        params = self.module.init(jax.random.key(0), NUM_USERS, NUM_ITEMS, self.config)
        leaves, treedef = jax.tree.flatten(params)
        keys = jax.random.split(jax.random.key(1), len(leaves))
        self.params = jax.tree.unflatten(treedef, [jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])
        self.times = TIMES if self.module.uses_time else None


# ---- the written objectives, one example at a time -------------------------------------

def rated_by(u) -> list[int]:
    """N(u): the items u rated in the training split."""
    return [int(j) for uu, j in zip(TRAIN.users, TRAIN.items) if uu == u]


def time_bin(t, num_bins) -> int:
    """Bin(t): the training time range cut into num_bins equal bins, ends clipped."""
    first, last = TRAIN_DAYS.min(), TRAIN_DAYS.max()
    return int(np.clip(np.floor((float(t) - first) / ((last - first) / num_bins)), 0, num_bins - 1))


def active_features(ctx, u, i) -> list[int]:
    """F(u, i): the side features of i and of u with x_j != 0."""
    a = ctx.aux
    pairs = list(zip(np.asarray(a.item_features[i]), np.asarray(a.item_values[i])))
    pairs += list(zip(np.asarray(a.user_features[u]), np.asarray(a.user_values[u])))
    return [int(j) for j, x in pairs if x != 0]


def sq(v):
    return jnp.sum(jnp.square(v))


def example_terms(ctx, p, u, i, t):
    """(factor terms, bias terms) of one example, as the model's docstring writes them."""
    if ctx.name in ("dot", "mlp", "gmf"):
        return sq(p.user_factors[u]) + sq(p.item_factors[i]), 0.0
    if ctx.name == "ease":  # no user or item rows: its ridge on B is inside its closed form (ease.fit_epochs)
        return 0.0, 0.0
    if ctx.name == "ials":  # solved with its own regularisation (ials.objective); fold-in's gradient route reads this
        return sq(p.user_factors[u]) + sq(p.item_factors[i]), 0.0
    if ctx.name == "bpmf":  # sampled, not penalised in training; fold-in's gradient route reads this
        factors = sq(p.user_factors[u]) + sq(p.item_factors[i]) + sq(p.user_samples[u]) + sq(p.item_samples[i])
        return factors, p.user_bias[u] ** 2 + p.item_bias[i] ** 2
    if ctx.name == "bfm":  # sampled, not penalised; the name-based L2 on its stored samples' user and movie rows
        return sq(p.user_scalar[u]) + sq(p.item_scalar[i]) + sq(p.user_vector[u]) + sq(p.item_vector[i]), 0.0
    if ctx.name == "glocalk":  # fold-in's ridge on its factor form (the autoencoder's own is in glocalk.objective)
        return sq(p.user_factors[u]) + sq(p.item_factors[i]), p.user_bias[u] ** 2
    if ctx.name == "bias":
        return sq(p.user_factors[u]) + sq(p.item_factors[i]), p.user_bias[u] ** 2 + p.item_bias[i] ** 2
    if ctx.name == "neumf":
        return sq(p.user_gmf[u]) + sq(p.item_gmf[i]) + sq(p.user_mlp[u]) + sq(p.item_mlp[i]), 0.0
    if ctx.name == "svdpp":
        factors = sq(p.user_factors[u]) + sq(p.item_factors[i])
        for j in rated_by(u):
            factors = factors + sq(p.item_implicit[j])
        return factors, p.user_bias[u] ** 2 + p.item_bias[i] ** 2
    if ctx.name == "timesvd":
        b = time_bin(t, ctx.config.num_bins)
        biases = p.user_bias[u] ** 2 + p.user_drift_bias[u] ** 2 + p.item_bias[i] ** 2 + p.item_bin_bias[i, b] ** 2
        return sq(p.user_factors[u]) + sq(p.item_factors[i]), biases
    if ctx.name == "fm":
        factors = sq(p.user_factors[u]) + sq(p.item_factors[i])
        biases = p.user_bias[u] ** 2 + p.item_bias[i] ** 2
        scale = ctx.config.feature_l2_scale
        for j in active_features(ctx, u, i):
            factors, biases = factors + scale * sq(p.feature_factors[j]), biases + scale * p.feature_bias[j] ** 2
        return factors, biases
    raise AssertionError(f"no written objective for {ctx.name!r}: add it here")


def naive_penalty(ctx, params):
    if ctx.name == "autorec":  # its whole-table L2, (l2/2)(|W_u|^2 + |V_u|^2), once per user of weight > 0
        p = params
        return sum(0.5 * L2 * (sq(p.user_encoder[u]) + sq(p.user_decoder[u])) + 0.5 * BIAS_L2 * p.user_bias[u] ** 2
                   for u in sorted({int(u) for u, w in zip(USERS, WEIGHT) if w > 0}))
    total = 0.0
    for b in range(len(USERS)):
        u, i, w = int(USERS[b]), int(ITEMS[b]), WEIGHT[b]
        factors, biases = example_terms(ctx, params, u, i, None if ctx.times is None else ctx.times[b])
        total = total + w * (L2 * factors + BIAS_L2 * biases)
    return total


@pytest.fixture(scope="module", params=list(MODELS))
def ctx(request):
    if request.param == "knn":
        pytest.skip("knn is not trained by gradients (its fit_epochs fits it in closed form): no penalty")
    return Ctx(request.param)


def model_penalty(ctx):
    pen = make_model_penalty(ctx.module, ctx.config, ctx.aux, L2, BIAS_L2)
    kw = {} if ctx.times is None else {"times": ctx.times}
    return lambda p: pen(p, USERS, ITEMS, WEIGHT, **kw)


def test_penalty_value_is_the_written_objective(ctx):
    want = float(naive_penalty(ctx, ctx.params))
    f = model_penalty(ctx)
    assert float(f(ctx.params)) == pytest.approx(want, rel=1e-5)
    assert float(jax.jit(f)(ctx.params)) == pytest.approx(want, rel=1e-5)


def test_penalty_gradient_is_the_written_objective(ctx):
    want = jax.grad(lambda p: naive_penalty(ctx, p))(ctx.params)
    got = jax.jit(jax.grad(model_penalty(ctx)))(ctx.params)
    for field in ctx.params._fields:
        np.testing.assert_allclose(getattr(got, field), getattr(want, field), rtol=1e-5, atol=1e-6, err_msg=field)


def test_padding_changes_nothing(ctx):
    f = model_penalty(ctx)
    kw = {} if ctx.times is None else {"times": ctx.times[:-1]}
    pen = make_model_penalty(ctx.module, ctx.config, ctx.aux, L2, BIAS_L2)
    without = pen(ctx.params, USERS[:-1], ITEMS[:-1], WEIGHT[:-1], **kw)
    assert float(f(ctx.params)) == pytest.approx(float(without), rel=1e-6)


def test_row_local_models_keep_the_name_based_penalty():
    for name, module in MODELS.items():
        if name in ("svdpp", "timesvd", "fm", "autorec"):
            assert module.penalty is not None, name
        else:
            assert module.penalty is None, f"{name}: row-local, its objective is the name-based one"
    ctx = Ctx("bias")
    by_name = make_l2_penalty(L2, BIAS_L2)(ctx.params, USERS, ITEMS, WEIGHT)
    assert float(model_penalty(ctx)(ctx.params)) == pytest.approx(float(by_name), rel=1e-6)


def test_train_objective_passes_times_to_the_penalty():
    """The contract of the train step: ``penalty_fn(params, users, items, weight, times=...)``."""
    ctx = Ctx("timesvd")
    apply_fn = make_apply("timesvd", ctx.config)
    train_apply = lambda p, u, i, key=None, **kw: apply_fn(p, u, i, key, aux=ctx.aux, **kw)  # noqa: E731
    pen = make_penalty(TrainConfig(l2=L2, bias_l2=BIAS_L2), ctx.module, ctx.config, ctx.aux)
    ratings = jnp.linspace(1.0, 5.0, len(USERS))
    batch = Batch(USERS, ITEMS, ratings, WEIGHT > 0, TIMES)
    got = make_objective(train_apply, mse, pen)(ctx.params, batch, jax.random.key(0))
    mask = np.asarray(WEIGHT > 0, np.float32)
    pred = train_apply(ctx.params, USERS, ITEMS, times=TIMES)
    naive = 0.0
    for b in range(len(USERS)):
        factors, biases = example_terms(ctx, ctx.params, int(USERS[b]), int(ITEMS[b]), TIMES[b])
        naive += mask[b] * (float((pred[b] - ratings[b]) ** 2) + L2 * float(factors) + BIAS_L2 * float(biases))
    assert float(got) == pytest.approx(naive / mask.sum(), rel=1e-5)


def test_fit_trains_with_the_models_own_penalty(monkeypatch):
    calls = []
    own = svdpp.penalty

    def spy(*args, **kw):
        calls.append(kw)
        return own(*args, **kw)

    monkeypatch.setitem(MODELS, "svdpp", svdpp.SPEC._replace(penalty=spy))
    fit("svdpp", TRAIN, key=0, model_config=make_config("svdpp", embedding_dim=3), progress=False,
        train_config=TrainConfig(epochs=1, batch_size=8, l2=L2, bias_l2=BIAS_L2, schedule="constant"))
    assert calls and calls[0]["l2"] == L2 and calls[0]["bias_l2"] == BIAS_L2 and calls[0]["aux"] is not None

"""`predict_indices` reads many pairs from the whole score matrix (dot-product family):
the same predictions as the row path, chosen by the pair count, with links and clipping."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from recsys_jax.eval import predict
from recsys_jax.models import get_model, make_apply, make_config

U, I = 7, 5


@pytest.mark.parametrize("model, options", [
    ("dot", {}),
    ("bias", {}),
    ("bias", {"global_mean": False}),
    ("bias", {"y_range": (0.5, 5.0)}),
])
def test_dense_path_equals_row_path(model, options, monkeypatch):
    config = make_config(model, embedding_dim=3, **options)
    params = get_model(model).init(jax.random.key(0), U, I, config)
    if model == "bias":  # nonzero biases and mu, so that each term is checked
        params = params._replace(user_bias=params.user_bias + np.arange(U) * 0.1,
                                 item_bias=params.item_bias - np.arange(I) * 0.2, global_bias=params.global_bias + 0.3)
    apply_fn = make_apply(model, config)
    assert callable(apply_fn.score_matrix)
    rng = np.random.default_rng(0)
    users, items = rng.integers(0, U, 50), rng.integers(0, I, 50)  # 50 pairs >= 35 / DENSE_RATIO: dense
    calls = []
    real = predict._jitted_matrix
    monkeypatch.setattr(predict, "_jitted_matrix", lambda f: calls.append(f) or real(f))
    link = lambda lp, x: x * lp  # noqa: E731 - a link with a parameter, as a ParamLoss's predict
    dense = predict.predict_indices(apply_fn, params, users, items, clip=(1.0, 4.0), link=link, link_params=2.0)
    assert len(calls) == 1
    # the row path, by hand: the model's own apply on each pair, then link and clip
    by_hand = np.clip(2.0 * np.asarray(apply_fn(params, users, items)), 1.0, 4.0)
    np.testing.assert_allclose(dense, by_hand, rtol=1e-5, atol=1e-6)
    monkeypatch.setattr(predict, "DENSE_RATIO", 0)  # never dense
    rows = predict.predict_indices(apply_fn, params, users, items, clip=(1.0, 4.0), link=link, link_params=2.0)
    assert len(calls) == 1
    np.testing.assert_allclose(dense, rows, rtol=1e-5, atol=1e-6)


def test_few_pairs_take_the_row_path(monkeypatch):
    config = make_config("dot", embedding_dim=3)
    params = get_model("dot").init(jax.random.key(1), U, I, config)
    monkeypatch.setattr(predict, "_jitted_matrix", lambda f: pytest.fail("dense path for 2 pairs"))
    out = predict.predict_indices(make_apply("dot", config), params, [0, 6], [4, 0])  # 35 > 8 * 2
    p, q = np.asarray(params.user_factors), np.asarray(params.item_factors)
    np.testing.assert_allclose(out, [p[0] @ q[4], p[6] @ q[0]], rtol=1e-5)


def test_models_without_a_score_matrix_have_none():
    assert not hasattr(make_apply("mlp", make_config("mlp")), "score_matrix")


def test_biased_product_is_the_broadcast_sum():
    """One product of augmented factors equals L R^T plus each broadcast bias, with either
    bias, both or none."""
    from recsys_jax.models._common import biased_product

    rng = np.random.default_rng(0)
    left, right = rng.normal(size=(3, 4)).astype(np.float32), rng.normal(size=(5, 4)).astype(np.float32)
    lb, rb = rng.normal(size=3).astype(np.float32), rng.normal(size=5).astype(np.float32)
    base = left.astype(np.float64) @ right.T.astype(np.float64)
    for lbias, rbias, want in [(None, None, base), (lb, None, base + lb[:, None]), (None, rb, base + rb[None, :]),
                               (lb, rb, base + lb[:, None] + rb[None, :])]:
        got = biased_product(jnp.asarray(left), jnp.asarray(right), None if lbias is None else jnp.asarray(lbias),
                             None if rbias is None else jnp.asarray(rbias))
        assert got.shape == (3, 5)
        np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)

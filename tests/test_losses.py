"""Losses and penalties: hand-computed values, jit, numerical gradients."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from recsys_jax.losses import LOSSES, get_loss, huber, mae, mse
from recsys_jax.models import bias
from recsys_jax.penalties import make_l2_penalty

PRED = jnp.array([3.0, 4.5, 1.0, 2.0])
TARG = jnp.array([4.0, 4.5, 3.5, 1.9])


def test_hand_values():
    np.testing.assert_allclose(mse(PRED, TARG), [1.0, 0.0, 6.25, 0.01], rtol=1e-5)
    np.testing.assert_allclose(mae(PRED, TARG), [1.0, 0.0, 2.5, 0.1], rtol=1e-5)
    # huber, delta=1: |e|<=1 -> e^2/2, else |e| - 1/2
    np.testing.assert_allclose(huber(PRED, TARG), [0.5, 0.0, 2.0, 0.005], rtol=1e-5)
    np.testing.assert_allclose(huber(PRED, TARG, delta=3.0), [0.5, 0.0, 3.125, 0.005], rtol=1e-5)


@pytest.mark.parametrize("name", list(LOSSES))
def test_jit_equals_eager_and_shape(name):
    loss = get_loss(name)
    eager = loss(PRED, TARG)
    assert eager.shape == PRED.shape
    np.testing.assert_allclose(jax.jit(loss)(PRED, TARG), eager, rtol=1e-6)
    assert np.all(np.asarray(eager) >= 0)
    np.testing.assert_allclose(loss(TARG, TARG), 0.0, atol=1e-7)


@pytest.mark.parametrize("name", list(LOSSES))
def test_gradients(name):
    loss = get_loss(name)
    # Points away from the kinks of mae/huber (|e| = 0, |e| = delta).
    pred = np.array([3.0, 4.2, 1.0, 2.3])
    targ = np.array([4.0, 4.5, 3.5, 1.9])
    with jax.enable_x64(True):
        check_grads(lambda p: loss(jnp.asarray(p), jnp.asarray(targ)), (pred,), order=1, modes=["rev"], eps=1e-6)


def test_unknown_loss():
    with pytest.raises(ValueError, match="known losses"):
        get_loss("hinge9")


def test_l2_penalty_on_touched_rows():
    p = bias.Params(
        global_bias=jnp.array(9.0),  # never penalised
        user_bias=jnp.array([1.0, 2.0]),
        item_bias=jnp.array([0.5, -1.0, 3.0]),
        user_factors=jnp.array([[1.0, 2.0], [0.0, 1.0]]),
        item_factors=jnp.array([[1.0, 1.0], [2.0, 0.0], [0.0, 0.0]]),
    )
    users, items = jnp.array([0, 1, 1, 0]), jnp.array([2, 0, 1, 1])
    w = jnp.array([1.0, 1.0, 1.0, 0.0])  # the last example is padding
    # ||p_u||^2 + ||q_i||^2 per example: [5 + 0, 1 + 2, 1 + 4, (5 + 4)]; biases^2: [1 + 9, 4 + .25, 4 + 1, (1 + 1)]
    got = make_l2_penalty(0.1)(p, users, items, w)
    assert float(got) == pytest.approx(0.1 * (5.0 + 3.0 + 5.0), rel=1e-6)
    got = make_l2_penalty(0.1, bias_weight=0.01)(p, users, items, w)
    assert float(got) == pytest.approx(0.1 * 13.0 + 0.01 * (10.0 + 4.25 + 5.0), rel=1e-6)
    # Equal to the per-example definition: gather the rows and sum, weighted.
    per_example = (jnp.sum(p.user_factors[users] ** 2, 1) + jnp.sum(p.item_factors[items] ** 2, 1))
    assert float(make_l2_penalty(0.3)(p, users, items, w)) == pytest.approx(0.3 * float(jnp.sum(w * per_example)), rel=1e-6)
    grad = jax.grad(lambda q: make_l2_penalty(0.1)(q, users, items, w))(p)
    # d/dp_1 = 2 * 0.1 * (count of user 1 = 2) * p_1
    np.testing.assert_allclose(grad.user_factors[1], 0.4 * np.array([0.0, 1.0]), rtol=1e-6)
    np.testing.assert_allclose(grad.item_factors[1], 0.2 * np.array([2.0, 0.0]), rtol=1e-6)

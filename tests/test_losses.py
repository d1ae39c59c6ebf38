"""Losses and penalties: hand-computed values, jit, numerical gradients."""
from __future__ import annotations

import doctest

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.test_util import check_grads

from recsys_jax.objectives import losses
from recsys_jax.objectives.losses import LOSSES, get_loss, huber, log_cosh, mae, mse, pseudo_huber
from recsys_jax.models import bias
from recsys_jax.objectives.penalties import make_l2_penalty

PRED = jnp.array([3.0, 4.5, 1.0, 2.0])
TARG = jnp.array([4.0, 4.5, 3.5, 1.9])


def test_hand_values():
    np.testing.assert_allclose(mse(PRED, TARG), [1.0, 0.0, 6.25, 0.01], rtol=1e-5)
    np.testing.assert_allclose(mae(PRED, TARG), [1.0, 0.0, 2.5, 0.1], rtol=1e-5)
    # huber, delta=1: |e|<=1 -> e^2/2, else |e| - 1/2
    np.testing.assert_allclose(huber(PRED, TARG), [0.5, 0.0, 2.0, 0.005], rtol=1e-5)
    np.testing.assert_allclose(huber(PRED, TARG, delta=3.0), [0.5, 0.0, 3.125, 0.005], rtol=1e-5)
    # pseudo-huber, delta=1: sqrt(1 + e^2) - 1; e = [-1, 0, -2.5, 0.1]
    np.testing.assert_allclose(pseudo_huber(PRED, TARG), [np.sqrt(2) - 1, 0.0, np.sqrt(7.25) - 1,
                                                          np.sqrt(1.01) - 1], rtol=1e-5)
    # delta=2: 4 (sqrt(1 + e^2/4) - 1)
    np.testing.assert_allclose(pseudo_huber(PRED, TARG, delta=2.0), 4 * (np.sqrt(1 + np.array([1, 0, 6.25, 0.01]) / 4)
                                                                         - 1), rtol=1e-5)
    np.testing.assert_allclose(log_cosh(PRED, TARG), np.log(np.cosh([-1.0, 0.0, -2.5, 0.1])), rtol=1e-5)


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


def test_docstring_examples():
    assert doctest.testmod(losses).failed == 0


def test_log_cosh_is_accurate_and_finite_everywhere():
    e = np.array([1e-6, 1e-3, 0.5, 0.999, 1.0, 1.001, 3.0, 20.0, 88.0, 200.0, 1e4])
    with jax.enable_x64(True):
        got = np.asarray(log_cosh(jnp.asarray(e), jnp.zeros_like(jnp.asarray(e))))
    # float64 reference: the Taylor series below 0.01, else |e| - log 2 + log1p(exp(-2|e|))
    taylor = e**2 / 2 - e**4 / 12 + e**6 / 45 - 17 * e**8 / 2520
    ref = np.where(e < 0.01, taylor, e - np.log(2) + np.log1p(np.exp(-2 * e)))
    np.testing.assert_allclose(got, ref, rtol=1e-10)
    f32 = np.asarray(log_cosh(jnp.asarray(e, jnp.float32), jnp.zeros(len(e), jnp.float32)))
    assert np.all(np.isfinite(f32))
    np.testing.assert_allclose(f32, ref, rtol=2e-6)
    # the gradient is tanh(e), continuous across the switch at |e| = 1
    grad = jax.vmap(jax.grad(lambda x: log_cosh(x, 0.0)))(jnp.asarray([-1.0, -0.999, 0.999, 1.0, 1.001]))
    np.testing.assert_allclose(grad, np.tanh([-1.0, -0.999, 0.999, 1.0, 1.001]), rtol=1e-6)


SMOOTH = settings(max_examples=60, deadline=None)
ERR = st.floats(-1e3, 1e3, allow_nan=False, width=32)


@SMOOTH
@given(errors=st.lists(ERR, min_size=16, max_size=16), delta=st.floats(0.1, 10.0))
def test_pseudo_huber_between_its_two_regimes(errors, delta):
    e = np.asarray(errors, np.float32)
    got = np.asarray(pseudo_huber(jnp.asarray(e), jnp.zeros_like(jnp.asarray(e)), delta=delta), np.float64)
    e = e.astype(np.float64)
    assert np.all(got >= 0)
    # below both the parabola e^2/2 and the line delta |e| (up to float32 rounding)
    assert np.all(got <= 0.5 * e**2 * (1 + 1e-5) + 1e-30)
    assert np.all(got <= delta * np.abs(e) * (1 + 1e-5) + 1e-30)
    # delta^2 (sqrt(1 + x^2) - 1) = e^2 / (sqrt(1 + x^2) + 1), in float64 (no cancellation)
    np.testing.assert_allclose(got, e**2 / (np.sqrt(1 + (e / delta) ** 2) + 1), rtol=1e-5, atol=1e-30)


@SMOOTH
@given(errors=st.lists(ERR, min_size=16, max_size=16))
def test_log_cosh_between_parabola_and_line(errors):
    e = np.asarray(errors, np.float32)
    got = np.asarray(log_cosh(jnp.asarray(e), jnp.zeros_like(jnp.asarray(e))), np.float64)
    e = e.astype(np.float64)
    assert np.all(got >= 0)
    assert np.all(got <= 0.5 * e**2 * (1 + 1e-5) + 1e-30)  # log cosh e <= e^2 / 2
    assert np.all(got >= (np.abs(e) - np.log(2)) - 1e-4 * np.maximum(np.abs(e), 1))  # and >= |e| - log 2


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

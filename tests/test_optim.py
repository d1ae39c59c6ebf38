"""Schedules and the optimizer."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from recsys_jax.optim.optimizers import make_optimizer, make_schedule


def test_piecewise_is_the_notebook_annealing():
    s = make_schedule("piecewise", 0.0, 0, steps_per_epoch=10, phases=[(1, 1e-3), (6, 1e-2), (10, 1e-3)])
    assert [float(s(t)) for t in (0, 9, 10, 69, 70, 169, 500)] == pytest.approx(
        [1e-3, 1e-3, 1e-2, 1e-2, 1e-3, 1e-3, 1e-3]
    )
    assert float(jax.jit(s)(15)) == pytest.approx(1e-2)


def test_constant_one_cycle_and_warmup_cosine():
    assert float(make_schedule("constant", 0.1, 100)(57)) == pytest.approx(0.1)
    oc = make_schedule("one_cycle", 0.1, 100)
    values = np.array([float(oc(t)) for t in range(101)])
    assert values.max() == pytest.approx(0.1, rel=1e-3)
    assert values[0] < 0.01 and values[-1] < 1e-4 and 20 <= values.argmax() <= 40
    wc = make_schedule("warmup_cosine", 0.1, 100, warmup_frac=0.1)
    assert float(wc(0)) == 0.0 and float(wc(10)) == pytest.approx(0.1) and float(wc(100)) == pytest.approx(1e-3)
    with pytest.raises(ValueError, match="known schedules"):
        make_schedule("cyclic9", 0.1, 100)


def test_adam_minimises_a_parabola():
    opt = make_optimizer(0.1)
    x = jnp.array([3.0, -2.0])
    state = opt.init(x)
    grad = jax.grad(lambda x: jnp.sum((x - 1.0) ** 2))
    for _ in range(300):
        updates, state = opt.update(grad(x), state, x)
        x = optax.apply_updates(x, updates)
    np.testing.assert_allclose(x, [1.0, 1.0], atol=1e-2)


def test_weight_decay_touches_matrices_only():
    # With a zero gradient Adam's step is 0, so the update is -lr * wd * p on decayed leaves.
    params = {"m": jnp.ones((2, 2)), "b": jnp.ones((2,))}
    zero = jax.tree.map(jnp.zeros_like, params)
    opt = make_optimizer(1.0, weight_decay=0.5)
    updates, _ = opt.update(zero, opt.init(params), params)
    np.testing.assert_allclose(updates["m"], -0.5 * np.ones((2, 2)))
    np.testing.assert_allclose(updates["b"], 0.0)

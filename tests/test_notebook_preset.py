"""The ``notebook`` preset is the course notebook (NOTEBOOK.md): Keras' whole-table l2,
Keras' uniform embedding init, no global mean, the exact regimens, the last epoch kept."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from recsys_jax.models import bias, dot, make_config, mlp
from recsys_jax.optim.optimizers import make_schedule
from recsys_jax.objectives.penalties import make_table_l2_penalty
from recsys_jax.training.presets import get_preset, model_options, val_frac
from recsys_jax.engine.step import make_penalty


def test_table_penalty_is_keras_l2_on_whole_tables():
    params = bias.Params(
        global_bias=jnp.asarray(3.0), user_bias=jnp.asarray([1.0, 2.0]), item_bias=jnp.asarray([5.0, 1.0, 1.0]),
        user_factors=jnp.asarray([[1.0, 2.0], [0.0, 1.0]]),
        item_factors=jnp.asarray([[1.0, 0.0], [2.0, 2.0], [0.0, 3.0]]),
    )
    users, items = jnp.asarray([0, 0, 1]), jnp.asarray([0, 0, 0])  # items 1, 2 untouched
    weight = jnp.asarray([1.0, 1.0, 0.0])  # the last example is padding
    lam = 0.5
    pen = make_table_l2_penalty(lam)
    # ||P||^2 = 1 + 4 + 0 + 1 = 6, ||Q||^2 = 1 + 0 + 4 + 4 + 0 + 9 = 18; biases are not penalised.
    # The train step divides by sum(weight) = 2, so the penalty is returned times 2.
    assert float(pen(params, users, items, weight)) == pytest.approx(lam * 2 * (6 + 18))
    grads = jax.grad(lambda p: pen(p, users, items, weight) / jnp.sum(weight))(params)
    # d/dW of lam * ||W||^2 is 2 lam W on every row, touched or not.
    np.testing.assert_allclose(grads.item_factors, 2 * lam * params.item_factors)
    np.testing.assert_allclose(grads.user_factors, 2 * lam * params.user_factors)
    assert float(jnp.abs(grads.item_bias).sum()) == 0.0 and float(grads.global_bias) == 0.0


def test_table_penalty_refuses_bias_l2():
    with pytest.raises(ValueError, match="bias_l2"):
        make_penalty(get_preset("notebook", "bias")._replace(bias_l2=0.1))


def test_bias_model_without_global_mean_is_the_notebooks():
    config = make_config("bias", embedding_dim=2, global_mean=False, mean_rating=3.5)
    params = bias.Params(
        global_bias=jnp.asarray(0.0), user_bias=jnp.asarray([0.5, -1.0]), item_bias=jnp.asarray([2.0]),
        user_factors=jnp.asarray([[1.0, 2.0], [3.0, -1.0]]), item_factors=jnp.asarray([[0.5, 0.25]]),
    )
    out = bias.apply(params, jnp.asarray([0, 1]), jnp.asarray([0, 0]), config=config)
    # b_u + b_i + p_u . q_i: 0.5 + 2 + (0.5 + 0.5) = 3.5 and -1 + 2 + (1.5 - 0.25) = 2.25
    np.testing.assert_allclose(out, [3.5, 2.25])
    init = bias.init(jax.random.key(0), 4, 5, config)
    assert float(init.global_bias) == 0.0
    # mu takes no part in the prediction, so it gets no gradient and Adam leaves it at 0
    g = jax.grad(lambda p: jnp.sum(bias.apply(p, jnp.asarray([0]), jnp.asarray([0]), config=config)))(params)
    assert float(g.global_bias) == 0.0


@pytest.mark.parametrize("module,name", [(dot, "dot"), (bias, "bias"), (mlp, "mlp")])
def test_keras_uniform_init(module, name):
    config = make_config(name, **model_options("notebook", name))
    params = module.init(jax.random.key(1), 300, 400, config)
    for table in ("user_factors", "item_factors") + (("user_bias", "item_bias") if name == "bias" else ()):
        t = np.asarray(getattr(params, table))
        assert t.min() >= -0.05 and t.max() <= 0.05
        # U(-0.05, 0.05) has std 0.05 / sqrt(3) = 0.0289, and fills its range
        assert np.std(t) == pytest.approx(0.05 / np.sqrt(3), rel=0.05)
        assert t.max() > 0.049 and t.min() < -0.049
    if name == "mlp":
        assert float(params.out_b) == 0.0 and float(jnp.abs(params.hidden_b).sum()) == 0.0


@pytest.mark.parametrize("model,batch,per_epoch_lr", [
    ("dot", 64, [1e-3] + [1e-2] * 3 + [1e-3] * 6),
    ("bias", 64, [1e-2] * 7 + [1e-3] * 10),
    ("mlp", 128, [1e-3] * 15),
])
def test_notebook_regimens(model, batch, per_epoch_lr):
    tc = get_preset("notebook", model)
    assert tc.batch_size == batch and tc.epochs == len(per_epoch_lr)
    assert tc.penalty == "table" and tc.l2 == 1e-4 and tc.bias_l2 == 0 and tc.patience is None
    steps = 3  # steps per epoch: the rate must hold for the whole epoch
    sched = make_schedule(tc.schedule, tc.lr, tc.epochs * steps, steps_per_epoch=steps, phases=tc.phases)
    got = [[float(sched(e * steps + s)) for s in range(steps)] for e in range(tc.epochs)]
    np.testing.assert_allclose(got, [[lr] * steps for lr in per_epoch_lr], rtol=1e-6)
    assert val_frac("notebook") == 0.0  # trained on the whole training part, last epoch kept


def test_as_run_preset_keeps_the_initial_rate():
    for model, lr in [("dot", 1e-3), ("bias", 1e-2), ("mlp", 1e-3)]:
        tc = get_preset("notebook_as_run", model)
        sched = make_schedule(tc.schedule, tc.lr, 100, steps_per_epoch=10)
        assert [float(sched(s)) for s in (0, 50, 99)] == pytest.approx([lr] * 3)

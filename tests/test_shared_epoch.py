"""One compiled epoch for every number of ratings that pads to the same size.

`fit` pads the training arrays to `recsys_jax.engine.epoch.padded_size` and passes the number of
ratings and the schedule's step counts to the compiled epoch as data: the selection fit
and the refit of an experiment run one program. Checked here against the exact-size
program (the one `fit` compiled before), and against Optax's schedules (float32 rounding apart).
"""
import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import recsys_jax.training.fit as train_mod
from recsys_jax.data import make_synthetic
from recsys_jax.optim.optimizers import make_schedule, step_schedule
from recsys_jax.engine.shuffle import SORT_MAX, feistel_permutation
from recsys_jax.engine.config import TrainConfig
from recsys_jax.training.fit import fit
from recsys_jax.engine.epoch import padded_size


def _in_scan(fn, steps, *args):
    """``fn(step, *args)`` at every step, evaluated the way training does: inside a scan of a
    compiled program whose arguments are ``args`` (data, as the epoch's counts are)."""
    def run(*traced):
        return jax.lax.scan(lambda carry, i: (carry, fn(i, *traced)), 0, jnp.arange(steps, dtype=jnp.int32))[1]

    return np.asarray(jax.jit(run)(*args))


@pytest.mark.parametrize("name", ["constant", "piecewise", "one_cycle", "warmup_cosine"])
def test_step_schedule_is_optaxs_schedule(name):
    for total, per_epoch in ((355, 71), (395, 79), (7, 7), (1, 1), (3000, 600)):
        phases = ((1, 1e-2), (2, 1e-1), (3, 1e-3)) if name == "piecewise" else None
        want = make_schedule(name, 1e-2, total, steps_per_epoch=per_epoch, phases=phases)
        runtime = step_schedule(name, 1e-2, phases=phases)
        counts = jnp.asarray(runtime.counts_for(total, per_epoch))
        got = _in_scan(runtime.fn, total + 10, counts)
        # The same formulas; XLA may fuse them differently around constants: float32 rounding
        # of the peak rate (one-cycle's cosine near its end: 1 - cos cancels relative precision).
        np.testing.assert_allclose(got, _in_scan(lambda i: want(i), total + 10), rtol=2e-6, atol=1e-6 * 1e-2,
                                   err_msg=f"{name} {total}")
    assert got.max() > 0  # the schedule is not all zeros


def test_the_counted_cipher_is_the_exact_sizes_permutation():
    key = jax.random.key(3)
    for count in (SORT_MAX + 1, 5000, 8191, 8192):
        got = np.asarray(feistel_permutation(key, 8192, jnp.int32(count)))
        np.testing.assert_array_equal(got[:count], np.asarray(feistel_permutation(key, count)))
        np.testing.assert_array_equal(np.sort(got[:count]), np.arange(count))
        assert not got[count:].any()


def test_padded_size():
    assert padded_size(SORT_MAX, 256) is None  # sorted uniform shuffle: exact size
    assert padded_size(SORT_MAX + 1, 256) == 8192
    assert padded_size(80_669, 1024) == padded_size(72_602, 1024) == 131_072  # refit, selection fit
    assert padded_size(100_836, 64) is None  # 1,576 steps: the unrolled fixed-length loop


@pytest.fixture(scope="module")
def splits():
    r, _ = make_synthetic(jax.random.key(0), 200, 150, 9000)
    perm = np.random.default_rng(0).permutation(len(r))
    return r.take(np.sort(perm[:6000])), r.take(np.sort(perm[:4500]))


@pytest.mark.parametrize("optimizer", ["adam", "sgd", "lazy_adam"])
def test_padded_epoch_trains_what_the_exact_size_epoch_trains(splits, optimizer, monkeypatch):
    _, small = splits
    tc = TrainConfig(epochs=2, batch_size=256, lr=1e-2, l2=0.01, optimizer=optimizer)
    shared = fit("bias", small, key=0, train_config=tc, progress=False)
    monkeypatch.setattr(train_mod, "padded_size", lambda n, b: None)
    exact = fit("bias", small, key=0, train_config=tc, progress=False)
    np.testing.assert_allclose(shared.history["train_loss"], exact.history["train_loss"], rtol=1e-6)
    assert len(shared.history["train_loss"]) == 2
    for got, want in zip(jax.tree.leaves(shared.params), jax.tree.leaves(exact.params)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
    assert int(shared.state.step) == int(exact.state.step) == 2 * 18  # ceil(4500 / 256) steps an epoch


def test_fits_of_other_sizes_and_epochs_compile_nothing(splits, caplog):
    big, small = splits
    tc = TrainConfig(epochs=3, batch_size=256, lr=1e-2, l2=0.01, optimizer="lazy_adam")
    first = fit("bias", small, key=0, train_config=tc, progress=False)
    with jax.log_compiles(True), caplog.at_level(logging.DEBUG):
        second = fit("bias", big, key=1, train_config=tc._replace(epochs=2), progress=False)
    compiled = [r.getMessage() for r in caplog.records if "Compiling" in r.getMessage()]
    assert not compiled, compiled
    assert second.compile_seconds == 0.0
    assert len(second.history["train_loss"]) == 2 and int(second.state.step) == 2 * 24  # ceil(6000 / 256)
    assert np.all(np.isfinite(second.history["train_loss"]))
    assert float(second.params.global_bias) != float(first.params.global_bias)

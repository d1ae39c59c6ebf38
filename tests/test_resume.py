"""Training faults: a fit killed with SIGKILL and resumed ends bit-identical."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from recsys_jax.use.checkpoint import CheckpointError
from recsys_jax.data import make_synthetic
from recsys_jax.engine.config import TrainConfig
from recsys_jax.training.fit import fit

EPOCHS = 6
SETUP = """
import jax
from recsys_jax.data import make_synthetic
from recsys_jax.training.fit import TrainConfig, fit
ratings, _ = make_synthetic(jax.random.key(0), 200, 100, 5000)
val = ratings.take(range(0, 5000, 10))
tc = TrainConfig(epochs=%d, batch_size=128, lr=1e-2, l2=0.01)
""" % EPOCHS


def _data():
    ratings, _ = make_synthetic(jax.random.key(0), 200, 100, 5000)
    return ratings, ratings.take(range(0, 5000, 10))


TC = TrainConfig(epochs=EPOCHS, batch_size=128, lr=1e-2, l2=0.01)


@pytest.mark.slow
def test_sigkill_mid_run_then_resume_is_bit_identical(tmp_path):
    ck = tmp_path / "progress"
    script = SETUP + textwrap.dedent(f"""
        import sys, time
        def on_epoch(epoch, record):
            print(f"EPOCH {{epoch}}", flush=True)
            if epoch == 3:
                time.sleep(600)  # killed here
        fit("mlp", ratings, val, key=5, train_config=tc, progress=False,
            checkpoint_dir={str(ck)!r}, on_epoch=on_epoch)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        for line in proc.stdout:
            if line.strip() == "EPOCH 3":
                break
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    assert sorted(p.name for p in tmp_path.iterdir()) == ["progress"]  # no temporary folders
    ratings, val = _data()
    resumed_epochs = []
    resumed = fit("mlp", ratings, val, key=5, train_config=TC, progress=False, checkpoint_dir=str(ck),
                  on_epoch=lambda e, r: resumed_epochs.append(e))
    assert resumed_epochs == [4, 5, 6]  # epochs 1-3 came from the progress folder
    straight = fit("mlp", ratings, val, key=5, train_config=TC, progress=False)
    for a, b in zip(jax.tree.leaves(resumed.state), jax.tree.leaves(straight.state)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    for a, b in zip(jax.tree.leaves(resumed.params), jax.tree.leaves(straight.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert resumed.history == straight.history | {"seconds": resumed.history["seconds"]}
    assert resumed.best_epoch == straight.best_epoch


def test_progress_of_another_run_is_refused(tmp_path):
    ratings, val = _data()
    ck = str(tmp_path / "progress")
    fit("bias", ratings, val, key=1, train_config=TC._replace(epochs=1), progress=False, checkpoint_dir=ck)
    with pytest.raises(CheckpointError, match="different run"):
        fit("bias", ratings, val, key=2, train_config=TC._replace(epochs=1), progress=False, checkpoint_dir=ck)
    # A finished run resumed again does no more epochs and returns the same parameters.
    again = []
    done = fit("bias", ratings, val, key=1, train_config=TC._replace(epochs=1), progress=False,
               checkpoint_dir=ck, on_epoch=lambda e, r: again.append(e))
    assert again == [] and done.best_epoch == 1


def test_progress_on_other_data_of_the_same_length_is_refused(tmp_path):
    """Same model, configs, key and number of ratings; only the content differs."""
    import dataclasses

    ratings, val = _data()
    ck = str(tmp_path / "progress")
    tc = TC._replace(epochs=1)
    fit("bias", ratings, val, key=1, train_config=tc, progress=False, checkpoint_dir=ck)
    # changes that keep the mean rating (which the model config records) as it was
    two_ratings = ratings.ratings.copy()
    other_row = int(np.flatnonzero(two_ratings != two_ratings[0])[0])
    two_ratings[[0, other_row]] = two_ratings[[other_row, 0]]
    swapped = ratings.items.copy()
    swapped[[0, 1]] = swapped[[1, 0]]
    assert swapped[0] != swapped[1]
    for other in (dataclasses.replace(ratings, ratings=two_ratings), dataclasses.replace(ratings, items=swapped),
                  ratings.take(np.r_[1:len(ratings), 0])):  # the same rows in another order
        assert len(other) == len(ratings)
        with pytest.raises(CheckpointError, match=r"different run \(data_sha256 differ\)"):
            fit("bias", other, val, key=1, train_config=tc, progress=False, checkpoint_dir=ck)
    # the same content in new arrays still resumes (nothing left to train: no epochs run)
    copy = dataclasses.replace(ratings, users=ratings.users.copy(), items=ratings.items.copy(),
                               ratings=ratings.ratings.copy())
    epochs = []
    fit("bias", copy, val, key=1, train_config=tc, progress=False, checkpoint_dir=ck,
        on_epoch=lambda e, r: epochs.append(e))
    assert epochs == []


def test_fingerprint_takes_the_data_not_its_length():
    from recsys_jax.training import resume
    from recsys_jax.models import make_config

    ratings, _ = _data()
    with pytest.raises(TypeError, match="not its length"):
        resume.fingerprint("bias", make_config("bias"), TC, len(ratings), jax.random.key(0))


def test_progress_made_with_the_kernels_is_not_resumed_without_them(tmp_path):
    """The kernels' steps equal XLA's only to float rounding: a run resumed with the other
    path would silently differ from the uninterrupted one, so the fingerprint records them."""
    from recsys_jax.engine.options import EngineOptions, resolve_options
    from recsys_jax.training import resume

    if not resolve_options(kernels=True).kernels:
        pytest.skip("the CPU kernels are unavailable here")
    ratings, val = _data()
    tc = TrainConfig(epochs=1, batch_size=256, optimizer="sgd", lr=0.05, l2=1e-3)
    ck = str(tmp_path / "ck")
    fit("bias", ratings, val, key=1, train_config=tc, progress=False, checkpoint_dir=ck,
        options=EngineOptions(kernels=True))
    with pytest.raises(CheckpointError, match=r"different run \(engine differ\)"):
        fit("bias", ratings, val, key=1, train_config=tc, progress=False, checkpoint_dir=ck,
            options=EngineOptions(kernels=False))
    from recsys_jax.models import make_config

    a = resume.fingerprint("bias", make_config("bias"), tc, ratings, jax.random.key(0), EngineOptions(kernels=True))
    b = resume.fingerprint("bias", make_config("bias"), tc, ratings, jax.random.key(0), EngineOptions(kernels=False))
    assert a["engine"]["machine"] == b["engine"]["machine"] and a["engine"]["kernels"] != b["engine"]["kernels"]

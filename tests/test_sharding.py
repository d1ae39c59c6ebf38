"""Training and prediction on a device mesh equal the one-device run (recsys_jax.engine.sharding).

The pytest process has already started JAX with one CPU device, so the multi-device checks
run this file as a script in a subprocess with four forced host devices
(``XLA_FLAGS=--xla_force_host_platform_device_count=4``); it does every comparison once and
prints one line of JSON that the tests below read. The data set has 150 users and 101
items, neither a multiple of 4, so the padded (uneven) tables are what is tested; a second
one of 152 x 104 keeps its tables sharded after training, for the prediction checks.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from recsys_jax.engine import sharding

DEVICES = 4
TOL_RMSE = 1e-4


# -- the subprocess ---------------------------------------------------------------------
def _collectives(text: str) -> list[tuple[str, str]]:
    """(op, result shape) of every collective in a compiled program's text."""
    import re

    ops = "all-gather|all-reduce|all-to-all|collective-permute|reduce-scatter"
    found = []
    for m in re.finditer(rf"= (.*?) ({ops})(-start)?\(", text):  # a result may be a tuple of shapes
        found += [(m.group(2), shape) for shape in re.findall(r"\w+\[[\d,]*\]", m.group(1))]
    return found


def _table_collectives(text: str, rows: set[int]) -> list:
    """Collectives whose result has a table's (padded) row count as its first dimension."""
    return [c for c in _collectives(text) if c[1].split("[")[1].split(",")[0].rstrip("]") in {str(r) for r in rows}]


def _main(out_dir: str) -> dict:
    import gc

    from recsys_jax.use import checkpoint
    from recsys_jax.engine import build as engine
    from recsys_jax.eval import predict
    from recsys_jax.data import make_synthetic, random_split
    from recsys_jax.use.recommender import to_recommender
    from recsys_jax.training.many import Member, fit_many, predict_many
    from recsys_jax.models import make_apply, make_config
    from recsys_jax.engine.config import TrainConfig
    from recsys_jax.training.fit import fit

    assert jax.device_count() == DEVICES, jax.devices()
    mesh = sharding.make_mesh(DEVICES)
    report: dict = {"devices": jax.device_count()}
    config = make_config("bias", embedding_dim=8)

    def data(num_users, num_items):
        r, _ = make_synthetic(jax.random.key(0), num_users, num_items, 3000, embedding_dim=4, noise_std=0.3,
                              round_to_half=False)
        split = random_split(r, 0, 0.2)
        return r, r.take(split.train), r.take(split.test)

    def max_diff(a, b):
        return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y)))) for x, y in
                   zip(jax.tree.leaves(a), jax.tree.leaves(b)))

    # 1. fit, uneven tables (150 x 101 padded to 152 x 104), dense and row-sparse.
    _, train, val = data(150, 101)
    for opt in ("adam", "lazy_adam"):
        tc = TrainConfig(epochs=2, batch_size=128, lr=1e-2, l2=0.01, optimizer=opt)
        one = fit("bias", train, val, key=0, model_config=config, train_config=tc, progress=False)
        kw = {"checkpoint_dir": f"{out_dir}/progress-{opt}"} if opt == "lazy_adam" else {}
        four = fit("bias", train, val, key=0, model_config=config, train_config=tc, progress=False, mesh=mesh,
                   **kw)
        report[opt] = {"rmse_1": one.history["val_rmse"], "rmse_4": four.history["val_rmse"],
                       "param_diff": max_diff(one.params, four.params),
                       "shapes": [list(np.shape(x)) for x in jax.tree.leaves(four.params)]}
        if kw:  # progress on disk: unpadded; a finished run resumed from it gives the same parameters
            with np.load(f"{out_dir}/progress-{opt}/progress.npz") as npz:
                report[opt]["progress_rows"] = sorted({int(npz[k].shape[0]) for k in npz.files if npz[k].ndim >= 1})
            again = fit("bias", train, val, key=0, model_config=config, train_config=tc, progress=False,
                        mesh=mesh, **kw)
            report[opt]["resumed_diff"] = max_diff(again.params, four.params)
    # The compiled sharded epochs move no table: no collective has a table's row count.
    report["table_collectives"] = {}
    for obj in gc.get_objects():
        if isinstance(obj, engine.Engine):
            for sig, fn in obj.compiled.items():
                if any(getattr(s, "num_devices", 1) > 1 for s in (x[2] for x in sig[2])):
                    text = fn.as_text()
                    report["table_collectives"][obj.optimizer] = {
                        "tables": _table_collectives(text, {152, 104}), "any": len(_collectives(text))}

    # A mesh as users make it: jax.make_mesh gives explicit axes by default (issue 25, item 11).
    tc = TrainConfig(epochs=2, batch_size=128, lr=1e-2, l2=0.01)
    one = fit("bias", train, val, key=0, model_config=config, train_config=tc, progress=False)
    theirs = fit("bias", train, val, key=0, model_config=config, train_config=tc, progress=False,
                 mesh=jax.make_mesh((DEVICES,), ("data",)))
    report["jax_make_mesh"] = {"rmse_1": one.history["val_rmse"], "rmse_4": theirs.history["val_rmse"]}

    # A model that is not row-local (SVD++: implicit lists from the training split) is not padded.
    tc = TrainConfig(epochs=1, batch_size=128, lr=1e-2, l2=0.01)
    one = fit("svdpp", train, val, key=0, train_config=tc, progress=False)
    four = fit("svdpp", train, val, key=0, train_config=tc, progress=False, mesh=mesh)
    report["svdpp"] = {"rmse_1": one.history["val_rmse"], "rmse_4": four.history["val_rmse"],
                       "param_diff": max_diff(one.params, four.params)}

    # 2. Tables that divide evenly stay sharded; prediction and top-N read them in place.
    ratings, train, val = data(152, 104)
    tc = TrainConfig(epochs=2, batch_size=128, lr=1e-2, l2=0.01)
    one = fit("bias", train, val, key=0, model_config=config, train_config=tc, progress=False)
    four = fit("bias", train, val, key=0, model_config=config, train_config=tc, progress=False, mesh=mesh)
    p4 = four.params
    report["result_specs"] = {f: str(getattr(p4, f).sharding.spec) for f in p4._fields}
    apply_fn = make_apply("bias", four.model_config)
    users = np.concatenate([val.users, train.users[:500]])
    items = np.concatenate([val.items, train.items[:500]])
    pred1 = predict.predict_indices(apply_fn, one.params, users, items)
    pred4 = predict.predict_indices(apply_fn, p4, users, items)
    report["predict_diff"] = float(np.max(np.abs(pred1 - pred4)))
    block = predict._jitted(apply_fn, False, False, None)
    text = block.lower(p4, jax.numpy.asarray(users[:1024]), jax.numpy.asarray(items[:1024]), None, None,
                       None).compile().as_text()
    report["predict_collectives"] = {"tables": _table_collectives(text, {152, 104}), "any": len(_collectives(text))}
    rec1 = to_recommender(ratings, one, train_split=train)
    rec4 = to_recommender(ratings, four, train_split=train)
    raw = ratings.user_ids[:20]
    top1, top4 = rec1.recommend_many(raw, n=5), rec4.recommend_many(raw, n=5)
    report["topn_same_items"] = bool((top1["movieId"].to_numpy() == top4["movieId"].to_numpy()).all())
    report["topn_score_diff"] = float(np.max(np.abs(top1["score"].to_numpy() - top4["score"].to_numpy())))
    # A checkpoint of the sharded model: written once from host arrays, read with any device count.
    checkpoint.save(f"{out_dir}/model", rec4)
    loaded = checkpoint.load(f"{out_dir}/model")
    resharded = sharding.MeshPlan(mesh).put(loaded.params)
    report["checkpoint"] = {
        "users": users.tolist(), "items": items.tolist(), "pred": pred4.tolist(),
        "loaded_4_diff": float(np.max(np.abs(predict.predict_indices(apply_fn, resharded, users, items) - pred4))),
        "resharded_spec": str(resharded.user_factors.sharding.spec)}

    # 3. fit_many with the members split over the devices.
    members = [Member(seed=0), Member(seed=1, lr=3e-3), Member(seed=2, l2=0.1, loss="huber"),
               Member(seed=3, embedding_dim=4)]
    tc = TrainConfig(epochs=2, batch_size=128, lr=1e-2, l2=0.01)
    m1 = fit_many("bias", train, val, members, model_config=config, train_config=tc)
    m4 = fit_many("bias", train, val, members, model_config=config, train_config=tc, mesh=mesh)
    report["many"] = {
        "param_diff": max_diff(m1.params, m4.params),
        "rmse_diff": float(np.max(np.abs(np.stack(m1.history["val_rmse"]) - np.stack(m4.history["val_rmse"])))),
        "specs": sorted({str(x.sharding.spec) for x in jax.tree.leaves(m4.params)}),
        "predict_diff": float(np.max(np.abs(predict_many(m1, val.users, val.items)
                                            - predict_many(m4, val.users, val.items))))}

    # 4. recsys-jax train --devices 4 equals the one-device run.
    import contextlib
    import io

    import pandas as pd

    from recsys_jax.cli.main import main

    csv = f"{out_dir}/ratings.csv"
    pd.DataFrame({"userId": ratings.user_ids[ratings.users], "movieId": ratings.item_ids[ratings.items],
                  "rating": ratings.ratings, "timestamp": ratings.timestamps}).to_csv(csv, index=False)
    report["cli"] = {}
    for flags in ([], ["--devices", str(DEVICES)]):
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            code = main(["train", "--ratings", csv, "--epochs", "2", "--batch-size", "128", "--no-refit",
                         "--no-save", "--no-compile-cache", "--json", *flags])
        report["cli"][len(flags)] = {"code": code, **json.loads(buf.getvalue().strip().splitlines()[-1])}
    return report


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("sharding")
    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={DEVICES}",
           "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, __file__, str(out)], check=False, env=env, capture_output=True, text=True,
                          timeout=600, cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["out"] = str(out)
    return result


# -- the tests ---------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("opt", ["adam", "lazy_adam"])
@pytest.mark.slow  # the four-device subprocess (report) takes about 30 s
def test_fit_on_four_devices_equals_one(report, opt):
    r = report[opt]
    assert report["devices"] == DEVICES
    assert len(r["rmse_4"]) == len(r["rmse_1"]) == 2
    np.testing.assert_allclose(r["rmse_4"], r["rmse_1"], atol=TOL_RMSE)
    assert r["param_diff"] < 1e-5
    # padded while training (152 x 104), returned at the true sizes
    assert [150] in r["shapes"] and [101] in r["shapes"] and [150, 8] in r["shapes"] and [101, 8] in r["shapes"]


@pytest.mark.slow  # the four-device subprocess (report) takes about 30 s
def test_a_mesh_from_jax_make_mesh_trains_as_one_device(report):
    r = report["jax_make_mesh"]
    np.testing.assert_allclose(r["rmse_4"], r["rmse_1"], atol=TOL_RMSE)


@pytest.mark.slow  # 8 s of compilation; the four-device report checks the same in CI's slow run
def test_a_one_device_mesh_from_jax_make_mesh_equals_no_mesh():
    """`jax.make_mesh` makes explicit axes, which the plan's sharding constraints refused
    ("can only refer to Auto axes"); the plan takes such a mesh over with an automatic axis."""
    from recsys_jax.data import make_synthetic, random_split
    from recsys_jax.engine.config import TrainConfig
    from recsys_jax.training.fit import fit

    r, _ = make_synthetic(jax.random.key(0), 80, 60, 1500, embedding_dim=3)
    split = random_split(r, 0, 0.2)
    train, val = r.take(split.train), r.take(split.test)
    tc = TrainConfig(epochs=2, batch_size=128, lr=0.02, l2=1e-3)
    one = fit("bias", train, val, key=0, train_config=tc, progress=False)
    theirs = fit("bias", train, val, key=0, train_config=tc, progress=False, mesh=jax.make_mesh((1,), ("data",)))
    np.testing.assert_allclose(theirs.history["val_rmse"], one.history["val_rmse"], atol=TOL_RMSE)


@pytest.mark.slow  # the four-device subprocess (report) takes about 30 s
def test_a_model_that_is_not_row_local_trains_on_four_devices(report):
    r = report["svdpp"]
    np.testing.assert_allclose(r["rmse_4"], r["rmse_1"], atol=TOL_RMSE)
    assert r["param_diff"] < 1e-5


@pytest.mark.slow  # the four-device subprocess (report) takes about 30 s
def test_sharded_epoch_moves_no_table(report):
    for opt in ("adam", "lazy_adam"):
        c = report["table_collectives"][opt]
        assert c["any"] > 0  # it is partitioned: collectives exist ...
        assert c["tables"] == []  # ... but none of them carries a whole table


@pytest.mark.slow  # the four-device subprocess (report) takes about 30 s
def test_progress_on_a_mesh_is_unpadded_and_resumes(report):
    r = report["lazy_adam"]
    assert 150 in r["progress_rows"] and 101 in r["progress_rows"]
    assert 152 not in r["progress_rows"] and 104 not in r["progress_rows"]
    assert r["resumed_diff"] == 0.0


@pytest.mark.slow  # the four-device subprocess (report) takes about 30 s
def test_prediction_on_the_sharded_model(report):
    assert report["result_specs"]["user_factors"] == "P('devices',)"
    assert report["result_specs"]["item_bias"] == "P('devices',)"
    assert report["result_specs"]["global_bias"] == "P()"
    assert report["predict_diff"] < 1e-5
    assert report["predict_collectives"]["any"] > 0 and report["predict_collectives"]["tables"] == []
    assert report["topn_same_items"] and report["topn_score_diff"] < 1e-5


@pytest.mark.slow  # the four-device subprocess (report) takes about 30 s
def test_checkpoint_of_a_sharded_model_loads_on_one_device(report):
    from recsys_jax.use import checkpoint
    from recsys_jax.models import make_apply
    from recsys_jax.eval.predict import predict_indices

    c = report["checkpoint"]
    assert c["loaded_4_diff"] < 1e-6 and c["resharded_spec"] == "P('devices',)"
    rec = checkpoint.load(Path(report["out"]) / "model")
    assert len(rec.params.user_factors.sharding.device_set) == 1
    pred = predict_indices(make_apply("bias", rec.config), rec.params, c["users"], c["items"])
    np.testing.assert_allclose(pred, c["pred"], atol=1e-5)


@pytest.mark.slow  # the four-device subprocess (report) takes about 30 s
def test_fit_many_members_sharded_equals_unsharded(report):
    m = report["many"]
    assert m["specs"] == ["P('devices',)"]
    assert m["param_diff"] < 1e-5 and m["rmse_diff"] < 1e-6 and m["predict_diff"] < 1e-5


@pytest.mark.slow  # the four-device subprocess (report) takes about 30 s
def test_cli_train_on_four_devices(report):
    one, four = report["cli"]["0"], report["cli"]["2"]
    assert one["code"] == four["code"] == 0
    assert abs(one["test_rmse"] - four["test_rmse"]) < TOL_RMSE and abs(one["val_rmse"] - four["val_rmse"]) < TOL_RMSE


# -- one process, one device --------------------------------------------------------------
def test_cli_devices_beyond_the_machine_say_how_to_force_them():
    from conftest import run_cli

    code, _, err = run_cli(["train", "--devices", jax.device_count() + 1, "--ratings", "missing.csv"])
    assert code == 2 and "--devices" in err and "xla_force_host_platform_device_count" in err


def test_make_mesh_asks_for_host_devices():
    with pytest.raises(ValueError, match="xla_force_host_platform_device_count"):
        sharding.make_mesh(jax.device_count() + 1)
    with pytest.raises(ValueError, match="num_devices"):
        sharding.make_mesh(0)
    assert sharding.make_mesh(1).shape == {sharding.AXIS: 1}


def test_as_plan_checks_the_mesh():
    mesh2 = jax.sharding.Mesh(np.array(jax.devices()[:1]).reshape(1, 1), ("a", "b"))
    with pytest.raises(ValueError, match="one axis"):
        sharding.as_plan(mesh2)
    with pytest.raises(ValueError, match="mesh must be"):
        sharding.as_plan("cpu:4")
    assert sharding.as_plan(None) is None


def test_pad_and_unpad_rows():
    from recsys_jax.models import bias

    p = bias.init(jax.random.key(0), 5, 7, bias.Config(embedding_dim=3))
    padded = sharding.pad_rows({"params": p, "rows": {"user": np.ones((5, 2))}}, 4)
    assert padded["params"].user_factors.shape == (8, 3) and padded["params"].item_bias.shape == (8,)
    assert padded["params"].global_bias.shape == () and padded["rows"]["user"].shape == (8, 2)
    assert np.all(np.asarray(padded["params"].user_factors)[5:] == 0)
    back = sharding.unpad_rows(padded, 5, 7)
    for x, y in zip(jax.tree.leaves(back), jax.tree.leaves({"params": p, "rows": {"user": np.ones((5, 2))}})):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_fit_on_a_one_device_mesh_equals_fit():
    from recsys_jax.data import make_synthetic, random_split
    from recsys_jax.engine.config import TrainConfig
    from recsys_jax.training.fit import fit

    r, _ = make_synthetic(jax.random.key(1), 40, 30, 400)
    split = random_split(r, 0, 0.2)
    train, val = r.take(split.train), r.take(split.test)
    tc = TrainConfig(epochs=1, batch_size=64, optimizer="lazy_adam")
    a = fit("bias", train, val, key=0, train_config=tc, progress=False)
    b = fit("bias", train, val, key=0, train_config=tc, progress=False, mesh=sharding.make_mesh(1))
    np.testing.assert_allclose(a.history["val_rmse"], b.history["val_rmse"], atol=1e-6)


# -- several processes (jax.distributed) ---------------------------------------------------
MULTI = {"epochs": 2, "batch_size": 128, "lr": 1e-2, "l2": 0.01}


def _multi_data():
    from recsys_jax.data import make_synthetic, random_split

    r, _ = make_synthetic(jax.random.key(0), 150, 101, 3000, embedding_dim=4, noise_std=0.3, round_to_half=False)
    split = random_split(r, 0, 0.2)
    return r.take(split.train), r.take(split.test), r


def _worker(process_id: int, num_processes: int, port: int, out_dir: str) -> dict:
    """One of several processes: each initialises jax.distributed, reads the data itself,
    and trains on the mesh of every process's devices; process 0 writes the checkpoint."""
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=f"localhost:{port}", num_processes=num_processes,
                               process_id=process_id)
    from recsys_jax.use import checkpoint
    from recsys_jax.use.recommender import to_recommender
    from recsys_jax.models import make_config
    from recsys_jax.engine.config import TrainConfig
    from recsys_jax.training.fit import fit

    train, val, ratings = _multi_data()
    mesh = sharding.make_mesh()  # every device of every process
    out = {"process_count": jax.process_count(), "device_count": jax.device_count()}
    for opt in ("adam", "lazy_adam"):
        res = fit("bias", train, val, key=0, model_config=make_config("bias", embedding_dim=8),
                  train_config=TrainConfig(**MULTI, optimizer=opt), progress=False, mesh=mesh)
        host = sharding.to_host(res.params)  # gathered from both processes: what a checkpoint writes
        out[opt] = {"rmse": res.history["val_rmse"], "user_factors": host.user_factors.tolist()}
        if opt == "lazy_adam" and jax.process_index() == 0:  # written once, from host arrays
            checkpoint.save(f"{out_dir}/model", to_recommender(ratings, res._replace(params=host), train_split=train))
    jax.distributed.shutdown()
    return out


@pytest.mark.slow
def test_two_processes_on_localhost_equal_one(tmp_path):
    """Two processes with two host devices each (jax.distributed over gloo on localhost)
    train the same model as this one-device process."""
    import socket

    from recsys_jax.models import make_config
    from recsys_jax.engine.config import TrainConfig
    from recsys_jax.training.fit import fit

    if not hasattr(jax.distributed, "initialize"):
        pytest.skip("this jax has no jax.distributed")
    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2", "JAX_PLATFORMS": "cpu"}
    root = Path(__file__).resolve().parents[1]
    procs = [subprocess.Popen([sys.executable, __file__, "--worker", str(i), "2", str(port), str(tmp_path)],
                              env=env, cwd=root,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    try:
        outs = [p.communicate(timeout=300) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, (_, err) in zip(procs, outs):
        if p.returncode != 0 and ("gloo" in err.lower() and "not" in err.lower() or "Unimplemented" in err):
            pytest.skip(f"this jax build cannot run CPU collectives across processes: {err.strip()[-300:]}")
        assert p.returncode == 0, err[-3000:]
    results = [json.loads(out.strip().splitlines()[-1]) for out, _ in outs]
    train, val, _ = _multi_data()
    for r in results:
        assert r["process_count"] == 2 and r["device_count"] == 4
    for opt in ("adam", "lazy_adam"):
        one = fit("bias", train, val, key=0, model_config=make_config("bias", embedding_dim=8),
                  train_config=TrainConfig(**MULTI, optimizer=opt), progress=False)
        for r in results:
            np.testing.assert_allclose(r[opt]["rmse"], one.history["val_rmse"], atol=TOL_RMSE)
            np.testing.assert_allclose(r[opt]["user_factors"], np.asarray(one.params.user_factors), atol=1e-5)
    # The checkpoint process 0 wrote (lazy_adam, the loop's last `one`) loads here, on one device,
    # and predicts as the one-process model.
    from recsys_jax.use import checkpoint
    from recsys_jax.models import make_apply
    from recsys_jax.eval.predict import predict_indices

    rec = checkpoint.load(tmp_path / "model")
    apply_fn = make_apply("bias", one.model_config)
    np.testing.assert_allclose(predict_indices(apply_fn, rec.params, val.users, val.items),
                               predict_indices(apply_fn, one.params, val.users, val.items), atol=1e-5)


if __name__ == "__main__":
    if sys.argv[1] == "--worker":
        print(json.dumps(_worker(int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5])))
    else:
        print(json.dumps(_main(sys.argv[1])))

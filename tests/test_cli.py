"""The command line, run in-process on a small synthetic ratings file: train writes a
checkpoint and a JSON summary that agree with the library; predict agrees with
`Recommender.predict`; user mistakes end with exit status 2 and one line on stderr."""
from __future__ import annotations

import contextlib
import io
import json
import math
import os
from pathlib import Path

import jax
import numpy as np
import pytest

from recsys_jax.use import checkpoint
from recsys_jax.eval import metrics
from recsys_jax.cli.main import main
from recsys_jax.data import load_ratings, load_split, make_synthetic, random_split, temporal_split

NUM_RATINGS = 1500
TRAIN = ["--model", "bias", "--epochs", "2", "--embedding-dim", "4", "--batch-size", "256", "--seed", "3"]


def real_data_dir() -> Path:
    return Path(os.environ.get("RECSYS_JAX_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")


def run(capsys, argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def last_json(out: str):
    return json.loads(out.strip().splitlines()[-1])


def assert_user_error(code: int, err: str, *needles: str) -> None:
    assert code == 2
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    for needle in needles:
        assert needle in lines[0], (needle, err)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """A ratings CSV drawn from make_synthetic: 100 users x 40 items, 1500 ratings."""
    root = tmp_path_factory.mktemp("cli")
    ratings, _ = make_synthetic(jax.random.key(11), 100, 40, NUM_RATINGS, embedding_dim=3)
    order = np.random.default_rng(0).permutation(len(ratings))  # rows not grouped by user
    lines = ["userId,movieId,rating,timestamp"]
    for row in order:
        lines.append(
            f"{ratings.user_ids[ratings.users[row]]},{ratings.item_ids[ratings.items[row]]},"
            f"{ratings.ratings[row]:.1f},{ratings.timestamps[row]}"
        )
    (root / "ratings.csv").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture(scope="module")
def trained(workdir):
    """One `train` run (JSON summary, checkpoint and saved split), shared by the tests."""
    ck, split = workdir / "ck", workdir / "split.npz"
    argv = ["train", "--ratings", workdir / "ratings.csv", *TRAIN, "--json", "--out", ck, "--save-split", split]
    out, err = io.StringIO(), io.StringIO()  # capsys is function-scoped; capture by hand
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue(), ck, split


def test_train_json_summary(trained, workdir):
    code, out, err, ck, _ = trained
    assert code == 0, err
    summary = last_json(out)
    ratings = load_ratings(workdir / "ratings.csv")
    for key in ("model", "dataset", "seed", "test_rmse", "test_mae", "fit_seconds", "epochs",
                "num_ratings", "num_users", "num_items"):
        assert key in summary, key
    assert summary["model"] == "bias"
    assert summary["dataset"] == str(workdir / "ratings.csv")
    assert summary["seed"] == 3
    assert summary["epochs"] == 2
    assert summary["num_ratings"] == NUM_RATINGS
    assert summary["num_users"] == ratings.num_users and summary["num_items"] == ratings.num_items
    assert summary["num_test"] == round(0.2 * NUM_RATINGS)
    assert summary["num_train"] + summary["num_val"] == NUM_RATINGS - summary["num_test"]
    assert math.isfinite(summary["test_rmse"]) and 0.3 < summary["test_rmse"] < 2.0
    assert 0 < summary["test_mae"] <= summary["test_rmse"]
    assert summary["fit_seconds"] > 0
    assert summary["checkpoint"] == str(ck)
    # two epoch lines, then the test line
    assert sum(line.startswith("epoch") for line in out.splitlines()) == 2


def test_train_test_rmse_matches_checkpoint(trained, workdir):
    """Reference: the saved model scored on the saved test split through the raw-id API."""
    _, out, _, ck, split_path = trained
    summary = last_json(out)
    ratings = load_ratings(workdir / "ratings.csv")
    split = load_split(split_path, num_ratings=len(ratings))
    expected = random_split(ratings, 3)  # --split random with --seed 3
    np.testing.assert_array_equal(split.test, expected.test)
    test = ratings.take(split.test)
    rec = checkpoint.load(ck)
    pred = rec.predict(ratings.user_ids[test.users], ratings.item_ids[test.items])
    assert summary["test_rmse"] == pytest.approx(metrics.rmse(pred, test.ratings), rel=1e-5)
    assert summary["test_mae"] == pytest.approx(metrics.mae(pred, test.ratings), rel=1e-5)
    extra = checkpoint.read_meta(ck)["extra"]
    assert extra["test_rmse"] == summary["test_rmse"] and extra["epochs"] == 2
    assert rec.config.embedding_dim == 4
    assert rec.config.mean_rating == pytest.approx(
        float(np.mean(ratings.take(split.train).ratings)), abs=0.1
    )  # the training mean (of the train part without the validation slice)


def test_predict_matches_recommender(trained, capsys):
    ck = trained[3]
    rec = checkpoint.load(ck)
    user, movies = int(rec.user_ids[2]), [int(rec.item_ids[0]), int(rec.item_ids[5])]
    code, out, err = run(capsys, ["predict", "--checkpoint", ck, "--user", user, "--movie", *movies, "--json"])
    assert code == 0, err
    expected = rec.predict([user, user], movies)
    rows = last_json(out)
    assert [r["movie"] for r in rows] == movies and all(r["user"] == user for r in rows)
    assert [r["rating"] for r in rows] == [float(x) for x in expected]
    text = out.splitlines()[:2]
    assert text == [f"user {user}  movie {m}: {x:.2f}" for m, x in zip(movies, expected)]


def test_predict_unknown_movie(trained, capsys):
    ck = trained[3]
    user = int(checkpoint.load(ck).user_ids[0])
    code, out, err = run(capsys, ["predict", "--checkpoint", ck, "--user", user, "--movie", 999999])
    assert_user_error(code, err, "999999")
    assert out == ""
    argv = ["predict", "--checkpoint", ck, "--user", user, "--movie", 999999, "--fallback", "--json"]
    code, out, err = run(capsys, argv)
    assert code == 0, err
    rec = checkpoint.load(ck)
    b_u = float(np.asarray(rec.params.user_bias)[0])
    assert last_json(out)[0]["rating"] == pytest.approx(float(rec.params.global_bias) + b_u, rel=1e-6)


def test_predict_marks_fallbacks(tmp_path, capsys):
    """A hand-made bias model: mu = 3, b_u = 0.25 (user 10), b_i = 0.5 (movie 100), no factors."""
    from recsys_jax.models import bias
    from recsys_jax.use.recommender import Recommender

    config = bias.Config(embedding_dim=1, mean_rating=3.0)
    params = bias.init(jax.random.key(0), 1, 1, config)._replace(
        global_bias=np.float32(3.0), user_bias=np.array([0.25], np.float32),
        item_bias=np.array([0.5], np.float32), user_factors=np.zeros((1, 1), np.float32),
        item_factors=np.zeros((1, 1), np.float32))
    rec = Recommender("bias", config, params, np.array([10]), np.array([100]), (0.5, 5.0), {100: "A (1990)"})
    ck = checkpoint.save(tmp_path / "ck", rec)
    expected = {  # (user, movie): (rating, fallback kind)
        (10, 100): (3.75, None), (10, 999): (3.25, "mu+b_u"), (77, 100): (3.5, "mu+b_i"), (77, 999): (3.0, "mu"),
    }
    for user in (10, 77):
        code, out, err = run(capsys, ["predict", "--checkpoint", ck, "--user", user, "--movie", 100, 999,
                                      "--fallback", "--json"])
        assert code == 0, err
        rows = last_json(out)
        for row, movie, line in zip(rows, (100, 999), out.splitlines()):
            rating, kind = expected[(user, movie)]
            assert row["rating"] == rating
            assert row["fallback"] is (kind is not None) and row["fallback_kind"] == kind
            title = " (A (1990))" if movie == 100 else ""
            mark = {None: "", "mu+b_u": "  [fallback mu+b_u: unknown movie]",
                    "mu+b_i": "  [fallback mu+b_i: unknown user]", "mu": "  [fallback mu: the training mean]"}[kind]
            assert line == f"user {user}  movie {movie}{title}: {rating:.2f}{mark}"


def test_errors_name_the_flags_not_python_arguments(trained, workdir, tmp_path, monkeypatch, capsys):
    ck = trained[3]
    user = int(checkpoint.load(ck).user_ids[0])
    code, _, err = run(capsys, ["predict", "--checkpoint", ck, "--user", user, "--movie", 999999])
    assert_user_error(code, err, "unknown item id 999999", "pass --fallback")
    assert "unknown=" not in err
    # a dataset that is not there: --data-dir and --no-download, not data_dir= and download=False
    monkeypatch.delenv("RECSYS_JAX_DATA", raising=False)
    monkeypatch.setenv("RECSYS_JAX_CACHE", str(tmp_path / "cache"))
    code, _, err = run(capsys, ["train", "--data-dir", tmp_path, "--no-download", *TRAIN, "--no-save"])
    assert code == 2 and "pass --data-dir DIR" in err and "(--no-download)" in err
    assert "data_dir=" not in err and "download=False" not in err
    # a headerless file: --no-header, which then reads it
    headerless = tmp_path / "headerless.csv"
    headerless.write_text("".join(line + "\n" for line in (workdir / "ratings.csv").read_text().splitlines()[1:]))
    code, _, err = run(capsys, ["train", "--ratings", headerless, *TRAIN, "--no-save"])
    assert_user_error(code, err, "looks like data: pass --no-header")
    assert "header=False" not in err
    code, out, err = run(capsys, ["train", "--ratings", headerless, *TRAIN, "--no-save", "--no-header", "--json"])
    assert code == 0, err
    assert last_json(out)["num_ratings"] == NUM_RATINGS
    code, _, err = run(capsys, ["train", "--ratings", headerless, *TRAIN, "--no-save", "--no-header",
                                "--user-col", "userId", "--item-col", "item"])
    assert_user_error(code, err, "--no-header: give --item-col as a 0-based position, not 'item'")
    # a repeated pair: --duplicates, which then merges it
    repeated = tmp_path / "repeated.csv"
    repeated.write_text("userId,movieId,rating\n1,10,4\n2,10,3\n1,10,2\n2,20,5\n3,20,1\n3,10,2\n")
    code, _, err = run(capsys, ["train", "--ratings", repeated, *TRAIN, "--no-save"])
    assert_user_error(code, err, f"{repeated}, line 4: user 1 already rated item 10 on line 2",
                      "pass --duplicates last or mean")
    assert "duplicates=" not in err
    code, out, err = run(capsys, ["train", "--ratings", repeated, *TRAIN, "--no-save", "--duplicates", "mean",
                                  "--json", "--val-frac", "0", "--test-frac", "0.2"])
    assert code == 0, err
    assert last_json(out)["num_ratings"] == 5


def test_train_refuses_to_overwrite_a_checkpoint(workdir, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    argv = ["train", "--ratings", workdir / "ratings.csv", *TRAIN, "--epochs", "1"]
    code, out, err = run(capsys, argv)  # the default folder, runs/bias-ratings-seed3
    assert code == 0, err
    default = Path("runs") / "bias-ratings-seed3"
    assert f"saved checkpoint to {default}" in out
    first = (default / "arrays.npz").read_bytes()
    code, out, err = run(capsys, [*argv, "--seed", "4"])  # another seed: another folder
    assert code == 0, err
    code, out, err = run(capsys, argv)
    assert_user_error(code, err, f"{default} already exists", "--overwrite")
    assert out == ""  # refused before loading or training anything
    assert (default / "arrays.npz").read_bytes() == first
    # an --out folder, even an empty one or a file, is refused the same way
    for existing in (tmp_path / "empty", tmp_path / "a file"):
        existing.mkdir() if existing.name == "empty" else existing.write_text("keep")
        code, out, err = run(capsys, [*argv, "--out", existing])
        assert_user_error(code, err, f"{existing} already exists")
    assert (tmp_path / "a file").read_text() == "keep" and not any((tmp_path / "empty").iterdir())
    # --overwrite replaces it
    code, out, err = run(capsys, [*argv, "--lr", "0.5", "--overwrite", "--json"])
    assert code == 0, err
    assert (default / "arrays.npz").read_bytes() != first
    assert checkpoint.read_meta(default)["extra"]["train_config"]["lr"] == 0.5


def test_help_describes_every_argument_and_the_environment(capsys):
    import argparse

    from recsys_jax.cli.main import build_parser
    from recsys_jax.data.movielens import DATASETS

    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    for name, sub in commands.items():
        for action in sub._actions:
            assert action.help, f"recsys-jax {name} {action.option_strings}: no help text"
    for name in ("download", "train"):
        with pytest.raises(SystemExit):
            main([name, "--help"])
        text = capsys.readouterr().out
        for variable in ("RECSYS_JAX_BASE_URL", "RECSYS_JAX_DATA", "RECSYS_JAX_CACHE"):
            assert variable in text, (name, variable)
    with pytest.raises(SystemExit):
        main(["download", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert all(dataset in text for dataset in DATASETS)  # --dataset lists every variant


def test_predict_missing_checkpoint(tmp_path, capsys):
    code, _, err = run(capsys, ["predict", "--checkpoint", tmp_path / "nope", "--user", 1, "--movie", 1])
    assert_user_error(code, err, "nope")


def test_split_file_reproduces_test_rmse(trained, workdir, capsys):
    first = last_json(trained[1])
    code, out, err = run(
        capsys, ["train", "--ratings", workdir / "ratings.csv", *TRAIN, "--json", "--no-save",
                 "--split-file", trained[4]],
    )
    assert code == 0, err
    again = last_json(out)
    assert again["split"] == "file" and "checkpoint" not in again
    assert again["test_rmse"] == first["test_rmse"]
    assert again["num_test"] == first["num_test"]


def test_split_file_of_other_data_is_refused(workdir, tmp_path, capsys):
    from recsys_jax.data import save_split

    bad = tmp_path / "other.npz"
    save_split(bad, random_split(NUM_RATINGS + 7, 0))
    code, out, err = run(capsys, ["train", "--ratings", workdir / "ratings.csv", *TRAIN, "--no-save",
                                  "--split-file", bad])
    assert_user_error(code, err, "other.npz")


@pytest.mark.parametrize(
    "content, needle",
    [
        ("userId,movieId,rating\n1,10,4.0\n2,10,abc\n", "line 3"),
        ("userId,movieId\n1,10\n", "rating"),
        ("", "empty"),
    ],
)
def test_malformed_ratings_file(tmp_path, capsys, content, needle):
    path = tmp_path / "bad ratings.csv"
    path.write_text(content)
    code, out, err = run(capsys, ["train", "--ratings", path, *TRAIN, "--no-save"])
    assert_user_error(code, err, str(path), needle)


def test_missing_ratings_file(tmp_path, capsys):
    path = tmp_path / "absent.csv"
    code, _, err = run(capsys, ["train", "--ratings", path, *TRAIN, "--no-save"])
    assert_user_error(code, err, str(path))


def test_temporal_split_uses_file_timestamps(workdir, tmp_path, capsys):
    split_path = tmp_path / "temporal.npz"
    code, _, err = run(capsys, ["train", "--ratings", workdir / "ratings.csv", *TRAIN, "--epochs", "1",
                                "--no-save", "--split", "temporal", "--save-split", split_path])
    assert code == 0, err
    ratings = load_ratings(workdir / "ratings.csv")
    assert ratings.timestamps.max() > 0  # the file has timestamps
    np.testing.assert_array_equal(load_split(split_path).test, temporal_split(ratings, k=1).test)


@pytest.mark.skipif(not (real_data_dir() / "ml-latest-small" / "ratings.csv").is_file(),
                    reason="ml-latest-small not available")
def test_bias_on_ml_latest_small(capsys):
    code, out, err = run(capsys, ["train", "--model", "bias", "--data-dir", real_data_dir(), "--no-download",
                                  "--json", "--no-save"])
    assert code == 0, err
    summary = last_json(out)
    assert summary["dataset"] == "ml-latest-small"
    assert summary["num_ratings"] == 100_836
    assert summary["num_users"] == 610 and summary["num_items"] == 9724
    assert summary["test_rmse"] < 0.87


def test_missing_dataset_without_download(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("RECSYS_JAX_DATA", raising=False)
    monkeypatch.setenv("RECSYS_JAX_CACHE", str(tmp_path / "cache"))
    empty = tmp_path / "empty"
    empty.mkdir()
    code, out, err = run(capsys, ["train", "--data-dir", empty, "--no-download", *TRAIN, "--no-save"])
    assert code == 2
    assert "Traceback" not in err
    assert err.startswith("recsys-jax train: error: ") and "ml-latest-small" in err.splitlines()[0]
    assert str(empty / "ml-latest-small") in err  # the folders it looked in
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())  # nothing downloaded


def test_bench_runs_the_quick_suite_into_its_own_folder(tmp_path, monkeypatch, capsys):
    import subprocess

    from recsys_jax.cli import main as cli

    calls = []

    def fake_run(cmd, cwd=None, **kw):
        calls.append((cmd, cwd))
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr(subprocess, "run", fake_run)
    assert cli.main(["bench", "--out", str(tmp_path / "q")]) == 0
    names = [c[0][2] for c in calls]
    assert names == [f"benchmarks.{n}" for n in cli.QUICK_SUITE]
    for cmd, cwd in calls:
        assert "--quick" in cmd and str(tmp_path / "q") in cmd[cmd.index("--json") + 1]
        assert (Path(cwd) / "benchmarks").is_dir()  # run from the source checkout
    # A failing script is a clear error, exit 2.
    monkeypatch.setattr(subprocess, "run", lambda cmd, cwd=None, **kw: subprocess.CompletedProcess(cmd, 1))
    assert cli.main(["bench", "--out", str(tmp_path / "q")]) == 2
    assert "benchmarks.accuracy failed" in capsys.readouterr().err


@pytest.mark.slow  # 5 s: a CLI fit with the ordinal loss
def test_ordinal_loss_and_the_star_distribution(workdir, trained, tmp_path, capsys):
    ck = tmp_path / "ordinal"
    code, out, err = run(capsys, ["train", "--ratings", workdir / "ratings.csv", *TRAIN, "--loss", "ordinal",
                                  "--out", ck, "--json"])
    assert code == 0, err
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["train_config"]["loss"] == "ordinal" and math.isfinite(summary["test_rmse"])
    rec = checkpoint.load(ck)
    user, movie = int(rec.user_ids[0]), int(rec.item_ids[0])
    code, out, err = run(capsys, ["predict", "--checkpoint", ck, "--user", user, "--movie", movie,
                                  "--distribution", "--json"])
    assert code == 0, err
    row = json.loads(out.strip().splitlines()[-1])[0]
    probs = list(row["distribution"].values())
    assert sum(probs) == pytest.approx(1.0, abs=1e-3)
    levels, p = rec.rating_distribution([user], [movie])
    assert row["rating"] == pytest.approx(float(np.sum(levels * p[0])), abs=1e-4)  # the expected star rating
    # A model trained with MSE has no distribution: a clear error, exit 2.
    code, _, err = run(capsys, ["predict", "--checkpoint", workdir / "ck", "--user", user, "--movie", movie,
                                "--distribution"])
    assert code == 2 and "ordinal" in err and "Traceback" not in err


@pytest.mark.parametrize("args, message", [
    (["--y-range", "1", "1"], "y_range must be"),
    (["--embedding-dim", "0"], "embedding_dim must be >= 1"),
    (["--val-frac", "1"], "val_frac must be in"),
    (["--seed", "-1"], "--seed must be >= 0"),
    (["--test-frac", "1.5"], "test_frac"),
    (["--batch-size", "0"], "batch_size"),
    (["--option", "nope=1"], "--option nope: model 'bias' has no option 'nope'"),
    (["--option", "global_mean"], "expected KEY=VALUE"),
    (["--option", "global_mean=maybe"], "--option global_mean=maybe: expected true or false"),
    (["--option", "init_scale=big"], "expected a value of type float"),
    (["--option", "y_range=1"], "not set from the command line"),
])
def test_bad_arguments_are_named(workdir, capsys, args, message):
    code, _, err = run(capsys, ["train", "--ratings", workdir / "ratings.csv", *TRAIN, "--no-save", *args])
    assert code == 2 and message in err and "Traceback" not in err


def test_an_option_reaches_the_model_config(workdir, tmp_path, capsys):
    """``--option init=uniform --option global_mean=false``: the checkpoint's config has them."""
    code, _, err = run(capsys, ["train", "--ratings", workdir / "ratings.csv", *TRAIN, "--out", tmp_path / "ck",
                                "--option", "init=uniform", "--option", "global-mean=false"])
    assert code == 0, err
    config = checkpoint.load(tmp_path / "ck").config
    assert config.init == "uniform" and config.global_mean is False


def test_val_frac_zero_trains_on_the_whole_training_split(workdir, capsys):
    code, out, err = run(capsys, ["train", "--ratings", workdir / "ratings.csv", *TRAIN, "--no-save", "--json",
                                  "--val-frac", "0"])
    assert code == 0, err
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["num_val"] == 0 and summary["num_train"] + summary["num_test"] == summary["num_ratings"]


def test_train_with_a_row_sparse_optimizer(workdir, capsys):
    # adagrad: no other test of this module trains it, so this fit compiles (the bias preset's
    # lazy_adam epoch may already be compiled in this process).
    code, out, _ = run(capsys, ["train", "--ratings", workdir / "ratings.csv", *TRAIN, "--optimizer", "adagrad",
                                "--no-save", "--json"])
    assert code == 0
    rec = last_json(out)
    assert rec["train_config"]["optimizer"] == "adagrad"
    assert math.isfinite(rec["test_rmse"]) and rec["test_rmse"] < 1.5
    assert 0 < rec["compile_seconds"] <= rec["fit_seconds"]


def test_a_presets_row_sparse_optimizer_yields_to_settings_that_move_every_row(workdir, capsys):
    from recsys_jax.training.presets import get_preset, settle_optimizer

    tc = get_preset("default", "bias")
    assert tc.optimizer == "lazy_adam" and settle_optimizer(tc, "bias") == tc
    for change in ({"loss": "ordinal"}, {"loss": "gaussian_nll"}, {"penalty": "table"}, {"weight_decay": 1e-4}):
        assert settle_optimizer(tc._replace(**change), "bias") == tc._replace(optimizer="adam", **change)
    assert settle_optimizer(tc._replace(loss="huber"), "bias").optimizer == "lazy_adam"  # element-wise: kept
    # Named on the command line, it is not replaced: the reason is reported instead.
    code, _, err = run(capsys, ["train", "--ratings", workdir / "ratings.csv", *TRAIN, "--loss", "ordinal",
                                "--optimizer", "lazy_adam", "--no-save"])
    assert_user_error(code, err, "optimizer 'lazy_adam'", "learned parameters")


def test_row_sparse_optimizer_refused_for_a_model_that_reads_other_rows(workdir, capsys):
    code, _, err = run(capsys, ["train", "--ratings", workdir / "ratings.csv", "--model", "svdpp", "--epochs", "1",
                                "--optimizer", "sgd", "--no-save"])
    assert_user_error(code, err, "optimizer 'sgd'", "use optimizer 'adam'")


@pytest.mark.slow
def test_persistent_compile_cache_is_written_and_can_be_turned_off(workdir, tmp_path):
    import subprocess
    import sys

    def train(cache, *extra):
        env = {**os.environ, "RECSYS_JAX_COMPILE_CACHE": str(cache), "JAX_PLATFORMS": "cpu"}
        proc = subprocess.run([sys.executable, "-m", "recsys_jax.cli.main", "train", "--ratings",
                               str(workdir / "ratings.csv"), *TRAIN, "--no-save", "--json", *extra],
                              capture_output=True, text=True, env=env, timeout=300)
        assert proc.returncode == 0, proc.stderr
        return last_json(proc.stdout)

    on = train(tmp_path / "cache")
    assert any((tmp_path / "cache").iterdir())  # compiled programs were stored
    off = train(tmp_path / "unused", "--no-compile-cache")
    assert not (tmp_path / "unused").exists()
    assert on["test_rmse"] == off["test_rmse"]  # the cache changes the time, never the result

"""Checkpoints round-trip bit-exactly and refuse anything damaged, mismatched or pickled;
`Recommender.predict` maps raw ids, clips, and falls back exactly as documented."""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from recsys_jax.use import checkpoint
from recsys_jax.use.checkpoint import CheckpointError
from recsys_jax.data import UnknownIdError
from recsys_jax.models import bias, dot, make_config, mlp
from recsys_jax.use.recommender import Recommender

USER_IDS = np.array([10, 20, 30, 40], np.int64)
ITEM_IDS = np.array([100, 200, 300, 400], np.int64)
TITLES = {100: "Toy Story (1995)", 300: "Amélie (2001)"}
SCALE = (0.5, 5.0)


def make_rec(name: str, seed: int = 0, titles=TITLES, **config) -> Recommender:
    cfg = make_config(name, **config)
    module = {"bias": bias, "dot": dot, "mlp": mlp}[name]
    params = module.init(jax.random.key(seed), len(USER_IDS), len(ITEM_IDS), cfg)
    return Recommender(name, cfg, params, USER_IDS, ITEM_IDS, SCALE, titles)


RECS = {
    "bias": lambda: make_rec("bias", embedding_dim=3, mean_rating=3.25, y_range=(0.5, 5.5)),
    "dot": lambda: make_rec("dot", embedding_dim=2, titles=None),
    "mlp": lambda: make_rec("mlp", embedding_dim=3, hidden=5, input_dropout=0.1),
}


def assert_same_rec(a: Recommender, b: Recommender) -> None:
    assert a.model == b.model
    assert a.config == b.config and type(a.config) is type(b.config)
    assert type(a.params) is type(b.params)
    for field in a.params._fields:
        x, y = np.asarray(getattr(a.params, field)), np.asarray(getattr(b.params, field))
        assert x.dtype == y.dtype and x.shape == y.shape, field
        assert x.tobytes() == y.tobytes(), field  # bit-exact
    for x, y in ((a.user_ids, b.user_ids), (a.item_ids, b.item_ids)):
        assert y.dtype == np.int64
        np.testing.assert_array_equal(x, y)
    assert tuple(a.rating_scale) == tuple(b.rating_scale)
    assert a.titles == b.titles


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> tuple[Recommender, Path]:
    """A bias recommender saved once; tests copy the folder before damaging it."""
    rec = RECS["bias"]()
    path = checkpoint.save(tmp_path_factory.mktemp("ck") / "bias", rec, extra={"test_rmse": 0.9})
    return rec, path


@pytest.fixture
def ck(saved, tmp_path) -> Path:
    """A fresh copy of the saved checkpoint folder."""
    dest = tmp_path / "ck"
    dest.mkdir()
    for f in saved[1].iterdir():
        (dest / f.name).write_bytes(f.read_bytes())
    return dest


def rewrite(ck: Path, arrays: dict, fix_meta: bool = True) -> None:
    """Replaces arrays.npz; with fix_meta, meta.json declares the new shapes and dtypes."""
    np.savez(ck / "arrays.npz", **arrays)
    if fix_meta:
        meta = json.loads((ck / "meta.json").read_text())
        meta["arrays"] = {
            k: {"shape": list(np.shape(a)), "dtype": str(np.asarray(a).dtype)} for k, a in arrays.items()
        }
        (ck / "meta.json").write_text(json.dumps(meta))


def arrays_of(ck: Path) -> dict:
    with np.load(ck / "arrays.npz") as f:
        return {k: f[k] for k in f.files}


# -- round trip ------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(RECS))
def test_round_trip(tmp_path, name):
    rec = RECS[name]()
    path = checkpoint.save(tmp_path / "sub" / name, rec)
    assert path == tmp_path / "sub" / name
    assert sorted(p.name for p in path.iterdir()) == sorted(
        ["arrays.npz", "meta.json"] + (["titles.json"] if rec.titles is not None else [])
    )
    loaded = checkpoint.load(path)
    assert_same_rec(rec, loaded)


def test_round_trip_keeps_y_range_tuple_and_extra(saved):
    rec, path = saved
    loaded = checkpoint.load(path)
    assert loaded.config.y_range == (0.5, 5.5) and isinstance(loaded.config.y_range, tuple)
    assert loaded.config.mean_rating == 3.25
    assert checkpoint.read_meta(path)["extra"] == {"test_rmse": 0.9}
    assert loaded.title(300) == "Amélie (2001)" and loaded.title(200) is None
    assert_same_rec(rec, loaded)


def test_save_replaces_existing(tmp_path):
    first = RECS["bias"]()  # has titles
    second = make_rec("bias", seed=1, titles=None, embedding_dim=3, mean_rating=3.25, y_range=(0.5, 5.5))
    path = tmp_path / "ck"
    checkpoint.save(path, first)
    checkpoint.save(path, second)
    loaded = checkpoint.load(path)
    assert_same_rec(second, loaded)
    assert loaded.titles is None and not (path / "titles.json").exists()  # replaced, not merged
    assert [p.name for p in tmp_path.iterdir()] == ["ck"]  # no temporary folders left


# -- refusals --------------------------------------------------------------------------
def test_missing_folder_or_meta(tmp_path, ck):
    with pytest.raises(CheckpointError, match="nowhere"):
        checkpoint.load(tmp_path / "nowhere")
    (ck / "meta.json").unlink()
    with pytest.raises(CheckpointError, match="meta.json"):
        checkpoint.load(ck)


def test_missing_arrays(ck):
    (ck / "arrays.npz").unlink()
    with pytest.raises(CheckpointError, match="arrays.npz"):
        checkpoint.load(ck)


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", json.dumps({"format": "something-else"})])
def test_bad_meta(ck, text):
    (ck / "meta.json").write_text(text)
    with pytest.raises(CheckpointError, match="meta.json"):
        checkpoint.load(ck)


def test_truncated_arrays(ck):
    data = (ck / "arrays.npz").read_bytes()
    (ck / "arrays.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="arrays.npz"):
        checkpoint.load(ck)


def test_corrupted_arrays(ck):
    data = bytearray((ck / "arrays.npz").read_bytes())
    # flip the last 16 bytes stored before the central directory: the data of the last
    # member changes, the zip structure stays intact (only its CRC-32 tells)
    first_dir = data.find(b"PK\x01\x02")
    assert first_dir > 16
    for pos in range(first_dir - 16, first_dir):
        data[pos] ^= 0xFF
    (ck / "arrays.npz").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="arrays.npz"):
        checkpoint.load(ck)


@pytest.mark.parametrize("version", [2, 0, "1", None])
def test_wrong_format_version(ck, version):
    meta = json.loads((ck / "meta.json").read_text())
    meta["format_version"] = version
    (ck / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="version"):
        checkpoint.load(ck)


def test_unknown_model_in_meta(ck):
    meta = json.loads((ck / "meta.json").read_text())
    meta["model"] = "transformer"
    (ck / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="transformer"):
        checkpoint.load(ck)


def test_shape_disagrees_with_meta(ck):
    arrays = arrays_of(ck)
    arrays["params/user_bias"] = np.zeros(5, np.float32)  # meta.json still says [4]
    rewrite(ck, arrays, fix_meta=False)
    with pytest.raises(CheckpointError, match="user_bias"):
        checkpoint.load(ck)


def test_dtype_disagrees_with_meta(ck):
    arrays = arrays_of(ck)
    arrays["params/item_bias"] = arrays["params/item_bias"].astype(np.float64)
    rewrite(ck, arrays, fix_meta=False)
    with pytest.raises(CheckpointError, match="item_bias"):
        checkpoint.load(ck)


@pytest.mark.parametrize(
    "field, shape",
    [("user_bias", (5,)), ("item_factors", (3, 3)), ("user_factors", (4, 2)), ("global_bias", (1,))],
)
def test_shape_disagrees_with_id_maps_or_config(ck, field, shape):
    arrays = arrays_of(ck)
    arrays[f"params/{field}"] = np.zeros(shape, np.float32)
    rewrite(ck, arrays)  # meta.json agrees with the bad array
    with pytest.raises(CheckpointError, match=field):
        checkpoint.load(ck)


def test_id_maps_not_sorted_unique(ck):
    arrays = arrays_of(ck)
    arrays["user_ids"] = np.array([10, 30, 20, 40], np.int64)
    rewrite(ck, arrays)
    with pytest.raises(CheckpointError, match="user_ids"):
        checkpoint.load(ck)


def test_missing_or_extra_array(ck):
    arrays = arrays_of(ck)
    arrays["params/extra"] = np.zeros(3, np.float32)
    rewrite(ck, arrays)
    with pytest.raises(CheckpointError, match="arrays.npz"):
        checkpoint.load(ck)
    del arrays["params/extra"], arrays["params/item_factors"]
    rewrite(ck, arrays)
    with pytest.raises(CheckpointError, match="item_factors"):
        checkpoint.load(ck)


def test_malformed_array_entry_in_meta(ck):
    meta = json.loads((ck / "meta.json").read_text())
    meta["arrays"]["user_ids"] = [4]
    (ck / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="meta.json|user_ids"):
        checkpoint.load(ck)


def test_bad_titles(ck):
    (ck / "titles.json").write_text('{"abc": "x"}')
    with pytest.raises(CheckpointError, match="titles.json"):
        checkpoint.load(ck)


class _Plant:
    """Unpickling this object creates the folder ``path``."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (os.mkdir, (self.path,))


def test_object_array_is_refused_not_unpickled(ck, tmp_path):
    marker = tmp_path / "unpickled"
    arrays = arrays_of(ck)
    arrays["params/user_bias"] = np.array([_Plant(str(marker))] * 4, dtype=object)
    np.savez(ck / "arrays.npz", **arrays)  # allow_pickle defaults to True when saving
    with pytest.raises(CheckpointError, match="arrays.npz"):
        checkpoint.load(ck)
    assert not marker.exists()
    # control: the planted file really does run code when unpickled
    with np.load(ck / "arrays.npz", allow_pickle=True) as f:
        f["params/user_bias"]
    assert marker.is_dir()


# -- Recommender.predict ---------------------------------------------------------------
# Known bias parameters (dyadic, so every sum below is exact in float32).
KNOWN = bias.Params(
    global_bias=jnp.asarray(3.0, jnp.float32),
    user_bias=jnp.asarray([0.25, -0.5, 0.5, 0.0], jnp.float32),  # raw users 10, 20, 30, 40
    item_bias=jnp.asarray([0.5, -0.25, 1.0, -2.0], jnp.float32),  # raw items 100, 200, 300, 400
    user_factors=jnp.asarray([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.5, -0.5]], jnp.float32),
    item_factors=jnp.asarray([[0.5, 0.0], [0.0, 0.25], [1.0, -1.0], [0.0, -2.0]], jnp.float32),
)
KNOWN_CONFIG = bias.Config(embedding_dim=2, mean_rating=3.4)

#   (user, item): mu + b_u + b_i + p_u . q_i
HAND = [
    (10, 100, 3 + 0.25 + 0.5 + 0.5),  # 4.25
    (20, 200, 3 - 0.5 - 0.25 + 0.25),  # 2.5
    (30, 300, 3 + 0.5 + 1.0 + 0.0),  # 4.5
    (40, 100, 3 + 0.0 + 0.5 + 0.25),  # 3.75
    (40, 400, 3 + 0.0 - 2.0 + 1.0),  # 2.0
    (10, 400, 3 + 0.25 - 2.0 + 0.0),  # 1.25
    (10, 300, 3 + 0.25 + 1.0 + 1.0),  # 5.25 -> clipped to 5
    (20, 400, 3 - 0.5 - 2.0 - 2.0),  # -1.5 -> clipped to 0.5
]


@pytest.fixture(scope="module")
def known() -> Recommender:
    return Recommender("bias", KNOWN_CONFIG, KNOWN, USER_IDS, ITEM_IDS, SCALE, None)


def test_predict_by_raw_ids(known):
    users, items, x = (np.array(c) for c in zip(*HAND))
    pred = known.predict(users, items)
    assert pred.dtype == np.float32 and pred.shape == (len(HAND),)
    np.testing.assert_array_equal(pred, np.clip(x, 0.5, 5.0).astype(np.float32))
    assert pred[-2] == 5.0 and pred[-1] == 0.5
    # the same as the model's apply at the mapped indices
    index_u, index_i = np.searchsorted(USER_IDS, users), np.searchsorted(ITEM_IDS, items)
    ref = bias.apply(KNOWN, jnp.asarray(index_u), jnp.asarray(index_i))
    np.testing.assert_array_equal(np.asarray(ref), x.astype(np.float32))
    # a scalar pair and integral floats work too
    assert known.predict(10, 100).tolist() == [4.25]
    np.testing.assert_array_equal(known.predict([30.0], [300.0]), [4.5])


def test_predict_after_round_trip(tmp_path, known):
    loaded = checkpoint.load(checkpoint.save(tmp_path / "k", known))
    users, items, _ = (np.array(c) for c in zip(*HAND))
    np.testing.assert_array_equal(loaded.predict(users, items), known.predict(users, items))


def test_predict_with_y_range(known):
    rec = known._replace(config=KNOWN_CONFIG._replace(y_range=(1.0, 5.0)))
    pred = rec.predict([10, 20], [100, 400])
    x = np.array([4.25, -1.5])
    np.testing.assert_allclose(pred, 1.0 + 4.0 / (1.0 + np.exp(-x)), rtol=1e-6)


@pytest.mark.parametrize(
    "users, items, match",
    [
        ([10, 20], [100, 999], "unknown item id 999"),
        ([10, 77], [100, 200], "unknown user id 77"),
        ([10, 77, 78], [100, 200, 555], "unknown user id 77"),  # the first unknown user
    ],
)
def test_unknown_id_raises(known, users, items, match):
    with pytest.raises(UnknownIdError, match=match):
        known.predict(users, items)


def test_fallback(known):
    pred = known.predict([77, 10, 77, 30, 40], [100, 999, 999, 300, 200], unknown="fallback")
    np.testing.assert_array_equal(
        pred,
        np.array([3 + 0.5, 3 + 0.25, 3.0, 4.5, 3 + 0.0 - 0.25 + (-0.5 * 0.25)], np.float32),
        # mu + b_i(100), mu + b_u(10), mu, the model, the model
    )


def test_fallbacks_say_which_formula(known):
    """The same pairs as `test_fallback`: which of mu + b_i, mu + b_u, mu each one is."""
    kinds = known.fallbacks([77, 10, 77, 30, 40], [100, 999, 999, 300, 200])
    assert kinds == ["mu+b_i", "mu+b_u", "mu", None, None]
    assert known.fallbacks([], []) == []
    for name in ("dot", "mlp"):  # no biases: every fallback is the training mean
        rec = make_rec(name, embedding_dim=2)
        assert rec.fallbacks([77, 10, 77, 10], [100, 999, 999, 100]) == ["mu", "mu", "mu", None]


def test_unknown_id_error_names_the_argument_and_the_flag(known):
    with pytest.raises(UnknownIdError) as info:
        known.predict([10], [999])
    assert "unknown item id 999" in str(info.value) and "unknown='fallback'" in str(info.value)
    cli = info.value.cli_message
    assert cli.startswith("unknown item id 999") and "--fallback" in cli and "unknown=" not in cli


def test_fallback_clips_and_squashes(known):
    loud = known._replace(params=KNOWN._replace(global_bias=jnp.asarray(9.0, jnp.float32)))
    np.testing.assert_array_equal(loud.predict([77], [999], unknown="fallback"), [5.0])
    squashed = known._replace(config=KNOWN_CONFIG._replace(y_range=(1.0, 5.0)))
    pred = squashed.predict([77, 10], [100, 999], unknown="fallback")
    np.testing.assert_allclose(pred, 1.0 + 4.0 / (1.0 + np.exp(-np.array([3.5, 3.25]))), rtol=1e-6)


@pytest.mark.parametrize("name", ["dot", "mlp"])
def test_fallback_without_biases_is_training_mean(name):
    rec = make_rec(name, embedding_dim=2, mean_rating=3.7)
    pred = rec.predict([77, 10, 77], [100, 999, 999], unknown="fallback")
    np.testing.assert_array_equal(pred, np.full(3, 3.7, np.float32))


@pytest.mark.parametrize(
    "users, items, match",
    [
        ([10, 20], [100], "2 user ids but 1 item"),
        ([10.5], [100], "integers"),
        (["10"], [100], "integers"),
        ([10], [np.nan], "integers"),
        ([[10]], [[100]], "1-D"),
    ],
)
def test_predict_rejects_bad_input(known, users, items, match):
    with pytest.raises(ValueError, match=match):
        known.predict(users, items)


def test_predict_rejects_bad_unknown_mode(known):
    with pytest.raises(ValueError, match="unknown"):
        known.predict([10], [100], unknown="ignore")


@pytest.mark.parametrize("name", [pytest.param(name, marks=pytest.mark.slow) if name == "bpmf" else name  # bpmf: 10 s
                                  for name in __import__("recsys_jax.models", fromlist=["MODELS"]).MODELS])
def test_every_model_round_trips_through_a_checkpoint(name, tmp_path):
    """Train one epoch on tiny data (titles for fm, timestamps for timesvd), save, load, predict."""
    import pandas as pd

    from recsys_jax.models import MODELS

    from recsys_jax.data import make_synthetic
    from recsys_jax.use.recommender import to_recommender
    from recsys_jax.engine.config import TrainConfig
    from recsys_jax.training.fit import fit

    ratings, _ = make_synthetic(jax.random.key(0), 30, 20, 300)
    movies = pd.DataFrame({"title": [f"M{i} ({1990 + i})" for i in ratings.item_ids],
                           "genres": ["Drama|Comedy" if i % 2 else "Action" for i in ratings.item_ids]},
                          index=pd.Index(ratings.item_ids, name="movieId"))
    ratings = dataclasses.replace(ratings, movies=movies)
    result = fit(name, ratings, None, key=0, progress=False, train_config=TrainConfig(epochs=1, batch_size=64))
    rec = to_recommender(ratings, result)
    checkpoint.save(tmp_path / "ck", rec)
    loaded = checkpoint.load(tmp_path / "ck")
    users, items = ratings.user_ids[ratings.users[:50]], ratings.item_ids[ratings.items[:50]]
    stamps = ratings.timestamps[:50]
    if MODELS[name].ranks:  # no ratings to predict: its rankings must come back
        some = ratings.user_ids[:5]
        got, want = (r.recommend_many(some, 5, exclude_rated=False) for r in (loaded, rec))
        np.testing.assert_array_equal(got.movieId, want.movieId)
        np.testing.assert_array_equal(got.score, want.score)
    else:
        np.testing.assert_array_equal(loaded.predict(users, items, timestamps=stamps),
                                      rec.predict(users, items, timestamps=stamps))
    assert loaded.title(ratings.item_ids[0]) == f"M{ratings.item_ids[0]} ({1990 + ratings.item_ids[0]})"


def test_ids_without_training_ratings_are_unknown(tmp_path):
    """An id in the maps (it occurs in the test split) but never trained is not predicted from
    its random initial parameters: an error, or the bias fallback."""
    from recsys_jax.data import Ratings
    from recsys_jax.use.recommender import to_recommender
    from recsys_jax.engine.config import TrainConfig
    from recsys_jax.training.fit import fit

    # Users 1, 2; items 10, 20, 30 — item 30 and user 3 appear only in the held-out rows.
    full = Ratings.from_raw([1, 1, 2, 2, 3, 1], [10, 20, 10, 20, 10, 30], [4.0, 3.0, 5.0, 2.0, 3.5, 1.0])
    train = full.take(np.arange(4))
    result = fit("bias", train, None, key=0, progress=False, train_config=TrainConfig(epochs=2, batch_size=4))
    rec = to_recommender(full, result)
    np.testing.assert_array_equal(rec.trained_items, [True, True, False])
    np.testing.assert_array_equal(rec.trained_users, [True, True, False])
    with pytest.raises(UnknownIdError, match="unknown item id 30"):
        rec.predict([1], [30])
    with pytest.raises(UnknownIdError, match="unknown user id 3"):
        rec.predict([3], [10])
    p = result.params
    fallback = rec.predict([1, 3], [30, 10], unknown="fallback")
    np.testing.assert_allclose(fallback, [float(p.global_bias + p.user_bias[0]), float(p.global_bias + p.item_bias[0])],
                               rtol=1e-6)
    checkpoint.save(tmp_path / "ck", rec)
    loaded = checkpoint.load(tmp_path / "ck")
    np.testing.assert_array_equal(loaded.trained_items, rec.trained_items)
    with pytest.raises(UnknownIdError):
        loaded.predict([1], [30])


def test_notebook_bias_model_falls_back_on_the_training_mean(known):
    """The notebook's bias model has no mu (global_mean=False): b_i alone is no rating, so an
    unknown user or item gets the training mean, as for models without biases."""
    rec = known._replace(config=KNOWN_CONFIG._replace(global_mean=False, mean_rating=3.6))
    pred = rec.predict([77, 10, 77], [100, 999, 999], unknown="fallback")
    np.testing.assert_array_equal(pred, np.full(3, 3.6, np.float32))
    assert rec.fallbacks([77, 10, 77, 10], [100, 999, 999, 100]) == ["mu", "mu", "mu", None]


def _similar_rec():
    """Five items with hand-made 2-d factors; item 400 has no training ratings."""
    ids = np.array([100, 200, 300, 400, 500], np.int64)
    q = np.array([[1.0, 0.0], [0.9, 0.1], [-1.0, 0.0], [1.0, 0.0], [2.0, 0.1]], np.float32)
    cfg = make_config("dot", embedding_dim=2)
    params = dot.Params(user_factors=jnp.zeros((len(USER_IDS), 2)), item_factors=jnp.asarray(q))
    titles = {100: "A", 200: "B", 300: "C", 400: "D", 500: "E"}
    return Recommender("dot", cfg, params, USER_IDS, ids, SCALE, titles,
                       trained_items=np.array([True, True, True, False, True]))


def test_similar_items_by_cosine():
    rec = _similar_rec()
    top = rec.similar_items(100, 2)
    # cos(100, 500) = 2 / sqrt(4.01); cos(100, 200) = 0.9 / sqrt(0.82); 400 (identical, but
    # untrained) and 100 itself are not candidates
    assert top["movieId"].tolist() == [500, 200] and top["title"].tolist() == ["E", "B"]
    np.testing.assert_allclose(top["score"], [2 / np.sqrt(4.01), 0.9 / np.sqrt(0.82)], rtol=1e-6)
    everything = rec.similar_items(100, 10)  # more than there are: every candidate, best first
    assert everything["movieId"].tolist() == [500, 200, 300]
    assert everything["score"].iloc[-1] == pytest.approx(-1.0)


def test_similar_items_errors():
    rec = _similar_rec()
    with pytest.raises(UnknownIdError, match="unknown item id 400"):
        rec.similar_items(400)  # in the id map, but without training ratings
    with pytest.raises(UnknownIdError, match="unknown item id 999"):
        rec.similar_items(999)
    with pytest.raises(ValueError, match="positive integer"):
        rec.similar_items(100, 0)


def test_similar_from_the_command_line(tmp_path, capsys):
    from recsys_jax.cli.main import main

    folder = checkpoint.save(tmp_path / "sim", _similar_rec())
    assert main(["similar", "--checkpoint", str(folder), "--movie", "100", "-n", "2", "--json"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    rows = json.loads(out[-1])
    assert [r["movieId"] for r in rows] == [500, 200] and rows[0]["title"] == "E"
    assert rows[0]["score"] == pytest.approx(2 / np.sqrt(4.01), rel=1e-6)
    assert main(["similar", "--checkpoint", str(folder), "--movie", "999"]) == 2
    err = capsys.readouterr().err
    assert "unknown item id 999" in err and "Traceback" not in err

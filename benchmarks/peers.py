"""Peers: the notebook's three models in genuine Keras 3 beside recsys_jax, and Surprise;
recommendations from implicit feedback beside implicit's ALS and BPR.

    python -m benchmarks.peers                  # seeds 0..4: Keras, recsys_jax, Surprise
    python -m benchmarks.peers --quick          # seed 0, without SVD++ (slow)
    python -m benchmarks.peers --seeds 0 1 --json out.json

Needs the ``peers`` extra (``pip install -e ".[peers]"``: keras, scikit-surprise, libmf, implicit, myfm);
recsys_jax itself never imports them. Keras runs on its JAX backend (``KERAS_BACKEND=jax``
is set here before Keras is imported; another backend already chosen is refused).

On each split (``recsys_jax.data.random_split(ratings, seed, 0.2)`` of ml-latest-small,
the same rows for every implementation) it trains:

- **Keras 3**, the course notebook's three models exactly as ``NOTEBOOK.md`` states them
  (`build_keras_model`): 50-d ``Embedding`` tables with U(-0.05, 0.05) init and
  ``L2(1e-4)`` on the user and movie factor tables (Keras adds ``1e-4 * sum(W**2)`` of the
  whole table to every batch's loss), the bias model's 1-d bias embeddings without a
  regulariser, the NN's ``Dropout(0.3) -> Dense(70, relu) -> Dropout(0.75) -> Dense(1)``
  (glorot-uniform, zero biases); Adam(0.9, 0.999, 1e-8), mean squared error, shuffled
  every epoch; the regimen as successive ``fit`` calls (`KERAS_REGIMENS`), the rate
  changed between them with ``optimizer.learning_rate.assign`` so the annealing happens
  (the rate read back after each fit is recorded); seeded with
  ``keras.utils.set_random_seed(seed)``;
- **recsys_jax**, the ``notebook`` preset of the same three models
  (`recsys_jax.training.experiment.run_experiment`, no validation slice, the last epoch);
- **Surprise** SVD, SVD++ and KNNBaseline with their defaults (Surprise 1.1's
  KNNBaseline defaults to the MSD similarity, user-based; the docs recommend
  ``pearson_baseline``, so that variant runs too), fitted on a Trainset built from the
  training rows and asked for the test rows;
- with ``ranking``: recommendations under ``recsys-jax evaluate``'s protocol and under
  held-out users (`ranking_markdown`): popularity, recsys_jax's ``ials`` and ``ease`` and
  implicit's ALS and BPR, each trained on the training ratings of at least 4 stars;
- with ``myfm``: myFM's Bayesian factorization machine by Gibbs
  sampling (rank 10, 256 sweeps), on Rendle, Zhang & Koren 2019's features (the ids, the
  rating's day, the implicit user and item sets), on its SVD++ part (the ids, the
  implicit user set) and on the first set with the movies' genres, built from the training
  rows only (`recsys_jax.data.relational`; the genres from the movies table), beside
  recsys_jax's ``bfm`` with its CLI defaults (the last feature set) and with
  ``--option genres=off`` (the first).

Every model is scored once on the test rows, predictions clipped to the rating scale.
Fit seconds are wall seconds of training (compilation included: Keras traces each new
model, recsys_jax compiles its epoch once per shape and reuses it for later seeds);
seconds per epoch are the median over the epochs of one fit, so compilation drops out.

Files: ``peers.{json,md}`` in benchmarks/results/ for a full run from a clean commit,
else runs/benchmarks/ (the rule in `benchmarks.common`).

`libmf_throughput` times LIBMF's training (the PyPI ``libmf`` binding) on any `Ratings`,
for `benchmarks.scaling`.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import io
import os
import sys
import time
from collections import defaultdict
from pathlib import Path

if not __package__:  # run as a file (python benchmarks/X.py): make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from benchmarks.common import (add_output_args, environment, markdown_table, print_written, resolve_outputs,
                               write_json, write_text)
from recsys_jax.eval import metrics
from recsys_jax.eval.metrics import HELD_OUT_CUTS, held_out_report
from recsys_jax.data import Ratings, load_movielens, random_split
from recsys_jax.training.experiment import RANKING_K, RANKING_THRESHOLD  # evaluate's protocol, as train scores it

NOTEBOOK_MODELS = ("dot", "bias", "mlp")  # recsys_jax's names; "mlp" is the notebook's NN
LABELS = {"dot": "dot", "bias": "bias", "mlp": "NN (mlp)"}
# NOTEBOOK.md: (rate the optimizer is created with, successive fit calls (epochs, rate, batch)).
KERAS_REGIMENS = {
    "dot": (1e-3, ((1, 1e-3, 64), (3, 1e-2, 64), (6, 1e-3, 64))),
    "bias": (1e-2, ((1, 1e-2, 64), (6, 1e-2, 64), (10, 1e-3, 64))),
    "mlp": (1e-3, ((10, 1e-3, 128), (5, 1e-3, 128))),
}
EMBEDDING_DIM, HIDDEN, L2 = 50, 70, 1e-4
# NOTEBOOK.md's reference test RMSE: (Keras 3 on JAX, the independent PyTorch port).
REFERENCE = {"dot": (1.180, 1.178), "bias": (0.884, 0.885), "mlp": (0.865, 0.866)}
# recsys_jax is "the same" as Keras when the mean test RMSE is within this (dot spreads more).
TOLERANCE = {"dot": 0.03, "bias": 0.01, "mlp": 0.01}
SURPRISE_ALGOS = ("SVD", "SVD++", "KNNBaseline", "KNNBaseline pearson_baseline")
INSTALL = 'pip install -e ".[peers]"'


# -- Keras ---------------------------------------------------------------------------------
def _keras():
    """Keras 3 on the JAX backend (imported here, never at module import)."""
    os.environ.setdefault("KERAS_BACKEND", "jax")
    try:
        import keras
    except ImportError as e:
        raise ImportError(f"benchmarks.peers needs Keras 3: {INSTALL}") from e
    if not keras.__version__.startswith("3.") or keras.backend.backend() != "jax":
        raise ImportError(f"benchmarks.peers needs Keras 3 on the JAX backend; got Keras {keras.__version__} "
                          f"on {keras.backend.backend()!r} (unset KERAS_BACKEND or set it to jax)")
    return keras


def build_keras_model(model: str, num_users: int, num_items: int, *, embedding_dim: int = EMBEDDING_DIM,
                      hidden: int = HIDDEN, l2: float = L2):
    """The notebook's ``model`` ("dot", "bias" or "mlp") as an uncompiled ``keras.Model``
    taking ``[users int32[B, 1], items int32[B, 1]]`` and returning float32[B, 1].

    Parameters: dot ``(U + I) K``; bias ``(U + I)(K + 1)``; mlp ``(U + I) K + 2K H + 2H + 1``.
    """
    keras = _keras()
    from keras import layers

    uniform = keras.initializers.RandomUniform(-0.05, 0.05)  # Keras' embedding default

    def embedding(n, dim, regularised, name):
        return layers.Embedding(n, dim, embeddings_initializer=uniform, name=name,
                                embeddings_regularizer=keras.regularizers.L2(l2) if regularised else None)

    user_in = keras.Input((1,), dtype="int32", name="user")
    item_in = keras.Input((1,), dtype="int32", name="movie")
    p = embedding(num_users, embedding_dim, True, "user_factors")(user_in)  # [B, 1, K]
    q = embedding(num_items, embedding_dim, True, "item_factors")(item_in)
    if model in ("dot", "bias"):
        x = layers.Flatten()(layers.Dot(axes=2)([p, q]))  # [B, 1]
        if model == "bias":
            b_u = layers.Flatten()(embedding(num_users, 1, False, "user_bias")(user_in))
            b_i = layers.Flatten()(embedding(num_items, 1, False, "item_bias")(item_in))
            x = layers.Add()([x, b_u, b_i])
    elif model == "mlp":
        x = layers.Flatten()(layers.Concatenate()([p, q]))  # [B, 2K]
        x = layers.Dropout(0.3)(x)
        x = layers.Dense(hidden, activation="relu", kernel_initializer="glorot_uniform", bias_initializer="zeros")(x)
        x = layers.Dropout(0.75)(x)
        x = layers.Dense(1, kernel_initializer="glorot_uniform", bias_initializer="zeros")(x)
    else:
        raise ValueError(f"no Keras version of {model!r}; the notebook's models are {', '.join(NOTEBOOK_MODELS)}")
    return keras.Model([user_in, item_in], x, name=f"notebook_{model}")


def _inputs(r: Ratings) -> list[np.ndarray]:
    return [r.users.astype(np.int32).reshape(-1, 1), r.items.astype(np.int32).reshape(-1, 1)]


def keras_fit(model: str, train: Ratings, test: Ratings, *, seed: int, regimen=None) -> dict:
    """Trains the Keras ``model`` on ``train`` with its notebook regimen (or ``regimen``:
    ``(initial rate, ((epochs, rate, batch), ...))``) and scores ``test`` once."""
    keras = _keras()
    initial_lr, phases = KERAS_REGIMENS[model] if regimen is None else regimen
    keras.utils.set_random_seed(seed)
    net = build_keras_model(model, train.num_users, train.num_items)
    optimizer = keras.optimizers.Adam(learning_rate=initial_lr, beta_1=0.9, beta_2=0.999, epsilon=1e-8)
    net.compile(optimizer=optimizer, loss="mse")

    class EpochTimer(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.seconds = []

        def on_epoch_begin(self, epoch, logs=None):
            self._t0 = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.seconds.append(time.perf_counter() - self._t0)

    timer, losses, rates = EpochTimer(), [], []
    x, y = _inputs(train), train.ratings.astype(np.float32)
    t0 = time.perf_counter()
    for epochs, lr, batch in phases:
        optimizer.learning_rate.assign(lr)  # reaches the compiled step (unlike Keras 1's `optimizer.lr = x`)
        history = net.fit(x, y, batch_size=batch, epochs=epochs, shuffle=True, verbose=0, callbacks=[timer])
        losses += [float(v) for v in history.history["loss"]]
        rates.append(float(np.asarray(optimizer.learning_rate)))  # the rate it trained at, read back
    fit_seconds = time.perf_counter() - t0
    pred = net.predict(_inputs(test), batch_size=8192, verbose=0).reshape(-1)
    pred = np.clip(pred, *test.rating_scale)
    return {
        "test_rmse": metrics.rmse(pred, test.ratings), "test_mae": metrics.mae(pred, test.ratings),
        "fit_seconds": fit_seconds, "epoch_seconds": timer.seconds,
        "seconds_per_epoch": float(np.median(timer.seconds)), "epochs": len(timer.seconds),
        "train_loss": losses, "phase_rates": rates, "num_params": int(net.count_params()),
        "regimen": {"initial_lr": initial_lr, "phases": [list(p) for p in phases]},
    }


# -- recsys_jax ------------------------------------------------------------------------------
def recsys_jax_fit(model: str, ratings: Ratings, split, *, seed: int) -> dict:
    """The ``notebook`` preset of ``model`` on ``split``, through `run_experiment`."""
    from recsys_jax.training.experiment import run_experiment
    from recsys_jax.models import make_config
    from recsys_jax.training.presets import get_preset, model_options, val_frac

    rec, result = run_experiment(ratings, split, model, seed=seed, train_config=get_preset("notebook", model),
                                 model_config=make_config(model, **model_options("notebook", model)),
                                 val_frac=val_frac("notebook"))
    seconds = [float(s) for s in result.history["seconds"]]
    return {
        "test_rmse": rec["test_rmse"], "test_mae": rec["test_mae"], "fit_seconds": rec["fit_seconds"],
        "compile_seconds": float(result.compile_seconds), "epoch_seconds": seconds,
        "seconds_per_epoch": float(np.median(seconds)), "epochs": rec["epochs"],
        "train_loss": [float(v) for v in result.history["train_loss"]],
        "train_config": rec["train_config"], "model_config": rec["model_config"],
    }


# -- Surprise ------------------------------------------------------------------------------
def _surprise():
    try:
        import surprise
    except ImportError as e:
        raise ImportError(f"benchmarks.peers needs scikit-surprise: {INSTALL}") from e
    return surprise


def make_surprise_algo(name: str, seed: int):
    """Surprise's ``name`` (one of `SURPRISE_ALGOS`) with its defaults, seeded where it draws."""
    surprise = _surprise()
    if name == "SVD":
        return surprise.SVD(random_state=seed)
    if name == "SVD++":
        return surprise.SVDpp(random_state=seed)
    if name == "KNNBaseline":
        return surprise.KNNBaseline(verbose=False)  # defaults: MSD similarity, user-based, k=40
    if name == "KNNBaseline pearson_baseline":
        return surprise.KNNBaseline(sim_options={"name": "pearson_baseline"}, verbose=False)
    raise ValueError(f"unknown Surprise algorithm {name!r}; known: {', '.join(SURPRISE_ALGOS)}")


def surprise_fit(name: str, train: Ratings, test: Ratings, *, seed: int) -> dict:
    """Fits Surprise's ``name`` on a Trainset of the training rows; predicts the test rows."""
    import pandas as pd

    surprise = _surprise()
    frame = pd.DataFrame({"user": train.users.astype(np.int64), "item": train.items.astype(np.int64),
                          "rating": train.ratings.astype(np.float64)})
    trainset = surprise.Dataset.load_from_df(frame, surprise.Reader(rating_scale=train.rating_scale)) \
        .build_full_trainset()
    algo = make_surprise_algo(name, seed)
    t0 = time.perf_counter()
    algo.fit(trainset)
    fit_seconds = time.perf_counter() - t0
    preds = algo.test(list(zip(test.users.tolist(), test.items.tolist(), test.ratings.astype(float).tolist())))
    pred = np.array([p.est for p in preds])  # clipped to the scale by Surprise's predict
    impossible = sum(bool(p.details.get("was_impossible", False)) for p in preds)
    out = {"test_rmse": metrics.rmse(pred, test.ratings), "test_mae": metrics.mae(pred, test.ratings),
           "fit_seconds": fit_seconds, "impossible_predictions": int(impossible)}
    if hasattr(algo, "sim_options") and "KNN" in name:
        out["sim_options"] = {**{"name": "msd"}, **algo.sim_options}  # "msd" is Surprise's default name
    return out


# -- myFM ----------------------------------------------------------------------------------
MYFM_FEATURES = {  # Rendle, Zhang & Koren 2019's feature set, and its SVD++ part; then with the genres
    "ids, implicit user and item sets, day": ("user", "item", "day", "rated_by_user", "raters_of_item"),
    "ids, implicit user set": ("user", "item", "rated_by_user"),
    "ids, implicit user and item sets, day, genres": ("user", "item", "day", "rated_by_user", "raters_of_item",
                                                      "genres_of_item"),
}
BFM_FEATURES = {  # bfm's options for the same feature sets as myFM's (its CLI defaults: the last)
    "ids, implicit user and item sets, day": {"genres": "off"},
    "ids, implicit user and item sets, day, genres": {},
}
MYFM_RANK, MYFM_SWEEPS = 10, 256


def _myfm():
    try:
        import myfm
    except ImportError as e:
        raise ImportError(f"benchmarks.peers needs myfm: {INSTALL}") from e
    return myfm


def myfm_design(features, groups) -> tuple:
    """``(X, relation blocks, group sizes)`` for myFM from `recsys_jax.data.relational.Features`:
    the one-hot groups as columns of X, the implicit sets as RelationBlocks, one prior per group."""
    from scipy.sparse import csr_matrix, hstack

    myfm = _myfm()
    n = len(features.user)
    columns, blocks, sizes = [], [], []
    widths = {"user": features.rated_by_user.indptr.shape[0] - 1, "item": features.raters_of_item.indptr.shape[0] - 1,
              "day": features.num_days}
    for group in groups:
        if group in ("user", "item", "day"):
            index = getattr(features, group)
            keep = index >= 0
            columns.append(csr_matrix((np.ones(int(keep.sum())), (np.flatnonzero(keep), index[keep])),
                                      shape=(n, widths[group])))
            sizes.append(widths[group])
    for group in groups:
        if group in ("rated_by_user", "raters_of_item", "genres_of_item"):
            block = getattr(features, group)
            data = csr_matrix((block.values.astype(np.float64), block.indices, block.indptr),
                              shape=(len(block.indptr) - 1, block.width))
            blocks.append(myfm.RelationBlock(block.index.astype(np.int64).tolist(), data))
            sizes.append(block.width)
    return hstack(columns, format="csr"), blocks, sizes


def myfm_fit(feature_set: str, train: Ratings, test: Ratings, *, seed: int) -> dict:
    """myFM's Gibbs-sampled Bayesian FM (rank 10, 256 sweeps, its defaults otherwise, one prior
    per feature group) on the features ``MYFM_FEATURES[feature_set]``, built from the training
    rows only (`recsys_jax.data.relational.build_features`); test predictions clipped."""
    from recsys_jax.data.relational import build_features

    myfm = _myfm()
    groups = MYFM_FEATURES[feature_set]
    genres = "genres_of_item" in groups
    x, blocks, sizes = myfm_design(build_features(train, genres=genres), groups)
    x_test, blocks_test, _ = myfm_design(build_features(train, test, genres=genres), groups)
    model = myfm.MyFMRegressor(rank=MYFM_RANK, random_seed=seed)
    t0 = time.perf_counter()
    with contextlib.redirect_stderr(io.StringIO()):  # its progress bar
        model.fit(x, train.ratings.astype(np.float64), X_rel=blocks, n_iter=MYFM_SWEEPS, group_shapes=sizes)
    fit_seconds = time.perf_counter() - t0
    pred = np.clip(model.predict(x_test, blocks_test), *train.rating_scale)
    return {"test_rmse": metrics.rmse(pred, test.ratings), "test_mae": metrics.mae(pred, test.ratings),
            "fit_seconds": fit_seconds, "features": list(groups), "rank": MYFM_RANK, "sweeps": MYFM_SWEEPS}


def bfm_fit(ratings: Ratings, split, *, seed: int, feature_set: str = next(reversed(BFM_FEATURES))) -> dict:
    """recsys_jax's ``bfm`` with its CLI defaults (`recsys_jax.training.presets.resolve`: the
    same features as myFM's last set, rank 10, 256 sweeps) on ``split``, with the options
    ``BFM_FEATURES[feature_set]`` (``recsys-jax train --option genres=off`` for the five groups)."""
    from recsys_jax.training.experiment import run_experiment
    from recsys_jax.training.presets import resolve

    tc, model_config, val_frac = resolve("default", "bfm", model_overrides=BFM_FEATURES[feature_set])
    rec, _ = run_experiment(ratings, split, "bfm", seed=seed, train_config=tc, model_config=model_config,
                            val_frac=val_frac)
    return {"test_rmse": rec["test_rmse"], "test_mae": rec["test_mae"], "fit_seconds": rec["fit_seconds"],
            "compile_seconds": rec["compile_seconds"], "sweeps": tc.epochs, "model_config": rec["model_config"]}


# -- LIBMF ---------------------------------------------------------------------------------
def _libmf():
    """The PyPI ``libmf`` binding's module (its import prints where it found the library)."""
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            from libmf import mf
    except (ImportError, OSError) as e:
        raise ImportError(f"LIBMF is unavailable: the PyPI `libmf` binding did not import ({e}); {INSTALL}") from e
    return mf


def libmf_throughput(ratings: Ratings, *, k: int = 64, threads: int = 2, epochs: int = 10, repeats: int = 3,
                     eta: float = 0.1, l2: float = 0.04) -> dict:
    """Training ratings/s of LIBMF (Chin et al.'s parallel SGD, via the PyPI ``libmf``
    binding) on ``ratings``: ``len(ratings) * epochs / seconds``, the median of ``repeats``
    runs, timing only the training call (``fit_interface``: LIBMF builds its problem from
    the triplets and runs ``epochs`` iterations of L2-regularised squared-error SGD).

    Raises ImportError (with what to install) when LIBMF is unavailable.
    """
    import ctypes

    mf = _libmf()
    if max(ratings.num_users, ratings.num_items) >= 2**24:
        raise ValueError("libmf_throughput: the binding passes indices as float32; at most 2**24 users/items")
    data = np.ascontiguousarray(np.column_stack([ratings.users, ratings.items, ratings.ratings]), np.float32)
    options = mf.MF(k=k, nr_threads=threads, nr_iters=epochs, eta=eta, lambda_p2=l2, lambda_q2=l2,
                    lambda_p1=0.0, lambda_q1=0.0, quiet=True)._options
    lib = mf.mf
    lib.fit_interface.restype = ctypes.POINTER(mf.MFModel)
    lib.fit_interface.argtypes = (ctypes.c_int, mf.c_float_p, mf.options_ptr)
    pointer, n = data.ctypes.data_as(mf.c_float_p), ctypes.c_int(len(ratings))
    seconds = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        model = lib.fit_interface(n, pointer, options)
        seconds.append(time.perf_counter() - t0)
        lib.mf_destroy_model(ctypes.byref(model))
    median = float(np.median(seconds))
    return {"implementation": f"LIBMF (PyPI libmf {_version('libmf')})", "k": k, "threads": threads,
            "epochs": epochs, "eta": eta, "l2": l2, "num_ratings": len(ratings), "repeats": repeats,
            "seconds": median, "seconds_all": seconds, "ratings_per_second": len(ratings) * epochs / median}


# -- the benchmark -------------------------------------------------------------------------
# -- ranking: implicit feedback, evaluate's protocol ---------------------------------------------------
RANKING_FACTORS, RANKING_ITERATIONS = 64, 15  # implicit's ALS as the issue ran it; recsys_jax's ials preset


def _implicit():
    try:
        import implicit
    except ImportError as e:
        raise ImportError(f"benchmarks.peers --implementations ranking needs implicit: {INSTALL}") from e
    return implicit


def _positives_csr(train: Ratings):
    """users x items CSR of the training pairs rated at least `RANKING_THRESHOLD` (value 1)."""
    from scipy.sparse import csr_matrix

    keep = train.ratings >= RANKING_THRESHOLD
    data = np.ones(int(keep.sum()), np.float32)
    m = csr_matrix((data, (train.users[keep], train.items[keep])), shape=(train.num_users, train.num_items))
    m.sum_duplicates()
    m.data[:] = 1.0
    return m


def _ranked(scores_fn, inputs, train: Ratings, test: Ratings) -> dict:
    report = metrics.ranking_report(scores_fn, inputs, test, k=RANKING_K, exclude=train, threshold=RANKING_THRESHOLD)
    return {f"test_{name}": report[name] for name in ("ndcg", "recall", "precision", "hit_rate", "coverage")} | {
        "ranking_users": report["num_users"]}


def implicit_fit(name: str, train: Ratings, test: Ratings, *, seed: int) -> dict:
    """implicit's ``als`` (Hu et al. 2008: 64 factors, 15 iterations, its other defaults) or
    ``bpr`` (64 factors, its other defaults) on the training positives, one thread per core,
    scored by ``user_factors @ item_factors.T`` under evaluate's protocol."""
    implicit = _implicit()
    positives = _positives_csr(train)
    if name == "als":
        model = implicit.cpu.als.AlternatingLeastSquares(factors=RANKING_FACTORS, iterations=RANKING_ITERATIONS,
                                                         random_state=seed)
    else:
        model = implicit.cpu.bpr.BayesianPersonalizedRanking(factors=RANKING_FACTORS, random_state=seed)
    t0 = time.perf_counter()
    with contextlib.redirect_stderr(io.StringIO()):  # its progress bar
        model.fit(positives, show_progress=False)
    seconds = time.perf_counter() - t0
    import jax.numpy as jnp

    scores = jnp.asarray(np.asarray(model.user_factors) @ np.asarray(model.item_factors).T)
    return {"fit_seconds": seconds, **_ranked(metrics.matrix_scores, scores, train, test)}


def ranker_fit(model: str, ratings: Ratings, split, *, seed: int) -> dict:
    """recsys_jax's ``model`` (ials, ease) with its defaults, as ``recsys-jax train --model
    <model>`` scores it."""
    from recsys_jax.training.experiment import run_experiment
    from recsys_jax.training.presets import resolve

    tc, config, val_frac = resolve("default", model)
    out, _ = run_experiment(ratings, split, model, seed=seed, train_config=tc, model_config=config, val_frac=val_frac)
    return {"fit_seconds": out["fit_seconds"], **{k: out[k] for k in ("test_ndcg", "test_recall", "test_precision",
                                                                          "test_hit_rate", "ranking_users")}}


def popularity_fit(train: Ratings, test: Ratings) -> dict:
    """Each item scored by its number of training ratings (evaluate's baseline)."""
    import jax.numpy as jnp

    counts = jnp.asarray(np.bincount(train.items, minlength=train.num_items).astype(np.float32))
    return {"fit_seconds": 0.0, **_ranked(metrics.broadcast_scores, counts, train, test)}


RANKERS = ("popularity", "recsys_jax ials", "recsys_jax ease", "implicit als", "implicit bpr")
def held_out_metrics(scores: np.ndarray, fold_in: list, targets: list, trained: np.ndarray) -> dict:
    """Recall@20, Recall@50 and NDCG@100 (`recsys_jax.eval.metrics.held_out_report`) of
    ``scores`` (float[m, I], one row per held-out user): candidates the ``trained`` items
    (with a training positive) less the user's folded-in ones, targets its trained ones (as
    `Recommender.evaluate_held_out_users`; users left without one are not counted)."""
    scores = np.array(scores, np.float64)
    scores[:, ~trained] = -np.inf
    for j, items in enumerate(fold_in):
        scores[j, items] = -np.inf
    order = np.argsort(-scores, axis=1, kind="stable")[:, :max(k for _, k in HELD_OUT_CUTS)]
    order = np.where(np.take_along_axis(np.isfinite(scores), order, axis=1), order, -1)
    found = [t[trained[t]] for t in targets]
    keep = np.array([len(t) > 0 and len(f) > 0 for t, f in zip(found, fold_in)])
    return {**held_out_report(order[keep], [t for t, k in zip(found, keep) if k]), "held_out_users": int(keep.sum())}


def held_out_run(ratings: Ratings, seed: int, log=print) -> dict[str, dict]:
    """Strong generalisation (`recsys_jax.data.split.held_out_users`: 20% of the users held
    out, 80% of each one's positives folded in, the rest to find): popularity (positives
    among the training users), ``ials`` (each held-out user one exact solve,
    `recsys_jax.models.ials.fold_in_users`), implicit's ALS (``recalculate_user``) and BPR,
    which cannot fold a user in: it trains on the held-out users' folded-in positives too."""
    import jax

    from recsys_jax.data.split import held_out_users
    from recsys_jax.engine.config import TrainConfig
    from recsys_jax.models import ials
    from recsys_jax.training.fit import fit

    split = held_out_users(ratings, seed)
    train = ratings.take(split.train)
    held = np.unique(ratings.users[split.target])
    counts = np.bincount(train.items, minlength=ratings.num_items).astype(np.float64)
    trained = counts > 0  # items with a training positive: the only ones folded in or to be found
    given_rows = split.fold_in[trained[ratings.items[split.fold_in]]]
    fold_in = [ratings.items[given_rows][ratings.users[given_rows] == u] for u in held]
    targets = [ratings.items[split.target][ratings.users[split.target] == u] for u in held]
    results = {}
    results["popularity"] = {"fit_seconds": 0.0, **held_out_metrics(np.tile(counts, (len(held), 1)), fold_in, targets, trained)}
    t0 = time.perf_counter()
    fitted = fit("ials", train, None, key=jax.random.key(seed), train_config=TrainConfig(epochs=RANKING_ITERATIONS),
                 progress=False)
    seconds = time.perf_counter() - t0
    rows = ials.fold_in_users(fitted.params, fitted.model_config, fold_in)
    q = np.asarray(fitted.params.item_factors)
    results["recsys_jax ials"] = {"fit_seconds": seconds, **held_out_metrics(rows @ q.T, fold_in, targets, trained)}
    from recsys_jax.models import ease

    t0 = time.perf_counter()
    aux = ease.prepare(train)
    fitted = fit("ease", train, None, key=jax.random.key(seed), train_config=TrainConfig(epochs=1), progress=False)
    seconds = time.perf_counter() - t0
    weights, slot = np.asarray(fitted.params.weights), np.asarray(aux.item_slot)
    rows = np.stack([weights[slot[items]].sum(axis=0)[slot[:-1]] for items in fold_in])  # x_u B: no refit
    results["recsys_jax ease"] = {"fit_seconds": seconds, **held_out_metrics(rows, fold_in, targets, trained)}
    implicit = _implicit()
    from scipy.sparse import csr_matrix

    positives = _positives_csr(train)
    model = implicit.cpu.als.AlternatingLeastSquares(factors=RANKING_FACTORS, iterations=RANKING_ITERATIONS,
                                                     random_state=seed)
    t0 = time.perf_counter()
    with contextlib.redirect_stderr(io.StringIO()):
        model.fit(positives, show_progress=False)
    seconds = time.perf_counter() - t0
    given = csr_matrix((np.ones(len(given_rows), np.float32),
                        (np.searchsorted(held, ratings.users[given_rows]), ratings.items[given_rows])),
                       shape=(len(held), ratings.num_items))
    rows = np.asarray(model.recalculate_user(np.arange(len(held)), given))
    results["implicit als"] = {"fit_seconds": seconds,
                               **held_out_metrics(rows @ np.asarray(model.item_factors).T, fold_in, targets, trained)}
    with_given = ratings.take(np.sort(np.concatenate([split.train, split.fold_in])))
    bpr = implicit.cpu.bpr.BayesianPersonalizedRanking(factors=RANKING_FACTORS, random_state=seed)
    t0 = time.perf_counter()
    with contextlib.redirect_stderr(io.StringIO()):
        bpr.fit(_positives_csr(with_given), show_progress=False)
    seconds = time.perf_counter() - t0
    rows = np.asarray(bpr.user_factors)[held]
    results["implicit bpr"] = {"fit_seconds": seconds,
                               **held_out_metrics(rows @ np.asarray(bpr.item_factors).T, fold_in, targets, trained)}
    return results


def held_out_markdown(records: list[dict]) -> list[str]:
    groups = defaultdict(list)
    for r in records:
        groups[r["model"]].append(r)
    rows = []
    for name in RANKERS:
        rs = groups.get(name, [])
        if rs:
            rows.append([name, *(_mean_std([r[f"{m}@{c}"] for r in rs]) for m, c in HELD_OUT_CUTS),
                         f"{np.median([r['fit_seconds'] for r in rs]):.2f}"])
    if not rows:
        return []
    return ["#### Held-out users (strong generalisation)\n",
            markdown_table(["model", *(f"{m.upper() if m == 'ndcg' else m.capitalize()}@{c}" for m, c in HELD_OUT_CUTS),
                            "fit s (median)"], rows),
            "",
            "Liang et al. 2018's protocol: the ratings of at least 4 stars are the positives; 20% of the users "
            "(with two positives or more) are held out of training; 80% of each held-out user's positives are "
            "folded into the trained model, the rest are to be found among every movie not folded in; only movies with "
            "a training positive are folded in, found or candidates (Liang et al. keep the training set's items). Recall@R "
            "divides the hits by min(R, the user's targets). `ials` folds a user in by one exact solve, `ease` "
            "scores it from its folded-in items directly (x B), implicit's ALS by `recalculate_user`; implicit's BPR cannot fold a user in, so it trains on the folded-in "
            "positives too (an easier task); popularity counts the training users' positives.", ""]


def ranking_markdown(records: list[dict], env: dict) -> str:
    held = [r for r in records if r["protocol"] == "ranking, held-out users"]
    records = [r for r in records if r["protocol"] != "ranking, held-out users"]
    groups = defaultdict(list)
    for r in records:
        groups[r["model"]].append(r)
    pop = {r["seed"]: r["test_ndcg"] for r in groups.get("popularity", [])}
    rows = []
    for name in RANKERS:
        rs = sorted(groups.get(name, []), key=lambda r: r["seed"])
        if not rs:
            continue
        ratio = [r["test_ndcg"] / pop[r["seed"]] for r in rs if r["seed"] in pop]
        rows.append([name, _mean_std([r["test_ndcg"] for r in rs]), _mean_std([r["test_recall"] for r in rs]),
                     ", ".join(f"{r['test_ndcg']:.4f}" for r in rs),
                     f"{min(ratio):.2f}-{max(ratio):.2f}" if ratio else "",
                     f"{np.median([r['fit_seconds'] for r in rs]):.2f}"])
    seeds = sorted({r["seed"] for r in records})
    return "\n".join([
        f"### ml-latest-small, random 80/20: recommendations from implicit feedback (seeds "
        f"{', '.join(map(str, seeds))}; mean ± std)\n",
        markdown_table(["model", f"NDCG@{RANKING_K}", f"recall@{RANKING_K}", "NDCG per seed",
                        "× popularity (per seed)", "fit s (median)"], rows),
        "",
        f"`recsys-jax evaluate`'s protocol on each split: test ratings of at least {RANKING_THRESHOLD:g} stars "
        f"are relevant; a user's candidates are every movie it did not rate in the training split; k = "
        f"{RANKING_K}; users with a relevant test rating counted. The implicit models train on the training "
        f"ratings of at least {RANKING_THRESHOLD:g} stars as positives: implicit {env.get('implicit')}'s ALS "
        f"({RANKING_FACTORS} factors, {RANKING_ITERATIONS} iterations, its defaults otherwise) and BPR "
        f"({RANKING_FACTORS} factors, its defaults otherwise), recsys_jax's `ials` and `ease` with their defaults; "
        "popularity ranks by the number of training ratings. Fit s: training only (recsys_jax's includes "
        "compilation on the first seed).",
        "",
        *held_out_markdown(held),
        f"Device: {env.get('device')} ({env.get('cpu')}, {env.get('cpu_count')} cores); jax {env.get('jax')}, "
        f"implicit {env.get('implicit')}; commit {env.get('git_commit')}; `{env.get('command')}`.", ""])


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def run(ratings: Ratings, seeds: list[int], *, models=NOTEBOOK_MODELS, implementations=("keras", "recsys_jax"),
        surprise_algos=SURPRISE_ALGOS, env: dict | None = None, log=print) -> list[dict]:
    """One record per (implementation, model, seed); see the module docstring."""
    env = env or {}
    records = []

    def add(implementation, model, seed, result):
        rec = {"bench": "peers", "implementation": implementation, "model": model, "seed": seed,
               "dataset": ratings.name, "protocol": "random 80/20", **result}
        rec.update({k: v for k, v in env.items() if k not in rec})
        records.append(rec)
        extra = f", {result['seconds_per_epoch']:.2f} s/epoch" if "seconds_per_epoch" in result else ""
        log(f"[peers] seed {seed} {LABELS.get(model, model):30s} {implementation:10s} "
            f"rmse {result['test_rmse']:.4f} fit {result['fit_seconds']:.1f} s{extra}")

    for seed in seeds:
        split = random_split(ratings, seed, 0.2)
        train, test = ratings.take(split.train), ratings.take(split.test)
        for model in models:
            if "keras" in implementations:
                add("keras", model, seed, keras_fit(model, train, test, seed=seed))
            if "recsys_jax" in implementations:
                add("recsys_jax", model, seed, recsys_jax_fit(model, ratings, split, seed=seed))
        if "surprise" in implementations:
            for name in surprise_algos:
                add("surprise", name, seed, surprise_fit(name, train, test, seed=seed))
        if "myfm" in implementations:
            for name in MYFM_FEATURES:
                add("myfm", f"Bayesian FM ({name})", seed, myfm_fit(name, train, test, seed=seed))
            for name in BFM_FEATURES:
                label = "recsys_jax " + (" ".join(f"{k}={v}" for k, v in BFM_FEATURES[name].items()) or "default")
                add(label, f"bfm ({name})", seed, bfm_fit(ratings, split, seed=seed, feature_set=name))
        if "ranking" in implementations:
            results = {"popularity": popularity_fit(train, test),
                       "recsys_jax ials": ranker_fit("ials", ratings, split, seed=seed),
                       "recsys_jax ease": ranker_fit("ease", ratings, split, seed=seed),
                       "implicit als": implicit_fit("als", train, test, seed=seed),
                       "implicit bpr": implicit_fit("bpr", train, test, seed=seed)}
            protocols = (("ranking, held-out users", held_out_run(ratings, seed), ("recall@20", "recall@50", "ndcg@100")),
                         ("ranking, random 80/20", results, ("test_ndcg", "test_recall")))
            for protocol, by_name, shown in protocols:
                for name, result in by_name.items():
                    rec = {"bench": "peers", "implementation": name.split()[0], "model": name, "seed": seed,
                           "dataset": ratings.name, "protocol": protocol, **result}
                    rec.update({k: v for k, v in env.items() if k not in rec})
                    records.append(rec)
                    log(f"[peers] seed {seed} {name:20s} {protocol}: "
                        + " ".join(f"{k} {result[k]:.4f}" for k in shown) + f" fit {result['fit_seconds']:.1f} s")
    return records


def _mean_std(values) -> str:
    v = np.asarray(values, np.float64)
    return f"{v.mean():.4f} ± {v.std(ddof=1):.4f}" if len(v) > 1 else f"{v[0]:.4f}"


def verdicts(records: list[dict]) -> list[str]:
    """Per notebook model: is recsys_jax's mean test RMSE within `TOLERANCE` of Keras'?"""
    by = defaultdict(dict)
    for r in records:
        by[(r["implementation"], r["model"])][r["seed"]] = r["test_rmse"]
    lines = []
    for model in NOTEBOOK_MODELS:
        ours, theirs = by.get(("recsys_jax", model), {}), by.get(("keras", model), {})
        seeds = sorted(set(ours) & set(theirs))
        if not seeds:
            continue
        d = np.array([ours[s] - theirs[s] for s in seeds])
        tol = TOLERANCE[model]
        same = abs(d.mean()) <= tol
        lines.append(f"- {LABELS[model]}: recsys_jax {np.mean([ours[s] for s in seeds]):.4f} vs Keras "
                     f"{np.mean([theirs[s] for s in seeds]):.4f}, mean difference {d.mean():+.4f} over "
                     f"{len(seeds)} seed(s): {'within' if same else 'NOT within'} {tol} of Keras.")
    return lines


def markdown(records: list[dict], env: dict) -> str:
    groups = defaultdict(list)
    for r in records:
        groups[(r["model"], r["implementation"])].append(r)
    keras_rmse = {(r["model"], r["seed"]): r["test_rmse"] for r in records if r["implementation"] == "keras"}
    names = {"keras": f"Keras {env.get('keras') or ''} (JAX)".replace("  ", " "),
             "recsys_jax": "recsys_jax `notebook`", "surprise": f"Surprise {env.get('surprise') or ''}".strip()}
    order = {m: i for i, m in enumerate(NOTEBOOK_MODELS + SURPRISE_ALGOS)}
    rows = []
    for (model, impl), rs in sorted(groups.items(), key=lambda kv: (order.get(kv[0][0], 99), kv[0][1])):
        rs.sort(key=lambda r: r["seed"])
        diffs = ""
        if impl == "recsys_jax":
            diffs = ", ".join(f"{r['test_rmse'] - keras_rmse[(model, r['seed'])]:+.4f}"
                              for r in rs if (model, r["seed"]) in keras_rmse)
        per_epoch = [r["seconds_per_epoch"] for r in rs if "seconds_per_epoch" in r]
        ref = REFERENCE.get(model)
        rows.append([LABELS.get(model, model), names.get(impl, impl), _mean_std([r["test_rmse"] for r in rs]),
                     diffs, f"{np.median([r['fit_seconds'] for r in rs]):.1f}",
                     f"{np.median(per_epoch):.3f}" if per_epoch else "",
                     f"{ref[0]:.3f} / {ref[1]:.3f}" if ref and impl == "keras" else ""])
    seeds = sorted({r["seed"] for r in records})
    out = [f"### ml-latest-small, random 80/20: the notebook's models in Keras 3 and recsys_jax; Surprise "
           f"(seeds {', '.join(map(str, seeds))}; mean ± std)\n",
           markdown_table(["model", "implementation", "test RMSE", "recsys_jax − Keras, per seed", "fit s (median)",
                           "s/epoch (median)", "NOTEBOOK.md: Keras 3 (JAX) / PyTorch port"], rows),
           "",
           *([f"Bayesian FMs: myFM {env.get('myfm')} (rank {MYFM_RANK}, {MYFM_SWEEPS} sweeps, its defaults; the "
              "posterior mean over the kept samples) beside recsys_jax's `bfm` with its CLI defaults (the genres "
              "included) and with `--option genres=off`, on features built from the training rows only (recsys_jax.data.relational; "
              "the genres from the movies table); fit s from the same run.", ""]
             if any(r["implementation"] == "myfm" for r in records) else []),
           "Same split rows for every implementation; every test row scored once after the last epoch, "
           "predictions clipped to the rating scale. Keras: the notebook's models and regimens exactly "
           "(whole-table `l2(1e-4)` per batch, U(-0.05, 0.05) embeddings, Adam epsilon 1e-8, the rate changed "
           "between fits with `optimizer.learning_rate.assign`). Surprise: library defaults (KNNBaseline's "
           "default similarity is MSD, user-based; the `pearson_baseline` row is the docs' recommendation). "
           "Fit s includes compilation (Keras traces each new model; recsys_jax compiles its epoch once and "
           "reuses it on later seeds); s/epoch is the median epoch of one fit. NOTEBOOK.md's figures are "
           "from one other random split.",
           ""]
    lines = verdicts(records)
    if lines:
        out += ["#### Is recsys_jax's `notebook` preset the notebook? (mean test RMSE within 0.01 of Keras; "
                "0.03 for dot)\n", *lines, ""]
    out.append(f"Device: {env.get('device')} ({env.get('cpu')}, {env.get('cpu_count')} cores); jax {env.get('jax')}, "
               f"keras {env.get('keras')}, scikit-surprise {env.get('surprise')}; commit {env.get('git_commit')}; "
               f"`{env.get('command')}`.")
    return "\n".join(out) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="seed 0 only, without SVD++")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    p.add_argument("--models", nargs="+", default=list(NOTEBOOK_MODELS), choices=NOTEBOOK_MODELS,
                   help="the notebook's models (mlp is its NN)")
    p.add_argument("--implementations", nargs="+", default=["keras", "recsys_jax", "surprise", "ranking", "myfm"],
                   choices=["keras", "recsys_jax", "surprise", "ranking", "myfm"],
                   help="ranking: popularity, recsys_jax's ials and ease, implicit's ALS and BPR under evaluate's "
                        "protocol and held-out users; myfm: myFM's Bayesian FM beside recsys_jax's bfm")
    p.add_argument("--surprise", nargs="+", default=list(SURPRISE_ALGOS), choices=SURPRISE_ALGOS, metavar="ALGO",
                   help="Surprise algorithms: " + ", ".join(SURPRISE_ALGOS))
    p.add_argument("--data-dir", default=None, help="where ml-latest-small is (default: $RECSYS_JAX_DATA, cache)")
    add_output_args(p)
    args = p.parse_args(argv)
    if args.quick:
        args.seeds = [0]
        args.surprise = [a for a in args.surprise if a != "SVD++"]
    try:
        if "keras" in args.implementations:
            _keras()
        if "surprise" in args.implementations:
            _surprise()
        if "ranking" in args.implementations:
            _implicit()
        if "myfm" in args.implementations:
            _myfm()
    except ImportError as e:
        print(f"[peers] {e}", file=sys.stderr)
        return 2
    files = resolve_outputs("peers", "peers", args, p)
    env = {**environment(), "keras": _version("keras"), "surprise": _version("scikit-surprise"),
           "libmf": _version("libmf"), "implicit": _version("implicit"), "myfm": _version("myfm")}
    ratings = load_movielens("ml-latest-small", args.data_dir, download=False)
    records = run(ratings, args.seeds, models=args.models, implementations=args.implementations,
                  surprise_algos=args.surprise, env=env)
    json_path = write_json(files.json, records)
    rating = [r for r in records if not r["protocol"].startswith("ranking")]
    ranking = [r for r in records if r["protocol"].startswith("ranking")]
    text = "\n".join(part for part in (markdown(rating, env) if rating else "",
                                        ranking_markdown(ranking, env) if ranking else "") if part)
    write_text(files.md, text)
    print(text)
    print_written("peers", files, json_path, files.md)
    return 0


if __name__ == "__main__":
    sys.exit(main())

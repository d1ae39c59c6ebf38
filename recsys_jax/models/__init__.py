"""Models. Every module has the same face:

- ``Config``: a NamedTuple of hyperparameters (JSON-serialisable, saved in checkpoints);
- ``Params``: a NamedTuple of arrays, shapes in comments;
- ``init(key, num_users, num_items, config) -> Params``;
- ``predict_one(params, user, item, key=None, *, config) -> float32[]`` (the formula);
- ``apply(params, users[B], items[B], key=None, *, config, aux=None, times=None)``
  ``-> float32[B]`` (vmap).

A model that needs constant data derived from the training split (SVD++'s implicit
feedback lists, timeSVD's per-user mean day) also has ``Aux`` (a NamedTuple of arrays)
and ``prepare(train_ratings, config) -> Aux``; `recsys_jax.train.fit` calls it and
checkpoints save the result. Time-aware models read ``times`` (float32 days since the
epoch) per pair; the others ignore it.

A model that is not trained by the gradient engine (a closed form, a sampler, an
autoencoder with its own optimiser) has ``fit_epochs(key, train, config, train_config, aux)``,
a generator of ``(params, train_loss)`` after each epoch; `recsys_jax.train.fit` then runs
its loop (validation after every epoch, best epoch, early stopping at ``patience``, at most
``train_config.epochs``) around it, and prediction is the module's ``apply`` as for every
other model.

`MODELS` is written out by hand: tests and benchmarks iterate over it, so listing a
model here gets it tested and benchmarked.
"""
from __future__ import annotations

import functools

import jax
import numpy as np

from recsys_jax.models import autorec, bias, bpmf, dot, fm, gmf, knn, mlp, neumf, svdpp, timesvd
from recsys_jax.models import _common, glocalk

MODELS = {
    "dot": dot,
    "bias": bias,
    "mlp": mlp,
    "gmf": gmf,
    "neumf": neumf,
    "svdpp": svdpp,
    "timesvd": timesvd,
    "fm": fm,
    "glocalk": glocalk,
    "autorec": autorec,
    "bpmf": bpmf,
    "knn": knn,
}


def get_model(name: str):
    """The model module registered as ``name``; a clear error lists the known names."""
    try:
        return MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(MODELS)}") from None


def make_config(name: str, **overrides):
    """The model's ``Config`` with ``overrides``; unknown fields are a clear error."""
    config_cls = get_model(name).Config
    unknown = set(overrides) - set(config_cls._fields)
    if unknown:
        raise ValueError(f"model {name!r} has no option(s) {sorted(unknown)}; options: {config_cls._fields}")
    if overrides.get("y_range") is not None:
        overrides["y_range"] = tuple(float(v) for v in overrides["y_range"])
        if len(overrides["y_range"]) != 2 or not overrides["y_range"][0] < overrides["y_range"][1]:
            raise ValueError(f"y_range must be (lo, hi) with lo < hi, got {overrides['y_range']}")
    if "embedding_dim" in overrides and int(overrides["embedding_dim"]) < 1:
        raise ValueError(f"embedding_dim must be >= 1, got {overrides['embedding_dim']}")
    for field, default in config_cls._field_defaults.items():  # JSON gives lists back
        if isinstance(default, tuple) and isinstance(overrides.get(field), list):
            overrides[field] = tuple(overrides[field])
    return config_cls(**overrides)


def static_config(config):
    """``config`` without what only the initial parameters read (``mean_rating``), so that
    two training splits give the same key to every compiled function."""
    return config._replace(mean_rating=0.0) if "mean_rating" in getattr(config, "_fields", ()) else config


def init_params(name: str, key, num_users: int, num_items: int, config):
    """``get_model(name).init(key, num_users, num_items, config)`` as one compiled program.

    The program is made once per (model, table sizes, ``static_config(config)``); the
    training mean enters as its argument (the initial offset, `_common.initial_offset` of
    ``config`` computed on the host as the module's own init does), so the same numbers
    come out as from the module's init run op by op, and a fit of another split of the
    same size reuses the program. Op by op, a new process loaded a dozen small programs
    from the compilation cache for the draws alone (0.2-0.3 s of a 1 s CLI fit)."""
    from recsys_jax import programs

    offset = np.float32(_common.initial_offset(config))
    static = static_config(config)
    program = _init_program(name, int(num_users), int(num_items), static)
    if programs.folder() is not None:  # the executable from disk, untraced (recsys_jax.programs)
        identity = repr(("init", name, int(num_users), int(num_items), static))
        program = _loaded(program, identity, key, offset)
    return program(key, offset)


_LOADED: dict = {}


def _loaded(program, identity, key, offset):
    from recsys_jax import programs

    sig = (identity, programs.key(identity, (key, offset), {}, {}))
    if sig not in _LOADED:
        _LOADED[sig] = programs.compile(program, (key, offset), {}, identity)[0]
    return _LOADED[sig]


@functools.lru_cache(maxsize=64)
def _init_program(name: str, num_users: int, num_items: int, config):
    init = get_model(name).init

    def program(key, offset):
        if "mean_rating" not in config._fields:
            return init(key, num_users, num_items, config)
        return init(key, num_users, num_items, config._replace(mean_rating=_common.Offset(offset)))

    return jax.jit(program)


def make_apply(name: str, config):
    """``apply(params, users, items, key=None, *, aux=None, times=None)``, config bound.

    Cached per ``(name, static_config(config))``, so the same function object comes back
    for every split and jitted callers (`recsys_jax.predict`, `recsys_jax.engine`) compile
    once per model and config. No model's ``apply`` reads ``mean_rating``: it sets the
    initial parameters only.

    When ``config.y_range = (lo, hi)`` the output ``x`` is squashed to
    ``lo + (hi - lo) * sigmoid(x)`` (fastai's y-range), a link applied to any model.

    For a model whose module defines ``score_matrix(params, *, config) -> float32[U, I]``
    (every pair at once: one matrix product for the dot-product family), the returned
    function carries it, squashed alike, as its ``score_matrix`` attribute;
    `recsys_jax.predict.predict_indices` uses it when the pairs are many for the catalogue.
    """
    return _make_apply(name, static_config(config))


@functools.lru_cache(maxsize=128)
def _make_apply(name: str, config):
    module = get_model(name)
    apply = functools.partial(module.apply, config=config)
    matrix = functools.partial(module.score_matrix, config=config) if hasattr(module, "score_matrix") else None
    y_range = getattr(config, "y_range", None)
    if y_range is not None:
        lo, hi = y_range
        raw_apply, raw_matrix = apply, matrix

        def apply(params, users, items, key=None, **kw):
            return lo + (hi - lo) * jax.nn.sigmoid(raw_apply(params, users, items, key, **kw))

        if raw_matrix is not None:
            def matrix(params):
                return lo + (hi - lo) * jax.nn.sigmoid(raw_matrix(params))
    if matrix is not None:
        apply.score_matrix = matrix
    return apply

"""Models: one module per model, each ending with its `ModelSpec`, and the registry.

Every model module has the same face:

- ``Config``: a NamedTuple of hyperparameters (JSON-serialisable, saved in checkpoints);
- ``Params``: a NamedTuple of arrays, shapes in comments;
- ``init(key, num_users, num_items, config) -> Params``;
- ``predict_one(params, user, item, key=None, *, config) -> float32[]`` (the formula);
- ``apply(params, users[B], items[B], key=None, *, config, aux=None, times=None)``
  ``-> float32[B]`` (vmap);
- ``SPEC``: a `recsys_jax.models.spec.ModelSpec` naming those and the model's optional
  capabilities (constant data from the training split, its own penalty, scores for a
  block of users, its own trainer, fold-in views, time, ...).

Code outside ``models/`` reads a model through its spec (`get_model`), never by its name.
A model that is not trained by the gradient engine (a closed form, a sampler, an
autoencoder with its own optimiser) has ``fit_epochs(key, train, config, train_config, aux, options)``,
a generator of ``(params, train_loss)`` after each epoch; `recsys_jax.training.fit.fit` then
runs its loop (validation after every epoch, best epoch, early stopping at ``patience``, at
most ``train_config.epochs``) around it, and prediction is the spec's ``apply`` as for
every other model.

`MODELS` is written out by hand: tests and benchmarks iterate over it, so listing a
model here gets it tested and benchmarked. A model defined elsewhere joins it with
`register`.
"""
from __future__ import annotations

import functools

import jax

from recsys_jax.models import (autorec, bfm, bias, bpmf, dot, ease, fm, glocalk, gmf, ials, knn, mlp, neumf, svdpp,
                               timesvd)
from recsys_jax.models._common import initial_offset
from recsys_jax.models.spec import FoldIn, ModelSpec

#: The registry, each model's name mapped to its `ModelSpec`.
#:
#: :meta hide-value:
MODELS: dict[str, ModelSpec] = {
    "dot": dot.SPEC,
    "bias": bias.SPEC,
    "mlp": mlp.SPEC,
    "gmf": gmf.SPEC,
    "neumf": neumf.SPEC,
    "svdpp": svdpp.SPEC,
    "timesvd": timesvd.SPEC,
    "fm": fm.SPEC,
    "glocalk": glocalk.SPEC,
    "autorec": autorec.SPEC,
    "bpmf": bpmf.SPEC,
    "bfm": bfm.SPEC,
    "knn": knn.SPEC,
    "ials": ials.SPEC,
    "ease": ease.SPEC,
}
DEFAULT_MODEL = bias.SPEC.name  # what `recsys-jax train` trains when no --model is given

__all__ = ["DEFAULT_MODEL", "FoldIn", "MODELS", "ModelSpec", "get_model", "initial_offset", "make_apply", "make_config",
           "register", "static_config"]


def register(spec: ModelSpec) -> ModelSpec:
    """Adds ``spec`` to `MODELS` under ``spec.name``: from then on it trains, predicts,
    recommends, folds in, saves and loads like the models above. A name already taken is
    an error (a different model under a known name would meet compiled functions cached
    for the old one)."""
    if not isinstance(spec, ModelSpec):
        raise TypeError(f"register: expected a ModelSpec, got {type(spec).__name__}")
    spec.check()
    if spec.name in MODELS:
        if MODELS[spec.name] is spec:
            return spec
        raise ValueError(f"register: a model named {spec.name!r} is already registered")
    MODELS[spec.name] = spec
    return spec


def get_model(name: str) -> ModelSpec:
    """The spec of the model registered as ``name``; a clear error lists the known names."""
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


def make_apply(name: str, config):
    """``apply(params, users, items, key=None, *, aux=None, times=None)``, config bound.

    Cached per ``(name, static_config(config))``, so the same function object comes back
    for every split and jitted callers (`recsys_jax.eval.predict`, `recsys_jax.engine.build`) compile
    once per model and config. No model's ``apply`` reads ``mean_rating``: it sets the
    initial parameters only.

    When ``config.y_range = (lo, hi)`` the output ``x`` is squashed to
    ``lo + (hi - lo) * sigmoid(x)`` (fastai's y-range), a link applied to any model.

    For a model whose spec has ``score_matrix(params, *, config) -> float32[U, I]``
    (every pair at once: one matrix product for the dot-product family), the returned
    function carries it, squashed alike, as its ``score_matrix`` attribute;
    `recsys_jax.eval.predict.predict_indices` uses it when the pairs are many for the catalogue.
    """
    return _make_apply(name, static_config(config))


@functools.lru_cache(maxsize=128)
def _make_apply(name: str, config):
    spec = get_model(name)
    apply = functools.partial(spec.apply, config=config)
    matrix = functools.partial(spec.score_matrix, config=config) if spec.score_matrix is not None else None
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

"""What a model is and what it can do: one `ModelSpec` per model.

Every model module ends with ``SPEC = ModelSpec(...)``, and the registry
(`recsys_jax.models.MODELS`) maps a name to it. Code outside ``models/`` asks the spec,
never the model's name: an optional capability is a field that is ``None`` (or ``False``)
when the model does not have it. As optax's ``GradientTransformation`` is a pair of
functions, a spec is a handful of functions and flags:

====================  ==============================================================================
field                 meaning
====================  ==============================================================================
``name``              the registry name (checkpoints record it)
``Config``            NamedTuple of hyperparameters, JSON-serialisable
``Params``            NamedTuple of arrays
``init``              ``init(key, num_users, num_items, config) -> Params``
``apply``             ``apply(params, users[B], items[B], key=None, *, config, aux=None, times=None)
                      -> float32[B]``
``predict_one``       the same for one pair, written as the formula (``apply`` is its vmap)
``Aux``, ``prepare``  constant data derived from the training split: ``prepare(train, config) -> Aux``
``configure``         ``configure(config, aux) -> config``: settings completed from that data
``penalty``           the touched-rows penalty of the model's objective
                      (`recsys_jax.objectives.penalties.make_model_penalty`); None: L2 on every
                      ``user_*``/``item_*`` row a rating uses
``score_matrix``      ``score_matrix(params, *, config) -> float32[U, I]``: every pair at once
``block_scores``      ``block_scores(params, users[C], config, aux, user_times) -> float32[C, I]``:
                      every item for a block of users, before any y-range squash
``fit_epochs``        its own trainer, ``fit_epochs(key, train, config, train_config, aux,
                      options)``: a generator of ``(params, train_loss)`` per epoch (the
                      gradient engine does not train it; ``options``, the engine's
                      `recsys_jax.engine.options.EngineOptions` or None, say whether it may
                      call the CPU kernels)
``folds_in``          a model with its own trainer whose new rows still fold in by gradient steps
``fold_in``           how ``aux`` describes rows being folded in (`FoldIn`)
``uses_time``         reads each rating's time (days since the epoch)
``row_local``         a rating reads only its user's and its item's rows (row-sparse optimizers,
                      row sharding)
``factorization``     ``"dot"`` (:math:`p_u^\\top q_i`) or ``"biased"``
                      (:math:`\\mu + b_u + b_i + p_u^\\top q_i`) for the plain matrix factorization
                      that alternating least squares, the fused CPU step and closed-form fold-in
                      solve; None for every other model
``item_vectors``      the ``item_*`` fields that make an item's learned vector (`similar` items,
                      maps); None: ``item_factors``, else every ``item_*`` table but biases;
                      ``()``: the model has none
``ranks``             an implicit-feedback model: trained on positives, its scores rank items
                      and are not ratings (no rating metrics, no predicted stars; ranking
                      metrics beside popularity instead)
``predict_std``       ``predict_std(params, users, items, *, aux, times) -> float32[B]``: the
                      posterior predictive standard deviation of a model that samples (``bfm``)
``level_probs``       ``level_probs(params, users, items, *, aux, times) -> float32[B, C]``: the
                      probability of each rating level (``aux.levels``) of a model sampled with
                      its own ordinal likelihood (``bfm`` with ``ordinal=True``)
``initial_carry``     a model that trains itself and can resume (``bfm``): ``initial_carry(key,
                      train, config, aux)`` is its chain before the first epoch; its
                      ``fit_epochs`` takes ``start=`` a saved carry and, with ``carry=True``,
                      yields ``(params, train_loss, carry)`` (`fit`'s ``checkpoint_dir``)
``keeps_last``        a sampler whose prediction, the mean over kept samples, only improves with
                      more sweeps: trained for its preset's sweeps on the whole training split
                      (no validation slice picks a sweep count from one noisy chain)
====================  ==============================================================================
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

FACTORIZATIONS = ("dot", "biased")


class FoldIn(NamedTuple):
    """How a model's ``aux`` describes the rows being folded in (`recsys_jax.use.foldin`).

    Each hook is None for a model whose ``aux`` has no per-user (per-item) part.

    - ``user_view(params, aux, others[M, L], mask[M, L], day[M]) -> (params, aux, aux_axes)``:
      the model as new users see it, ``aux`` describing the ``M`` users being solved
      (``aux_axes``: `jax.vmap` in_axes, 0 where ``aux`` holds one entry per user);
    - ``item_view(params, aux, others, mask, day)``: the same for new items;
    - ``append_user_aux(aux, items_per_user, day, first_index, ratings_per_user, config)
      -> aux``: ``aux`` with the new users' entries after the trained ones (from the items
      each rated, their mean day, and the ratings and model config where they matter: ease
      keeps the items rated at least its threshold); ``append_item_aux(aux, m) -> aux`` for
      ``m`` new items;
    - ``fixed_item_fields``: ``item_*`` fields a new item does not solve for (they stay 0);
    - ``solve_users(params, config, items_per_user, ratings_per_user) -> {field: rows}``:
      a model that trains itself but solves a new user exactly (ials: one ridge solve),
      its own rows for the new users, every item parameter fixed (ease: no rows, ``{}``;
      its ``append_user_aux`` records what the user liked).
    """

    user_view: Callable | None = None
    item_view: Callable | None = None
    append_user_aux: Callable | None = None
    append_item_aux: Callable | None = None
    fixed_item_fields: tuple = ()
    solve_users: Callable | None = None


class ModelSpec(NamedTuple):
    """A model: its functions and its capabilities (see the module docstring)."""

    name: str
    Config: type
    Params: type
    init: Callable
    apply: Callable
    predict_one: Callable | None = None
    Aux: type | None = None
    prepare: Callable | None = None
    configure: Callable | None = None
    penalty: Callable | None = None
    score_matrix: Callable | None = None
    block_scores: Callable | None = None
    fit_epochs: Callable | None = None
    folds_in: bool = False
    fold_in: FoldIn = FoldIn()
    uses_time: bool = False
    row_local: bool = False
    factorization: str | None = None
    item_vectors: tuple | None = None
    ranks: bool = False
    keeps_last: bool = False
    predict_std: Callable | None = None
    level_probs: Callable | None = None
    initial_carry: Callable | None = None
    doc: Any = None  # the module docstring: the model's maths

    def check(self) -> ModelSpec:
        """``self``, or a clear error for a spec that cannot work."""
        for field in ("Config", "Params"):
            if not hasattr(getattr(self, field), "_fields"):
                raise TypeError(f"model {self.name!r}: {field} must be a NamedTuple class")
        for field in ("init", "apply"):
            if not callable(getattr(self, field)):
                raise TypeError(f"model {self.name!r}: {field} must be a function")
        if (self.prepare is None) != (self.Aux is None):
            raise TypeError(f"model {self.name!r}: give both Aux and prepare, or neither")
        if self.factorization not in (None, *FACTORIZATIONS):
            raise ValueError(f"model {self.name!r}: factorization must be one of {FACTORIZATIONS} or None")
        return self

r"""Fold-in: a new user's (or movie's) parameters from a handful of ratings, the rest fixed.

A user the model has never seen has no row in its tables. Folding it in solves for that
row alone, every item parameter (and every shared layer) held at its trained value, by
minimising the user's part of the model's own training objective. For a user :math:`u`
with ratings :math:`r_i` of the items :math:`i \in R`, :math:`n = |R|`, and the bias model
(``TrainConfig.penalty = "touched"``, the default: L2 on every row a rating uses),

.. math::

   J(p_u, b_u) = \sum_{i \in R} \big(r_i - \mu - b_i - b_u - p_u^\top q_i\big)^2
                 + n\lambda\,\lVert p_u\rVert^2 + n\lambda_b\,b_u^2 .

With :math:`x_i = [q_i;\,1]`, :math:`w = [p_u;\,b_u]`, :math:`y_i = r_i - \mu - b_i` and
:math:`D = \operatorname{diag}(n\lambda, \dots, n\lambda, n\lambda_b)`, :math:`J` is the ridge
regression :math:`\lVert y - Xw\rVert^2 + w^\top D w`, whose gradient
:math:`2\big((X^\top X + D)w - X^\top y\big)` vanishes at the closed form

.. math::

   w^\star = (X^\top X + D)^{-1} X^\top y .

==========================  =================================================================
symbol                      meaning
==========================  =================================================================
:math:`q_i, b_i, \mu`       the trained ``item_factors[i]``, ``item_bias[i]``, ``global_bias``
                            (:math:`\mu = 0` for the notebook's ``global_mean=False``)
:math:`\lambda, \lambda_b`  ``TrainConfig.l2`` and ``bias_l2`` (`Penalty`)
:math:`n`                   the number of ratings given
==========================  =================================================================

The dot model is the same without the bias column (:math:`x_i = q_i`, :math:`y_i = r_i`,
:math:`D = n\lambda I`). The notebook presets' whole-table penalty (``penalty="table"``:
Keras' ``l2(λ)`` on the factor tables added to every mini-batch) sums over an epoch to
:math:`N\lambda\lVert p_u\rVert^2` with :math:`N` the number of ratings the model was fit on
and no penalty on biases: :math:`D = \operatorname{diag}(N\lambda, \dots, N\lambda, 0)`. A
new movie is the same with the roles swapped: :math:`x_u = [p_u;\,1]`,
:math:`y_u = r_u - \mu - b_u`, solving for :math:`[q_i;\,b_i]`. The system is
:math:`(K+1) \times (K+1)` per user, solved on the host in float64 (the pseudo-inverse, so
that :math:`\lambda = 0` with fewer ratings than factors gives the minimum-norm solution
instead of an error).

The closed form holds for ``dot`` and ``bias`` trained with squared error and no y-range.
Every other model (and those two with a y-range or another loss) takes ``steps`` steps of
Adam (``lr``) on the same objective, :math:`\sum_{i} \ell(\hat r_{ui}, r_i)` plus the
model's own penalty terms of the new row (its ``penalty``, or the name-based one), starting
from the mean of the trained rows: one compiled program per model and shape (the ratings
are padded to a power of two and masked; rows of similar length are solved at once with
`jax.vmap`). The objective is the training objective, however weakly it regularises: on
ml-latest-small (50 users held out of training, folded in; mean per-user test RMSE) NeuMF's
preset (``l2=0.01``) folds users in clearly worse than training placed them, its few
epochs having regularised more than the penalty does; with ``penalty=Penalty(0.1)``
fold-in does better than training did (re-solving trained users' rows). `Penalty`
overrides the objective's. The new row is evaluated
through a *one-row view* of the model: its ``user_*`` (or ``item_*``) tables replaced by
the row being solved, at index 0, and its ``aux`` made to describe that one user (SVD++:
:math:`N(u)` = the items just rated; timeSVD: the mean day of the ratings; the
factorization machine: no side features) or, for a new movie, to leave the users' data as
trained (SVD++: the users' :math:`N(u)` stay as they were, so the new movie's :math:`y_j`
stays 0; FM: the new movie has no side features, whose vocabulary is not saved).

Ratings without times are placed, for the time-aware model, at the last day of the
training period (the newest time bin), with the drift term zero.

`fold_in_user` / `fold_in_item` return a new `Recommender` with the row appended (raw id:
one more than the largest known, unless given; it must be larger than every known id so
that the id map stays sorted), its training pairs recorded, so that ``recommend`` and
``predict`` work for it at once; `fold_in_users` does many users in one solve.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from recsys_jax.data.ratings import UnknownIdError, days, lookup_ids
from recsys_jax.objectives.losses import LOSSES, PARAM_LOSSES
from recsys_jax.models import get_model, make_apply, static_config
from recsys_jax.objectives.penalties import make_model_penalty

STEPS = 300  # Adam steps of the gradient route: enough for the objective to settle (tests/test_foldin.py)
LR = 0.05  # rows start at 0 and end at |p| ~ 0.1-1: a few hundred steps of 0.05 cover that


class Penalty(NamedTuple):
    """The L2 of the training objective, as it falls on one row (see the module docstring)."""

    l2: float  # lambda, on factor rows
    bias_l2: float = 0.0  # lambda_b, on bias entries
    table_total: int | None = None  # penalty="table": N, the ratings the model was fit on; None: "touched"


def penalty_of(rec) -> Penalty:
    """The `Penalty` ``rec`` was trained with (its ``train_config``); without one, the
    ``default`` preset's for its model (a model loaded from an old checkpoint). For the
    whole-table penalty, :math:`N` is the number of recorded training pairs (the notebook
    presets, the only ones with that penalty, carve no validation slice, so these are
    exactly the ratings the model was fit on)."""
    tc = rec.train_config
    if tc is None:
        from recsys_jax.training.presets import get_preset

        try:
            d = get_preset("default", rec.model)
        except ValueError:
            return Penalty(0.1)
        return Penalty(float(d.l2), float(d.bias_l2))
    l2, bias_l2 = float(tc.get("l2", 0.0) or 0.0), float(tc.get("bias_l2", 0.0) or 0.0)
    if tc.get("penalty", "touched") == "table":
        total = 0 if rec.rated_items is None else len(rec.rated_items)
        return Penalty(l2, 0.0, total)
    return Penalty(l2, bias_l2)


def loss_of(rec) -> str:
    """The name of the loss ``rec`` was trained with (``"mse"`` when unknown)."""
    return (rec.train_config or {}).get("loss", "mse") if rec.loss is None else rec.loss


# -- the closed form -------------------------------------------------------------------
def ridge_rows(features, offsets, ratings, mask, diag) -> np.ndarray:
    r"""The ridge solutions :math:`w_m = (X_m^\top X_m + D_m)^{+} X_m^\top (r_m - o_m)`, float64[M, D].

    Args:
      features: float[M, L, D], the rows :math:`x` (padding rows are ignored).
      offsets: float[M, L], the fixed part of each prediction (:math:`\mu + b_i`, or 0).
      ratings: float[M, L]. mask: bool[M, L], False on padding.
      diag: float[M, D], the diagonal of :math:`D`.
    """
    mask = np.asarray(mask, bool)
    x = np.where(mask[..., None], np.asarray(features, np.float64), 0.0)
    y = np.where(mask, np.asarray(ratings, np.float64) - np.asarray(offsets, np.float64), 0.0)
    a = np.einsum("mld,mle->mde", x, x) + np.einsum("md,de->mde", np.asarray(diag, np.float64),
                                                     np.eye(x.shape[-1]))
    b = np.einsum("mld,ml->md", x, y)
    return np.einsum("mde,me->md", np.linalg.pinv(a, hermitian=True), b)


def _closed_form(rec, side: str, others, ratings, mask, pen: Penalty) -> dict[str, np.ndarray]:
    p = rec.params
    n = np.asarray(mask, bool).sum(axis=1).astype(np.float64)  # [M]
    table = p.item_factors if side == "user" else p.user_factors
    features = np.asarray(table, np.float64)[others]  # [M, L, K]
    offsets = np.zeros(features.shape[:2])
    biased = get_model(rec.model).factorization == "biased"
    if biased:
        mu = float(p.global_bias) if getattr(rec.config, "global_mean", True) else 0.0
        other_bias = np.asarray(p.item_bias if side == "user" else p.user_bias, np.float64)
        offsets = mu + other_bias[others]
        features = np.concatenate([features, np.ones(features.shape[:2] + (1,))], axis=-1)
    k = table.shape[1]
    if pen.table_total is None:
        factor_w, bias_w = pen.l2 * n, pen.bias_l2 * n
    else:
        factor_w, bias_w = np.full_like(n, pen.l2 * pen.table_total), np.zeros_like(n)
    diag = np.repeat(factor_w[:, None], k, axis=1)
    if biased:
        diag = np.concatenate([diag, bias_w[:, None]], axis=1)
    w = ridge_rows(features, offsets, ratings, mask, diag)
    rows = {f"{side}_factors": w[:, :k].astype(np.float32)}
    if biased:
        rows[f"{side}_bias"] = w[:, k].astype(np.float32)
    return rows


def uses_closed_form(rec) -> bool:
    """Whether `fold_in_user` solves ``rec``'s new rows in closed form (module docstring)."""
    return (get_model(rec.model).factorization is not None and getattr(rec.config, "y_range", None) is None and rec.loss is None
            and loss_of(rec) == "mse")


# -- one-row views: how the model's aux describes the new users or items (its spec's FoldIn) --
class View(NamedTuple):
    params: Any  # the params with the fixed part set up (the solved fields are overwritten per row)
    aux: Any  # the aux of the view
    aux_axes: Any  # vmap in_axes for aux: 0 where it holds one entry per row being solved


def _view(hook, params, aux, others, mask, day) -> View:
    """The model as the new rows see it: the spec's hook, or the model as trained."""
    return View(params, aux, None) if hook is None else View(*hook(params, aux, others, mask, day))


def _append_item_aux(rec, m: int):
    append = get_model(rec.model).fold_in.append_item_aux
    return rec.aux if append is None else append(rec.aux, m)


def solved_fields(model: str, params, side: str) -> tuple[str, ...]:
    """The ``Params`` fields a new row of ``side`` ("user" or "item") solves for (a new item
    leaves the spec's ``fold_in.fixed_item_fields`` at 0)."""
    fixed = get_model(model).fold_in.fixed_item_fields if side == "item" else ()
    return tuple(f for f in params._fields if f.startswith(f"{side}_") and f not in fixed)


# -- the gradient route ------------------------------------------------------------------
@functools.lru_cache(maxsize=32)
def _gradient_solver(model: str, config, side: str, loss: str, pen: Penalty, steps: int, lr: float,
                     fields: tuple[str, ...], aux_axes) -> Callable:
    """A jitted ``solve(view_params, view_aux, others[M, L], ratings[M, L], mask[M, L],
    times[M, L], loss_params) -> {field: rows[M, ...]}``: Adam on each row's objective,
    vmapped over the M rows. ``pen`` is static (the name-based penalty branches on it)."""
    spec = get_model(model)
    apply_fn = make_apply(model, config)
    uses_time = spec.uses_time
    param_loss = PARAM_LOSSES.get(loss)
    loss_fn = LOSSES.get(loss)
    if param_loss is None and loss_fn is None:
        raise ValueError(f"fold-in: unknown loss {loss!r}")
    optimizer = optax.adam(lr)
    table = pen.table_total is not None

    def solve_one(params, aux, others, ratings, mask, times, loss_params, rows0):
        zeros = jnp.zeros_like(others)
        users, items = (zeros, others) if side == "user" else (others, zeros)
        weight = mask.astype(jnp.float32)
        kw = {"times": times} if uses_time else {}
        penalty_fn = None if table else make_model_penalty(spec, config, aux, pen.l2, pen.bias_l2)

        def objective(rows):
            view = params._replace(**{f: rows[f][None] for f in fields})
            pred = apply_fn(view, users, items, aux=aux, **kw)
            per = param_loss.loss(loss_params, pred, ratings) if param_loss is not None else loss_fn(pred, ratings)
            total = jnp.sum(per * weight)
            if table:
                total = total + pen.l2 * pen.table_total * sum(
                    jnp.sum(jnp.square(rows[f])) for f in fields if not f.endswith("_bias"))
            else:
                total = total + penalty_fn(view, users, items, weight, **kw)
            return total


        def step(carry, _):
            rows, state = carry
            grads = jax.grad(objective)(rows)
            updates, state = optimizer.update(grads, state, rows)
            return (optax.apply_updates(rows, updates), state), None

        (rows, _), _ = jax.lax.scan(step, (rows0, optimizer.init(rows0)), None, length=steps)
        return rows

    return jax.jit(jax.vmap(solve_one, in_axes=(None, aux_axes, 0, 0, 0, 0, None, None)))


def start_rows(rec, side: str, fields) -> dict:
    """Where Adam starts: the mean of the trained rows of each field (the average user, or
    movie), zero for a model without trained rows."""
    trained = rec.trained_users if side == "user" else rec.trained_items
    out = {}
    for f in fields:
        table = np.asarray(getattr(rec.params, f), np.float32)
        rows = table if trained is None else table[np.asarray(trained, bool)]
        out[f] = jnp.asarray(rows.mean(axis=0) if len(rows) else np.zeros(table.shape[1:], np.float32))
    return out


def _padded(lists: list[np.ndarray], dtype, fill=0) -> np.ndarray:
    """Rows of different lengths as one [M', L'] array, M' and L' powers of two (few shapes)."""
    width = 1 << max(max(len(x) for x in lists) - 1, 0).bit_length()
    height = 1 << max(len(lists) - 1, 0).bit_length()
    out = np.full((height, max(width, 8)), fill, dtype)
    for m, x in enumerate(lists):
        out[m, :len(x)] = x
    return out


def solve_rows(rec, side: str, others: list[np.ndarray], ratings: list[np.ndarray], times: list[np.ndarray],
               *, steps: int | None = None, lr: float = LR, method: str = "auto", penalty: Penalty | None = None
               ) -> dict[str, np.ndarray]:
    """The new rows of ``side`` ("user" or "item"), one per entry of ``others`` (the indices
    of the items, or users, each new row rated), from ``ratings`` (float[L_m] each) at
    ``times`` (float32 days each): ``{field: float32[M, ...]}`` for `solved_fields`.
    ``method``: ``"auto"`` (the closed form where `uses_closed_form`, else Adam),
    ``"closed_form"`` or ``"gradient"``; ``penalty`` replaces the training objective's
    (`penalty_of`)."""
    if method not in ("auto", "closed_form", "gradient"):
        raise ValueError(f"fold-in: method must be 'auto', 'closed_form' or 'gradient', got {method!r}")
    spec = get_model(rec.model)
    if side == "user" and spec.fold_in.solve_users is not None:  # its own exact solve (ials)
        if not others or any(len(x) == 0 for x in others):
            raise ValueError("fold-in: every new row needs at least one rating")
        return spec.fold_in.solve_users(rec.params, rec.config, others, ratings)
    if spec.fit_epochs is not None and not spec.folds_in:
        raise ValueError(f"fold-in: model {rec.model!r} is not trained by steps on a row's parameters (it trains "
                         "itself: its spec's fit_epochs), so a new row cannot be solved with the others fixed; "
                         "retrain it with the new ratings")
    if method == "closed_form" and not uses_closed_form(rec):
        raise ValueError(f"fold-in: no closed form for model {rec.model!r} with this config and loss")
    if not others or any(len(x) == 0 for x in others):
        raise ValueError("fold-in: every new row needs at least one rating")
    pen = penalty_of(rec) if penalty is None else Penalty(*penalty)
    closed = method != "gradient" and uses_closed_form(rec)
    steps = STEPS if steps is None else int(steps)
    if steps < 1:
        raise ValueError(f"fold-in: steps must be >= 1, got {steps}")
    # Rows go in groups of similar length (the same power of two), so that a row with few
    # ratings is not padded to the longest one's length.
    width = np.array([1 << max(len(x) - 1, 0).bit_length() for x in others])
    out: dict[str, np.ndarray] = {}
    for w in np.unique(width):
        group = np.flatnonzero(width == w)
        rows = _solve_group(rec, side, [others[j] for j in group], [ratings[j] for j in group],
                            [times[j] for j in group], pen, closed, steps, lr)
        for f, v in rows.items():
            out.setdefault(f, np.zeros((len(others),) + v.shape[1:], np.float32))[group] = v
    return out


def _solve_group(rec, side, others, ratings, times, pen: Penalty, closed: bool, steps: int, lr: float):
    m = len(others)
    others_p = _padded(others, np.int32)
    mask = _padded([np.ones(len(x), bool) for x in others], bool, False)
    ratings_p = _padded([np.asarray(r, np.float32) for r in ratings], np.float32)
    times_p = _padded([np.asarray(t, np.float32) for t in times], np.float32)
    if closed:
        rows = _closed_form(rec, side, others_p, ratings_p, mask, pen)
        return {f: v[:m] for f, v in rows.items()}
    day = np.array([np.mean(t) for t in times] + [0.0] * (others_p.shape[0] - m), np.float32)
    hooks = get_model(rec.model).fold_in
    view = _view(hooks.user_view if side == "user" else hooks.item_view, rec.params, rec.aux, others_p, mask, day)
    fields = solved_fields(rec.model, rec.params, side)
    solver = _gradient_solver(rec.model, static_config(rec.config), side, loss_of(rec), pen, steps, float(lr),
                              fields, view.aux_axes)
    rows = solver(view.params, view.aux, jnp.asarray(others_p), jnp.asarray(ratings_p), jnp.asarray(mask),
                  jnp.asarray(times_p), rec.loss_params, start_rows(rec, side, fields))
    return {f: np.asarray(v)[:m] for f, v in rows.items()}


# -- from raw ids to a new Recommender ------------------------------------------------------
def _as_pairs(ratings, key: str, what: str, scale) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """``(raw ids int64[L], ratings float32[L], timestamps or None)`` from a dict or a DataFrame."""
    import pandas as pd

    stamps = None
    if isinstance(ratings, dict):
        if not ratings:
            raise ValueError(f"{what}: no ratings given")
        try:
            ids = np.array([int(k) for k in ratings], np.int64)
            values = np.array([float(v) for v in ratings.values()], np.float64)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{what}: ratings must map integer ids to numbers ({e})") from None
    elif isinstance(ratings, pd.DataFrame):
        missing = [c for c in (key, "rating") if c not in ratings.columns]
        if missing:
            raise ValueError(f"{what}: the DataFrame has no {' or '.join(missing)} column")
        if len(ratings) == 0:
            raise ValueError(f"{what}: no ratings given")
        ids = ratings[key].to_numpy()
        if ids.dtype.kind not in "iu":
            raise ValueError(f"{what}: {key} must be integers, got {ids.dtype}")
        ids = ids.astype(np.int64)
        values = ratings["rating"].to_numpy(np.float64)
        if "timestamp" in ratings.columns:
            stamps = ratings["timestamp"].to_numpy(np.float64)
    else:
        raise ValueError(f"{what}: ratings must be a dict {{{key}: rating}} or a DataFrame with {key} and rating "
                         f"columns, got {type(ratings).__name__}")
    if len(np.unique(ids)) != len(ids):
        raise ValueError(f"{what}: {key} {int(ids[np.argmax(np.unique(ids, return_counts=True)[1] > 1)])} "
                         "is rated twice")
    lo, hi = scale
    bad = ~np.isfinite(values) | (values < lo) | (values > hi)
    if bad.any():
        raise ValueError(f"{what}: rating {float(values[bad][0]):g} of {key} {int(ids[bad][0])} is outside the rating "
                         f"scale {lo:g}..{hi:g}")
    return ids, values.astype(np.float32), stamps


def _lookup_trained(ids, table_ids, trained, what: str, noun: str, unknown: str = "error") -> tuple[np.ndarray, np.ndarray]:
    """``(indices, kept)``: the indices of the ``ids`` with training ratings; with ``unknown="skip"``
    the others are dropped (``kept`` marks which), else they raise `UnknownIdError`."""
    if unknown not in ("error", "skip"):
        raise ValueError(f"{what}: unknown must be 'error' or 'skip', got {unknown!r}")
    index, found = lookup_ids(table_ids, ids)
    if trained is not None:
        found = found & np.asarray(trained, bool)[index]
    if not found.all() and (unknown == "error" or not found.any()):
        first = f"unknown {noun} id {int(ids[np.argmin(found)])}: not in the training data"
        raise UnknownIdError(f"{what}: {first}", cli=first)
    return index[found], found


def _days(rec, stamps, n: int) -> np.ndarray:
    """float32[n] days: the given timestamps, or the last day of the training period."""
    if stamps is not None:
        return days(np.broadcast_to(np.asarray(stamps, np.float64), (n,)))
    aux = rec.aux
    if aux is not None and hasattr(aux, "bin_days"):
        last = float(aux.first_day) + float(aux.bin_days) * rec.config.num_bins
        return np.full(n, last - 0.5 * float(aux.bin_days), np.float32)  # inside the last bin
    return np.zeros(n, np.float32)


def _new_ids(existing: np.ndarray, ids, m: int, what: str, noun: str) -> np.ndarray:
    top = int(existing.max()) if len(existing) else 0
    if ids is None:
        return np.arange(top + 1, top + 1 + m, dtype=np.int64)
    ids = np.asarray(ids, np.int64).reshape(-1)
    if len(ids) != m or np.any(np.diff(ids) <= 0) or (len(existing) and ids[0] <= top):
        raise ValueError(f"{what}: new {noun} ids must be increasing and larger than every known {noun} id "
                         f"({top}), got {ids.tolist()}")
    return ids


def _append_rows(table, rows) -> jnp.ndarray:
    return jnp.concatenate([jnp.asarray(table), jnp.asarray(rows, jnp.asarray(table).dtype)], axis=0)


def folds_in_users(model: str) -> bool:
    """Whether a new user of ``model`` can be folded in: a model trained by the gradient
    engine, one that trains itself but folds in by steps (``folds_in``), or one with its own
    solve (``FoldIn.solve_users``: ials, ease)."""
    spec = get_model(model)
    return spec.fit_epochs is None or spec.folds_in or spec.fold_in.solve_users is not None


def fold_in_users(rec, tables: list, *, user_ids=None, timestamps=None, steps: int | None = None, lr: float = LR,
                  unknown: str = "error", penalty: Penalty | None = None):
    """``rec`` with one new user per entry of ``tables`` (each ``{movieId: rating}`` or a
    DataFrame with ``movieId``, ``rating`` and optionally ``timestamp``), solved together;
    new raw ids ``user_ids`` (default: after the largest known). A movie without training
    ratings has no learned parameters: an `UnknownIdError`, or with ``unknown="skip"`` its
    rating is left out (a user left with none is still an error)."""

    what = "fold_in_user"
    if not tables:
        raise ValueError(f"{what}: no users given")
    items, values, times = [], [], []
    for table in tables:
        ids, r, stamps = _as_pairs(table, "movieId", what, rec.rating_scale)
        index, kept = _lookup_trained(ids, rec.item_ids, rec.trained_items, what, "movie", unknown)
        items.append(index)
        values.append(r[kept])
        stamps = stamps if stamps is not None else timestamps
        stamps = None if stamps is None else np.broadcast_to(np.asarray(stamps, np.float64), kept.shape)[kept]
        times.append(_days(rec, stamps, len(index)))
    new_ids = _new_ids(rec.user_ids, user_ids, len(tables), what, "user")
    rows = solve_rows(rec, "user", items, values, times, steps=steps, lr=lr, penalty=penalty)
    m, num_users = len(tables), rec.num_users
    params = rec.params._replace(**{
        f: _append_rows(getattr(rec.params, f), rows[f]) if f in rows
        else _append_rows(getattr(rec.params, f), np.zeros((m,) + getattr(rec.params, f).shape[1:]))
        for f in rec.params._fields if f.startswith("user_")})
    append = get_model(rec.model).fold_in.append_user_aux
    aux = rec.aux if append is None else append(rec.aux, items, np.array([t.mean() for t in times], np.float32),
                                                num_users, values, rec.config)
    trained_users = None if rec.trained_users is None else np.concatenate([rec.trained_users, np.ones(m, bool)])
    indptr, rated = rec.rated_indptr, rec.rated_items
    if indptr is not None:  # (a model that never recorded its training pairs keeps None)
        indptr = np.concatenate([indptr, indptr[-1] + np.cumsum([len(i) for i in items])]).astype(np.int64)
        rated = np.concatenate([rated, *[np.asarray(i, np.int32) for i in items]]).astype(np.int32)
    held = rec.held_out_indptr
    if held is not None:  # the new users held nothing out
        held = np.concatenate([held, np.full(m, held[-1], np.int64)])
    return rec._replace(params=params, aux=aux, user_ids=np.concatenate([rec.user_ids, new_ids]),
                        trained_users=trained_users, rated_indptr=indptr, rated_items=rated, held_out_indptr=held)


def fold_in_user(rec, ratings, *, user_id: int | None = None, timestamps=None, steps: int | None = None,
                 lr: float = LR, unknown: str = "error", penalty: Penalty | None = None):
    """``rec`` with one new user solved from ``ratings`` (see `fold_in_users`)."""
    return fold_in_users(rec, [ratings], user_ids=None if user_id is None else [user_id], timestamps=timestamps,
                         steps=steps, lr=lr, unknown=unknown, penalty=penalty)


def fold_in_item(rec, ratings, *, item_id: int | None = None, title: str | None = None, genres=None,
                 timestamps=None, steps: int | None = None, lr: float = LR, penalty: Penalty | None = None):
    """``rec`` with one new item solved from ``ratings`` (``{userId: rating}``, or a DataFrame
    with ``userId``, ``rating`` and optionally ``timestamp``), every user parameter fixed;
    raw id ``item_id`` (default: after the largest known), with ``title`` and ``genres``."""
    from recsys_jax.eval.metrics import pairs_by_user

    what = "fold_in_item"
    ids, r, stamps = _as_pairs(ratings, "userId", what, rec.rating_scale)
    users, _ = _lookup_trained(ids, rec.user_ids, rec.trained_users, what, "user")
    t = _days(rec, stamps if stamps is not None else timestamps, len(ids))
    new_id = _new_ids(rec.item_ids, None if item_id is None else [item_id], 1, what, "movie")
    rows = solve_rows(rec, "item", [users], [r], [t], steps=steps, lr=lr, penalty=penalty)
    params = rec.params._replace(**{
        f: _append_rows(getattr(rec.params, f), rows[f]) if f in rows
        else _append_rows(getattr(rec.params, f), np.zeros((1,) + getattr(rec.params, f).shape[1:]))
        for f in rec.params._fields if f.startswith("item_")})
    new_index = rec.num_items
    trained_items = None if rec.trained_items is None else np.concatenate([rec.trained_items, [True]])
    indptr, rated = rec.rated_indptr, rec.rated_items
    if indptr is not None:
        old_users = np.repeat(np.arange(rec.num_users), np.diff(indptr))
        indptr, rated = pairs_by_user(np.concatenate([old_users, users]),
                                      np.concatenate([rated, np.full(len(users), new_index)]), rec.num_users)
    titles = rec.titles
    if title is not None:
        titles = {**(titles or {}), int(new_id[0]): str(title)}
    all_genres = rec.genres
    if genres is not None:
        all_genres = {**(all_genres or {}), int(new_id[0]): tuple([genres] if isinstance(genres, str) else genres)}
    return rec._replace(params=params, aux=_append_item_aux(rec, 1),
                        item_ids=np.concatenate([rec.item_ids, new_id]), trained_items=trained_items,
                        rated_indptr=indptr, rated_items=rated, titles=titles, genres=all_genres)

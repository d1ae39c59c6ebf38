"""A trained model with its id maps: prediction by raw MovieLens ids.

`Recommender` bundles what prediction needs — the model's name and config, its params, the
sorted raw user and item ids that define the indices, the rating scale and the titles —
and is what `recsys_jax.checkpoint` saves and loads.

Unknown ids. JAX clamps out-of-range gather indices silently, so every raw id is checked
against the id maps before any device work. ``unknown="error"`` (the default) raises
`UnknownIdError` naming the first unknown id. ``unknown="fallback"`` predicts, for the
pairs with an unknown user or item, the part of the model that is still defined:

=====================  ===========================================================
case                   fallback prediction
=====================  ===========================================================
unknown user           :math:`\\mu + b_i`  (models without biases: the training mean)
unknown item           :math:`\\mu + b_u`  (models without biases: the training mean)
both unknown           :math:`\\mu`        (the training mean)
=====================  ===========================================================

(passed through the y-range squash when the model has one), then clipped to the scale.
A bias model without :math:`\\mu` (``global_mean=False``, the notebook's) falls back on
the training mean, as models without biases do.
`Recommender.fallbacks` says, pair by pair, which of these a prediction is (``"mu+b_i"``,
``"mu+b_u"``, ``"mu"``) or None where the model itself predicts.

A model trained with a loss that has parameters (`recsys_jax.losses.PARAM_LOSSES`, e.g.
``ordinal``) outputs scores; ``loss`` names that loss and ``loss_params`` holds its
parameters, and every prediction, the fallback's included, is the loss's ``predict`` of
the score (for ``ordinal``: the expected rating; `Recommender.rating_distribution` gives
the whole distribution over the levels).
"""
from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from recsys_jax.data.ratings import UnknownIdError, days, lookup_ids
from recsys_jax.losses import get_param_loss, ordinal_probs
from recsys_jax.models import get_model, make_apply
from recsys_jax.predict import predict_indices


class Recommender(NamedTuple):
    model: str  # a name in recsys_jax.models.MODELS
    config: Any  # the model's Config
    params: Any  # the model's Params
    user_ids: np.ndarray  # int64[U] sorted raw user ids
    item_ids: np.ndarray  # int64[I] sorted raw item ids
    rating_scale: tuple[float, float]
    titles: dict[int, str] | None = None  # raw item id -> title
    aux: Any = None  # the model's constant data from prepare(train), for models that have one
    loss: str | None = None  # a name in recsys_jax.losses.PARAM_LOSSES when the loss has parameters
    loss_params: Any = None  # that loss's Params
    trained_users: np.ndarray | None = None  # bool[U]: had training ratings (None: all did)
    trained_items: np.ndarray | None = None  # bool[I]

    @property
    def num_users(self) -> int:
        return int(self.user_ids.shape[0])

    @property
    def num_items(self) -> int:
        return int(self.item_ids.shape[0])

    def _link(self) -> dict:
        if self.loss is None:
            return {}
        return {"link": get_param_loss(self.loss).predict, "link_params": self.loss_params}

    def predict(self, raw_users, raw_items, *, unknown: str = "error", timestamps=None) -> np.ndarray:
        """Ratings for raw (user, item) id pairs, float32[N], clipped to the scale.

        ``timestamps`` (seconds since the epoch, one per pair) are read by time-aware
        models; without them such a model predicts each user at the mean day of that
        user's training ratings (where the user's drift term is zero).
        """
        return np.clip(self._predict(raw_users, raw_items, unknown, timestamps, self._link()), *self.rating_scale)

    def rating_distribution(self, raw_users, raw_items, *, unknown: str = "error",
                            timestamps=None) -> tuple[np.ndarray, np.ndarray]:
        """For a model trained with the ``ordinal`` loss: ``(levels float32[K], probs float32[N, K])``,
        the probability of each rating level for each pair (rows sum to 1)."""
        if self.loss != "ordinal":
            trained = "an element-wise loss (a point prediction)" if self.loss is None else f"the {self.loss} loss"
            raise ValueError(f"rating_distribution: needs a model trained with the ordinal loss; this one used {trained}")
        scores = self._predict(raw_users, raw_items, unknown, timestamps, {})
        return np.asarray(self.loss_params.levels), np.asarray(ordinal_probs(self.loss_params, jnp.asarray(scores)))

    def fallbacks(self, raw_users, raw_items) -> list[str | None]:
        """Per pair, which fallback ``unknown="fallback"`` predicts: ``"mu+b_i"`` (unknown
        user), ``"mu+b_u"`` (unknown item), ``"mu"`` (both unknown, or a model without
        biases), or None where both ids are known and the model predicts."""
        raw_users, raw_items, _, user_found, _, item_found = self._lookup(raw_users, raw_items)
        has_biases = self._has_bias_fallback()
        kinds: list[str | None] = []
        for u, i in zip(user_found.tolist(), item_found.tolist()):
            if u and i:
                kinds.append(None)
            elif not has_biases or not (u or i):
                kinds.append("mu")
            else:
                kinds.append("mu+b_u" if u else "mu+b_i")
        return kinds

    def _lookup(self, raw_users, raw_items):
        """(raw users, raw items, user indices, user known, item indices, item known)."""
        raw_users, raw_items = _as_id_array(raw_users, "user"), _as_id_array(raw_items, "item")
        if raw_users.shape != raw_items.shape:
            raise ValueError(
                f"predict: got {raw_users.shape[0]} user ids but {raw_items.shape[0]} item ids"
            )
        users, user_found = lookup_ids(self.user_ids, raw_users)
        items, item_found = lookup_ids(self.item_ids, raw_items)
        # An id in the maps but without training ratings has untrained parameters: unknown.
        if self.trained_users is not None:
            user_found = user_found & np.asarray(self.trained_users, bool)[users]
        if self.trained_items is not None:
            item_found = item_found & np.asarray(self.trained_items, bool)[items]
        return raw_users, raw_items, users, user_found, items, item_found

    def _predict(self, raw_users, raw_items, unknown, timestamps, link) -> np.ndarray:
        """Unclipped model outputs, through ``link`` when given (see `predict`)."""
        raw_users, raw_items, users, user_found, items, item_found = self._lookup(raw_users, raw_items)
        if unknown not in ("error", "fallback"):
            raise ValueError(f"predict: unknown must be 'error' or 'fallback', got {unknown!r}")
        if unknown == "error":
            for found, raw, what in ((user_found, raw_users, "user"), (item_found, raw_items, "item")):
                if not found.all():
                    first = f"unknown {what} id {int(raw[np.argmin(found)])}: not in the training data"
                    raise UnknownIdError(
                        f"{first} (pass unknown='fallback' for a bias-only prediction)",
                        cli=f"{first} (pass --fallback for a bias-only prediction)",
                    )
        known = user_found & item_found
        out = np.empty(raw_users.shape[0], np.float32)
        apply_fn = make_apply(self.model, self.config)
        times = None
        if getattr(get_model(self.model), "USES_TIME", False):
            if timestamps is None:
                times = np.asarray(self.aux.user_mean_day, np.float32)[users]
            else:
                times = days(np.broadcast_to(np.asarray(timestamps, np.float64), raw_users.shape))
            times = times[known]
        out[known] = predict_indices(apply_fn, self.params, users[known], items[known], aux=self.aux, times=times,
                                     **link)
        if not known.all():
            out[~known] = self._fallback(users[~known], user_found[~known], items[~known], item_found[~known], link)
        return out

    def _has_bias_fallback(self) -> bool:
        """Whether the model has mu, b_u and b_i to fall back on. The notebook's bias model
        (``global_mean=False``) has no mu: its b_u + b_i carry the mean between them, so
        either alone is no prediction; it falls back on the training mean."""
        return (all(hasattr(self.params, f) for f in ("global_bias", "user_bias", "item_bias"))
                and getattr(self.config, "global_mean", True))

    def _fallback(self, users, user_found, items, item_found, link=None) -> np.ndarray:
        p = self.params
        if not self._has_bias_fallback():
            return np.full(users.shape[0], self.config.mean_rating, np.float32)  # a rating already
        x = float(p.global_bias) + np.where(user_found, np.asarray(p.user_bias)[users], 0.0)
        x = x + np.where(item_found, np.asarray(p.item_bias)[items], 0.0)
        y_range = getattr(self.config, "y_range", None)
        if y_range is not None:
            lo, hi = y_range
            x = lo + (hi - lo) * np.asarray(jax.nn.sigmoid(x))
        if link:
            x = np.asarray(link["link"](link["link_params"], jnp.asarray(x, jnp.float32)))
        return x.astype(np.float32)

    def item_vectors(self) -> np.ndarray:
        """float32[I, D]: each item's learned representation, ``item_factors`` where the model
        has them, else its other ``item_*`` tables side by side (biases left out)."""
        fields = self.params._asdict()
        names = ["item_factors"] if "item_factors" in fields else [
            n for n in fields if n.startswith("item_") and not n.endswith("_bias")]
        if not names:
            raise ValueError(f"model {self.model!r} has no item factors to compare")
        return np.concatenate([np.asarray(fields[n]).reshape(self.num_items, -1) for n in names], axis=1)

    def similar_items(self, raw_item: int, n: int = 10):
        r"""The ``n`` items most similar to ``raw_item``: a DataFrame with ``movieId``,
        ``title`` and ``score``, best first.

        The score is the cosine similarity of the items' learned vectors
        (`item_vectors`), :math:`\cos(q_i, q_j) = q_i^\top q_j / (\lVert q_i\rVert\lVert q_j\rVert)`,
        computed against the whole catalogue at once and ranked with `jax.lax.top_k`.
        Candidates are the items with training ratings, ``raw_item`` itself excepted.
        """
        import pandas as pd

        if not isinstance(n, (int, np.integer)) or n < 1:
            raise ValueError(f"similar_items: n must be a positive integer, got {n!r}")
        _, _, _, _, items, found = self._lookup([0], [raw_item])
        if not found[0]:
            first = f"unknown item id {int(raw_item)}: not in the training data"
            raise UnknownIdError(first, cli=first)
        q = jnp.asarray(self.item_vectors())
        unit = q / jnp.maximum(jnp.linalg.norm(q, axis=1, keepdims=True), 1e-12)
        scores = unit @ unit[int(items[0])]
        candidate = np.ones(self.num_items, bool) if self.trained_items is None else np.asarray(self.trained_items, bool)
        candidate = candidate.copy()
        candidate[int(items[0])] = False
        k = min(int(n), int(candidate.sum()))
        top_scores, top = jax.lax.top_k(jnp.where(jnp.asarray(candidate), scores, -jnp.inf), k)
        ids = self.item_ids[np.asarray(top)]
        return pd.DataFrame({"movieId": ids.astype(np.int64), "title": [self.title(i) for i in ids],
                             "score": np.asarray(top_scores, np.float64)})

    def title(self, raw_item_id: int) -> str | None:
        return None if self.titles is None else self.titles.get(int(raw_item_id))


def _as_id_array(ids, what: str) -> np.ndarray:
    """A 1-D int64 array of ids; a clear error for floats with fractions, strings, 2-D input."""
    arr = np.asarray(ids)
    if arr.ndim == 0:
        arr = arr.reshape(1)
    if arr.ndim != 1:
        raise ValueError(f"predict: {what} ids must be 1-D, got shape {arr.shape}")
    if arr.dtype.kind in "iu":
        if arr.dtype.kind == "u" and arr.size and arr.max() > np.iinfo(np.int64).max:
            raise ValueError(f"predict: {what} id {int(arr.max())} is beyond the int64 range")
        return arr.astype(np.int64)
    if (
        arr.dtype.kind == "f" and arr.size and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr))
        and np.all(np.abs(arr) < 2.0**63)  # beyond int64 the cast would wrap to another id
    ):
        return arr.astype(np.int64)
    if arr.size == 0:
        return arr.astype(np.int64)
    raise ValueError(f"predict: {what} ids must be integers, got dtype {arr.dtype} ({arr[:3].tolist()}...)")

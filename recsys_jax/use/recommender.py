"""A trained model with its id maps: prediction by raw MovieLens ids.

`Recommender` bundles what prediction needs — the model's name and config, its params, the
sorted raw user and item ids that define the indices, the rating scale and the titles —
and is what `recsys_jax.use.checkpoint` saves and loads.

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

A model trained with a loss that has parameters (`recsys_jax.objectives.losses.PARAM_LOSSES`, e.g.
``ordinal``) outputs scores; ``loss`` names that loss and ``loss_params`` holds its
parameters, and every prediction, the fallback's included, is the loss's ``predict`` of
the score (for ``ordinal``: the expected rating; `Recommender.rating_distribution` gives
the whole distribution over the levels).

Recommending. `recommend` (one user) and `recommend_many` (a batch) score the whole
catalogue for each user at once (`recsys_jax.eval.metrics.make_score_fn`: one matrix product for
the dot-product family, the model's ``apply`` in blocks otherwise) and rank it with
`jax.lax.top_k`, leaving out what the user rated in training (``rated_indptr`` /
``rated_items``, the training split's pairs that ``recsys-jax train`` keeps), with optional
filters on a movie's number of training ratings and its genres; `users_for_item` ranks the
users for a movie; `score` adds a ``prediction`` column to a DataFrame of pairs.
`fold_in_user` / `fold_in_item` add a user or movie the model has never seen from a few
ratings (`recsys_jax.use.foldin`), and `evaluate` reports rating and ranking metrics on
held-out ratings beside a popularity baseline.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from recsys_jax.data.ratings import Ratings, UnknownIdError, days, lookup_ids
from recsys_jax.data.relational import movie_genres
from recsys_jax.objectives.losses import get_param_loss, ordinal_probs, param_loss_name
from recsys_jax.models import get_model, make_apply, static_config
from recsys_jax.eval.predict import predict_indices

if TYPE_CHECKING:
    from recsys_jax.training.fit import FitResult


class Recommender(NamedTuple):
    model: str  # a name in recsys_jax.models.MODELS
    config: Any  # the model's Config
    params: Any  # the model's Params
    user_ids: np.ndarray  # int64[U] sorted raw user ids
    item_ids: np.ndarray  # int64[I] sorted raw item ids
    rating_scale: tuple[float, float]
    titles: dict[int, str] | None = None  # raw item id -> title
    aux: Any = None  # the model's constant data from prepare(train), for models that have one
    loss: str | None = None  # a name in recsys_jax.objectives.losses.PARAM_LOSSES when the loss has parameters
    loss_params: Any = None  # that loss's Params
    trained_users: np.ndarray | None = None  # bool[U]: had training ratings (None: all did)
    trained_items: np.ndarray | None = None  # bool[I]
    # The training split's (user, item) pairs, validation slice included (the user rated those
    # too), as CSR: user u rated items rated_items[rated_indptr[u]:rated_indptr[u + 1]].
    rated_indptr: np.ndarray | None = None  # int64[U+1]
    rated_items: np.ndarray | None = None  # int32[N]
    genres: dict[int, tuple[str, ...]] | None = None  # raw item id -> its genres (movies.csv)
    train_config: dict | None = None  # the TrainConfig it was fit with (fold-in reads its loss and penalty)
    # The test part's pairs (what `recsys-jax train` held out), as CSR like rated_*: the user
    # rated those too, so `recommend` leaves them out unless told to include them (evaluation
    # only). None: not recorded (an older checkpoint, or a Recommender built without a split).
    held_out_indptr: np.ndarray | None = None  # int64[U+1]
    held_out_items: np.ndarray | None = None  # int32[M]

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

        A model that ranks (its spec's ``ranks``: implicit feedback) predicts no ratings:
        a ValueError says so (`recommend` ranks with its scores).
        """
        if get_model(self.model).ranks:
            raise ValueError(f"predict: the {self.model} model ranks items from implicit feedback; its scores are "
                             "not ratings (recommend and evaluate use them)")
        return np.clip(self._predict(raw_users, raw_items, unknown, timestamps, self._link()), *self.rating_scale)

    def predict_std(self, raw_users, raw_items, *, timestamps=None) -> np.ndarray:
        """For a model that samples its posterior (its spec's ``predict_std``: ``bfm``), the
        posterior predictive standard deviation of each rating, float32[N], beside `predict`'s
        posterior mean (the spread of the kept samples' predictions and the noise). Every id
        must be known (trained)."""
        spec = get_model(self.model)
        if spec.predict_std is None:
            raise ValueError(f"predict_std: the {self.model} model is a point estimate; bfm samples its posterior "
                             "and gives a predictive standard deviation")
        users, items, times = self._known_pairs("predict_std", raw_users, raw_items, timestamps)
        return np.asarray(spec.predict_std(self.params, users, items, aux=self.aux, times=times))

    def _known_pairs(self, caller: str, raw_users, raw_items, timestamps):
        """Indices and times (days; each user's mean training day without ``timestamps``) of
        pairs whose ids all have training ratings, else `UnknownIdError`."""
        raw_users, raw_items, users, user_found, items, item_found = self._lookup(raw_users, raw_items)
        if not (user_found.all() and item_found.all()):
            bad = raw_users[np.argmin(user_found)] if not user_found.all() else raw_items[np.argmin(item_found)]
            raise UnknownIdError(f"{caller}: id {int(bad)} has no training ratings")
        times = self._mean_days(users) if timestamps is None else days(
            np.broadcast_to(np.asarray(timestamps, np.float64), raw_users.shape))
        return jnp.asarray(users), jnp.asarray(items), None if times is None else jnp.asarray(times)

    def rating_distribution(self, raw_users, raw_items, *, unknown: str = "error",
                            timestamps=None) -> tuple[np.ndarray, np.ndarray]:
        """For a model trained with the ``ordinal`` loss (or ``bfm``'s ordinal probit, whose ids
        must all be known): ``(levels float32[K], probs float32[N, K])``, the probability of
        each rating level for each pair (rows sum to 1)."""
        spec = get_model(self.model)
        if spec.level_probs is not None and getattr(self.config, "ordinal", False):
            users, items, times = self._known_pairs("rating_distribution", raw_users, raw_items, timestamps)
            return (np.asarray(self.aux.levels),
                    np.asarray(spec.level_probs(self.params, users, items, aux=self.aux, times=times)))
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
        if get_model(self.model).uses_time:
            if timestamps is None:
                times = self._mean_days(users)
            else:
                times = days(np.broadcast_to(np.asarray(timestamps, np.float64), raw_users.shape))
            times = None if times is None else times[known]
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
        has them, else its other ``item_*`` tables side by side (biases left out); the spec's
        ``item_vectors`` names them instead (empty: the model has none, e.g. knn)."""
        fields = self.params._asdict()
        names = item_vector_fields(self.model, self.params)
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

    # -- recommending ----------------------------------------------------------------------
    def _score_inputs(self):
        """`recsys_jax.eval.metrics.ScoreInputs` for this model: time-aware models score each user at
        the mean day of its training ratings (as `predict` does without timestamps)."""
        from recsys_jax.eval.metrics import ScoreInputs

        user_times = None
        if get_model(self.model).uses_time and hasattr(self.aux, "user_mean_day"):
            user_times = jnp.asarray(self.aux.user_mean_day, jnp.float32)
        return ScoreInputs(self.params, self.aux, user_times, self.loss_params)

    def _score_fn(self):
        from recsys_jax.eval.metrics import make_score_fn

        link = None if self.loss is None else get_param_loss(self.loss).predict
        return make_score_fn(self.model, static_config(self.config), self.num_items, link=link)

    def _rated(self, what: str) -> tuple[np.ndarray, np.ndarray]:
        if self.rated_indptr is None or self.rated_items is None:
            raise ValueError(f"{what}: this model does not record which movies each user rated in training "
                             "(a checkpoint saved without them); retrain it with this version")
        return np.asarray(self.rated_indptr, np.int64), np.asarray(self.rated_items, np.int32)

    def item_counts(self) -> np.ndarray:
        """int64[I]: each item's number of ratings in the training split (validation slice included)."""
        _, items = self._rated("item_counts")
        return np.bincount(items, minlength=self.num_items).astype(np.int64)

    def known_genres(self) -> list[str]:
        """The genres of the catalogue (sorted), from movies.csv; a clear error without them."""
        if not self.genres:
            raise ValueError("genres: this model has no genres (its data set had no movies.csv, or the "
                             "checkpoint was saved without them)")
        return sorted({g for gs in self.genres.values() for g in gs})

    def _item_mask(self, min_ratings, genres, what: str) -> np.ndarray:
        """bool[I]: the items that may be recommended: trained, rated at least ``min_ratings``
        times in training, and of one of ``genres``."""
        mask = np.ones(self.num_items, bool) if self.trained_items is None else np.asarray(self.trained_items, bool)
        if min_ratings is not None:
            if isinstance(min_ratings, bool) or not isinstance(min_ratings, (int, np.integer)) or min_ratings < 0:
                raise ValueError(f"{what}: min_ratings must be a non-negative integer, got {min_ratings!r}")
            mask = mask & (self.item_counts() >= int(min_ratings))
        if genres is not None:
            wanted = [genres] if isinstance(genres, str) else list(genres)
            known = self.known_genres()
            unknown = [g for g in wanted if g not in known]
            if unknown or not wanted:
                raise ValueError(f"{what}: unknown genre {unknown[0] if unknown else '(none given)'!r}; "
                                 f"known genres: {', '.join(known)}")
            wanted_set = set(wanted)
            mask = mask & np.array([bool(wanted_set & set(self.genres.get(int(i), ()))) for i in self.item_ids])
        return mask

    def _known_users(self, raw_users, what: str) -> np.ndarray:
        """User indices of ``raw_users``; `UnknownIdError` for an id without training ratings."""
        raw_users = _as_id_array(raw_users, "user")
        users, found = lookup_ids(self.user_ids, raw_users)
        if self.trained_users is not None:
            found = found & np.asarray(self.trained_users, bool)[users]
        if not found.all():
            first = f"unknown user id {int(raw_users[np.argmin(found)])}: not in the training data"
            raise UnknownIdError(f"{what}: {first} (fold_in_user gives a new user from a few ratings)",
                                 cli=f"{first} (--rate gives a new user from a few ratings)")
        return users

    def _excluded(self, what: str, include_held_out: bool) -> tuple[np.ndarray, np.ndarray]:
        """The pairs `recommend` leaves out: the training pairs, and the held-out ones unless
        ``include_held_out``."""
        rated = self._rated(what)
        if include_held_out or self.held_out_indptr is None:
            return rated
        from recsys_jax.eval.metrics import merge_pairs

        return merge_pairs(rated, (self.held_out_indptr, self.held_out_items), self.num_users)

    def recommend_many(self, raw_users, n: int = 10, *, min_ratings: int | None = None, genres=None,
                       exclude_rated: bool = True, include_held_out: bool = False):
        r"""The ``n`` best items for each of ``raw_users``: a DataFrame with ``userId``, ``rank``
        (1 = best), ``movieId``, ``title`` and ``score``, users in the order given.

        ``score`` is the predicted rating :math:`\hat r_{ui}` before clipping to the rating scale
        (so that the order stays strict above the top of the scale). Every item is scored at
        once (`recsys_jax.eval.metrics.make_score_fn`: a matrix product for the dot-product family,
        the model's ``apply`` over the catalogue otherwise) and ranked with `jax.lax.top_k`,
        users in chunks. Candidates are the items with training ratings, less

        - with ``exclude_rated`` (default), every item the user rated in the data the model
          came from: in training (the validation slice included: `rated_items`) and in the
          test part it held out (`held_out_items`), unless ``include_held_out`` (for
          evaluation only: a held-out rating may then come back as a recommendation);
        - with ``min_ratings``, the items with fewer training ratings than that;
        - with ``genres`` (a name or a list), the items of none of those genres.

        A user with fewer than ``n`` candidates gets fewer rows.
        """
        import pandas as pd

        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
            raise ValueError(f"recommend: n must be a positive integer, got {n!r}")
        users = self._known_users(raw_users, "recommend")
        mask = self._item_mask(min_ratings, genres, "recommend")
        exclude = self._excluded("recommend (exclude_rated=True)", include_held_out) if exclude_rated else None
        if len(users) == 0 or not mask.any():
            return pd.DataFrame({"userId": np.zeros(0, np.int64), "rank": np.zeros(0, np.int64),
                                 "movieId": np.zeros(0, np.int64), "title": [], "score": np.zeros(0)})
        from recsys_jax.eval.metrics import top_k

        scores, top = top_k(self._score_fn(), self._score_inputs(), users, int(n), num_items=self.num_items,
                            exclude=exclude, item_mask=mask)
        keep = np.isfinite(scores)
        rows, cols = np.nonzero(keep)
        ids = self.item_ids[top[rows, cols]]
        return pd.DataFrame({"userId": self.user_ids[users[rows]].astype(np.int64), "rank": cols.astype(np.int64) + 1,
                             "movieId": ids.astype(np.int64), "title": [self.title(i) for i in ids],
                             "score": scores[rows, cols].astype(np.float64)})

    def recommend(self, raw_user: int, n: int = 10, *, min_ratings: int | None = None, genres=None,
                  exclude_rated: bool = True, include_held_out: bool = False):
        """The ``n`` best items for one user: a DataFrame with ``movieId``, ``title`` and
        ``score`` (the predicted rating), best first; see `recommend_many`."""
        table = self.recommend_many([raw_user], n, min_ratings=min_ratings, genres=genres,
                                    exclude_rated=exclude_rated, include_held_out=include_held_out)
        return table[["movieId", "title", "score"]].reset_index(drop=True)

    def users_for_item(self, raw_item: int, n: int = 10):
        """The ``n`` users predicted to like ``raw_item`` most: a DataFrame with ``userId`` and
        ``score`` (the predicted rating, unclipped), best first. Candidates are the users with
        training ratings who did not rate the item in training."""
        import pandas as pd

        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
            raise ValueError(f"users_for_item: n must be a positive integer, got {n!r}")
        _, _, _, _, items, found = self._lookup([0], [raw_item])
        if not found[0]:
            first = f"unknown item id {int(raw_item)}: not in the training data"
            raise UnknownIdError(first, cli=first)
        item = int(items[0])
        users = np.arange(self.num_users, dtype=np.int32)
        scores = self._predict_indices(users, np.full(self.num_users, item, np.int32))
        candidate = np.ones(self.num_users, bool) if self.trained_users is None else np.asarray(
            self.trained_users, bool).copy()
        indptr, rated = self._rated("users_for_item")
        raters = np.repeat(np.arange(self.num_users), np.diff(indptr))[rated == item]
        candidate[raters] = False
        k = min(int(n), int(candidate.sum()))
        top_scores, top = jax.lax.top_k(jnp.where(jnp.asarray(candidate), jnp.asarray(scores), -jnp.inf), k)
        return pd.DataFrame({"userId": self.user_ids[np.asarray(top)].astype(np.int64),
                             "score": np.asarray(top_scores, np.float64)})

    def _mean_days(self, users) -> np.ndarray | None:
        """Each user's mean training day, where the model records it (timesvd); else None
        (bfm: without a time, the day has no feature)."""
        mean_day = getattr(self.aux, "user_mean_day", None)
        return None if mean_day is None else np.asarray(mean_day, np.float32)[users]

    def _predict_indices(self, users, items, times=None, clip=None) -> np.ndarray:
        """The model's ratings for index pairs (through the loss's link), unclipped unless ``clip``;
        time-aware models at ``times`` (days), else at each user's mean training day."""
        apply_fn = make_apply(self.model, self.config)
        if get_model(self.model).uses_time and times is None:
            times = self._mean_days(users)
        elif not get_model(self.model).uses_time:
            times = None
        return predict_indices(apply_fn, self.params, users, items, aux=self.aux, times=times, clip=clip,
                               **self._link())

    def score(self, df, *, unknown: str = "error"):
        """``df`` (a DataFrame with ``userId`` and ``movieId`` columns, and ``timestamp`` read
        by time-aware models when present) with a ``prediction`` column added: `predict` of
        each row, clipped to the scale. The input is not changed."""
        import pandas as pd

        if not isinstance(df, pd.DataFrame):
            raise ValueError(f"score: expected a pandas DataFrame with userId and movieId columns, got "
                             f"{type(df).__name__}")
        missing = [c for c in ("userId", "movieId") if c not in df.columns]
        if missing:
            raise ValueError(f"score: the DataFrame has no {' or '.join(missing)} column (columns: "
                             f"{', '.join(map(str, df.columns))})")
        times = df["timestamp"].to_numpy() if "timestamp" in df.columns else None
        pred = self.predict(df["userId"].to_numpy(), df["movieId"].to_numpy(), unknown=unknown, timestamps=times)
        return df.assign(prediction=pred.astype(np.float64))

    # -- fold-in and evaluation ----------------------------------------------------------------
    def fold_in_user(self, ratings, *, user_id: int | None = None, timestamps=None, steps: int | None = None,
                     unknown: str = "error", penalty=None) -> "Recommender":
        """This model with one more user, solved from ``ratings`` (a dict ``{movieId: rating}``
        or a DataFrame with ``movieId``, ``rating`` and optionally ``timestamp`` columns) with
        every item parameter fixed: see `recsys_jax.use.foldin` (``unknown="skip"`` drops movies
        without training ratings; ``penalty``, a `recsys_jax.use.foldin.Penalty`, replaces the
        training objective's). The new user gets the raw id ``user_id`` (default: one more
        than the largest known), so ``rec.fold_in_user(r).recommend(id)`` works."""
        from recsys_jax.use import foldin

        return foldin.fold_in_user(self, ratings, user_id=user_id, timestamps=timestamps, steps=steps,
                                   unknown=unknown, penalty=penalty)

    def fold_in_item(self, ratings, *, item_id: int | None = None, title: str | None = None, genres=None,
                     timestamps=None, steps: int | None = None, penalty=None) -> "Recommender":
        """This model with one more item, solved from ``ratings`` (``{userId: rating}`` or a
        DataFrame with ``userId`` and ``rating``) with every user parameter fixed: see
        `recsys_jax.use.foldin`."""
        from recsys_jax.use import foldin

        return foldin.fold_in_item(self, ratings, item_id=item_id, title=title, genres=genres,
                                   timestamps=timestamps, steps=steps, penalty=penalty)

    def evaluate(self, test, *, k: int = 10, threshold: float | None = 4.0, min_ratings: int | None = None,
                 baseline: bool = True) -> dict:
        """Rating and ranking metrics on held-out ratings ``test`` (a `Ratings` of the same data
        set, e.g. the checkpoint's test split).

        Rating metrics: ``rmse`` and ``mae`` of every test pair, predicted by the model
        itself and clipped to the scale, as ``recsys-jax train`` scores its test split (pairs
        whose user or item had no training rating included). Ranking metrics at ``k``
        (`recsys_jax.eval.metrics.ranking_report`): a test item is relevant when rated at least
        ``threshold`` (None: every test item); the candidates of a user are *all items it did
        not rate in the training split* (the recorded `rated_items`), untrained items
        included; with ``min_ratings``, only items with at least that many training ratings
        (coverage is then a share of those). With ``baseline``, ``popularity`` holds the same
        ranking metrics for the non-personalised baseline that scores each item by its number
        of training ratings.
        """
        from recsys_jax.eval.metrics import broadcast_scores, mae, ranking_report, rmse

        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"evaluate: k must be a positive integer, got {k!r}")
        lo, hi = self.rating_scale
        if threshold is not None and not lo <= threshold <= hi:
            raise ValueError(f"evaluate: threshold {threshold:g} is outside the rating scale {lo:g}..{hi:g}")
        raw_users, raw_items = test.user_ids[test.users], test.item_ids[test.items]
        users, user_found = lookup_ids(self.user_ids, raw_users)
        items, item_found = lookup_ids(self.item_ids, raw_items)
        if not (user_found.all() and item_found.all()):
            bad = raw_users[np.argmin(user_found)] if not user_found.all() else raw_items[np.argmin(item_found)]
            what = "user" if not user_found.all() else "movie"
            raise ValueError(f"evaluate: test {what} id {int(bad)} is not in the model's id maps: the test ratings "
                             "do not come from the data set the model was trained on")
        exclude = self._rated("evaluate")
        item_mask = None
        if min_ratings is not None:
            if isinstance(min_ratings, bool) or not isinstance(min_ratings, (int, np.integer)) or min_ratings < 0:
                raise ValueError(f"evaluate: min_ratings must be a non-negative integer, got {min_ratings!r}")
            item_mask = self.item_counts() >= int(min_ratings)
        times = days(test.timestamps) if get_model(self.model).uses_time else None
        ranks = get_model(self.model).ranks  # scores that are not ratings: no rating metrics
        pred = None if ranks else self._predict_indices(users, items, times=times, clip=self.rating_scale)
        import dataclasses

        mapped = dataclasses.replace(test, users=users, items=items, user_ids=self.user_ids, item_ids=self.item_ids)
        out = {"rmse": None if ranks else rmse(pred, test.ratings), "mae": None if ranks else mae(pred, test.ratings),
               "num_test": len(test),
               **ranking_report(self._score_fn(), self._score_inputs(), mapped, k=k, exclude=exclude,
                                item_mask=item_mask, threshold=threshold),
               "threshold": threshold, "min_ratings": min_ratings,
               "candidates": "every item the user did not rate in the training split"
                             + ("" if min_ratings is None else f", with at least {min_ratings} training ratings")}
        if baseline:
            popularity = jnp.asarray(self.item_counts(), jnp.float32)
            out["popularity"] = ranking_report(broadcast_scores, popularity, mapped, k=k, exclude=exclude,
                                               item_mask=item_mask, threshold=threshold)
        return out

    def evaluate_held_out_users(self, given, target, *, cuts=None, baseline: bool = True) -> dict:
        r"""Strong generalisation (Liang et al. 2018; Rendle et al. 2021): each user of
        ``target`` (a `Ratings` of the same data set, of users the model was not trained on)
        is folded in from its pairs in ``given`` (`recsys_jax.use.foldin.fold_in_users`:
        the model's own solve for ``ials``, the liked items for ``ease``, the closed form or
        Adam for rating models; pairs of movies without training ratings are left out), and
        its best candidates, every movie with training ratings less the ones it was folded
        in from, are scored against its ``target`` movies: ``recall@20``, ``recall@50`` and
        ``ndcg@100`` by default (``cuts``; `recsys_jax.eval.metrics.held_out_report`).
        ``popularity`` holds the same for the movies ranked by their number of training
        ratings. Movies without training ratings are left out of both parts (the model knows
        nothing of them), and a target user left with no pair in either is not counted
        (``skipped_users``)."""
        from recsys_jax.eval.metrics import HELD_OUT_CUTS, broadcast_scores, held_out_report, top_k
        from recsys_jax.use import foldin

        cuts = HELD_OUT_CUTS if cuts is None else tuple(cuts)
        depth = max(k for _, k in cuts)
        if not foldin.folds_in_users(self.model):
            raise ValueError(f"evaluate_held_out_users: model {self.model!r} cannot fold a new user in (it trains "
                             "itself and has no solve for a new row): the held-out-users protocol needs one")
        trained = np.ones(self.num_items, bool) if self.trained_items is None else np.asarray(self.trained_items, bool)
        g_users, g_items = given.user_ids[given.users], given.item_ids[given.items]
        t_users, t_items = target.user_ids[target.users], target.item_ids[target.items]
        g_index, g_found = lookup_ids(self.item_ids, g_items)
        t_index, t_found = lookup_ids(self.item_ids, t_items)
        if not (g_found.all() and t_found.all()):
            raise ValueError("evaluate_held_out_users: a movie of the given or target ratings is not in the model's "
                             "id maps: they do not come from the data set the model was trained on")
        usable = trained[g_index]
        users = np.unique(t_users)
        if self.trained_users is not None:
            known, found = lookup_ids(self.user_ids, users)
            if np.any(found & np.asarray(self.trained_users, bool)[np.where(found, known, 0)]):
                raise ValueError("evaluate_held_out_users: a target user has training ratings: hold users out of "
                                 "training whole (recsys_jax.data.split.held_out_users_split)")
        def grouped(raw_users, keep):  # each user's rows (of those kept), users in the order of `users`
            order = np.argsort(raw_users, kind="stable")
            order = order[keep[order]]
            bounds = np.searchsorted(raw_users[order], users, side="left"), np.searchsorted(
                raw_users[order], users, side="right")
            return [order[lo:hi] for lo, hi in zip(*bounds)]

        # Only movies with training ratings: the model knows nothing of the others (Liang et al.
        # keep only the training set's items), so they are neither folded in nor to be found.
        tables, targets, kept = [], [], []
        for u, g_rows, t_rows in zip(users, grouped(g_users, usable), grouped(t_users, trained[t_index])):
            if len(g_rows) and len(t_rows):
                tables.append(dict(zip(g_items[g_rows].tolist(), np.asarray(given.ratings)[g_rows].tolist())))
                targets.append(t_index[t_rows])
                kept.append(u)
        if not kept:
            raise ValueError("evaluate_held_out_users: no target user has both a given pair and a target pair of "
                             "movies with training ratings")
        kept = np.asarray(kept)
        new = foldin.fold_in_users(self, tables)
        index = np.arange(self.num_users, self.num_users + len(kept))
        exclude = new._rated("evaluate_held_out_users")

        def ranked(score_fn, inputs):
            scores, top = top_k(score_fn, inputs, index, depth, num_items=self.num_items, exclude=exclude,
                                item_mask=trained)
            return np.where(np.isfinite(scores), top, -1)

        out = {**held_out_report(ranked(new._score_fn(), new._score_inputs()), targets, cuts),
               "skipped_users": int(len(users) - len(kept)),
               "candidates": "every movie with training ratings, less the ones the user was folded in from"}
        if baseline:
            popularity = jnp.asarray(self.item_counts(), jnp.float32)
            out["popularity"] = held_out_report(ranked(broadcast_scores, popularity), targets, cuts)
        return out

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


def item_vector_fields(model: str, params) -> list[str]:
    """The ``item_*`` fields of ``params`` that hold the items' learned vectors (see
    `Recommender.item_vectors`)."""
    named = get_model(model).item_vectors
    if named is not None:
        return list(named)
    fields = params._fields
    if "item_factors" in fields:
        return ["item_factors"]
    return [f for f in fields if f.startswith("item_") and not f.endswith("_bias")]


def to_recommender(ratings: Ratings, result: FitResult, *, train_split: Ratings | None = None,
                   held_out: Ratings | None = None) -> Recommender:
    """The trained model with the full data set's id maps, titles and genres, ready to save.

    The id maps cover the whole data set, but only the users and items that had training
    ratings count as known: an id seen only in the validation or test split has untrained
    parameters, so prediction treats it as unknown (an error, or the documented fallback).

    ``train_split`` (``ratings.take(split.train)``: the training split, validation slice
    included) is recorded as the pairs each user rated (`Recommender.rated_items`), which
    recommendations leave out and evaluation needs; ``held_out`` (``ratings.take(split.test)``)
    as the pairs recommendations leave out too (`Recommender.held_out_items`); the fit's
    `TrainConfig` is kept for fold-in (`recsys_jax.use.foldin`).

    A loss with parameters must be registered in `recsys_jax.objectives.losses.PARAM_LOSSES`: the
    recommender (and its checkpoint) names it.
    """
    titles = genres = None
    if ratings.movies is not None:
        rated = set(ratings.item_ids.tolist())
        titles = {int(i): str(t) for i, t in ratings.movies["title"].items() if i in rated}
        if "genres" in ratings.movies.columns:
            genres = {int(i): tuple(movie_genres(str(gs))) for i, gs in ratings.movies["genres"].items()
                      if i in rated}
    rated_pairs = {}
    if train_split is not None:
        from recsys_jax.eval.metrics import pairs_by_user

        indptr, items = pairs_by_user(train_split.users, train_split.items, ratings.num_users)
        rated_pairs = {"rated_indptr": indptr, "rated_items": items}
    if held_out is not None:
        from recsys_jax.eval.metrics import pairs_by_user

        indptr, items = pairs_by_user(held_out.users, held_out.items, ratings.num_users)
        rated_pairs.update(held_out_indptr=indptr, held_out_items=items)
    loss = None
    if result.loss is not None:
        loss = param_loss_name(result.loss)
        if loss is None:
            raise ValueError("to_recommender: the model was trained with a ParamLoss that is not registered "
                             "in recsys_jax.objectives.losses.PARAM_LOSSES; add it there under a name")
    return Recommender(result.model, result.model_config, result.params, ratings.user_ids,
                       ratings.item_ids, ratings.rating_scale, titles, result.aux, loss, result.loss_params,
                       result.trained_users, result.trained_items, genres=genres,
                       train_config=result.train_config._asdict(), **rated_pairs)

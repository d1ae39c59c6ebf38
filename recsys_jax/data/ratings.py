"""The `Ratings` container: explicit ratings as flat arrays plus the id maps.

Every loader (MovieLens variants, a user's own file, the synthetic generator) returns
a `Ratings`. Users and items are re-indexed to contiguous ``0..U-1`` and ``0..I-1``;
the raw ids are kept, sorted, in ``user_ids`` / ``item_ids`` so that

    raw id  -> index :  ``np.searchsorted(user_ids, raw)``  (see `user_index`)
    index   -> raw id:  ``user_ids[index]``

Splits and subsets share the id maps of the full data set, so an index means the same
user or item in train, validation and test.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd


class _Worded:
    """An error whose message may give advice twice: in Python's terms and the CLI's.

    ``message`` names arguments the way a Python caller passes them (``data_dir=``);
    ``cli`` is the same message naming the ``recsys-jax`` flags instead (``--data-dir``),
    and `cli_message` falls back to ``message`` when the advice has no flag.
    """

    def __init__(self, message: str = "", *, cli: str | None = None):
        super().__init__(message)
        self._cli = cli

    @property
    def cli_message(self) -> str:
        return self._cli if self._cli is not None else str(self)

    def __reduce__(self):  # pickling keeps both wordings
        return _rebuild, (type(self), str(self), self._cli)


def _rebuild(cls, message: str, cli: str | None):
    return cls(message, cli=cli)


class DataError(_Worded, ValueError):
    """A data file or archive that cannot be used; the message names the file and row."""


class UnknownIdError(_Worded, KeyError):
    """A raw user or item id that the id maps do not contain."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else ""


MAX_LEVELS = 64  # more distinct ratings than this is a continuous scale, not star levels (the ordinal models)

@dataclass(frozen=True)
class Ratings:
    """Explicit ratings, one row per (user, item) pair.

    Attributes:
      users: int32[N] user index in ``0..num_users-1``.
      items: int32[N] item index in ``0..num_items-1``.
      ratings: float32[N] the rating.
      timestamps: int64[N] seconds since the epoch (zeros where the source has none).
      user_ids: int64[U] sorted raw user ids; ``user_ids[u]`` is the raw id of index u.
      item_ids: int64[I] sorted raw item ids.
      movies: optional table indexed by raw item id with columns ``title``, ``genres``.
      name: where the data came from (a dataset name or a file path).
      rating_scale: (lowest, highest) rating the source allows.
      user_info: optional table indexed by raw user id with side information (ml-100k
        and ml-1m: ``age``, ``gender``, ``occupation``), used by the fm model.
    """

    users: np.ndarray
    items: np.ndarray
    ratings: np.ndarray
    timestamps: np.ndarray
    user_ids: np.ndarray
    item_ids: np.ndarray
    movies: pd.DataFrame | None = field(default=None, repr=False)
    name: str = ""
    rating_scale: tuple[float, float] = (0.5, 5.0)
    user_info: pd.DataFrame | None = field(default=None, repr=False)

    # -- construction -------------------------------------------------------------
    @classmethod
    def from_raw(
        cls,
        raw_users,
        raw_items,
        ratings,
        timestamps=None,
        *,
        movies: pd.DataFrame | None = None,
        name: str = "",
        rating_scale: tuple[float, float] = (0.5, 5.0),
    ) -> "Ratings":
        """Builds the contiguous indices and id maps from raw integer ids."""
        raw_users = np.asarray(raw_users, dtype=np.int64)
        raw_items = np.asarray(raw_items, dtype=np.int64)
        user_ids, users = np.unique(raw_users, return_inverse=True)
        item_ids, items = np.unique(raw_items, return_inverse=True)
        n = len(raw_users)
        if timestamps is None:
            timestamps = np.zeros(n, dtype=np.int64)
        return cls(
            users=users.astype(np.int32).reshape(n),
            items=items.astype(np.int32).reshape(n),
            ratings=np.asarray(ratings, dtype=np.float32),
            timestamps=np.asarray(timestamps, dtype=np.int64),
            user_ids=user_ids,
            item_ids=item_ids,
            movies=movies,
            name=name,
            rating_scale=(float(rating_scale[0]), float(rating_scale[1])),
        )

    # -- sizes --------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self.ratings.shape[0])

    @property
    def num_users(self) -> int:
        return int(self.user_ids.shape[0])

    @property
    def num_items(self) -> int:
        return int(self.item_ids.shape[0])

    # -- subsets --------------------------------------------------------------------
    def take(self, index) -> "Ratings":
        """The rows at ``index`` (int array or bool mask); id maps are shared."""
        index = np.asarray(index)
        return replace(
            self,
            users=self.users[index],
            items=self.items[index],
            ratings=self.ratings[index],
            timestamps=self.timestamps[index],
        )

    # -- id maps --------------------------------------------------------------------
    def user_index(self, raw_ids) -> np.ndarray:
        """Raw user ids -> int32 indices; `UnknownIdError` names the first unknown id."""
        return _lookup(self.user_ids, raw_ids, "user")

    def item_index(self, raw_ids) -> np.ndarray:
        """Raw item (movie) ids -> int32 indices; `UnknownIdError` on an unknown id."""
        return _lookup(self.item_ids, raw_ids, "item")

    def title(self, raw_item_id) -> str | None:
        """The movie title for a raw item id, or None when there is no movies table."""
        if self.movies is None or raw_item_id not in self.movies.index:
            return None
        return str(self.movies.loc[raw_item_id, "title"])


def lookup_ids(sorted_ids: np.ndarray, raw_ids) -> tuple[np.ndarray, np.ndarray]:
    """Positions of ``raw_ids`` in ``sorted_ids`` and a mask of which were found."""
    raw = np.asarray(raw_ids, dtype=np.int64)
    pos = np.searchsorted(sorted_ids, raw)
    pos_clipped = np.minimum(pos, max(len(sorted_ids) - 1, 0))
    found = (pos < len(sorted_ids)) & (sorted_ids[pos_clipped] == raw) if len(sorted_ids) else np.zeros(raw.shape, bool)
    return pos_clipped.astype(np.int32), found


def _lookup(sorted_ids: np.ndarray, raw_ids, what: str) -> np.ndarray:
    try:
        raw = np.asarray(raw_ids, dtype=np.int64)
    except (TypeError, ValueError) as e:
        raise UnknownIdError(f"{what} ids must be integers, got {raw_ids!r}") from e
    index, found = lookup_ids(sorted_ids, raw)
    if not np.all(found):
        first = raw.reshape(-1)[np.argmin(found.reshape(-1))]
        raise UnknownIdError(
            f"unknown {what} id {int(first)}: it does not occur in the training data "
            f"({len(sorted_ids)} known {what}s)"
        )
    return index


def days(timestamps) -> np.ndarray:
    """Seconds since the epoch -> float32 days since the epoch (time-aware models' unit)."""
    return (np.asarray(timestamps, np.float64) / 86_400.0).astype(np.float32)

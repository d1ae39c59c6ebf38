"""Ratings grouped by row for batched per-row solves: each row's ratings cut into pieces of
`PIECE` slots, whole rows packed into chunks of pieces, one list of device arrays per chunk.
Both sides of the ratings are grouped (`make_plan`): alternating least squares
(`recsys_jax.engine.als`) and BPMF's Gibbs sweeps (`recsys_jax.models.bpmf`) solve every
row of a side from one chunk at a time."""
from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp
import numpy as np
from jax import Array


PIECE = 16  # rating slots per piece of a row


CHUNK_PIECES = 2048  # pieces per jitted call, at least


class SidePlan(NamedTuple):
    """One side's chunks, lists of per-chunk device arrays (see `make_plan`)."""

    rows: list  # int32[G] per chunk: the global row of each local row (padding: the table size)
    piece_row: list  # int32[G] per chunk: the local row of each piece (padding: G)
    other: list  # int32[G, PIECE] per chunk: the other side's row of each rating slot (padding: its size)
    ratings: list  # float32[G, PIECE] per chunk (padding: 0)
    counts: Array  # float32[N]: each row's number of training ratings


class Plan(NamedTuple):
    user: SidePlan
    item: SidePlan
    num_ratings: int


def _side_plan(own: np.ndarray, other: np.ndarray, ratings: np.ndarray, num_rows: int, num_other: int,
               chunk_pieces: int) -> SidePlan:
    """Rows cut into pieces of `PIECE` ratings (the last one padded), whole rows packed into
    chunks of ``chunk_pieces`` pieces in row order; a row never straddles two chunks."""
    order = np.argsort(own, kind="stable")
    other_s, r_s = other[order], ratings[order].astype(np.float32)
    counts = np.bincount(own, minlength=num_rows)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rows = np.flatnonzero(counts)
    pieces = -(-counts[rows] // PIECE)
    # Greedy packing, in row order: a row that does not fit in the current chunk opens the next.
    first = np.empty(len(rows), np.int64)  # each row's first piece, as chunk * chunk_pieces + position
    pos = 0
    for j, k in enumerate(pieces.tolist()):
        if pos % chunk_pieces + k > chunk_pieces:
            pos += chunk_pieces - pos % chunk_pieces
        first[j] = pos
        pos += k
    num_chunks = max(1, -(-pos // chunk_pieces))
    total = num_chunks * chunk_pieces
    piece_row_global = np.repeat(np.arange(len(rows)), pieces)  # row (index into rows) of each piece
    piece_slot = np.concatenate([np.arange(k) for k in pieces.tolist()]) if len(rows) else np.zeros(0, np.int64)
    piece_at = first[piece_row_global] + piece_slot  # where each piece goes
    # local row ids: a row's index among the rows of its chunk
    chunk_of_row = first // chunk_pieces
    row_start_in_chunk = np.searchsorted(chunk_of_row, chunk_of_row, side="left")
    local = np.arange(len(rows)) - row_start_in_chunk
    piece_row = np.full(total, chunk_pieces, np.int32)
    piece_row[piece_at] = local[piece_row_global]
    row_ids = np.full(total, num_rows, np.int32)  # [chunk, local row]
    row_ids[chunk_of_row * chunk_pieces + local] = rows
    j = np.arange(PIECE)
    n_in_piece = np.minimum(counts[rows][piece_row_global] - piece_slot * PIECE, PIECE)
    valid = j[None, :] < n_in_piece[:, None]
    src = np.where(valid, starts[rows][piece_row_global][:, None] + piece_slot[:, None] * PIECE + j[None, :], 0)
    other_idx = np.full((total, PIECE), num_other, np.int32)  # padding: the extended table's zero row
    vals = np.zeros((total, PIECE), np.float32)
    other_idx[piece_at] = np.where(valid, other_s[src], num_other)
    vals[piece_at] = np.where(valid, r_s[src], 0.0)

    def split(a):
        return [jnp.asarray(x) for x in a.reshape((num_chunks, chunk_pieces) + a.shape[1:])]

    return SidePlan(split(row_ids), split(piece_row), split(other_idx), split(vals), jnp.asarray(counts, jnp.float32))


def chunk_pieces(own, num_rows: int) -> int:
    """Pieces per chunk for one side: `CHUNK_PIECES`, or the power of two that holds the
    longest row when that is more (so a program is compiled per side and size class)."""
    most = int(np.bincount(np.asarray(own), minlength=num_rows).max()) if len(own) else 0
    return max(CHUNK_PIECES, 1 << (max(-(-most // PIECE), 1) - 1).bit_length())


def make_plan(users, items, ratings, num_users: int, num_items: int) -> Plan:
    """Both sides' chunks (`_side_plan`), ``chunk_pieces`` pieces each."""
    users, items, ratings = (np.asarray(a) for a in (users, items, ratings))
    return Plan(_side_plan(users, items, ratings, num_users, num_items, chunk_pieces(users, num_users)),
                _side_plan(items, users, ratings, num_items, num_users, chunk_pieces(items, num_items)),
                len(ratings))

"""The blocked order of ratings: g x g blocks of users by items, visited one at a time.

`recsys_jax.engine.shuffle.block_order` groups the ratings once per fit; every epoch,
`recsys_jax.engine.shuffle.blocked_permutation` runs through the blocks in a random order, each
one shuffled by its own cipher; `recsys_jax.engine.epoch.run_epoch` cuts the batches from it.
Checked by hand on small cases, as a permutation, against the epoch's batches, and as
training (same accuracy as one shuffle of all the ratings on planted data).
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import recsys_jax.training.fit as train_mod
from recsys_jax.data import make_synthetic
from recsys_jax.training.experiment import carve_validation
from recsys_jax.models import get_model, make_config
from recsys_jax.engine.shuffle import Blocks, block_order, blocked_permutation
from recsys_jax.engine.config import TrainConfig
from recsys_jax.engine.epoch import epoch_grid, run_epoch
from recsys_jax.training.fit import fit


def test_block_order_by_hand():
    users = np.array([0, 1, 2, 3, 0, 1, 2, 3])
    items = np.array([0, 0, 1, 1, 2, 3, 3, 0])
    order, blocks = block_order(users, items, 2)
    # block = (u % 2) * 2 + i % 2: 0, 2, 1, 3, 0, 3, 1, 2
    np.testing.assert_array_equal(order, [0, 4, 2, 6, 1, 7, 3, 5])  # without an rng: stable within a block
    np.testing.assert_array_equal(blocks.sizes, [2, 2, 2, 2])
    np.testing.assert_array_equal(blocks.starts, [0, 2, 4, 6])
    _, blocks = block_order(np.arange(10), np.zeros(10, np.int64), 3)
    np.testing.assert_array_equal(blocks.sizes, [4, 0, 0, 3, 0, 0, 3, 0, 0])  # users 0,3,6,9 / 1,4,7 / 2,5,8
    with pytest.raises(ValueError, match="grid"):
        block_order(users, items, 0)


def test_block_order_shuffles_within_blocks_with_an_rng():
    rng = np.random.default_rng(0)
    users, items = rng.integers(0, 50, 3000), rng.integers(0, 40, 3000)
    plain, blocks = block_order(users, items, 3)
    order, same = block_order(users, items, 3, np.random.default_rng(1))
    np.testing.assert_array_equal(same.sizes, blocks.sizes)
    assert not np.array_equal(order, plain)
    for start, size in zip(blocks.starts, blocks.sizes):  # the same ratings in each block, in another order
        np.testing.assert_array_equal(np.sort(order[start:start + size]), plain[start:start + size])
    again, _ = block_order(users, items, 3, np.random.default_rng(1))
    np.testing.assert_array_equal(again, order)


def test_block_order_sorts_each_batch_sized_run_by_user():
    users = np.array([0, 1, 2, 3, 0, 1, 2, 3])
    items = np.array([0, 0, 1, 1, 2, 3, 3, 0])
    # Without an rng the blocks are [0, 4], [2, 6], [1, 7], [3, 5] (above); runs of 3 leave
    # pairs as they are, so sort a single block of 8 in runs of 3 by hand instead.
    order, blocks = block_order(np.array([5, 3, 4, 0, 2, 2, 1, 0]), np.zeros(8, np.int64), 1, chunk=3)
    np.testing.assert_array_equal(order, [1, 2, 0, 3, 4, 5, 7, 6])  # users 3 4 5 | 0 2 2 | 0 1 (ties stay)
    np.testing.assert_array_equal(blocks.sizes, [8])
    chunked, same = block_order(users, items, 2, chunk=1)  # runs of one: nothing moves
    np.testing.assert_array_equal(chunked, block_order(users, items, 2)[0])
    rng = np.random.default_rng(0)
    users, items = rng.integers(0, 50, 3000), rng.integers(0, 40, 3000)
    plain, blocks = block_order(users, items, 3, np.random.default_rng(1))
    order, same = block_order(users, items, 3, np.random.default_rng(1), chunk=64)
    np.testing.assert_array_equal(same.starts, blocks.starts)
    for start, size in zip(blocks.starts, blocks.sizes):
        for a in range(start, start + size, 64):  # each run: the same ratings, sorted by user
            b = min(a + 64, start + size)
            np.testing.assert_array_equal(np.sort(order[a:b]), np.sort(plain[a:b]))
            assert np.all(np.diff(users[order[a:b]]) >= 0)
    with pytest.raises(ValueError, match="chunk"):
        block_order(users, items, 3, chunk=0)


@pytest.fixture(scope="module")
def permute():
    return jax.jit(blocked_permutation, static_argnums=2)


def _blocks(sizes):
    sizes = np.asarray(sizes, np.int32)
    return Blocks(np.cumsum(sizes, dtype=np.int32) - sizes, sizes)


def _runs(got, sizes):
    """The permutation cut where its block changes: (block, entries) per run."""
    block_of = np.repeat(np.arange(len(sizes)), sizes)[got]
    cuts = np.flatnonzero(np.diff(block_of)) + 1
    return [(int(block_of[r[0]]), got[r]) for r in np.split(np.arange(len(got)), cuts)]


def test_blocked_permutation_visits_every_rating_once_block_by_block(permute):
    sizes = [37, 0, 64, 5, 100, 1, 0, 60, 33]  # empty blocks too
    blocks = _blocks(sizes)
    count = sum(sizes)
    got = np.asarray(permute(jax.random.key(0), blocks, count + 11))
    np.testing.assert_array_equal(np.sort(got[:count]), np.arange(count))
    assert not got[count:].any()
    runs = _runs(got[:count], sizes)
    assert len(runs) == sum(s > 0 for s in sizes)  # each block once, all its ratings together
    shifts = {}
    for block, entries in runs:
        start, size = blocks.starts[block], sizes[block]
        shifts[block] = entries[0] - start
        # a rotation of the block's grouped order
        np.testing.assert_array_equal(entries, start + (np.arange(size) + shifts[block]) % size)
    other = np.asarray(permute(jax.random.key(1), blocks, count + 11))
    np.testing.assert_array_equal(np.sort(other[:count]), np.arange(count))
    other_runs = _runs(other[:count], sizes)
    assert [b for b, _ in other_runs] != [b for b, _ in runs]  # another visiting order ...
    assert {b: e[0] - blocks.starts[b] for b, e in other_runs} != shifts  # ... and other starting points
    np.testing.assert_array_equal(np.asarray(permute(jax.random.key(0), blocks, count + 11)), got)


def test_run_epoch_cuts_its_batches_from_the_blocked_permutation():
    """A step that records its batch: the epoch's batches are the blocked permutation's,
    the last one masked after the ratings."""
    n, batch_size = 1000, 64
    rng = np.random.default_rng(0)
    users, items = rng.integers(0, 40, n).astype(np.int32), rng.integers(0, 30, n).astype(np.int32)
    order, blocks = block_order(users, items, 3, rng)
    users, items = users[order], items[order]
    ratings = np.arange(n, dtype=np.float32)  # the rating is the grouped position

    def step(state, batch, key):
        seen, i = state
        return (seen.at[i].set(jnp.where(batch.mask, batch.ratings, -1.0)), i + 1), jnp.float32(0)

    steps = -(-n // batch_size)
    run = jax.jit(lambda st, k, b: run_epoch(step, batch_size, st, jnp.asarray(users), jnp.asarray(items),
                                             jnp.asarray(ratings), k, blocks=b))
    key = jax.random.key(5)
    (seen, _), _ = run((jnp.zeros((steps, batch_size)), 0), key, blocks)
    perm_key, _ = jax.random.split(key)
    want = np.asarray(blocked_permutation(perm_key, blocks, n)).astype(np.float32)
    want = np.concatenate([want, -np.ones(steps * batch_size - n, np.float32)])
    np.testing.assert_array_equal(np.asarray(seen).ravel(), want)


def test_epoch_grid():
    bias = get_model("bias")
    small = bias.init(jax.random.key(0), 610, 9724, make_config("bias"))  # ml-latest-small: 2 MiB of tables
    large = bias.init(jax.random.key(0), 72_690, 27_916, make_config("bias"))  # 5M synthetic: 20 MiB
    tc = TrainConfig(batch_size=8192, optimizer="adagrad")
    assert epoch_grid(tc, small, 100_836) == 1
    assert epoch_grid(tc, large, 4_900_000) == 8  # isqrt(4.9M / (8 x 8192)) = 8
    assert epoch_grid(tc, large, 1_000_000) == 3
    assert epoch_grid(tc, large, 200_000) == 1  # fewer than 2 x 2 blocks of 8 batches
    assert epoch_grid(tc._replace(optimizer="adam"), large, 4_900_000) == 1  # dense: every row anyway
    assert epoch_grid(tc._replace(order="random"), large, 4_900_000) == 1
    assert epoch_grid(tc._replace(order="blocked"), small, 100_836) == 2  # asked for: at least 2 x 2
    assert epoch_grid(tc._replace(order="blocked"), large, 25_000_000) == 8  # at most MAX_GRID
    with pytest.raises(ValueError, match="unknown order 'sorted'"):
        epoch_grid(tc._replace(order="sorted"), small, 100)


@pytest.fixture(scope="module")
def planted():
    r, _ = make_synthetic(jax.random.key(0), 300, 200, 30_000)
    return carve_validation(r, 0, 0.1)


def test_blocked_fit_trains_as_well_as_one_shuffle(planted):
    train, val = planted
    tc = TrainConfig(epochs=4, batch_size=256, lr=0.1, schedule="constant", l2=1e-4, optimizer="adagrad")
    blocked = fit("bias", train, val, key=0, train_config=tc._replace(order="blocked"), progress=False)
    shuffled = fit("bias", train, val, key=0, train_config=tc._replace(order="random"), progress=False)
    assert epoch_grid(tc._replace(order="blocked"), blocked.params, len(train)) == 3
    got, want = blocked.history["val_rmse"][-1], shuffled.history["val_rmse"][-1]
    baseline = float(np.sqrt(np.mean((val.ratings - train.ratings.mean()) ** 2)))
    assert want < baseline - 0.1  # the planted structure is learnt ...
    assert abs(got - want) < 0.01, (got, want)  # ... as well in blocks
    again = fit("bias", train, val, key=0, train_config=tc._replace(order="blocked"), progress=False)
    for a, b in zip(jax.tree.leaves(again.params), jax.tree.leaves(blocked.params)):
        np.testing.assert_array_equal(a, b)  # same key, same result


def test_blocked_padded_epoch_is_the_exact_sizes(planted, monkeypatch):
    train, _ = planted
    tc = TrainConfig(epochs=2, batch_size=256, lr=0.05, l2=0.01, optimizer="sgd", order="blocked")
    shared = fit("bias", train, key=1, train_config=tc, progress=False)
    monkeypatch.setattr(train_mod, "padded_size", lambda n, b: None)
    exact = fit("bias", train, key=1, train_config=tc, progress=False)
    np.testing.assert_allclose(shared.history["train_loss"], exact.history["train_loss"], rtol=1e-6)
    for got, want in zip(jax.tree.leaves(shared.params), jax.tree.leaves(exact.params)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)


def test_blocked_order_is_for_one_device(planted):
    from recsys_jax.engine.sharding import make_mesh

    train, _ = planted
    with pytest.raises(ValueError, match="order='blocked' trains on one device"):
        fit("bias", train, train_config=TrainConfig(epochs=1, order="blocked"), mesh=make_mesh(1), progress=False)



def test_blocked_order_is_refused_where_it_is_not_built(planted):
    from recsys_jax.training.many import Member, fit_many
    from recsys_jax.training.ranking import fit_ranking

    train, _ = planted
    tc = TrainConfig(epochs=1, order="blocked")
    with pytest.raises(ValueError, match="fit_many: order='blocked'"):
        fit_many("bias", train, None, [Member()], train_config=tc)
    with pytest.raises(ValueError, match="fit_ranking: order='blocked'"):
        fit_ranking("bias", train, train_config=tc, progress=False)


def test_fit_names_an_unknown_order(planted):
    train, _ = planted
    with pytest.raises(ValueError, match="fit: unknown order 'sorted'; known orders: auto, random, blocked"):
        fit("bias", train, train_config=TrainConfig(epochs=1, order="sorted"), progress=False)

r"""A model defined outside recsys_jax, registered, then trained and used like the built-in ones.

    python scripts/custom_model.py            # ml-latest-small if found, else synthetic data
    python scripts/custom_model.py --quick    # 2 epochs on a small synthetic set

The model: biases plus a *bounded* interaction, the factor product squashed by tanh,

.. math::

   \hat r_{ui} = \mu + b_u + b_i + s \tanh\!\big(p_u^\top q_i\big),

=====================  ======================================
symbol                 argument
=====================  ======================================
:math:`\mu`            ``params.global_bias``
:math:`b_u, b_i`       ``params.user_bias[u]``, ``params.item_bias[i]``
:math:`p_u, q_i`       ``params.user_factors[u]``, ``params.item_factors[i]``
:math:`s`              ``config.scale`` (stars the interaction may move a rating)
=====================  ======================================

so no pair of factors can push a prediction more than :math:`s` stars from its baseline
:math:`\mu + b_u + b_i`. Everything the library needs is in `SPEC`; the rest of this file is
the model written as the formula. `recsys_jax.models.register(SPEC)` lists it in the
registry, after which `recsys_jax.fit`, prediction, recommendation, fold-in of a new user
and checkpoints work for it unchanged (a checkpoint records the model's name: register the
model before loading one).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import Array

import recsys_jax
from recsys_jax.eval.metrics import rmse
from recsys_jax.models import ModelSpec, initial_offset, register
from recsys_jax.training.experiment import predict_result


class Config(NamedTuple):
    embedding_dim: int = 16
    scale: float = 1.5  # s: the most stars the interaction may add or take away
    init_scale: float = 0.1  # std of the normal init of the factors
    mean_rating: float = 3.5  # set by fit to the training mean: mu starts there
    y_range: tuple[float, float] | None = None  # the library's optional sigmoid squash


class Params(NamedTuple):
    global_bias: Array  # float32[]
    user_bias: Array  # float32[U]
    item_bias: Array  # float32[I]
    user_factors: Array  # float32[U, K]
    item_factors: Array  # float32[I, K]


def init(key: Array, num_users: int, num_items: int, config: Config = Config()) -> Params:
    """Zero biases, factors from N(0, init_scale^2), mu at the training mean.

    ``initial_offset(config)`` is that mean (or its logit under a y-range): use it rather
    than ``config.mean_rating``, which the compiled init replaces by an argument."""
    ukey, ikey = jax.random.split(key)
    k = config.embedding_dim
    return Params(
        global_bias=jnp.asarray(initial_offset(config), jnp.float32),
        user_bias=jnp.zeros((num_users,), jnp.float32),
        item_bias=jnp.zeros((num_items,), jnp.float32),
        user_factors=config.init_scale * jax.random.normal(ukey, (num_users, k), jnp.float32),
        item_factors=config.init_scale * jax.random.normal(ikey, (num_items, k), jnp.float32),
    )


def predict_one(params: Params, user: Array, item: Array, key: Array | None = None, *,
                config: Config = Config()) -> Array:
    """r_ui = mu + b_u + b_i + s tanh(p_u . q_i)"""
    interaction = jnp.tanh(params.user_factors[user] @ params.item_factors[item])
    return params.global_bias + params.user_bias[user] + params.item_bias[item] + config.scale * interaction


def apply(params: Params, users: Array, items: Array, key: Array | None = None, *, config: Config = Config(),
          aux=None, times=None) -> Array:
    """`predict_one` over a batch of pairs: ``float32[B]``. (No dropout, no aux, no times.)"""
    return jax.vmap(lambda u, i: predict_one(params, u, i, config=config))(users, items)


SPEC = ModelSpec("tanh_mf", Config, Params, init, apply, predict_one=predict_one, doc=__doc__)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="2 epochs on a small synthetic set")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    register(SPEC)
    data = os.environ.get("RECSYS_JAX_DATA")
    if args.quick or not data or not (Path(data) / "ml-latest-small" / "ratings.csv").is_file():
        ratings, _ = recsys_jax.make_synthetic(jax.random.key(args.seed), 300, 200, 12_000, embedding_dim=4)
    else:
        ratings = recsys_jax.load_movielens("ml-latest-small", download=False)
    split = recsys_jax.random_split(ratings, args.seed, 0.2)
    train, test = ratings.take(split.train), ratings.take(split.test)
    inner = recsys_jax.random_split(train, args.seed, 0.1)  # the validation slice: from the training split only
    tc = recsys_jax.TrainConfig(epochs=2 if args.quick else 10, batch_size=256, lr=0.01, l2=1e-3, bias_l2=1e-4)
    result = recsys_jax.fit("tanh_mf", train.take(inner.train), train.take(inner.test), key=args.seed,
                            train_config=tc, progress=False)
    test_rmse = rmse(predict_result(result, test), test.ratings)
    print(f"tanh_mf: best epoch {result.best_epoch} of {tc.epochs} on the validation slice, test RMSE {test_rmse:.4f}")
    rec = recsys_jax.to_recommender(ratings, result, train_split=train)
    user = int(rec.user_ids[0])
    print(rec.recommend(user, 5).to_string(index=False))
    with tempfile.TemporaryDirectory() as tmp:
        recsys_jax.save_checkpoint(Path(tmp) / "tanh_mf", rec)
        again = recsys_jax.load_checkpoint(Path(tmp) / "tanh_mf")
    print("reloaded:", again.model, again.predict([user], [int(rec.item_ids[0])]))
    return 0


if __name__ == "__main__":
    sys.exit(main())

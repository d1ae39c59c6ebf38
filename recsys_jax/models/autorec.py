r"""I-AutoRec (Sedhain, Menon, Sanner and Xie, 2015): an autoencoder over each item's ratings.

Item :math:`i` is its partially observed vector of ratings by the :math:`U` users,
:math:`r_i \in \mathbb R^U` (an unobserved entry is 0 at the input). One hidden layer of
:math:`k` sigmoid units encodes it and a linear layer decodes it back to every user:

.. math::

   z_i = g(V r_i + \mu), \qquad h(r_i) = f(W z_i + b), \qquad \hat r_{ui} = h(r_i)_u
       = b_u + W_u^\top z_i,

:math:`g` the sigmoid, :math:`f` the identity (the paper's best pair, its Table 1b). It is
trained on the observed entries only, with L2 on both weight matrices:

.. math::

   \min_{V, W, \mu, b}\ \sum_{(u, i)\ \text{observed}} \big(r_{ui} - h(r_i)_u\big)^2
       + \frac{\lambda}{2}\big(\lVert W\rVert_F^2 + \lVert V\rVert_F^2\big)

=======================  ===================================================================
symbol                   argument
=======================  ===================================================================
:math:`V` (k x U)        ``params.user_encoder.T``: column :math:`u` is user u's input weights
:math:`W` (U x k)        ``params.user_decoder``: row :math:`W_u` is user u's output weights
:math:`b` (U)            ``params.user_bias``
:math:`\mu` (k)          ``params.hidden_bias``
:math:`z_i` (k)          ``params.item_code[i]``: the code of item i's training ratings
:math:`k`                ``config.embedding_dim`` (the paper's 500)
:math:`\lambda`          ``TrainConfig.l2`` (``bias_l2`` adds :math:`\tfrac{\lambda_b}{2}\lVert b\rVert^2`, 0 by default)
=======================  ===================================================================

With ``config.center`` (the default) the input entries are :math:`r_{ui} - \bar r`,
:math:`\bar r` the training mean, so that "unobserved" (0) reads as "average" rather than
as a rating below every real one; the targets are the raw ratings either way. With a
y-range :math:`(\ell, h)` the output is :math:`\ell + (h - \ell)\,\sigma(W z_i + b)` (the
library's sigmoid link, a sigmoid :math:`f`) in training as in prediction.

Denoising (not in the paper; on by default). With ``config.input_dropout`` :math:`= p > 0`
each training step drops every observed input entry with probability :math:`p` (the kept
ones scaled by :math:`1/(1-p)`) and weighs the squared error of a kept entry by
``config.kept_weight`` :math:`= \beta`, that of a dropped one by 1: the network is trained
mostly to predict ratings it was not shown, which is what prediction asks of it (Strub,
Gaudel and Mary's weighted denoising autoencoder, "Hybrid Recommender System based on
Autoencoders", DLRS 2016, with their :math:`\alpha = 1`). Without it the loss is minimised
largely by copying each input entry to its own output, and on ml-latest-small the paper's
model overfits: on the validation slice of seed 0's training split the plain model
(k = 500 with the best of :math:`\lambda \in \{0.1, 1, 10, 100, 300, 1000\}`, or k = 100)
validated worse than the bias model, and the denoising one with :math:`p = 0.5,\ \beta = 0.3`
better (`benchmarks.accuracy` compares the models on test splits, in the accuracy tables of
the benchmark results). ``input_dropout=0, embedding_dim=500`` is the paper's model. Codes and predictions
always read the whole, undropped input.

Prediction is cheap. After training the code :math:`z_i` depends on the parameters and the
training ratings only, so `fit_epochs` stores the table of codes, ``item_code`` float32[I, k],
in the parameters after every epoch, and ``predict_one`` is a gather and a dot product,
:math:`b_u + W_u^\top z_i`; `score_matrix` is every pair at once. An item with no training
ratings has the code :math:`g(\mu)` (an all-zero input).

Training (`fit_epochs`: the model trains itself, `recsys_jax.training.fit.fit` runs validation,
best epoch and early stopping around it). The observed ratings are laid out as a dense
[I, U] input matrix (float32) and mask (bool) on the device, at most `MAX_ENTRIES`
entries (about 1.3 GB; ml-latest-small is 5.9M entries, ml-1m 22.4M; ml-10m, at 746M, is
refused with a `ValueError`). An epoch is ``config.steps_per_epoch`` mini-batches of
``TrainConfig.batch_size`` items from shuffled passes over the items (a new pass starting
where one ends; 0: one pass, one batch when the batch size is at least I: full-batch), each
an Adam step (`recsys_jax.optim.optimizers`: ``lr``, ``schedule``, ``phases``, ``weight_decay``) on the
batch's squared errors scaled up to the whole item set plus the penalty; one compiled
program per epoch (a `jax.lax.scan` over the batches), then the codes of every item are
recomputed. The reported train loss is the objective divided by the number of training
ratings, averaged over the epoch's steps. The paper used RProp (full-batch; it found it as
good as L-BFGS and faster); RProp and L-BFGS were not tried here. Measured on the same
validation slice (plain model, k = 500, :math:`\lambda = 100`, on the CPU): Adam on batches
of 256 items, over 40 or 20 epochs, reached nearly the validation RMSE of 100 epochs of
full-batch Adam in a fraction of the time.

**The budget.** The default preset fixes ``steps_per_epoch`` = 76, one pass over
ml-latest-small's 9,724 movies in batches of 128, so that its 20 epochs are 1,520 Adam
steps on any catalogue: counted in passes, a catalogue of 1,682 movies (ml-100k's) would
get 280 steps and stop far short of where the settings were chosen.

The per-row `penalty` (what `recsys_jax.use.foldin` minimises for a new user) is the
objective's term of each user the batch touches, counted once:
:math:`\tfrac{\lambda}{2}(\lVert W_u\rVert^2 + \lVert V_{:,u}\rVert^2) + \tfrac{\lambda_b}{2} b_u^2`;
over a batch that touches every user it is the penalty above. A folded-in user is a ridge
fit of :math:`(W_u, b_u)` to the stored codes (its encoder row, which the stored codes do
not read, is only shrunk by the penalty). A folded-in item gets a code fitted freely to its
raters' decoder rows (`recsys_jax.use.foldin`'s generic route), not :math:`g(V r_i + \mu)`;
`encode` gives the autoencoder's own code of a rating vector.

Published figures (Sedhain et al., "AutoRec: Autoencoders Meet Collaborative Filtering",
WWW 2015 Companion, Table 1): I-AutoRec test RMSE 0.831 on MovieLens 1M and 0.782 on
MovieLens 10M (0.823 on Netflix), k = 500; random 90%/10% train/test splits with 10% of the
training split held out to tune :math:`\lambda \in \{0.001, 0.01, 0.1, 1, 100, 1000\}`, the
average over 5 splits (95% intervals within 0.003), a default rating of 3 for test users or
items without training ratings, trained with RProp.
"""
from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import Array

from recsys_jax.models._common import batched, biased_product, initial_offset
from recsys_jax.models.spec import ModelSpec
from recsys_jax.optim.optimizers import make_optimizer, make_schedule

MAX_ENTRIES = 1 << 28  # I * U at most: the dense float32 input and bool mask take 5 bytes per entry


class Config(NamedTuple):
    embedding_dim: int = 100  # k, the hidden units (the paper: 500; on ml-latest-small 500 overfit: see presets)
    center: bool = True  # inputs r_ui - mean (unobserved: 0, i.e. average); False: raw ratings, the paper's input
    input_dropout: float = 0.5  # training only: each observed input entry dropped with this probability (0: the paper)
    kept_weight: float = 0.3  # with dropout: the weight of the squared errors of the entries kept at the input
    steps_per_epoch: int = 0  # Adam steps per epoch whatever the catalogue size; 0: one pass over the items
    mean_rating: float = 3.5  # set by `fit` to the training mean: the initial b and the centring
    y_range: tuple[float, float] | None = None


class Params(NamedTuple):
    user_encoder: Array  # float32[U, K]: V^T
    user_decoder: Array  # float32[U, K]: W
    user_bias: Array  # float32[U]: b
    hidden_bias: Array  # float32[K]: mu
    item_code: Array  # float32[I, K]: z_i = sigmoid(V r_i + mu) of the training ratings (set by fit_epochs)


def init(key: Array, num_users: int, num_items: int, config: Config = Config()) -> Params:
    """Glorot-normal weights (std sqrt(2 / (U + k)): no scale to retune per data set), b at
    the training mean (its logit under a y-range), mu at 0, every code g(mu) (no ratings yet)."""
    ekey, dkey = jax.random.split(key)
    k = config.embedding_dim
    std = math.sqrt(2.0 / (num_users + k))
    hidden_bias = jnp.zeros((k,), jnp.float32)
    return Params(
        user_encoder=std * jax.random.normal(ekey, (num_users, k), jnp.float32),
        user_decoder=std * jax.random.normal(dkey, (num_users, k), jnp.float32),
        user_bias=jnp.full((num_users,), initial_offset(config), jnp.float32),
        hidden_bias=hidden_bias,
        item_code=jnp.broadcast_to(jax.nn.sigmoid(hidden_bias), (num_items, k)),
    )


def encode(params: Params, inputs: Array) -> Array:
    r"""The codes :math:`g(V r + \mu)` of input rows ``inputs`` float32[B, U] (unobserved: 0): float32[B, K]."""
    return jax.nn.sigmoid(inputs @ params.user_encoder + params.hidden_bias)


def decode(params: Params, codes: Array) -> Array:
    """The raw reconstructions ``W z + b`` of codes float32[B, K], every user: float32[B, U]."""
    return codes @ params.user_decoder.T + params.user_bias


def predict_one(params: Params, user: Array, item: Array, key: Array | None = None, *,
                config: Config = Config()) -> Array:
    """b_u + W_u . z_i  (`recsys_jax.models.make_apply` adds the y-range squash)"""
    return params.user_bias[user] + params.user_decoder[user] @ params.item_code[item]


def score_matrix(params: Params, *, config: Config = Config()) -> Array:
    r"""Every (user, item) pair at once, ``float32[U, I]``: :math:`b\,\mathbf 1^\top + W Z^\top`."""
    return biased_product(params.user_decoder, params.item_code, params.user_bias)


def penalty(params: Params, users: Array, items: Array, weight: Array, *, l2: float, bias_l2: float = 0.0,
            config: Config = Config(), aux=None, times: Array | None = None) -> Array:
    """sum over the users u with batch weight > 0, once each, of
    ``l2/2 (|W_u|^2 + |V_u|^2) + bias_l2/2 b_u^2`` (the objective's terms of those rows)."""
    touched = jnp.zeros(params.user_bias.shape[0], jnp.float32).at[users].add(weight) > 0
    rows = jnp.sum(jnp.square(params.user_encoder), axis=1) + jnp.sum(jnp.square(params.user_decoder), axis=1)
    return 0.5 * jnp.sum(jnp.where(touched, l2 * rows + bias_l2 * jnp.square(params.user_bias), 0.0))


apply = batched(predict_one)


# -- training ---------------------------------------------------------------------------------
def training_matrix(train, config: Config = Config()) -> tuple[np.ndarray, np.ndarray]:
    """``(inputs float32[I, U], observed bool[I, U])``: item i's row holds its training ratings
    (less ``config.mean_rating`` when ``config.center``), 0 where unobserved.

    Raises `ValueError` when I * U exceeds `MAX_ENTRIES`."""
    num_users, num_items = train.num_users, train.num_items
    if num_users * num_items > MAX_ENTRIES:
        raise ValueError(f"autorec: train has {num_items} items x {num_users} users = {num_users * num_items:,} "
                         f"entries; the dense input matrix holds at most MAX_ENTRIES = {MAX_ENTRIES:,} "
                         "(ml-1m's 22M fit, ml-10m's 746M do not)")
    ratings = np.asarray(train.ratings, np.float32)
    if config.center:
        ratings = ratings - np.float32(config.mean_rating)
    inputs = np.zeros((num_items, num_users), np.float32)
    observed = np.zeros((num_items, num_users), bool)
    inputs[train.items, train.users] = ratings
    observed[train.items, train.users] = True
    return inputs, observed


def _output(params: Params, codes: Array, config: Config) -> Array:
    x = decode(params, codes)
    if config.y_range is None:
        return x
    lo, hi = config.y_range
    return lo + (hi - lo) * jax.nn.sigmoid(x)


def objective(weights: Params, inputs: Array, observed: Array, *, config: Config, l2: float,
              bias_l2: float = 0.0, scale: float = 1.0, penalty_share: float = 1.0, keep: Array | None = None) -> Array:
    r"""``scale * SSE + penalty_share * (l2/2 (|W|^2 + |V|^2) + bias_l2/2 |b|^2)`` for the rows
    ``inputs`` float32[B, U], ``observed`` bool[B, U] (``weights``: the params, codes unused).

    The targets of the observed entries are read back from the inputs (plus the mean when
    centred). With ``scale = 1`` and ``penalty_share = 1`` on every item, it is the objective
    of the module docstring."""
    offset = config.mean_rating if config.center else 0.0
    x = inputs if keep is None else jnp.where(keep, inputs / (1.0 - config.input_dropout), 0.0)
    pred = _output(weights, encode(weights, x), config)
    err = jnp.square(pred - (inputs + offset))
    if keep is not None:
        err = jnp.where(keep, config.kept_weight * err, err)
    sse = jnp.sum(jnp.where(observed, err, 0.0))
    reg = (l2 * (jnp.sum(jnp.square(weights.user_decoder)) + jnp.sum(jnp.square(weights.user_encoder)))
           + bias_l2 * jnp.sum(jnp.square(weights.user_bias)))
    return scale * sse + penalty_share * 0.5 * reg


def item_codes(params: Params, inputs: Array, block: int = 4096) -> Array:
    """``encode`` of every row of ``inputs`` [I, U], ``block`` rows at a time: float32[I, K]."""
    num_items = inputs.shape[0]
    b = min(block, num_items)
    nb = -(-num_items // b)
    padded = jnp.pad(inputs, ((0, nb * b - num_items), (0, 0)))
    codes = jax.lax.map(lambda x: encode(params, x), padded.reshape(nb, b, -1))
    return codes.reshape(nb * b, -1)[:num_items]


def epoch_steps(config: Config, num_items: int, batch_size: int) -> int:
    """Adam steps in one epoch: ``config.steps_per_epoch``, or one pass over the items in
    batches of ``batch_size`` when it is 0."""
    return int(config.steps_per_epoch) or -(-num_items // min(int(batch_size), num_items))


@functools.lru_cache(maxsize=16)
def _epoch_program(config: Config, tc, num_items: int, batch: int, num_batches: int, steps: int) -> tuple:
    """``(optimizer, epoch)``: ``epoch(weights, opt_state, inputs, observed, num_ratings, key)
    -> (params with fresh codes, opt_state, mean loss)``, jitted; cached per settings and shape.
    An epoch is ``steps`` batches of shuffled passes over the items (``num_batches`` a pass,
    its last batch partial), a new pass starting where one ends."""
    schedule = make_schedule(tc.schedule, tc.lr, tc.epochs * steps, steps_per_epoch=steps, phases=tc.phases)
    passes = -(-steps // num_batches)
    optimizer = make_optimizer(schedule, weight_decay=tc.weight_decay)

    def step(carry, xs):
        weights, opt_state, inputs, observed, norm = carry
        rows, valid, k = xs
        x = inputs[rows]
        m = observed[rows] & valid[:, None]
        keep = None if not config.input_dropout else jax.random.bernoulli(k, 1.0 - config.input_dropout, x.shape)

        def loss_fn(w):
            # The batch's share of the whole objective, over the number of training ratings.
            return objective(w, x, m, config=config, l2=tc.l2, bias_l2=tc.bias_l2, scale=num_batches / norm,
                             penalty_share=1.0 / norm, keep=keep)

        loss, grads = jax.value_and_grad(loss_fn)(weights)
        updates, opt_state = optimizer.update(grads, opt_state, weights)
        return (optax.apply_updates(weights, updates), opt_state, inputs, observed, norm), loss

    @jax.jit
    def epoch(weights, opt_state, inputs, observed, num_ratings, key):
        perm_key, drop_key = jax.random.split(key)
        pad = jnp.zeros(num_batches * batch - num_items, jnp.int32)
        keys = [perm_key] + [jax.random.fold_in(perm_key, p) for p in range(1, passes)]
        order = jnp.concatenate([jnp.concatenate([jax.random.permutation(k, num_items).astype(jnp.int32), pad])
                                 for k in keys])[:steps * batch]
        valid = jnp.tile(jnp.arange(num_batches * batch) < num_items, passes)[:steps * batch]
        xs = (order.reshape(steps, batch), valid.reshape(steps, batch), jax.random.split(drop_key, steps))
        norm = jnp.asarray(num_ratings, jnp.float32)
        (weights, opt_state, *_), losses = jax.lax.scan(step, (weights, opt_state, inputs, observed, norm), xs)
        params = weights._replace(item_code=item_codes(weights, inputs))
        return params, opt_state, jnp.mean(losses)

    return optimizer, epoch


def fit_epochs(key: Array, train, config: Config, train_config, aux=None, options=None):
    """Yields ``(params, train_loss)`` after each epoch, ``train_config.epochs`` of them (see the
    module docstring). Reads ``epochs``, ``batch_size`` (items per step), ``lr``, ``schedule``,
    ``phases``, ``weight_decay``, ``l2`` (lambda) and ``bias_l2`` of the `TrainConfig`; the loss
    is squared error (``loss`` must be ``"mse"``) and ``optimizer`` must be ``"adam"``."""
    tc = train_config
    if tc.loss != "mse":
        raise ValueError(f"autorec: train_config.loss must be 'mse' (AutoRec's squared error), got {tc.loss!r}")
    if tc.optimizer != "adam":
        raise ValueError(f"autorec: train_config.optimizer must be 'adam' (its own dense step), got {tc.optimizer!r}")
    if tc.batch_size < 1 or tc.epochs < 1:
        raise ValueError(f"autorec: train_config.epochs and batch_size must be >= 1, got {tc.epochs}, {tc.batch_size}")
    inputs, observed = training_matrix(train, config)
    num_items = train.num_items
    batch = min(int(tc.batch_size), num_items)
    num_batches = -(-num_items // batch)
    optimizer, epoch = _epoch_program(config._replace(mean_rating=float(config.mean_rating)), tc, num_items, batch,
                                      num_batches, epoch_steps(config, num_items, batch))
    init_key, key = jax.random.split(key)
    params = init(init_key, train.num_users, num_items, config)
    weights = params._replace(item_code=None)  # the codes are computed, not trained
    opt_state = optimizer.init(weights)
    inputs, observed = jnp.asarray(inputs), jnp.asarray(observed)
    for e in range(1, tc.epochs + 1):
        params, opt_state, loss = epoch(weights, opt_state, inputs, observed, len(train),
                                        jax.random.fold_in(key, e))
        weights = params._replace(item_code=None)
        yield params, float(loss)


# folds_in: fold-in (recsys_jax.use.foldin) solves a new user's rows against the fixed item
# codes, the training objective restricted to that user; a new item gets a free code, not
# sigma(V r + mu) (see `encode`).
SPEC = ModelSpec("autorec", Config, Params, init, apply, predict_one=predict_one, penalty=penalty, score_matrix=score_matrix,
                 fit_epochs=fit_epochs, folds_in=True, doc=__doc__)

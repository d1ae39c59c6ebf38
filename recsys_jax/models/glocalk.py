r"""GLocal-K (Han, Lim, Long, Burgstaller and Poon, CIKM 2021): an item-based autoencoder whose
weights are sparsified by a local kernel, fine-tuned on the rating matrix convolved with a
global kernel.

**The autoencoder.** Item :math:`i` is its row of the training matrix,
:math:`r_i \in \mathbb R^U` (0 where unobserved; the paper's item-based side: rows are items,
the input and output units are users). :math:`L` hidden layers of :math:`k` sigmoid units and
a linear output layer back to the :math:`U` users; every layer :math:`\ell` has a weight
matrix :math:`W_\ell`, a bias :math:`b_\ell` and low-dimensional vectors
:math:`u_{\ell,a} \in \mathbb R^d` per input unit and :math:`v_{\ell,c} \in \mathbb R^d` per
output unit, and multiplies its input by the *kernelised* weights

.. math::

   \tilde W_\ell = W_\ell \odot K(U_\ell, V_\ell), \qquad
   K(u, v) = \max\big(0,\ 1 - \lVert u - v\rVert^2\big),

the local kernel of the paper (a finite-support RBF-style kernel, Muller et al. 2018's
kernel net): a pair of units whose vectors drift more than 1 apart gets weight exactly 0.
So :math:`h^{(0)} = x_i`, :math:`h^{(\ell)} = \sigma(\tilde W_\ell^\top h^{(\ell-1)} + b_\ell)`
and the reconstruction of user :math:`u`'s rating of item :math:`i` is

.. math::

   \hat r_{ui} = b_{\text{out},u} + \tilde w_{\text{out},u}^\top h^{(L)}(x_i).

**Pre-training** (stage 1) takes :math:`x_i = r_i` and minimises, over the observed
entries :math:`\Omega`,

.. math::

   J = \tfrac12 \sum_{(u,i)\in\Omega} (r_{ui} - \hat r_{ui})^2
       + \sum_\ell \Big(\tfrac{\lambda_2}{2}\lVert W_\ell\rVert_F^2
       + \tfrac{\lambda_s}{2}\lVert K(U_\ell, V_\ell)\rVert_F^2\Big),

the second penalty pushing kernel entries to 0 (sparse weights).

**Fine-tuning** (stage 2) first pools the current model's reconstruction item by item,
:math:`m_i = \frac1U \sum_u \hat r_{ui}(r_i)`, and turns the pooled vector into a
:math:`g \times g` global convolution kernel with a learned matrix
:math:`C \in \mathbb R^{I \times g^2}` (a scaled dot product),

.. math::

   G = \operatorname{reshape}_{g\times g}\big(s\, m^\top C\big), \qquad
   \tilde R = \operatorname{relu}(R \star G),

:math:`R \star G` the 'same'-padded 2-d cross-correlation of the whole [I, U] training matrix;
the same autoencoder (its layers shared by both passes) then reads :math:`x_i = \tilde r_i`, and
:math:`J` (plus nothing for :math:`C`) is minimised over every parameter, :math:`C` included.
Convolving the matrix makes each entry a mix of its neighbours in the users' and items' id
order (here: ascending raw ids, as in the paper's code).

===============================  ====================================================================
symbol                           argument
===============================  ====================================================================
:math:`k`                        ``config.embedding_dim`` (hidden units; the paper's 500)
:math:`L`                        ``config.num_layers`` (hidden kernel layers; the paper's 2)
:math:`d`                        ``config.kernel_dim`` (the paper's 5)
:math:`\lambda_2`                ``config.weight_l2`` (the paper's 20 on ML-100K, 70 on ML-1M)
:math:`\lambda_s`                ``config.kernel_l2`` (the paper's 0.006 on ML-100K, 0.018 on ML-1M)
:math:`g`                        ``config.conv_size`` (the paper's 3)
:math:`s`                        ``config.dot_scale / I`` (the paper: ``dot_scale`` alone; see below)
:math:`\tilde w_{\text{out},u}`  ``params.user_factors[u]``
:math:`b_{\text{out},u}`         ``params.user_bias[u]``
:math:`h^{(L)}(x_i)`             ``params.item_factors[i]``
===============================  ====================================================================

Prediction is cheap: after training the reconstruction depends only on the weights and the
training matrix, so `fit_epochs` yields it in factor form, ``Params`` = (the last hidden layer
of every item's row, each user's kernelised output weights and bias), and ``predict_one`` is
:math:`b_{\text{out},u} + \tilde w_{\text{out},u}^\top h_i`, a gather and a dot product
(`score_matrix`: every pair at once). The autoencoder's own weights live inside `fit_epochs`
only. With a y-range :math:`(\ell, h)` the output is :math:`\ell + (h-\ell)\sigma(\hat r)` in
training as in prediction.

Departures from the paper, each measured or forced (defaults: see `Config` and
`recsys_jax.training.presets`):

- the optimiser is Optax's full-batch Adam (``solver="adam"``, the default), one jit-compiled
  program per stage: pre-training at ``TrainConfig.lr``, fine-tuning from fresh moments at
  ``config.finetune_lr_scale`` (0.2) times that rate. With the moments carried over (as before)
  the global kernel's matrix, whose moments start at 0, moved by steps of the full rate in every
  coordinate and the validation RMSE rose from the first fine-tuning epoch, so the validation
  slice always picked a pre-training epoch: the model was a local-kernel autoencoder without its
  second stage. Fresh moments at a fifth of the rate, 8 pre-training epochs instead of 10
  (the validation optimum of pre-training fell at epochs 6-9 over the five split seeds): the
  slice picks a fine-tuning epoch on four of the five seeds, at validation RMSE 0.8507 against
  0.8524 on seed 0 (where these settings were chosen), and the test RMSE over the five seeds
  is unchanged (0.8419 against 0.8420). ``solver="lbfgs"`` is Optax's L-BFGS (zoom line search), the paper's method
  (SciPy's L-BFGS-B there), but on the CPU its program took many times longer to compile
  than Adam's, at a similar validation RMSE per second of training;
- 100 hidden units instead of 500, and fewer epochs (60 s budget on a CPU);
- :math:`s = \text{dot\_scale}/I`: the kernel is ``dot_scale`` times the *mean* of
  :math:`m_i C_i` rather than the paper's sum, so that its scale (and the size of an optimiser
  step on it) does not grow with the number of items;
- :math:`C` starts, when fine-tuning starts, at the matrix whose kernel is the identity
  (`identity_conv`), so that fine-tuning starts from the pre-trained model's own predictions;
  the paper draws C from N(0, 0.1^2): on ml-latest-small's validation slice (with a fresh
  optimiser) the switch then raised the validation RMSE and fine-tuning never got below the
  pre-trained model, whereas from the identity the first fine-tuning epoch improved it
  (at ``lr`` 1e-2);
- output biases start at the training mean, C aside every weight is initialised as the
  paper's TensorFlow code does (Glorot-uniform W, unit vectors N(0, 1e-3^2), so every kernel
  entry starts near 1).

**Epochs.** An epoch is ``config.steps_per_epoch`` optimiser iterations on the whole matrix
(the paper: ``iter_p`` = ``iter_f`` = 5 L-BFGS-B iterations on ML-100K). Of
``TrainConfig.epochs`` epochs the first ``config.pretrain_epochs`` pre-train, the rest fine-tune; the model is yielded after every
epoch, so `recsys_jax.training.fit.fit` picks the best epoch over both stages on the validation slice,
and a refit for that many epochs repeats exactly the same stages (no schedule depends on the
total). The default preset's 100 epochs are a cap that its patience (3 epochs) ends: on
ml-latest-small it stops every split seed by epoch 15, on planted data of ML-100K's size
(943 x 1,682) fine-tuning runs to epoch 90, where a cap of 14 had stopped it with the
validation RMSE still falling (test RMSE 0.6521 against 0.7771). TrainConfig fields read: ``epochs``, ``lr`` (Adam's; L-BFGS has none), ``loss`` (must be
``"mse"``); the schedule, batch size and optimizer fields do not apply (full batch, constant rate).
``TrainConfig.l2`` and ``bias_l2`` do not enter training: they are the per-rating ridge of a
folded-in row (`recsys_jax.use.foldin`, the library's name-based L2 on the factor form:
:math:`\lambda(\lVert \tilde w_u\rVert^2 + \lVert h_i\rVert^2) + \lambda_b b_u^2` per rating);
a folded-in user or item keeps every other row as trained.

**Size.** The first and the output layer read and score the observed entries only (N x k
work: `encode_ratings`, `output_at`), but the global convolution, and so fine-tuning's first
layer, need the dense [I, U] matrix, held as float32: at most `MAX_ENTRIES` = 2^26 entries
(ml-latest-small 5.9M, ml-1m 22.4M; ml-10m's 746M is refused with a `ValueError`).

Published figures (Han et al., "GLocal-K: Global and Local Kernels for Recommender Systems",
CIKM 2021, its results table): test RMSE 0.8889 on ML-100K (the canonical u1.base/u1.test
split) and 0.8227 on ML-1M (one random 90/10 split), predictions clipped to [1, 5]; the
paper's settings as in the symbol table above with 30 + 60 (ML-100K) and 20 + 30 (ML-1M) epochs of 5 (ML-1M: 50 pre-training,
10 fine-tuning) L-BFGS-B iterations. In the authors' notebook the figure is the best test RMSE
over the fine-tuning epochs (the test split chose the epoch; no validation slice).
"""
from __future__ import annotations

import functools
import itertools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import Array

from recsys_jax.models._common import batched, biased_product, initial_offset
from recsys_jax.models.spec import ModelSpec

MAX_ENTRIES = 1 << 26  # I * U at most: the dense training matrix and its kin, float32


class Config(NamedTuple):
    embedding_dim: int = 100  # k, hidden units per layer (the paper's 500: the 60 s budget)
    num_layers: int = 2  # L hidden kernel layers (the paper's 2)
    kernel_dim: int = 5  # d, the dimension of the kernel's unit vectors (the paper's 5)
    weight_l2: float = 20.0  # lambda_2, on every W (the paper's ML-100K value)
    kernel_l2: float = 0.006  # lambda_s, on every K(U, V) (the paper's ML-100K value)
    conv_size: int = 3  # g, the global kernel is g x g (the paper's 3)
    dot_scale: float = 1.0  # s * I: the global kernel is dot_scale times the mean of m_i C_i
    pretrain_epochs: int = 8  # epochs of stage 1; TrainConfig.epochs - this many fine-tune (the paper: 30, 20)
    finetune_lr_scale: float = 0.2  # Adam fine-tunes from fresh moments at TrainConfig.lr times this
    steps_per_epoch: int = 10  # optimiser iterations per epoch (the paper: 5 L-BFGS-B iterations on ML-100K)
    solver: str = "adam"  # "adam" (at TrainConfig.lr) or "lbfgs" (Optax, zoom line search; the paper's kind)
    mean_rating: float = 3.5  # set by `fit` to the training mean: the output biases start there
    y_range: tuple[float, float] | None = None


class Params(NamedTuple):
    user_factors: Array  # float32[U, K]: column u of the output layer's kernelised weights
    user_bias: Array  # float32[U]: the output layer's bias
    item_factors: Array  # float32[I, K]: the last hidden layer of item i's (convolved) row


class Layer(NamedTuple):
    """One kernel layer, ``n_in`` units in, ``n_out`` out."""

    weight: Array  # float32[n_in, n_out]: W
    bias: Array  # float32[n_out]: b
    in_vectors: Array  # float32[n_in, d]: u_a
    out_vectors: Array  # float32[n_out, d]: v_c


class Weights(NamedTuple):
    """The autoencoder (``layers``: L hidden, then the output) and the global kernel's matrix."""

    layers: tuple  # of Layer
    conv: Array  # float32[I, g * g]: C


# -- the model's pieces -----------------------------------------------------------------------
def local_kernel(in_vectors: Array, out_vectors: Array) -> Array:
    r"""``float32[n_in, n_out]``: :math:`K_{ac} = \max(0, 1 - \lVert u_a - v_c\rVert^2)`."""
    diff = in_vectors[:, None, :] - out_vectors[None, :, :]
    return jnp.maximum(0.0, 1.0 - jnp.sum(jnp.square(diff), axis=-1))


def kernelised(layer: Layer) -> Array:
    r""":math:`W \odot K(U, V)`, float32[n_in, n_out]."""
    return layer.weight * local_kernel(layer.in_vectors, layer.out_vectors)


def encode(layers, inputs: Array) -> Array:
    """The last hidden layer of input rows ``inputs`` float32[B, U]: float32[B, K]."""
    h = inputs
    for layer in layers[:-1]:
        h = jax.nn.sigmoid(h @ kernelised(layer) + layer.bias)
    return h


def global_conv(matrix: Array, kernel: Array) -> Array:
    r""":math:`\operatorname{relu}(R \star G)`: the 'same'-padded 2-d cross-correlation of
    ``matrix`` float32[I, U] with ``kernel`` float32[g, g] (g odd), rectified."""
    out = jax.lax.conv_general_dilated(matrix[None, None], kernel[None, None], (1, 1), "SAME")
    return jax.nn.relu(out[0, 0])


class TrainingData(NamedTuple):
    """The training ratings as the autoencoder reads them."""

    items: Array  # int32[N]
    users: Array  # int32[N]
    ratings: Array  # float32[N]
    matrix: Array  # float32[I, U]: the same ratings, 0 where unobserved (the global convolution's input)


def encode_ratings(layers, data: TrainingData) -> Array:
    """`encode` of every row of the training matrix, float32[I, K], its first layer a sum over
    the observed entries only (N x K work instead of I x U x K: the rows are sparse)."""
    first = layers[0]
    pre = jax.ops.segment_sum(data.ratings[:, None] * kernelised(first)[data.users], data.items,
                              num_segments=data.matrix.shape[0])
    return encode(layers[1:], jax.nn.sigmoid(pre + first.bias))


def global_kernel(layers, conv: Array, data: TrainingData, config: Config) -> Array:
    r"""``float32[g, g]``: :math:`G = s\, m^\top C` with :math:`m_i` the mean over users of the
    model's (raw) reconstruction of row :math:`r_i`; by linearity of the output layer
    :math:`m_i = h_i^\top \bar{\tilde w} + \bar b`, no [I, U] product."""
    out = layers[-1]
    pooled = encode_ratings(layers, data) @ jnp.mean(kernelised(out), axis=1) + jnp.mean(out.bias)
    g = config.conv_size
    scale = config.dot_scale / data.matrix.shape[0]
    return (scale * (pooled @ conv)).reshape(g, g)


def item_codes(weights: Weights, data: TrainingData, config: Config, finetune: bool) -> Array:
    """The last hidden layer of every item's input row, float32[I, K]: the training matrix
    (stage 1) or its global convolution (stage 2)."""
    if not finetune:
        return encode_ratings(weights.layers, data)
    kernel = global_kernel(weights.layers, weights.conv, data, config)
    return encode(weights.layers, global_conv(data.matrix, kernel))


@functools.partial(jax.jit, static_argnames=("config",))
def identity_conv(weights: Weights, data: TrainingData, config: Config) -> Array:
    r"""The :math:`C` whose global kernel is the identity (1 at the centre, 0 elsewhere) for the
    current model, :math:`C = m\,e_c^\top / (s \lVert m\rVert^2)`: fine-tuning starts from the
    pre-trained model's own predictions (:math:`\tilde R = R`)."""
    out = weights.layers[-1]
    pooled = encode_ratings(weights.layers, data) @ jnp.mean(kernelised(out), axis=1) + jnp.mean(out.bias)
    size = weights.conv.shape[1]
    centre = jax.nn.one_hot(size // 2, size, dtype=jnp.float32)
    scale = config.dot_scale / data.matrix.shape[0]
    return jnp.outer(pooled, centre) / (scale * jnp.sum(jnp.square(pooled)))


def to_params(layers, codes: Array) -> Params:
    """The factor form of the autoencoder whose last hidden layer on the training rows is ``codes``."""
    out = layers[-1]
    return Params(user_factors=kernelised(out).T, user_bias=out.bias, item_factors=codes)


def predict_one(params: Params, user: Array, item: Array, key: Array | None = None, *,
                config: Config = Config()) -> Array:
    """b_u + w_u . h_i  (`recsys_jax.models.make_apply` adds the y-range squash)"""
    return params.user_bias[user] + params.user_factors[user] @ params.item_factors[item]


def score_matrix(params: Params, *, config: Config = Config()) -> Array:
    r"""Every (user, item) pair at once, ``float32[U, I]``: :math:`b\,\mathbf 1^\top + \tilde W H^\top`."""
    return biased_product(params.user_factors, params.item_factors, params.user_bias)


apply = batched(predict_one)


def init_weights(key: Array, num_users: int, num_items: int, config: Config = Config()) -> Weights:
    """Glorot-uniform W (TensorFlow's default, the paper's), unit vectors from N(0, 1e-3^2)
    truncated at 2 sd (every kernel entry starts at about 1), zero hidden biases, output biases
    at the training mean (its logit under a y-range), C from N(0, 0.1^2) truncated at 2 sd (the
    paper's). Compiled once per shape and config (the mean is an argument)."""
    return _init_weights(key, num_users, num_items, config._replace(mean_rating=0.0),
                         jnp.float32(initial_offset(config)))


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def _init_weights(key: Array, num_users: int, num_items: int, config: Config, offset: Array) -> Weights:
    k, d, g = config.embedding_dim, config.kernel_dim, config.conv_size
    sizes = [num_users] + [k] * config.num_layers + [num_users]
    shapes = list(itertools.pairwise(sizes))
    # Two draws in all (each random op costs compile time): U(-1, 1) for every W, scaled per
    # layer, and truncated normals for every unit vector and C.
    wkey, nkey = jax.random.split(key)
    unit = jax.random.uniform(wkey, (sum(a * b for a, b in shapes),), jnp.float32, -1.0, 1.0)
    normal = jax.random.truncated_normal(nkey, -2.0, 2.0, (sum(sizes[1:]) + sum(sizes[:-1]), d), jnp.float32)
    layers, wpos, npos = [], 0, 0
    for n, (n_in, n_out) in enumerate(shapes):
        limit = math.sqrt(6.0 / (n_in + n_out))
        weight = limit * unit[wpos: wpos + n_in * n_out].reshape(n_in, n_out)
        wpos += n_in * n_out
        in_vectors, out_vectors = 1e-3 * normal[npos: npos + n_in], 1e-3 * normal[npos + n_in: npos + n_in + n_out]
        npos += n_in + n_out
        bias = jnp.full((n_out,), offset, jnp.float32) if n == len(shapes) - 1 else jnp.zeros((n_out,), jnp.float32)
        layers.append(Layer(weight, bias, in_vectors, out_vectors))
    return Weights(tuple(layers), jnp.zeros((num_items, g * g), jnp.float32))  # C: set when fine-tuning starts


def init(key: Array, num_users: int, num_items: int, config: Config = Config()) -> Params:
    """The factor form of a fresh autoencoder (`init_weights`) before any rating: every item's
    code is the hidden layers' response to an all-zero row."""
    layers = init_weights(key, num_users, num_items, config).layers
    return _zero_row_params(layers, num_items)


@functools.partial(jax.jit, static_argnums=(1,))
def _zero_row_params(layers, num_items: int) -> Params:
    codes = encode(layers, jnp.zeros((1, layers[0].weight.shape[0]), jnp.float32))
    return to_params(layers, jnp.broadcast_to(codes, (num_items, codes.shape[1])))


# -- the objective ----------------------------------------------------------------------------
def output_at(layers, codes: Array, items: Array, users: Array, config: Config) -> Array:
    r""":math:`\hat r_{ui}` for the pairs ``(users[n], items[n])`` of items whose last hidden
    layers are ``codes`` float32[I, K]: float32[N] (the y-range link applied when set)."""
    out = layers[-1]
    x = jnp.sum(codes[items] * kernelised(out).T[users], axis=-1) + out.bias[users]
    if config.y_range is None:
        return x
    lo, hi = config.y_range
    return lo + (hi - lo) * jax.nn.sigmoid(x)


def regulariser(layers, config: Config) -> Array:
    r""":math:`\sum_\ell \tfrac{\lambda_2}{2}\lVert W_\ell\rVert^2 + \tfrac{\lambda_s}{2}\lVert K_\ell\rVert^2`."""
    total = 0.0
    for layer in layers:
        kern = local_kernel(layer.in_vectors, layer.out_vectors)
        total = total + 0.5 * config.weight_l2 * jnp.sum(jnp.square(layer.weight))
        total = total + 0.5 * config.kernel_l2 * jnp.sum(jnp.square(kern))
    return total


def objective(weights: Weights, data: TrainingData, *, config: Config, finetune: bool) -> Array:
    r"""J of the module docstring for stage 1 (``finetune=False``) or stage 2: the squared errors
    are taken at the observed pairs only (an unobserved entry never enters)."""
    codes = item_codes(weights, data, config, finetune)
    pred = output_at(weights.layers, codes, data.items, data.users, config)
    return 0.5 * jnp.sum(jnp.square(pred - data.ratings)) + regulariser(weights.layers, config)


def training_data(train, config: Config = Config()) -> TrainingData:
    """The training ratings as pairs and as the dense input matrix, row i holding item i's
    ratings, 0 where unobserved (the paper's input: not centred, which measured worse here).

    Raises `ValueError` when I * U exceeds `MAX_ENTRIES`."""
    num_users, num_items = train.num_users, train.num_items
    if num_users * num_items > MAX_ENTRIES:
        raise ValueError(f"glocalk: train has {num_items:,} items x {num_users:,} users = "
                         f"{num_users * num_items:,} entries; the dense training matrix holds at most "
                         f"MAX_ENTRIES = {MAX_ENTRIES:,} (ml-1m's 22.4M fit, ml-10m's 746M do not)")
    ratings = np.asarray(train.ratings, np.float32)
    matrix = np.zeros((num_items, num_users), np.float32)
    matrix[train.items, train.users] = ratings
    return TrainingData(jnp.asarray(train.items, jnp.int32), jnp.asarray(train.users, jnp.int32),
                        jnp.asarray(ratings), jnp.asarray(matrix))


# -- training ---------------------------------------------------------------------------------
def _optimizer(config: Config, lr: float) -> optax.GradientTransformation:
    if config.solver == "lbfgs":
        return optax.lbfgs(memory_size=10)
    if config.solver == "adam":
        return optax.adam(lr)
    raise ValueError(f"glocalk: config.solver must be 'lbfgs' or 'adam', got {config.solver!r}")


@functools.lru_cache(maxsize=16)
def _stage_program(config: Config, lr: float, finetune: bool):
    """``(optimizer, epoch)``: ``epoch(weights, opt_state, data) -> (weights, opt_state, params,
    objective per rating)``, ``config.steps_per_epoch`` iterations, jitted (one compiled
    program per stage, config and shape)."""
    optimizer = _optimizer(config, lr)

    def step(carry, _):
        weights, opt_state, data = carry
        f = functools.partial(objective, data=data, config=config, finetune=finetune)
        if config.solver == "lbfgs":
            value, grads = optax.value_and_grad_from_state(f)(weights, state=opt_state)
            updates, opt_state = optimizer.update(grads, opt_state, weights, value=value, grad=grads, value_fn=f)
        else:
            value, grads = jax.value_and_grad(f)(weights)
            updates, opt_state = optimizer.update(grads, opt_state, weights)
        return (optax.apply_updates(weights, updates), opt_state, data), value

    @jax.jit
    def epoch(weights, opt_state, data):
        (weights, opt_state, _), _ = jax.lax.scan(step, (weights, opt_state, data), None,
                                                  length=config.steps_per_epoch)
        codes = item_codes(weights, data, config, finetune)
        pred = output_at(weights.layers, codes, data.items, data.users, config)
        loss = 0.5 * jnp.sum(jnp.square(pred - data.ratings)) + regulariser(weights.layers, config)
        return weights, opt_state, to_params(weights.layers, codes), loss / data.ratings.shape[0]

    return optimizer, epoch


def fit_epochs(key: Array, train, config: Config, train_config, aux=None, options=None):
    """Yields ``(params, objective per training rating)`` after each of ``train_config.epochs``
    epochs: ``config.pretrain_epochs`` of pre-training, then fine-tuning (module docstring)."""
    tc = train_config
    if tc.epochs < 1:
        raise ValueError(f"glocalk: train_config.epochs must be >= 1, got {tc.epochs}")
    if tc.loss != "mse":
        raise ValueError(f"glocalk: train_config.loss must be 'mse' (the paper's squared error), got {tc.loss!r}")
    for field in ("embedding_dim", "num_layers", "kernel_dim", "steps_per_epoch"):
        if int(getattr(config, field)) < 1:
            raise ValueError(f"glocalk: config.{field} must be >= 1, got {getattr(config, field)}")
    if config.conv_size < 1 or config.conv_size % 2 == 0:
        raise ValueError(f"glocalk: config.conv_size must be odd and >= 1, got {config.conv_size}")
    if not config.finetune_lr_scale > 0:
        raise ValueError(f"glocalk: config.finetune_lr_scale must be > 0, got {config.finetune_lr_scale}")
    if config.pretrain_epochs < 0:
        raise ValueError(f"glocalk: config.pretrain_epochs must be >= 0, got {config.pretrain_epochs}")
    _optimizer(config, tc.lr)  # a bad solver fails before any work
    data = training_data(train, config)
    weights = init_weights(key, train.num_users, train.num_items, config)
    static = config._replace(mean_rating=0.0)  # the mean is in the initial biases: one program per shape
    stage = None
    for e in range(1, tc.epochs + 1):
        finetune = e > config.pretrain_epochs
        if finetune != stage:
            if finetune:
                weights = weights._replace(conv=identity_conv(weights, data, static))
            lr = tc.lr * (config.finetune_lr_scale if finetune else 1.0)
            optimizer, epoch = _stage_program(static, float(lr), finetune)
            # Each stage starts its optimiser afresh: Adam's moments and L-BFGS' curvature pairs
            # belong to stage 1's objective (and C has none). Strong types: the state after a
            # step must have the types the epoch was compiled for.
            opt_state = jax.tree.map(lambda x: jnp.asarray(x, x.dtype), optimizer.init(weights))
            stage = finetune
        weights, opt_state, params, loss = epoch(weights, opt_state, data)
        yield params, float(loss)


SPEC = ModelSpec("glocalk", Config, Params, init, apply, predict_one=predict_one, score_matrix=score_matrix, fit_epochs=fit_epochs,
                 doc=__doc__)

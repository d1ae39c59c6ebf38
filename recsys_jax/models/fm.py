r"""A factorization machine (Rendle, 2010) over user, item and side features.

For a pair (u, i) the active features are the user and item one-hots and the side
features :math:`x_j` of the item (its genres, weighted :math:`1/\sqrt{\#\text{genres}}`,
and its release 5-year bucket, parsed from the MovieLens title) and of the user (where
the data set has them). With :math:`v` the factor and :math:`w` the bias of a feature,

.. math::

   \hat r_{ui} = w_0 + w_u + w_i + \sum_j w_j x_j
       + \sum_{a < b} \langle v_a, v_b\rangle x_a x_b,
   \qquad
   \sum_{a<b}\langle v_a, v_b\rangle x_a x_b
       = \tfrac12\Big(\big\lVert \textstyle\sum_a x_a v_a \big\rVert^2
                      - \textstyle\sum_a x_a^2 \lVert v_a\rVert^2\Big)

(Rendle's O(nK) identity), the sums running over the one-hots (:math:`x=1`) and the side
features.

======================  ===============================================================
symbol                  argument
======================  ===============================================================
:math:`w_0, w_u, w_i`   ``params.global_bias``, ``params.user_bias[u]``, ``params.item_bias[i]``
:math:`v_u, v_i`        ``params.user_factors[u]``, ``params.item_factors[i]``
:math:`w_j, v_j`        ``params.feature_bias[j]``, ``params.feature_factors[j]``
:math:`x_j`             ``aux.item_values[i]`` at ``aux.item_features[i]`` (padded with
                        feature 0, value 0), and the same for users
======================  ===============================================================

Trained on each rating :math:`(u, i)` with the regularised objective (Rendle 2010: L2 on
every parameter of the features active in the example, with a weight per parameter group
as in Rendle 2012), :math:`F(u, i)` being the side features of i and of u with
:math:`x_j \neq 0`:

.. math::

   \mathcal L(\hat r_{ui}, r_{ui})
   + \lambda\Big(\lVert v_u\rVert^2 + \lVert v_i\rVert^2 + s\sum_{j\in F(u,i)} \lVert v_j\rVert^2\Big)
   + \lambda_b\Big(w_u^2 + w_i^2 + s\sum_{j\in F(u,i)} w_j^2\Big),

:math:`\mathcal L` the loss (squared error by default), :math:`\lambda` = ``TrainConfig.l2``,
:math:`\lambda_b` = ``TrainConfig.bias_l2``, :math:`s` = ``config.feature_l2_scale``;
:math:`w_0` is not penalised. A side feature (a genre) is active in the ratings of many
items, so per example it is penalised far more often than any one item's row: on a
validation slice of ml-latest-small (split seed 0, ``l2=0.1``) :math:`s = 1` validated
worse than :math:`s = 0`, and :math:`s \le 0.1` as well; the default is 0.1. `penalty` is the
weighted sum of these terms over a batch, through per-feature weights :math:`d_j` (the
batch weight of the examples in which j is active).
"""
from __future__ import annotations

import re
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from recsys_jax.data.relational import movie_genres
from recsys_jax.models._common import batched, initial_offset, row_weights, scaled_normal, weighted_sq_norm
from recsys_jax.models.spec import FoldIn, ModelSpec

_YEAR = re.compile(r"\((\d{4})\)\s*$")


class Config(NamedTuple):
    embedding_dim: int = 32
    init_scale: float = 0.01
    mean_rating: float = 3.5  # set by `fit` to the training mean
    y_range: tuple[float, float] | None = None
    num_features: int = 1  # side-feature vocabulary, set from the data by `configure`
    year_bucket: int = 5  # years per release-year feature
    feature_l2_scale: float = 0.1  # the side features' L2 weight, as a multiple of l2 / bias_l2


class Params(NamedTuple):
    global_bias: Array  # float32[]
    user_bias: Array  # float32[U]
    item_bias: Array  # float32[I]
    user_factors: Array  # float32[U, K]
    item_factors: Array  # float32[I, K]
    feature_bias: Array  # float32[F]
    feature_factors: Array  # float32[F, K]


class Aux(NamedTuple):
    item_features: Array  # int32[I, Fi]; 0 is the null feature (value 0)
    item_values: Array  # float32[I, Fi]
    user_features: Array  # int32[U, Fu]
    user_values: Array  # float32[U, Fu]


def item_side_features(titles_genres: list[tuple[str, str]], year_bucket: int = 5) -> list[list[tuple[str, float]]]:
    """Per item: ``[(feature name, value)]`` from its title's year and its genres."""
    out = []
    for title, genres in titles_genres:
        feats = []
        names = movie_genres(genres)
        feats += [(f"genre={g}", float(len(names)) ** -0.5) for g in names]
        m = _YEAR.search(title or "")
        if m:
            year = int(m.group(1)) // year_bucket * year_bucket
            feats.append((f"year={year}", 1.0))
        out.append(feats)
    return out


def _pad(rows: list[list[tuple[int, float]]]) -> tuple[np.ndarray, np.ndarray]:
    width = max([len(r) for r in rows] + [1])
    idx = np.zeros((len(rows), width), np.int32)
    val = np.zeros((len(rows), width), np.float32)
    for n, r in enumerate(rows):
        for m, (j, v) in enumerate(r):
            idx[n, m], val[n, m] = j, v
    return idx, val


def prepare(train, config: Config = Config()) -> Aux:
    """Side features from ``train.movies`` (title, genres) and ``train.user_info`` (ml-100k,
    ml-1m: age, gender, occupation) when present."""
    vocab: dict[str, int] = {"<null>": 0}

    def encode(rows):
        return [[(vocab.setdefault(name, len(vocab)), v) for name, v in r] for r in rows]

    movies = getattr(train, "movies", None)
    if movies is not None:
        pairs = [(str(movies["title"].get(i, "")) if i in movies.index else "",
                  str(movies["genres"].get(i, "")) if i in movies.index else "") for i in train.item_ids.tolist()]
    else:
        pairs = [("", "")] * train.num_items
    item_idx, item_val = _pad(encode(item_side_features(pairs, config.year_bucket)))
    users = getattr(train, "user_info", None)
    user_rows = [[] for _ in range(train.num_users)]
    if users is not None:
        for n, raw in enumerate(train.user_ids.tolist()):
            if raw in users.index:
                user_rows[n] = [(f"{c}={users.loc[raw, c]}", 1.0) for c in users.columns]
    user_idx, user_val = _pad(encode(user_rows))
    return Aux(jnp.asarray(item_idx), jnp.asarray(item_val), jnp.asarray(user_idx), jnp.asarray(user_val))


def configure(config: Config, aux: Aux) -> Config:
    """The config with ``num_features`` large enough for the side-feature vocabulary."""
    used = max(int(jnp.max(aux.item_features)), int(jnp.max(aux.user_features))) + 1
    return config._replace(num_features=max(used, 1))


def init(key: Array, num_users: int, num_items: int, config: Config = Config()) -> Params:
    """Zero biases, factors from N(0, init_scale^2), w0 at the mean."""
    ukey, ikey, fkey = jax.random.split(key, 3)
    k, s, f = config.embedding_dim, config.init_scale, config.num_features
    return Params(
        global_bias=jnp.asarray(initial_offset(config), jnp.float32),
        user_bias=jnp.zeros((num_users,), jnp.float32),
        item_bias=jnp.zeros((num_items,), jnp.float32),
        user_factors=scaled_normal(ukey, (num_users, k), s),
        item_factors=scaled_normal(ikey, (num_items, k), s),
        feature_bias=jnp.zeros((f,), jnp.float32),
        feature_factors=scaled_normal(fkey, (f, k), s),
    )


def predict_one(
    params: Params, user: Array, item: Array, key: Array | None = None, *, config: Config = Config(), aux: Aux
) -> Array:
    """``r_ui = w0 + w_u + w_i + sum_j w_j x_j + 1/2 (|sum_a x_a v_a|^2 - sum_a x_a^2 |v_a|^2)``"""
    feats = jnp.concatenate([aux.item_features[item], aux.user_features[user]])
    x = jnp.concatenate([aux.item_values[item], aux.user_values[user]])
    v_side = params.feature_factors[feats] * x[:, None]  # [F, K], zero rows for padding
    v = jnp.concatenate([params.user_factors[user][None], params.item_factors[item][None], v_side])
    pairwise = 0.5 * (jnp.sum(jnp.sum(v, axis=0) ** 2) - jnp.sum(v**2))
    return (params.global_bias + params.user_bias[user] + params.item_bias[item]
            + params.feature_bias[feats] @ x + pairwise)


apply = batched(predict_one, uses_aux=True)


def penalty(params: Params, users: Array, items: Array, weight: Array, *, l2: float, bias_l2: float = 0.0,
            config: Config = Config(), aux: Aux | None = None, times: Array | None = None) -> Array:
    """``sum_b w_b [l2 (|v_u|^2 + |v_i|^2 + s sum_{j in F(u,i)} |v_j|^2) + bias_l2 (w_u^2 + w_i^2 + s sum_j w_j^2)]``"""
    if aux is None:
        raise ValueError("fm: penalty needs aux = fm.prepare(train_ratings)")
    num_users, num_items = params.user_factors.shape[0], params.item_factors.shape[0]
    num_features = params.feature_factors.shape[0]
    c_user, c_item = row_weights(users, weight, num_users), row_weights(items, weight, num_items)

    def feature_weights(features, values, row_weight):  # sum over rows of row_weight[r] * [x_{r,m} != 0]
        per_entry = row_weight[:, None] * (values != 0).astype(jnp.float32)
        return jax.ops.segment_sum(per_entry.ravel(), features.ravel(), num_segments=num_features)

    d_feature = config.feature_l2_scale * (feature_weights(aux.item_features, aux.item_values, c_item)
                                           + feature_weights(aux.user_features, aux.user_values, c_user))
    factors = (weighted_sq_norm(params.user_factors, c_user) + weighted_sq_norm(params.item_factors, c_item)
               + weighted_sq_norm(params.feature_factors, d_feature))
    biases = (weighted_sq_norm(params.user_bias, c_user) + weighted_sq_norm(params.item_bias, c_item)
              + weighted_sq_norm(params.feature_bias, d_feature))
    return l2 * factors + bias_l2 * biases


# -- fold-in (recsys_jax.use.foldin): a new user or movie has no side features -------------
# (their vocabulary is not saved with a checkpoint)
def fold_in_user_view(params: Params, aux: Aux, others, mask, day):
    width = aux.user_features.shape[1]
    view = aux._replace(user_features=jnp.zeros((1, width), jnp.int32), user_values=jnp.zeros((1, width), jnp.float32))
    return params, view, None


def fold_in_item_view(params: Params, aux: Aux, others, mask, day):
    width = aux.item_features.shape[1]
    view = aux._replace(item_features=jnp.zeros((1, width), jnp.int32), item_values=jnp.zeros((1, width), jnp.float32))
    return params, view, None


def append_user_aux(aux: Aux, items_per_user, day, first_index: int, ratings_per_user=None, config=None) -> Aux:
    m, width = len(items_per_user), aux.user_features.shape[1]
    return aux._replace(user_features=jnp.concatenate([aux.user_features, jnp.zeros((m, width), jnp.int32)]),
                        user_values=jnp.concatenate([aux.user_values, jnp.zeros((m, width), jnp.float32)]))


def append_item_aux(aux: Aux, m: int) -> Aux:
    width = aux.item_features.shape[1]
    return aux._replace(item_features=jnp.concatenate([aux.item_features, jnp.zeros((m, width), jnp.int32)]),
                        item_values=jnp.concatenate([aux.item_values, jnp.zeros((m, width), jnp.float32)]))


SPEC = ModelSpec("fm", Config, Params, init, apply, predict_one=predict_one, Aux=Aux, prepare=prepare, configure=configure, penalty=penalty,
                 fold_in=FoldIn(fold_in_user_view, fold_in_item_view, append_user_aux, append_item_aux),
                 doc=__doc__)

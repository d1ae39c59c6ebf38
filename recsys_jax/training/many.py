r"""Many models trained as one compiled program: `fit_many`, ensembles, search.

`fit_many` trains K members of one model family at once. Their parameters are stacked
along a leading axis of size K and one epoch of *every* member is a single jitted
``jax.vmap`` over the members of `recsys_jax.engine.epoch.run_epoch`. A member may differ from
the others in:

===================  ==============================================================
``seed``             initialisation, shuffles and dropout (each member its own key)
``lr``               peak learning rate (the schedule's shape is shared)
``l2``, ``bias_l2``  L2 on the touched rows (`recsys_jax.objectives.penalties`)
``weight_decay``     decoupled weight decay
``embedding_dim``    up to the largest member's: the ``user_factors``/``item_factors``
                     columns past a member's size are masked to zero, so it is exactly
                     a model of that size (models with those two tables)
``loss``             a name in `recsys_jax.objectives.losses.LOSSES` (`jax.lax.switch` per member);
                     losses with parameters (``PARAM_LOSSES``) train with `fit` only
===================  ==============================================================

Everything structural is shared: the model, epochs, batch size, schedule kind. A member
with the same settings as a `fit` call gives the same parameters up to float rounding
(tested), because each member consumes its key exactly as `fit` does.

Built on it: `ensemble_predict` (the mean of the members' predictions) and
`random_search` (sample members, pick by validation RMSE on a slice of the training data).
"""
from __future__ import annotations

import math
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from recsys_jax.engine import sharding
from recsys_jax.data.ratings import Ratings
from recsys_jax.objectives.losses import LOSSES, PARAM_LOSSES
from recsys_jax.models import get_model, make_apply, make_config
from recsys_jax.optim.optimizers import make_schedule
from recsys_jax.objectives.penalties import make_l2_penalty
from recsys_jax.eval.predict import _as_indices, table_sizes
from recsys_jax.engine.config import TrainConfig
from recsys_jax.engine.step import TrainState, make_objective, make_update
from recsys_jax.engine.epoch import num_batches, run_epoch
from recsys_jax.engine.options import EngineOptions, resolve_options
from recsys_jax.training.loop import Epoch, first_best, keep_each_best, run_loop

Array = jax.Array


class Member(NamedTuple):
    """One configuration; ``None`` means: the base ``TrainConfig`` / model config value."""

    seed: int = 0
    lr: float | None = None
    l2: float | None = None
    bias_l2: float | None = None
    weight_decay: float | None = None
    embedding_dim: int | None = None
    loss: str | None = None


class ManyResult(NamedTuple):
    params: Any  # the members' best parameters, stacked: every leaf has a leading axis K
    history: dict  # per epoch: "val_rmse" float[K] and "train_loss" float[K]; "seconds" per epoch
    best_epoch: np.ndarray  # int[K]
    members: list[Member]  # resolved: no None left
    model: str
    model_config: Any  # shared (largest embedding_dim)
    train_config: TrainConfig

    def member_params(self, k: int):
        """The parameters of member ``k`` (masked columns are zero)."""
        return jax.tree.map(lambda x: x[k], self.params)


class _Hyper(NamedTuple):
    lr_scale: Array  # float32[]: member lr / base lr
    l2: Array
    bias_l2: Array
    weight_decay: Array
    dim_mask: Array  # float32[Kmax]
    loss_index: Array  # int32[]


def _resolve(members: Sequence[Member], tc: TrainConfig, model_config) -> list[Member]:
    out = []
    for m in members:
        m = Member(*m) if not isinstance(m, Member) else m
        out.append(Member(
            seed=int(m.seed),
            lr=tc.lr if m.lr is None else float(m.lr),
            l2=tc.l2 if m.l2 is None else float(m.l2),
            bias_l2=tc.bias_l2 if m.bias_l2 is None else float(m.bias_l2),
            weight_decay=tc.weight_decay if m.weight_decay is None else float(m.weight_decay),
            embedding_dim=model_config.embedding_dim if m.embedding_dim is None else int(m.embedding_dim),
            loss=tc.loss if m.loss is None else m.loss,
        ))
    return out


def _masked(params, dim_mask: Array):
    """Zero the factor columns past the member's embedding size."""
    fields = {f: getattr(params, f) * dim_mask for f in ("user_factors", "item_factors") if hasattr(params, f)}
    return params._replace(**fields)


def fit_many(
    model: str,
    train: Ratings,
    val: Ratings | None,
    members: Sequence[Member],
    *,
    model_config=None,
    train_config: TrainConfig = TrainConfig(),
    progress: bool = False,
    mesh=None,
    options: EngineOptions | None = None,
) -> ManyResult:
    """Trains ``len(members)`` models at once; returns each member's best parameters.

    Validation RMSE (predictions clipped to the scale) is computed for every member after
    every epoch; each member keeps its own best epoch. ``train_config.patience`` stops the
    run when no member has improved for that many epochs.

    ``mesh`` (a one-axis `jax.sharding.Mesh`, `recsys_jax.engine.sharding.make_mesh`) splits the
    *members* over its devices: K members on D devices, K/D each (K must be a multiple of
    D), every leaf of the stacked state split along its member axis, the ratings
    replicated. The members never exchange anything, so the program has no collective
    and each member's result equals the one-device run's; the returned parameters stay
    split by member. (To split one big model's tables, train it with `fit` on a mesh.)
    """
    options = resolve_options() if options is None else options
    if not members:
        raise ValueError("fit_many: no members")
    if len(train) == 0:
        raise ValueError("fit_many: the training set is empty")
    tc = train_config
    if tc.optimizer != "adam":
        raise ValueError(f"fit_many: optimizer {tc.optimizer!r} is not available here: its members train with "
                         "dense Adam; train with fit for the other optimizers")
    if tc.order == "blocked":
        raise ValueError("fit_many: order='blocked' is not available here: its members shuffle all the ratings; "
                         "train with fit for the blocked order")
    spec = get_model(model)
    base = model_config if model_config is not None else make_config(model)
    resolved = _resolve(members, tc, base)
    losses = sorted({m.loss for m in resolved})
    for name in losses:
        if name in PARAM_LOSSES:
            raise ValueError(f"fit_many: loss {name!r} has learned parameters (recsys_jax.objectives.losses.PARAM_LOSSES); "
                             f"fit_many takes element-wise losses only ({', '.join(LOSSES)}): train it with fit")
        if name not in LOSSES:
            raise ValueError(f"fit_many: unknown loss {name!r}; known losses: {', '.join(LOSSES)}")
    kmax = max(m.embedding_dim for m in resolved)
    if spec.prepare is not None or spec.uses_time:
        raise ValueError(f"fit_many: model {model!r} reads data prepared from the training split or "
                         "rating times, which fit_many does not pass; train it with fit")
    if any(m.embedding_dim != kmax for m in resolved) and "user_factors" not in spec.Params._fields:
        raise ValueError(f"fit_many: model {model!r} has no user_factors/item_factors to mask by size")
    model_config = base._replace(embedding_dim=kmax, mean_rating=float(np.mean(train.ratings)))
    apply_fn = make_apply(model, model_config)

    steps_per_epoch = num_batches(len(train), tc.batch_size)
    schedule = make_schedule(tc.schedule, tc.lr, tc.epochs * steps_per_epoch,
                             steps_per_epoch=steps_per_epoch, phases=tc.phases)
    use_decay = any(m.weight_decay for m in resolved)
    loss_fns = [LOSSES[name] for name in losses]
    l2_only, bias_only = make_l2_penalty(1.0), make_l2_penalty(0.0, 1.0)

    def member_step(h: _Hyper):
        def loss_fn(pred, target):
            if len(loss_fns) == 1:
                return loss_fns[0](pred, target)
            return jax.lax.switch(h.loss_index, loss_fns, pred, target)

        def penalty(params, users, items, weight):
            return h.l2 * l2_only(params, users, items, weight) + h.bias_l2 * bias_only(params, users, items, weight)

        def member_schedule(step):
            return schedule(step) * h.lr_scale

        if use_decay:
            decay_mask = lambda p: jax.tree.map(lambda x: x.ndim >= 2, p)  # noqa: E731
            optimizer = optax.adamw(member_schedule, weight_decay=h.weight_decay, mask=decay_mask)
        else:
            optimizer = optax.adam(member_schedule)
        masked_apply = lambda p, u, i, key=None: apply_fn(_masked(p, h.dim_mask), u, i, key)  # noqa: E731
        return make_update(make_objective(masked_apply, loss_fn, penalty), optimizer), optimizer

    def init_member(key, h):
        key, init_key = jax.random.split(key)
        params = _masked(spec.init(init_key, train.num_users, train.num_items, model_config), h.dim_mask)
        _, optimizer = member_step(h)
        return TrainState(params, optimizer.init(params), jnp.zeros((), jnp.int32)), key

    def epoch_member(state, run_key, h, epoch, users, items, ratings):
        step, _ = member_step(h)
        return run_epoch(step, tc.batch_size, state, users, items, ratings, jax.random.fold_in(run_key, epoch),
                         kernels=options.kernels)

    def predict_member(params, h, users, items):
        return apply_fn(_masked(params, h.dim_mask), users, items)

    hyper = _Hyper(
        lr_scale=jnp.asarray([m.lr / tc.lr for m in resolved], jnp.float32),
        l2=jnp.asarray([m.l2 for m in resolved], jnp.float32),
        bias_l2=jnp.asarray([m.bias_l2 for m in resolved], jnp.float32),
        weight_decay=jnp.asarray([m.weight_decay for m in resolved], jnp.float32),
        dim_mask=jnp.asarray([[1.0 if d < m.embedding_dim else 0.0 for d in range(kmax)] for m in resolved],
                             jnp.float32),
        loss_index=jnp.asarray([losses.index(m.loss) for m in resolved], jnp.int32),
    )
    keys = jnp.stack([jax.random.key(m.seed) for m in resolved])
    states, run_keys = jax.jit(jax.vmap(init_member))(keys, hyper)
    plan = sharding.as_plan(mesh)
    place = {}
    users, items, ratings = (jnp.asarray(a) for a in (train.users, train.items, train.ratings))
    if plan is not None:
        if len(resolved) % plan.size:
            raise ValueError(f"fit_many: {len(resolved)} members cannot be split evenly over the mesh's "
                             f"{plan.size} devices; use a multiple of {plan.size} members")
        by_member = plan.rows()  # the leading axis of every stacked leaf is the member axis
        states, run_keys, hyper = jax.device_put((states, run_keys, hyper), by_member)
        users, items, ratings = sharding.put_replicated(plan, (train.users, train.items, train.ratings))
        place = {"out_shardings": by_member}
    all_epochs = jax.jit(jax.vmap(epoch_member, in_axes=(0, 0, 0, None, None, None, None)), **place)
    all_predict = jax.jit(jax.vmap(predict_member, in_axes=(0, 0, None, None)), **place)

    k = len(resolved)
    lo, hi = train.rating_scale

    def trainer(states, epoch, _key) -> Epoch:  # every member's epoch, in one program (keys: their own)
        states, losses_k = all_epochs(states, run_keys, hyper, epoch, users, items, ratings)
        return Epoch(states, states.params, np.asarray(losses_k).mean(axis=1))

    def evaluate(params) -> tuple[dict, np.ndarray | None]:
        if val is None or not len(val):
            return {"val_rmse": np.full(k, np.nan)}, None
        pred = np.clip(np.asarray(all_predict(params, hyper, jnp.asarray(val.users), jnp.asarray(val.items))), lo, hi)
        rmse = np.sqrt(np.mean((pred - val.ratings[None, :]) ** 2, axis=1, dtype=np.float64))
        return {"val_rmse": rmse}, rmse

    history: dict[str, list] = {"epoch": [], "train_loss": [], "val_rmse": [], "seconds": []}
    _, best, _, _ = run_loop(trainer, states, jax.random.key(0), epochs=range(1, tc.epochs + 1), evaluate=evaluate,
                             history=history, best=first_best(states.params, k), patience=tc.patience,
                             desc=f"fit_many {model} x{k}" if progress else None, keep=keep_each_best)
    return ManyResult(best.params, history, best.epoch, resolved, model, model_config, tc)


def predict_many(result: ManyResult, users, items, *, clip: tuple[float, float] | None = None,
                 chunk_size: int = 65_536) -> np.ndarray:
    """Every member's predictions, float32[K, N], in chunks of ``chunk_size`` pairs.

    Indices are checked first, as in `recsys_jax.eval.predict.predict_indices` (JAX would clamp
    an out-of-range gather silently): a `ValueError` before any device work.
    """
    num_users, num_items = table_sizes(result.member_params(0))
    users, items = _as_indices(users, "users", num_users), _as_indices(items, "items", num_items)
    if users.shape != items.shape:
        raise ValueError(f"predict_many: {users.shape[0]} users but {items.shape[0]} items")
    apply_fn = make_apply(result.model, result.model_config)
    masks = jnp.asarray([[1.0 if d < m.embedding_dim else 0.0 for d in range(result.model_config.embedding_dim)]
                         for m in result.members], jnp.float32)
    fn = jax.jit(jax.vmap(lambda p, m, u, i: apply_fn(_masked(p, m), u, i), in_axes=(0, 0, None, None)))
    out = np.empty((len(result.members), len(users)), np.float32)
    for s in range(0, len(users), chunk_size):
        out[:, s:s + chunk_size] = np.asarray(fn(result.params, masks, jnp.asarray(users[s:s + chunk_size]),
                                                 jnp.asarray(items[s:s + chunk_size])))
    if clip is not None:
        np.clip(out, clip[0], clip[1], out=out)
    return out


def ensemble_predict(result: ManyResult, users, items, *, clip: tuple[float, float] | None = None,
                     members: Sequence[int] | None = None) -> np.ndarray:
    """The mean of the members' (unclipped) predictions, then clipped: float32[N]."""
    preds = predict_many(result, users, items)
    if members is not None:
        preds = preds[list(members)]
    mean = preds.mean(axis=0)
    return np.clip(mean, clip[0], clip[1]) if clip is not None else mean


def random_search(
    model: str,
    train: Ratings,
    val: Ratings,
    *,
    num_members: int,
    seed: int,
    lr: tuple[float, float] = (1e-3, 3e-2),
    l2: tuple[float, float] = (1e-3, 1.0),
    embedding_dim: Sequence[int] | None = None,
    model_config=None,
    train_config: TrainConfig = TrainConfig(),
) -> tuple[Member, ManyResult]:
    """Samples ``num_members`` configurations (log-uniform lr and l2, a choice of sizes)
    from ``np.random.default_rng(seed)``, trains them with one `fit_many`, and returns the
    member with the lowest RMSE on ``val`` (which must come from the training data)."""
    rng = np.random.default_rng(seed)

    def log_uniform(lo_hi):
        return float(math.exp(rng.uniform(math.log(lo_hi[0]), math.log(lo_hi[1]))))

    members = [Member(seed=seed, lr=log_uniform(lr), l2=log_uniform(l2),
                      embedding_dim=None if embedding_dim is None else int(rng.choice(embedding_dim)))
               for _ in range(num_members)]
    result = fit_many(model, train, val, members, model_config=model_config, train_config=train_config)
    rmse = np.stack(result.history["val_rmse"])  # float[epochs, K]; NaN where a member diverged
    best_rmse = np.where(np.isnan(rmse), np.inf, rmse).min(axis=0)  # np.argmin would pick a NaN
    if not np.isfinite(best_rmse).any():
        raise ValueError("random_search: no member has a finite validation RMSE (all diverged, or no val)")
    return result.members[int(np.argmin(best_rmse))], result

r"""Train with your own loss function: an asymmetric squared error, defined here, against MSE.

    python scripts/custom_loss.py                # bias model, ml-latest-small if found
    python scripts/custom_loss.py --over 4       # over-predictions cost 4 times as much
    python scripts/custom_loss.py --quick        # 2 epochs (synthetic data: a small set)

A loss is any element-wise function ``(predictions, targets) -> per-example losses``
(hyperparameters keyword-only, as `recsys_jax.objectives.losses`); `recsys_jax.training.fit.fit` takes it
as ``loss_fn`` and nothing in the library changes. The one defined here,

.. math::

   \ell(p, r) = w\,(p - r)^2, \qquad w = \begin{cases} \text{over} & p > r \\ 1 & p \le r \end{cases}

charges an over-prediction ``over`` times as much as an under-prediction: recommending a
film that the user then dislikes is the costly mistake. Its minimiser over a spread of
ratings is not the mean but the expectile :math:`\tau = 1/(1 + \text{over})` (a quarter for
``over = 3``), so the model learns to predict lower, and over-predicts less often.

The script fits the same model, split and seed with MSE, with the library's Huber loss at
``delta=0.5`` (a built-in loss with a hyperparameter, bound with `functools.partial`), and
with the asymmetric loss, then prints for each the test RMSE and MAE, the mean signed error
(prediction minus rating) and the share of test ratings over-predicted by a star or more.

Data: ml-latest-small from ``--data-dir`` or ``$RECSYS_JAX_DATA`` when it holds
``ml-latest-small/ratings.csv``; otherwise (or with ``--synthetic``) ratings drawn from
`recsys_jax.data.make_synthetic`'s planted model.
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time
from pathlib import Path

import jax.numpy as jnp
import numpy as np


def asymmetric_squared(predictions, targets, *, over: float = 3.0):
    """Squared error, ``over`` times heavier where the prediction is above the rating."""
    e = predictions - targets
    return jnp.where(e > 0, over, 1.0) * jnp.square(e)


def find_movielens(data_dir: str | None) -> Path | None:
    """The folder holding ``ml-latest-small/ratings.csv``: ``data_dir``, else ``$RECSYS_JAX_DATA``."""
    for d in (data_dir, os.environ.get("RECSYS_JAX_DATA")):
        if d and (Path(d) / "ml-latest-small" / "ratings.csv").is_file():
            return Path(d)
    return None


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n".join(__doc__.split("\n")[2:]))
    p.add_argument("--model", default="bias", help="a name in recsys_jax.models.MODELS (default: bias)")
    p.add_argument("--over", type=float, default=3.0, help="weight of an over-prediction (default 3; 1 is MSE)")
    p.add_argument("--seed", type=int, default=0, help="split and training seed (default 0)")
    p.add_argument("--quick", action="store_true", help="2 epochs (and a small synthetic set): for tests")
    p.add_argument("--data-dir", default=None, help="folder holding ml-latest-small/ (default: $RECSYS_JAX_DATA)")
    p.add_argument("--synthetic", action="store_true", help="planted synthetic ratings even if MovieLens is found")
    p.add_argument("--json", action="store_true", help="end with one line of JSON with the figures")
    args = p.parse_args(argv)
    if not args.over > 0:
        p.error(f"--over must be > 0, got {args.over}")

    import jax

    from recsys_jax.objectives import losses
    from recsys_jax.eval import metrics
    from recsys_jax.data import load_movielens, make_synthetic, random_split
    from recsys_jax.training.experiment import split_parts
    from recsys_jax.models import make_apply
    from recsys_jax.eval.predict import predict_indices
    from recsys_jax.training.presets import get_preset
    from recsys_jax.training.fit import fit

    t0 = time.perf_counter()
    folder = None if args.synthetic else find_movielens(args.data_dir)
    if folder is not None:
        ratings = load_movielens("ml-latest-small", folder, download=False)
    else:
        sizes = (300, 120, 9_000) if args.quick else (1_000, 400, 50_000)
        ratings, _ = make_synthetic(jax.random.key(args.seed), *sizes, embedding_dim=4)
    print(f"data: {ratings.name or 'synthetic'}, {len(ratings):,} ratings"
          + ("" if folder else " (planted model; no ml-latest-small in --data-dir or $RECSYS_JAX_DATA)"))
    train, val, test = split_parts(ratings, random_split(ratings, args.seed, 0.2), args.seed, 0.1)
    tc = get_preset("default", args.model)
    if args.quick:
        tc = tc._replace(epochs=2)

    candidates = {
        "mse": losses.mse,
        "huber (delta 0.5)": functools.partial(losses.huber, delta=0.5),
        f"asymmetric (over {args.over:g})": functools.partial(asymmetric_squared, over=args.over),
    }
    print(f"{args.model}, {tc.epochs} epochs, the same split and seed for each loss; test set {len(test):,} ratings\n")
    print(f"  {'loss':<20} {'RMSE':>7} {'MAE':>7} {'mean error':>11} {'over by >= 1':>13}")
    figures = {}
    for name, loss_fn in candidates.items():
        result = fit(args.model, train, val, key=jax.random.key(args.seed), train_config=tc, loss_fn=loss_fn,
                     progress=False)
        pred = predict_indices(make_apply(args.model, result.model_config), result.params, test.users, test.items,
                               clip=ratings.rating_scale, aux=result.aux)
        error = np.asarray(pred, np.float64) - test.ratings
        row = {"rmse": metrics.rmse(pred, test.ratings), "mae": metrics.mae(pred, test.ratings),
               "mean_error": float(error.mean()), "over_by_1": float(np.mean(error >= 1.0))}
        figures[name] = row
        print(f"  {name:<20} {row['rmse']:7.4f} {row['mae']:7.4f} {row['mean_error']:+11.4f} "
              f"{100 * row['over_by_1']:12.1f}%")
    print(f"\n({time.perf_counter() - t0:.1f} s)")
    if args.json:
        print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())

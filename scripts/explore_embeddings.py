"""Train a small model, then look inside it: learned movie biases and a PCA of the movie factors.

    python scripts/explore_embeddings.py                  # bias model, ml-latest-small if found
    python scripts/explore_embeddings.py --png runs/explore --model svdpp
    python scripts/explore_embeddings.py --quick          # 2 epochs (synthetic data: a small set)

Data: ml-latest-small from ``--data-dir`` or ``$RECSYS_JAX_DATA`` when it holds
``ml-latest-small/ratings.csv``; otherwise (or with ``--synthetic``) ratings drawn from
`recsys_jax.data.make_synthetic`'s planted model, whose true item biases are known, so the
learned ones are compared with them.

Steps: the seeded random 80/20 split and a 10% validation slice of the training split
(`recsys_jax.training.experiment.split_parts`, as ``recsys-jax train``), `recsys_jax.training.fit.fit`,
test RMSE, then `recsys_jax.use.explore`: each movie's count and raw mean over the training
rows (`item_stats`), the movies with the highest and lowest learned bias (`bias_table`,
models with item biases), the movies at both ends of the first three principal components
of the movie vectors (`pca`, `pca_ends`), and with ``--png DIR`` the learning curve and
the PC1-PC2 map (needs the ``plot`` extra: ``pip install "recsys-jax[plot]"``).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import numpy as np


def find_movielens(data_dir: str | None) -> Path | None:
    """The folder holding ``ml-latest-small/ratings.csv``: ``data_dir``, else ``$RECSYS_JAX_DATA``."""
    for d in (data_dir, os.environ.get("RECSYS_JAX_DATA")):
        if d and (Path(d) / "ml-latest-small" / "ratings.csv").is_file():
            return Path(d)
    return None


def synthetic(seed: int, quick: bool):
    """Planted ratings with made-up titles: ``(ratings, truth)``."""
    import jax
    import pandas as pd

    from recsys_jax.data import make_synthetic

    sizes = (300, 120, 9_000) if quick else (1_000, 400, 50_000)
    ratings, truth = make_synthetic(jax.random.key(seed), *sizes, embedding_dim=4)
    movies = pd.DataFrame({"title": [f"Synthetic movie {i}" for i in ratings.item_ids]},
                          index=pd.Index(ratings.item_ids, name="movieId"))
    return dataclasses.replace(ratings, movies=movies, name="synthetic"), truth


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n".join(__doc__.split("\n")[2:]))
    p.add_argument("--model", default="bias", help="a name in recsys_jax.models.MODELS (default: bias)")
    p.add_argument("--seed", type=int, default=0, help="split and training seed (default 0)")
    p.add_argument("--epochs", type=int, default=None, help="epochs (default: the model's default preset)")
    p.add_argument("--quick", action="store_true", help="2 epochs (and a small synthetic set): for tests")
    p.add_argument("--data-dir", default=None, help="folder holding ml-latest-small/ (default: $RECSYS_JAX_DATA)")
    p.add_argument("--synthetic", action="store_true", help="planted synthetic ratings even if MovieLens is found")
    p.add_argument("-n", type=int, default=8, help="movies at each end of each table (default 8)")
    p.add_argument("--min-ratings", type=int, default=20, help="movies with at least this many training ratings")
    p.add_argument("--png", metavar="DIR", help="also write learning_curve.png and pca_map.png here")
    p.add_argument("--json", action="store_true", help="end with one line of JSON with the figures")
    args = p.parse_args(argv)

    import jax

    from recsys_jax.use import explore
    from recsys_jax.data import load_movielens, random_split
    from recsys_jax.training.experiment import split_parts
    from recsys_jax.use.recommender import to_recommender
    from recsys_jax.eval.metrics import rmse
    from recsys_jax.models import make_apply
    from recsys_jax.eval.predict import predict_indices
    from recsys_jax.training.presets import get_preset
    from recsys_jax.training.fit import fit

    if args.png:
        try:  # say how to install matplotlib before training, not after
            explore.require_plot_extra()
        except explore.MissingPlotExtra as e:
            p.error(str(e))
    t0 = time.perf_counter()
    folder = None if args.synthetic else find_movielens(args.data_dir)
    truth = None
    if folder is not None:
        ratings = load_movielens("ml-latest-small", folder, download=False)
    else:
        ratings, truth = synthetic(args.seed, args.quick)
    print(f"data: {ratings.name}, {len(ratings):,} ratings, {ratings.num_users:,} users, {ratings.num_items:,} movies"
          + ("" if folder else " (planted model; no ml-latest-small in --data-dir or $RECSYS_JAX_DATA)"))

    train, val, test = split_parts(ratings, random_split(ratings, args.seed, 0.2), args.seed, 0.1)
    tc = get_preset("default", args.model)
    epochs = 2 if args.quick else args.epochs
    if epochs is not None:
        tc = tc._replace(epochs=epochs)
    result = fit(args.model, train, val, key=jax.random.key(args.seed), train_config=tc, progress=False)
    pred = predict_indices(make_apply(args.model, result.model_config), result.params, test.users, test.items,
                           clip=ratings.rating_scale, aux=result.aux, **result.predict_link())
    test_rmse = rmse(pred, test.ratings)
    print(f"{args.model}: {tc.epochs} epochs, best {result.best_epoch}, val RMSE per epoch "
          + " ".join(f"{v:.4f}" for v in result.history["val_rmse"]) + f"; test RMSE {test_rmse:.4f}")

    rec = to_recommender(ratings, result)
    stats = explore.item_stats(train, ratings.item_ids)
    figures = {"dataset": ratings.name, "model": args.model, "test_rmse": test_rmse}
    if explore.has_item_bias(rec):
        table = explore.bias_table(rec, stats, args.n, min_ratings=args.min_ratings)
        for end in ("highest", "lowest"):
            print(f"\n{end} learned movie bias (movies with >= {args.min_ratings} training ratings):")
            print(f"  {'bias':>7}  {'mean':>5}  {'count':>5}  title")
            for r in table[table.end == end].itertuples(index=False):
                print(f"  {r.bias:+7.3f}  {r.mean_rating:5.2f}  {r.count:5d}  {r.title}")
        trained = stats.count > 0
        # Against the raw mean only where it means something: a mean of one or two ratings is
        # noise, which a well-regularised bias does not follow (the table's threshold).
        rated = stats.count >= args.min_ratings
        corr = float(np.corrcoef(np.asarray(rec.params.item_bias)[rated], stats.mean[rated])[0, 1])
        print(f"correlation of the learned bias with the raw mean rating ({int(rated.sum())} movies with >= "
              f"{args.min_ratings} training ratings): {corr:.3f}")
        figures["bias_vs_raw_mean"] = corr
        if truth is not None:
            corr = float(np.corrcoef(np.asarray(rec.params.item_bias)[trained], truth.item_bias[trained])[0, 1])
            print(f"correlation of the learned bias with the planted bias: {corr:.3f}")
            figures["bias_vs_planted"] = corr
    else:
        print(f"\nno bias table: the {args.model} model has no item biases")

    result_pca = explore.pca(rec, stats, min_ratings=args.min_ratings, components=3)
    ev = result_pca.explained_variance_ratio
    print(f"\nPCA of {len(result_pca.scores):,} movies' {result_pca.field}: "
          + ", ".join(f"PC{k + 1} {100 * v:.1f}%" for k, v in enumerate(ev)))
    ends = explore.pca_ends(result_pca, args.n)
    for k in range(3):
        for end in ("+", "-"):
            rows = ends[(ends.component == k + 1) & (ends.end == end)]
            print(f"PC{k + 1} {end}: " + "; ".join(rows.title))
    figures["explained_variance_ratio"] = [float(v) for v in ev]

    if args.png:
        out = Path(args.png)
        curve = explore.plot_learning_curve(result.history, out / "learning_curve.png",
                                            title=f"{args.model} on {ratings.name}", loss_name=tc.loss)
        pca_map = explore.plot_pca_map(explore.pca(rec, stats, min_ratings=args.min_ratings, components=2),
                                       out / "pca_map.png")
        print(f"\nwrote {curve} and {pca_map}")
    print(f"\n({time.perf_counter() - t0:.1f} s)")
    if args.json:
        print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())

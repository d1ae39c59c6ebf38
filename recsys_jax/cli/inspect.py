"""``recsys-jax`` subcommands that look inside a model and plot it (registered by `recsys_jax.cli.main`).

    recsys-jax inspect --checkpoint DIR [--what bias|pca] [-n 10] [--min-ratings 20] [--json]
    recsys-jax plot    --checkpoint DIR [--out DIR] [--min-ratings 20] [--labels 30]

Both read what ``recsys-jax train`` keeps in the checkpoint besides the model: the
per-epoch history and each movie's training rating count and raw mean
(`recsys_jax.use.checkpoint.read_history`, `read_item_stats`); the tables and figures are
`recsys_jax.use.explore`'s.
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

from recsys_jax.use.explore import DEFAULT_MIN_RATINGS, PLOT_INSTALL

NO_STATS = ("{path}: this checkpoint has no training rating counts (it was written before recsys_jax kept them); "
            "retrain it with recsys-jax train{hint}")


def add_parsers(sub) -> dict:
    """Adds this module's subcommands to ``sub``; returns ``{name: handler(args)}``."""
    i = sub.add_parser(
        "inspect", help="the movies with the highest and lowest learned bias; the ends of the movie factors' PCA",
        description="Look inside a trained model. bias: the movies with the highest and lowest learned item bias "
                    "b_i beside their raw mean rating and count over the training ratings (models with item "
                    "biases: bias, svdpp, timesvd, fm). pca: principal components of the movie vectors "
                    "(numpy SVD of the centered factors of the movies with --min-ratings or more training "
                    "ratings) and the movies at both ends of the first three.")
    i.add_argument("--checkpoint", required=True, metavar="DIR", help="a folder written by train")
    i.add_argument("--what", choices=["bias", "pca"], default=None,
                   help="one table only (default: both; the bias table is skipped, with a note, for models "
                        "without item biases)")
    i.add_argument("-n", type=int, default=10, help="movies at each end (default: %(default)s)")
    i.add_argument("--min-ratings", type=int, default=DEFAULT_MIN_RATINGS,
                   help="only movies with at least this many training ratings (default: %(default)s)")
    i.add_argument("--components", type=int, default=3, help="principal components to show (default: %(default)s)")
    i.add_argument("--json", action="store_true",
                   help='end with one line of JSON: {"bias": [objects with movieId, title, bias, mean_rating, '
                        'count, ...], "pca": {"explained_variance_ratio": [...], "ends": [objects with '
                        'movieId, title, component, end, score, ...]}}')

    p = sub.add_parser(
        "plot", help="learning curve and PCA map of a checkpoint as PNG files (needs the plot extra)",
        description="Writes learning_curve.png (training loss, validation RMSE and MAE per epoch) and "
                    "pca_map.png (the movies' first two principal components, titles annotated) and prints "
                    f"their paths. Needs matplotlib: {PLOT_INSTALL}.")
    p.add_argument("--checkpoint", required=True, metavar="DIR", help="a folder written by train")
    p.add_argument("--out", metavar="DIR", help="where the PNG files go (default: the checkpoint folder)")
    p.add_argument("--min-ratings", type=int, default=DEFAULT_MIN_RATINGS,
                   help="PCA map: only movies with at least this many training ratings (default: %(default)s)")
    p.add_argument("--labels", type=int, default=30, help="PCA map: at most this many titles (default: %(default)s)")
    p.add_argument("--dpi", type=int, default=100, help="resolution (default: %(default)s)")
    return {"inspect": cmd_inspect, "plot": cmd_plot}


def _load(args):
    from recsys_jax.use import checkpoint

    rec = checkpoint.load(args.checkpoint)
    return rec, checkpoint.read_item_stats(args.checkpoint), checkpoint.read_history(args.checkpoint)


def _pca(args, rec, stats, components: int):
    from recsys_jax.use import explore

    if stats is None and args.min_ratings > 0:
        raise ValueError(NO_STATS.format(path=args.checkpoint, hint=" (or pass --min-ratings 0)"))
    return explore.pca(rec, stats, min_ratings=args.min_ratings, components=components)


def _num(x):
    """JSON has no NaN: a movie without training ratings has mean null."""
    return None if isinstance(x, float) and not math.isfinite(x) else x


def cmd_inspect(args) -> None:
    from recsys_jax.use import explore

    for flag, value, low in (("-n", args.n, 1), ("--min-ratings", args.min_ratings, 0),
                             ("--components", args.components, 1)):
        if value < low:
            raise ValueError(f"{flag} must be >= {low}, got {value}")
    rec, stats, _ = _load(args)
    out: dict = {}
    if args.what in (None, "bias"):
        if not explore.has_item_bias(rec):
            note = (f"model {rec.model!r} has no item biases (parameters: {', '.join(rec.params._fields)}); "
                    f"the bias table needs one of: {', '.join(explore.HAS_ITEM_BIAS)}")
            if args.what == "bias":
                raise ValueError(note)
            print(f"no bias table: {note}\n")
            out["bias"] = None
        else:
            if stats is None:
                raise ValueError(NO_STATS.format(path=args.checkpoint, hint=""))
            table = explore.bias_table(rec, stats, args.n, min_ratings=args.min_ratings)
            _print_bias(rec, table, stats, args.min_ratings)
            out["bias"] = [{k: _num(v) for k, v in row.items()} for row in table.to_dict("records")]
    if args.what in (None, "pca"):
        result = _pca(args, rec, stats, args.components)
        ends = explore.pca_ends(result, args.n)
        _print_pca(rec, result, ends, args.min_ratings)
        out["pca"] = {"field": result.field, "num_movies": len(result.scores), "min_ratings": args.min_ratings,
                      "explained_variance_ratio": [float(v) for v in result.explained_variance_ratio],
                      "ends": ends.to_dict("records")}
    if args.json:
        print(json.dumps(out))


def _title(t) -> str:
    return t if isinstance(t, str) else ""


def _print_bias(rec, table, stats, min_ratings: int) -> None:
    total = int(stats.count.sum())
    from recsys_jax.models import get_model

    note = " (the static b_i, without its time-dependent offsets)" if get_model(rec.model).uses_time else ""
    print(f"learned movie bias b_i of the {rec.model} model{note}, movies with >= {min_ratings} training ratings; "
          f"mean and count over the {total:,} training ratings")
    for end, label in (("highest", "highest bias"), ("lowest", "lowest bias")):
        print(f"\n{label}:")
        print(f"  {'bias':>7}  {'mean':>5}  {'count':>5}  {'movieId':>7}  title")
        for r in table[table.end == end].itertuples(index=False):
            print(f"  {r.bias:+7.3f}  {r.mean_rating:5.2f}  {r.count:5d}  {r.movieId:7d}  {_title(r.title)}")


def _print_pca(rec, result, ends, min_ratings: int) -> None:
    ev = result.explained_variance_ratio
    dim = result.components.shape[1]
    print(f"\nPCA of the {rec.model} model's movie vectors ({result.field}, {dim}-d; {len(result.scores):,} movies "
          f"with >= {min_ratings} training ratings); explained variance: "
          + ", ".join(f"PC{k + 1} {100 * v:.1f}%" for k, v in enumerate(ev)))
    for k in range(len(ev)):
        for end, label in (("+", "highest"), ("-", "lowest")):
            print(f"\nPC{k + 1} {label} scores:")
            for r in ends[(ends.component == k + 1) & (ends.end == end)].itertuples(index=False):
                print(f"  {r.score:+7.3f}  {r.movieId:7d}  {_title(r.title)}")


def cmd_plot(args) -> None:
    from recsys_jax.use import checkpoint, explore

    for flag, value, low in (("--min-ratings", args.min_ratings, 0), ("--labels", args.labels, 0),
                             ("--dpi", args.dpi, 10)):
        if value < low:
            raise ValueError(f"{flag} must be >= {low}, got {value}")
    explore.require_plot_extra()  # the missing-extra message before any work
    rec, stats, history = _load(args)
    out = Path(args.out or args.checkpoint)
    extra = checkpoint.read_meta(args.checkpoint).get("extra") or {}
    loss = (extra.get("train_config") or {}).get("loss")
    name = f"{rec.model} on {extra['dataset']}" if extra.get("dataset") else rec.model
    result = _pca(args, rec, stats, 2)  # before writing anything: a PCA error leaves no half-done output
    written = []
    if history is None:
        print(f"recsys-jax plot: no learning curve: {args.checkpoint} has no per-epoch history (it was written "
              "before recsys_jax kept one; retrain it)", file=sys.stderr)
    else:
        written.append(explore.plot_learning_curve(history, out / "learning_curve.png", title=name,
                                                   loss_name=loss if isinstance(loss, str) else None, dpi=args.dpi))
    written.append(explore.plot_pca_map(
        result, out / "pca_map.png", labels=args.labels, dpi=args.dpi,
        title=f"{name}: {len(result.scores):,} movies with >= {args.min_ratings} training ratings, "
              f"{result.field} ({result.components.shape[1]}-d)"))
    for path in written:
        print(path)


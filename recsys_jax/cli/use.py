"""``recsys-jax`` subcommands that recommend and evaluate (registered by `recsys_jax.cli.main`).

    recsys-jax recommend --checkpoint DIR --user 1 [-n 10] [--min-ratings N] [--genre G ...] [--json]
    recsys-jax recommend --checkpoint DIR --rate "318=5,296=4.5,2571=5" [-n 10] [--json]
    recsys-jax evaluate  --checkpoint DIR [-k 10] [--threshold 4] [--json]

``recommend --user`` ranks every movie the user did not rate in training
(`Recommender.recommend`); ``--rate`` folds a new user in from a few ratings first
(`recsys_jax.use.foldin`). ``evaluate`` rebuilds the checkpoint's test split from the data and
the split protocol that ``train`` recorded (`recsys_jax.use.checkpoint.rebuild_split`) and reports rating and ranking
metrics (`Recommender.evaluate`).
"""
from __future__ import annotations

import json
import re

import numpy as np

ARG_ERRORS = (ValueError, KeyError)


def add_parsers(sub) -> dict:
    """Adds this module's subcommands to ``sub``; returns ``{name: handler(args)}``."""
    r = sub.add_parser(
        "recommend", help="the best movies for a user, or for a new user from a few ratings",
        description="Ranks every movie with training ratings that the user did not rate (in training or in the "
                    "test part train held out) by the model's predicted rating (the score, before clipping to the "
                    "rating scale). --rate folds a "
                    "new user in from the given ratings, every movie parameter fixed (closed-form ridge for dot "
                    "and bias, Adam on the training objective for the other models), and recommends for it.")
    r.add_argument("--checkpoint", required=True, metavar="DIR", help="a folder written by train")
    who = r.add_mutually_exclusive_group(required=True)
    who.add_argument("--user", type=int, help="raw user id (one with training ratings)")
    who.add_argument("--rate", metavar="MOVIE=RATING,...",
                     help='a new user\'s ratings, e.g. "318=5,296=4.5,2571=5" (raw movie ids)')
    r.add_argument("-n", type=int, default=10, help="how many (default: %(default)s)")
    r.add_argument("--min-ratings", type=int, default=None, metavar="N",
                   help="only movies with at least N training ratings")
    r.add_argument("--genre", action="append", metavar="GENRE",
                   help="only movies of this genre (repeat for several: any of them)")
    r.add_argument("--include-held-out", action="store_true",
                   help="for evaluation only: movies the user rated in the test part may be listed")
    r.add_argument("--json", action="store_true",
                   help="end with one line of JSON: a list of objects with movieId, title and score")

    e = sub.add_parser(
        "evaluate", help="rating and ranking metrics of a checkpoint on its test split",
        description="Rebuilds the checkpoint's test split (from its data set and the split protocol and seed "
                    "that train recorded, checked against the training pairs it kept; or --split-file) and "
                    "reports RMSE and MAE of every test rating, and precision, recall, NDCG, MAP and hit rate at "
                    "k with catalogue coverage. Relevant: test movies rated at least --threshold. Candidates: "
                    "every movie the user did not rate in the training split. A popularity baseline (movies "
                    "ranked by their number of training ratings) is scored the same way.")
    e.add_argument("--checkpoint", required=True, metavar="DIR", help="a folder written by train")
    from recsys_jax.training.experiment import RANKING_K, RANKING_THRESHOLD  # what train scores ranking models by

    e.add_argument("-k", type=int, default=RANKING_K, help="cut-off of the ranking metrics (default: %(default)s)")
    e.add_argument("--threshold", type=float, default=RANKING_THRESHOLD,
                   help="a test rating at least this is relevant (default: %(default)s)")
    e.add_argument("--all-relevant", action="store_true", help="every test rating is relevant (no threshold)")
    e.add_argument("--min-ratings", type=int, default=None, metavar="N",
                   help="candidates: only movies with at least N training ratings (default: every movie)")
    e.add_argument("--data-dir", metavar="DIR", help="where the data set lives (else $RECSYS_JAX_DATA, the cache)")
    e.add_argument("--ratings", metavar="FILE", help="the ratings file, for a checkpoint trained on one "
                                                     "(default: the path train recorded)")
    e.add_argument("--no-download", action="store_true", help="fail instead of downloading a missing dataset")
    e.add_argument("--split-file", metavar="NPZ", help="the split to use (train --save-split) instead of rebuilding it")
    e.add_argument("--json", action="store_true", help="end with one line of JSON with every metric")
    return {"recommend": cmd_recommend, "evaluate": cmd_evaluate}


# -- recommend ---------------------------------------------------------------------------------
_PAIR = re.compile(r"^\s*(-?\d+)\s*=\s*([-+]?(?:\d+\.?\d*|\.\d+))\s*$")


def parse_rate(text: str, scale: tuple[float, float]) -> dict[int, float]:
    """``"318=5,296=4.5"`` -> ``{318: 5.0, 296: 4.5}``; a `ValueError` naming ``--rate`` for
    a malformed pair, a repeated movie or a rating outside ``scale``."""
    out: dict[int, float] = {}
    lo, hi = scale
    for part in text.split(","):
        if not part.strip():
            continue
        m = _PAIR.match(part)
        if m is None:
            raise ValueError(f"--rate: {part.strip()!r} is not MOVIE=RATING (e.g. 318=4.5)")
        movie, rating = int(m.group(1)), float(m.group(2))
        if movie in out:
            raise ValueError(f"--rate: movie {movie} is rated twice")
        if not lo <= rating <= hi:
            raise ValueError(f"--rate: rating {rating:g} of movie {movie} is outside the rating scale {lo:g}..{hi:g}")
        out[movie] = rating
    if not out:
        raise ValueError('--rate: no ratings given (e.g. --rate "318=5,296=4.5")')
    return out


def _with_flag(error, flag: str):
    """The same error with its CLI wording prefixed by the flag it is about."""
    from recsys_jax.data import UnknownIdError

    message = re.sub(r"^(recommend|fold_in_user): ", "", getattr(error, "cli_message", str(error)))
    if isinstance(error, UnknownIdError):
        return UnknownIdError(f"{flag}: {message}", cli=f"{flag}: {message}")
    return ValueError(f"{flag}: {message}")


def recommend_answer(rec, args):
    """What ``recommend`` computes once the checkpoint is loaded: ``(table, who)``."""
    from recsys_jax.data import UnknownIdError

    filters = {"min_ratings": args.min_ratings, "genres": args.genre}
    if args.min_ratings is not None and args.min_ratings < 0:
        raise ValueError(f"--min-ratings must be >= 0, got {args.min_ratings}")
    if args.n < 1:
        raise ValueError(f"-n must be >= 1, got {args.n}")
    if args.rate is not None:
        ratings = parse_rate(args.rate, rec.rating_scale)
        try:
            rec = rec.fold_in_user(ratings)
        except (UnknownIdError, ValueError) as e:
            raise _with_flag(e, "--rate") from None
        user, who = int(rec.user_ids[-1]), f"a new user folded in from {len(ratings)} ratings"
    else:
        user, who = args.user, f"user {args.user}"
    try:
        table = rec.recommend(user, args.n, include_held_out=args.include_held_out, **filters)
    except UnknownIdError as e:
        raise _with_flag(e, "--user") from None
    except ValueError as e:
        if "genre" in str(e):
            raise _with_flag(e, "--genre") from None
        raise
    return table, who


def cmd_recommend(args) -> None:
    from recsys_jax.use import checkpoint

    rec = checkpoint.load(args.checkpoint)
    table, who = recommend_answer(rec, args)
    rated = "movies it did not rate" + (", held-out ones included" if args.include_held_out else "")
    from recsys_jax.models import get_model

    score = "preference, not a rating" if get_model(rec.model).ranks else "predicted rating"
    print(f"top {len(table)} for {who} by the {rec.model} model ({rated}; score = {score}):")
    for rank, row in enumerate(table.itertuples(index=False), 1):
        print(f"  {rank:3d}  {row.score:5.2f}  {row.movieId}" + (f"  {row.title}" if row.title else ""))
    if args.json:
        print(json.dumps([{"movieId": int(r.movieId), "title": r.title, "score": float(r.score)}
                          for r in table.itertuples(index=False)]))


def evaluate_data(rec, meta: dict, args):
    """``(rec, test)``: the test split's ratings, rebuilt; ``rec`` given its training pairs
    when the checkpoint did not keep them, else checked against them."""
    rec, ratings, split = checked_data(rec, meta, args)
    return rec, ratings.take(split.test)


def checked_data(rec, meta: dict, args):
    """``(rec, ratings, split)``: the checkpoint's data and split, rebuilt (see `evaluate_data`)."""
    from recsys_jax.data import DATASETS, load_movielens, load_ratings
    from recsys_jax.eval.metrics import pairs_by_user

    extra = meta.get("extra") or {}
    name = extra.get("dataset")
    if args.ratings:
        ratings = load_ratings(args.ratings)
    elif name in DATASETS:
        ratings = load_movielens(name, data_dir=args.data_dir, download=not args.no_download)
    elif name:
        ratings = load_ratings(name)
    else:
        raise ValueError("the checkpoint does not name its data set: pass --ratings FILE")
    from recsys_jax.use.checkpoint import rebuild_split

    split = rebuild_split(extra, ratings, split_file=args.split_file)
    train = ratings.take(split.train)
    if not (np.array_equal(ratings.user_ids, rec.user_ids) and np.array_equal(ratings.item_ids, rec.item_ids)):
        raise ValueError("the data's users and movies are not the checkpoint's: not the same data")
    indptr, items = pairs_by_user(train.users, train.items, ratings.num_users)
    if rec.rated_indptr is None:
        rec = rec._replace(rated_indptr=indptr, rated_items=items)
    else:
        kept = np.asarray(rec.rated_indptr), np.asarray(rec.rated_items)
        same = np.array_equal(kept[0], indptr) and all(
            np.array_equal(np.sort(kept[1][a:b]), np.sort(items[a:b])) for a, b in zip(indptr[:-1], indptr[1:]))
        if not same:
            raise ValueError("the rebuilt training split differs from the training pairs the checkpoint kept: "
                             "not the same data or split (pass --split-file)")
    return rec, ratings, split


METRICS = ("precision", "recall", "ndcg", "map", "hit_rate")


def held_out_users_report(rec, ratings, seed: int, users_frac: float) -> dict:
    """`Recommender.evaluate_held_out_users` on the held-out users of the split
    ``--split held-out-users --seed S --test-frac F`` made: each one folded in from 80% of
    its positives (`recsys_jax.data.split.held_out_users`), scored on the rest."""
    from recsys_jax.data.split import held_out_users

    parts = held_out_users(ratings, seed, users_frac)
    return rec.evaluate_held_out_users(ratings.take(parts.fold_in), ratings.take(parts.target))


def print_held_out_users(report: dict, tail: str = "") -> None:
    names = [k for k in report if "@" in k]
    print(f"held-out users: {report['num_users']} users folded in from 80% of their positives (ratings >= 4), "
          f"scored on the rest" + (f"; {tail}" if tail else ""))
    print(f"  {'':10s} " + " ".join(f"{m:>10s}" for m in names))
    for label, row in (("model", report), ("popularity", report["popularity"])):
        print(f"  {label:10s} " + " ".join(f"{row[m]:10.4f}" for m in names))


def evaluate_held_out_users(rec, meta: dict, args) -> dict:
    """``evaluate`` of a checkpoint trained with ``--split held-out-users``: its held-out users
    rebuilt from the data, the seed and the share train recorded, each folded in from 80% of
    its positives and scored on the rest (Recall@20, Recall@50, NDCG@100)."""
    extra = meta.get("extra") or {}
    rec, ratings, _ = checked_data(rec, meta, args)  # the same data: the training pairs checked
    out = held_out_users_report(rec, ratings, int(extra["seed"]), float(extra.get("test_frac", 0.2)))
    recorded = extra.get("test_ndcg@100")
    print_held_out_users(out, "" if recorded is None else f"train recorded ndcg@100 {recorded:.4f}")
    if args.json:
        print(json.dumps(out))
    return out


def cmd_evaluate(args) -> dict:
    from recsys_jax.use import checkpoint

    if args.k < 1:
        raise ValueError(f"-k must be >= 1, got {args.k}")
    if args.min_ratings is not None and args.min_ratings < 0:
        raise ValueError(f"--min-ratings must be >= 0, got {args.min_ratings}")
    rec = checkpoint.load(args.checkpoint)
    lo, hi = rec.rating_scale
    if not args.all_relevant and not lo <= args.threshold <= hi:
        raise ValueError(f"--threshold {args.threshold:g} is outside the rating scale {lo:g}..{hi:g}")
    meta = checkpoint.read_meta(args.checkpoint)
    if (meta.get("extra") or {}).get("num_test") == 0:
        raise ValueError(f"{args.checkpoint} was trained on every rating (train --test-frac 0): no rating is left "
                         "to evaluate it on; train with a test part (the default --test-frac 0.2) to evaluate")
    if (meta.get("extra") or {}).get("split") == "held-out-users" and not args.split_file:
        return evaluate_held_out_users(rec, meta, args)
    rec, test = evaluate_data(rec, meta, args)
    out = rec.evaluate(test, k=args.k, threshold=None if args.all_relevant else args.threshold,
                       min_ratings=args.min_ratings)
    recorded = (meta.get("extra") or {}).get("test_rmse")
    relevant = "every test rating" if out["threshold"] is None else f"test ratings >= {out['threshold']:g}"
    if out["rmse"] is None:  # a model that ranks: its scores are not ratings
        print(f"{len(test)} test ratings (the {rec.model} model ranks: no rating metrics)")
    else:
        print(f"{len(test)} test ratings: rmse {out['rmse']:.4f}  mae {out['mae']:.4f}"
              + (f"  (train recorded rmse {recorded:.4f})" if recorded is not None else ""))
    print(f"ranking at k={out['k']} over {out['num_users']} users ({relevant} relevant; candidates: "
          f"{out['candidates'].replace('item', 'movie')}):")
    print(f"  {'':10s} " + " ".join(f"{m:>9s}" for m in (*METRICS, "coverage")))
    for label, row in (("model", out), ("popularity", out["popularity"])):
        print(f"  {label:10s} " + " ".join(f"{row[m]:9.4f}" for m in (*METRICS, "coverage")))
    if args.json:
        print(json.dumps(out))
    return out

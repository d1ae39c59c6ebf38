"""Recommend for yourself: rate a few movies, fold yourself into a trained model, read your list.

    python scripts/recommend_for_me.py                    # ml-latest-small if present, else synthetic data
    python scripts/recommend_for_me.py --rate "318=5,296=4.5,2571=5,1=2" -n 10 --genre Comedy

It trains the bias model (the ``default`` preset) on a seeded 80/20 split of ml-latest-small
(found in ``--data-dir``, ``$RECSYS_JAX_DATA`` or the cache; nothing is downloaded), folds a
new user in from your ratings (`Recommender.fold_in_user`: the closed-form ridge solution for
your factors and bias, every movie held fixed), and prints the movies you have not rated that
the model expects you to rate highest, then the movies most similar to your favourite.
Without the data set it draws synthetic ratings (`recsys_jax.data.make_synthetic`) and rates
a few of their most popular movies for you, so the script always runs.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

if not __package__:  # run as a file: make `recsys_jax` importable from a source checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax
import numpy as np

from recsys_jax.data import DataError, load_movielens, make_synthetic, random_split
from recsys_jax.use.recommender import to_recommender
from recsys_jax.eval.metrics import rmse
from recsys_jax.training.presets import get_preset
from recsys_jax.training.fit import fit

# The Shawshank Redemption, Pulp Fiction, The Matrix, Star Wars IV: loved; Toy Story: so-so.
MY_RATINGS = "318=5,296=4.5,2571=5,260=4.5,1=3"


def load(args):
    """ml-latest-small, or (without it, or with --synthetic) synthetic ratings."""
    if not args.synthetic:
        try:
            return load_movielens("ml-latest-small", data_dir=args.data_dir, download=False), True
        except DataError as e:
            print(f"ml-latest-small not found ({str(e).splitlines()[0]}); using synthetic ratings")
    ratings, _ = make_synthetic(jax.random.key(args.seed), 600, 400, 30_000)
    return ratings, False


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rate", help=f'your ratings, MOVIE=RATING,... (default on MovieLens: "{MY_RATINGS}")')
    p.add_argument("-n", type=int, default=10, help="how many recommendations (default: %(default)s)")
    p.add_argument("--genre", action="append", help="only movies of this genre (repeatable)")
    p.add_argument("--min-ratings", type=int, default=20, help="only movies with this many training ratings")
    p.add_argument("--data-dir", help="where ml-latest-small lives (else $RECSYS_JAX_DATA, the cache)")
    p.add_argument("--synthetic", action="store_true", help="use synthetic ratings even if the data set is there")
    p.add_argument("--epochs", type=int, default=None, help="training epochs (default: the preset's)")
    p.add_argument("--seed", type=int, default=0, help="split seed and training key (default: %(default)s)")
    args = p.parse_args(argv)

    from recsys_jax.cli.use import parse_rate

    ratings, real = load(args)
    print(f"{ratings.name}: {len(ratings)} ratings, {ratings.num_users} users, {ratings.num_items} movies")
    split = random_split(ratings, args.seed, 0.2)
    train, test = ratings.take(split.train), ratings.take(split.test)
    tc = get_preset("default", "bias")
    tc = tc if args.epochs is None else tc._replace(epochs=args.epochs)
    result = fit("bias", train, None, key=jax.random.key(args.seed), train_config=tc, progress=False)
    rec = to_recommender(ratings, result, train_split=train)
    pred = rec.predict(ratings.user_ids[test.users], ratings.item_ids[test.items], unknown="fallback")
    print(f"bias model, {tc.epochs} epochs: test RMSE {rmse(pred, test.ratings):.4f} on {len(test)} ratings")

    if args.rate is not None:
        mine = parse_rate(args.rate, rec.rating_scale)
    elif real:
        mine = parse_rate(MY_RATINGS, rec.rating_scale)
    else:  # synthetic movies have no titles: rate five of the most rated ones, high to low
        popular = rec.item_ids[np.argsort(-rec.item_counts(), kind="stable")[:5]]
        mine = dict(zip(popular.tolist(), [5.0, 4.5, 4.0, 2.5, 1.0]))
    print("your ratings:")
    for movie, stars in mine.items():
        print(f"  {stars:3.1f}  {movie}  {rec.title(movie) or ''}")
    me = rec.fold_in_user(mine)
    you = int(me.user_ids[-1])
    top = me.recommend(you, args.n, min_ratings=args.min_ratings, genres=args.genre)
    print(f"recommended for you (new user {you}; movies with at least {args.min_ratings} training ratings):")
    for rank, row in enumerate(top.itertuples(index=False), 1):
        print(f"  {rank:2d}  {row.score:4.2f}  {row.movieId}  {row.title or ''}")
    favourite = max(mine, key=mine.get)
    similar = me.similar_items(favourite, 5)
    print(f"most similar to your favourite, {favourite} {me.title(favourite) or ''}:")
    for row in similar.itertuples(index=False):
        print(f"  {row.score:+.3f}  {row.movieId}  {row.title or ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

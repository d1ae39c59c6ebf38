"""Data: MovieLens loaders, a user's own ratings file, splits and synthetic data."""
from recsys_jax.data.ratings import DataError, Ratings, UnknownIdError
from recsys_jax.data.movielens import DATASETS, load_movielens
from recsys_jax.data.files import load_ratings
from recsys_jax.data.split import (
    kfold_split,
    load_split,
    make_split,
    random_split, 
    save_split,
    temporal_split,
    user_split,
)
from recsys_jax.data.synthetic import make_synthetic

__all__ = [
    "DATASETS",
    "DataError",
    "Ratings",
    "UnknownIdError",
    "kfold_split",
    "load_movielens",
    "load_ratings",
    "load_split",
    "make_split",
    "make_synthetic",
    "random_split",
    "save_split",
    "temporal_split",
    "user_split",
]

"""recsys_jax: collaborative filtering on MovieLens in JAX."""

__version__ = "0.1.0"

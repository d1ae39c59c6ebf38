"""``recsys-jax`` subcommands that look inside a model and plot it (registered by `recsys_jax.cli`)."""
from __future__ import annotations


def add_parsers(sub) -> dict:
    """Adds this module's subcommands to ``sub``; returns ``{name: handler(args)}``."""
    return {}

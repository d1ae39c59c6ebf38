"""``recsys-jax`` subcommands that recommend and evaluate (registered by `recsys_jax.cli`)."""
from __future__ import annotations


def add_parsers(sub) -> dict:
    """Adds this module's subcommands to ``sub``; returns ``{name: handler(args)}``."""
    return {}

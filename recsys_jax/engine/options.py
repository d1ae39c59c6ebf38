"""How the engine runs, as explicit options: resolved once at the entry point (the CLI, or
`recsys_jax.training.fit.fit` for a Python caller) and passed down, so that nothing reads the
environment or probes the machine while a program is traced.

- ``kernels``: call the hand-written CPU kernels (`recsys_jax.engine.kernels`: the fused
  row-sparse step, the shuffles) where they apply. True only where they are loaded.
- ``program_store``: the folder where compiled epochs and inits are kept
  (`recsys_jax.engine.programs`), or None for none.

Both are part of every compiled program's identity (`recsys_jax.engine.build.make_engine`'s
cache, the program store's key): a program traced with the kernels is never reused
without them.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

from recsys_jax.engine import kernels as _kernels


class EngineOptions(NamedTuple):
    kernels: bool = False  # call the CPU kernels where they apply (True only once they are loaded)
    program_store: str | None = None  # the folder of stored compiled programs, or None


def resolve_options(*, kernels: bool | None = None, program_store: str | os.PathLike | None = None
                    ) -> EngineOptions:
    """The options for one entry point. ``kernels=None`` asks ``$RECSYS_JAX_KERNELS`` (on
    unless it says off); the kernels are then on only where they load (built for this
    machine, CPU backend): the first call may build them (`recsys_jax.engine.kernels.build`)."""
    want = _kernels.requested() if kernels is None else bool(kernels)
    on = want and _kernels.load() is not None
    return EngineOptions(on, None if program_store is None else str(Path(program_store)))

"""Shared fixtures: where the genuine MovieLens copy is, and small seeded data."""
from __future__ import annotations

import os
from pathlib import Path

import pytest


def shared_data_dir() -> Path | None:
    """``$RECSYS_JAX_DATA`` if set, else ``../shared/data`` beside the checkout, else None."""
    env = os.environ.get("RECSYS_JAX_DATA")
    candidates = [Path(env)] if env else []
    candidates.append(Path(__file__).resolve().parents[2] / "shared" / "data")
    for c in candidates:
        if (c / "ml-latest-small" / "ratings.csv").is_file():
            return c
    return None


@pytest.fixture(scope="session")
def data_dir() -> Path:
    d = shared_data_dir()
    if d is None:
        pytest.skip("genuine ml-latest-small not available (set RECSYS_JAX_DATA)")
    return d


@pytest.fixture(autouse=True, scope="session")
def _compile_cache_of_the_session(tmp_path_factory):
    """JAX's persistent compilation cache on, in a folder of this session's own: the many
    tests that build the same programs anew (new engines, new jit objects) compile each once.
    In-process CLI runs would turn on the CLI's caches (JAX's and the program store,
    `recsys_jax.engine.programs`) in the user's cache folder instead: they are switched off here
    (tests that want them run the CLI in a subprocess). Session-wide, so that module-scoped
    fixtures that run the CLI see it too."""
    import jax

    jax.config.update("jax_compilation_cache_dir", str(tmp_path_factory.mktemp("jax-compile")))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RECSYS_JAX_COMPILE_CACHE", "off")
        # The CPU kernels (recsys_jax.engine.kernels) are built once for the session, subprocesses included.
        mp.setenv("RECSYS_JAX_KERNEL_CACHE", str(tmp_path_factory.mktemp("kernels")))
        yield


# Models without latent factors: the option that the generic tests' embedding_dim stands for.
TABLE_WIDTH = {"knn": "max_neighbors", "ease": None}  # None: no such option (EASE's B is I' x I')


def configured_model(name: str, train, **options):
    """``(module, config, aux)``: model ``name`` with ``options``, its ``prepare(train)`` data
    (None for models without) and the config its ``configure`` completes from that data."""
    from recsys_jax.models import MODELS, make_config

    module = MODELS[name]
    if name in TABLE_WIDTH and "embedding_dim" in options:  # no latent factors: the width of its item tables
        width = options.pop("embedding_dim")
        if TABLE_WIDTH[name] is not None:
            options[TABLE_WIDTH[name]] = width
    config = make_config(name, **options)
    aux = module.prepare(train, config) if module.prepare is not None else None
    if module.configure is not None:
        config = module.configure(config, aux)
    return module, config, aux


def run_cli(argv) -> tuple[int, str, str]:
    """``recsys-jax argv`` in this process: ``(exit code, stdout, stderr)`` (``--help``'s exit too)."""
    import contextlib
    import io

    from recsys_jax.cli.main import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in argv])
        except SystemExit as e:  # --help
            code = e.code
    return code, out.getvalue(), err.getvalue()

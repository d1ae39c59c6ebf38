"""``recsys-jax info``: what this installation runs with, and its folders on disk.

    recsys-jax info [--json]                 versions, devices, the CPU kernels' state and why, the folders
    recsys-jax info --build-kernels          build the CPU kernels now (set-up does this), retrying a failed build
    recsys-jax info --prune                  keep the compilation cache under its cap, least recently used first
    recsys-jax info --clear compile|parsed|kernels|all

The folders: the compilation cache (JAX's entries and the stored programs,
`recsys_jax.engine.programs`), the parsed-ratings cache (`recsys_jax.data.cache`), the CPU
kernels (`recsys_jax.engine.kernels`) and the downloaded data sets. ``--clear`` never removes
downloaded data: remove those folders by hand.
"""
from __future__ import annotations

import importlib.metadata
import json
import platform
from pathlib import Path

CLEARABLE = ("compile", "parsed", "kernels", "all")


def add_parsers(sub) -> dict:
    """Adds ``info`` to ``sub``; returns ``{name: handler(args)}``."""
    i = sub.add_parser("info", help="versions, devices, the CPU kernels' state, cache folders and sizes",
                       description="Shows what this installation runs with and where it keeps files; builds the "
                                   "CPU kernels, prunes or clears the caches on request.")
    i.add_argument("--build-kernels", action="store_true",
                   help="build the CPU kernels for this machine now (retrying a build that failed before)")
    i.add_argument("--prune", action="store_true",
                   help="remove the least recently used compiled programs until the compilation cache is under "
                        "its cap ($RECSYS_JAX_CACHE_MAX_MB, default 2048), and files that killed processes left")
    i.add_argument("--clear", choices=CLEARABLE, action="append", metavar="WHAT",
                   help=f"remove a cache: {', '.join(CLEARABLE)} (all: the first three); repeatable")
    i.add_argument("--json", action="store_true", help="print one JSON object")
    return {"info": cmd_info}


def _version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def folders() -> dict[str, Path]:
    """The folders `info` reports, by name."""
    from recsys_jax.data.cache import cache_root
    from recsys_jax.engine import kernels, programs

    root = cache_root()
    out = {"compile": programs.compile_cache_dir(), "parsed": root / "parsed", "kernels": kernels.build_dir(),
           "root": root}
    if out["compile"] is None:  # RECSYS_JAX_COMPILE_CACHE=off
        del out["compile"]
    return out


def gather() -> dict:
    """Everything `info` prints, as one dict (nothing built, loaded or changed)."""
    import jax

    from recsys_jax._version import __version__
    from recsys_jax.data import cachefiles
    from recsys_jax.engine import kernels

    versions = {"recsys_jax": __version__, "python": platform.python_version()}
    for name in ("jax", "jaxlib", "optax", "numpy", "pandas", "pyarrow"):
        versions[name] = _version(name)
    out = {"versions": versions, "machine": f"{platform.machine()} {platform.system()}",
           "backend": jax.default_backend(), "devices": [str(d) for d in jax.devices()],
           "kernels": kernels.status()}
    if not out["kernels"]["requested"]:
        out["kernels"]["state"] += " (RECSYS_JAX_KERNELS is off: not used)"
    sizes = {}
    for name, folder in folders().items():
        files, size = cachefiles.usage(folder)
        sizes[name] = {"folder": str(folder), "files": files, "bytes": size}
    out["folders"] = sizes
    out["cap_bytes"] = cachefiles.cap_bytes()
    return out


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB"


def cmd_info(args) -> dict:
    from recsys_jax.data import cachefiles
    from recsys_jax.engine import kernels, programs

    done = []
    for what in dict.fromkeys(args.clear or ()):
        for name in (("compile", "parsed", "kernels") if what == "all" else (what,)):
            if name not in folders():
                continue
            files, size = cachefiles.clear(folders()[name])
            done.append(f"cleared {name}: {files} files, {_mib(size)}")
    if args.prune:
        files, size = programs.prune_caches()
        done.append(f"pruned the compilation cache: {files} files, {_mib(size)} removed")
    if args.build_kernels:
        if not kernels.requested():
            raise ValueError("RECSYS_JAX_KERNELS is off: unset it to build the CPU kernels")
        try:
            path = kernels.build(retry=True)
        except RuntimeError as error:
            raise ValueError(f"--build-kernels: {error}") from None
        done.append(f"CPU kernels built: {path}")
    out = gather()
    out["done"] = done
    if args.json:
        print(json.dumps(out))
        return out
    for line in done:
        print(line)
    v = out["versions"]
    print(f"recsys_jax {v['recsys_jax']}  python {v['python']}  " + "  ".join(
        f"{name} {v[name]}" for name in ("jax", "jaxlib", "optax", "numpy", "pandas", "pyarrow") if v[name]))
    print(f"machine   {out['machine']}; backend {out['backend']}, {len(out['devices'])} device(s): "
          f"{', '.join(out['devices'][:4])}{' ...' if len(out['devices']) > 4 else ''}")
    k = out["kernels"]
    state = k["state"] + (f": {k['why']}" if k.get("why") else "")
    if k["state"] == "not built":
        state += " (`recsys-jax info --build-kernels` builds them now; otherwise the first fit does)"
    print(f"kernels   {state}; compiler {k['compiler'] or 'none'}; folder {k['folder']}")
    for name, f in out["folders"].items():
        what = " (all of it, downloaded data sets included)" if name == "root" else ""
        print(f"{name:9s} {f['folder']}  {f['files']} files, {_mib(f['bytes'])}{what}")
    print(f"cap       {_mib(out['cap_bytes'])} for the compilation cache ($RECSYS_JAX_CACHE_MAX_MB); "
          f"--prune applies it, --clear empties a cache")
    return out


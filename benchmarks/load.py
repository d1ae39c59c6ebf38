"""Loading a large ratings file: the first load (parsing) and the next ones (the binary cache).

Writes a synthetic ratings.csv in the ml-25m/ml-32m layout (``userId,movieId,rating,timestamp``
with a header, rows in (user, movie) order as GroupLens ships them; by default 32M rows,
200k users, 84k movies, seeded) and a movies.csv into a temporary folder laid out like the
extracted ml-32m archive, then times, each in a fresh Python process so that its peak RSS
(``resource.getrusage``) is that load's alone:

- ``load_ratings`` with the cache off, with the default engine (pyarrow when installed) and
  with pandas' C parser;
- the first ``load_ratings`` with the cache on (parsing and writing the entry), then
  ``--repeats`` loads from the cache (median);
- ``load_movielens("ml-32m")`` on the folder, first and again (movies.csv is parsed each time).

Times are of the call alone (not the interpreter's start or imports); RSS is the process's
peak, imports included. Linux carries ``ru_maxrss`` across ``exec`` from the process that
forked, so this script keeps its own process small: the file is written by a child too,
and the environment is read after the loads; ``VmHWM`` (Linux) is recorded beside it. The file stays in the page cache throughout: "first load" means
parsed, not read from disk; the page cache is written back (``os.sync``) before each first
load, as it would be for an archive unpacked earlier. The load average before and after is recorded: on a shared
machine it says how far other work distorted the times.

    python -m benchmarks.load                      # 32M rows: ~0.9 GB of text, deleted after
    python -m benchmarks.load --quick              # 1M rows, fewer repeats, into runs/benchmarks/

Files: ``load-cpu.{json,md}`` in benchmarks/results/ for a full run (the default size) from
a clean commit, else runs/benchmarks/ (the rule in `benchmarks.common`).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import (REPO, add_output_args, environment, markdown_table, print_written, resolve_outputs,
                               write_json, write_text)

_HALF_STARS = np.array([0.015, 0.03, 0.02, 0.06, 0.05, 0.2, 0.13, 0.27, 0.09, 0.135])  # 0.5 .. 5.0


# -- the synthetic file ----------------------------------------------------------------
def synthetic_columns(rows: int, users: int, movies: int, seed: int):
    """(userId int32, movieId int32, star index int8 (rating = (i + 1) / 2), timestamp int64),
    ``rows`` distinct pairs sorted by (user, movie). User activity is log-normal (capped),
    movie popularity a power law; movie ids are spread over 1..3*movies as in ml-32m."""
    rng = np.random.default_rng(seed)
    movie_ids = np.sort(rng.choice(np.arange(1, 3 * movies + 1), movies, replace=False)).astype(np.int32)
    rank_to_movie = rng.permutation(movies)
    activity = np.minimum(rng.lognormal(0.0, 1.0, users), 40.0)
    activity /= activity.sum()
    keys = np.empty(0, np.int64)  # user * movies + movie, sorted and distinct
    while len(keys) < rows:  # draw, drop repeated pairs, draw again for the shortfall
        n = int((rows - len(keys)) * 1.03) + 1000
        u = np.repeat(np.arange(users, dtype=np.int64), rng.multinomial(n, activity))
        m = rank_to_movie[(movies * rng.random(n) ** 2.0).astype(np.int64)]
        keys = np.sort(np.concatenate([keys, u * movies + m]))
        keys = keys[np.concatenate(([True], keys[1:] != keys[:-1]))]
    keys = np.delete(keys, rng.choice(len(keys), len(keys) - rows, replace=False))
    user_col = (keys // movies + 1).astype(np.int32)
    movie_col = movie_ids[keys % movies]
    del keys
    stars = rng.choice(10, rows, p=_HALF_STARS).astype(np.int8)
    stamps = rng.integers(789_652_009, 1_697_164_000, rows)
    return user_col, movie_col, stars, stamps, movie_ids


def write_synthetic(folder: Path, rows: int, users: int, movies: int, seed: int) -> dict:
    """ratings.csv and movies.csv under ``folder``; the same bytes whichever writer runs."""
    folder.mkdir(parents=True, exist_ok=True)
    user_col, movie_col, stars, stamps, movie_ids = synthetic_columns(rows, users, movies, seed)
    path = folder / "ratings.csv"
    labels = [f"{(i + 1) / 2:.1f}" for i in range(10)]
    with open(path, "wb") as out:
        out.write(b"userId,movieId,rating,timestamp\n")
        try:
            import pyarrow as pa
            import pyarrow.csv as pacsv

            rating = pa.DictionaryArray.from_arrays(pa.array(stars), pa.array(labels)).cast(pa.string())
            table = pa.table({"u": user_col, "m": movie_col, "r": rating, "t": stamps})
            pacsv.write_csv(table, out, write_options=pacsv.WriteOptions(
                include_header=False, quoting_style="none"))
        except ImportError:
            import pandas as pd

            step = 1 << 20
            for lo in range(0, rows, step):
                frame = pd.DataFrame({"u": user_col[lo:lo + step], "m": movie_col[lo:lo + step],
                                      "r": np.array(labels)[stars[lo:lo + step]], "t": stamps[lo:lo + step]})
                out.write(frame.to_csv(header=False, index=False, lineterminator="\n").encode())
    genres = np.array(["Action", "Comedy", "Drama", "Horror", "Romance", "Sci-Fi", "Thriller"])
    rng = np.random.default_rng(seed + 1)
    with open(folder / "movies.csv", "w", encoding="utf-8") as out:
        out.write("movieId,title,genres\n")
        for movie, year, g in zip(movie_ids, rng.integers(1900, 2024, movies), rng.integers(0, 7, movies)):
            out.write(f'{movie},"Movie {movie}, The ({year})",{genres[g]}|Drama\n')
    return {"rows": rows, "users": int(len(np.unique(user_col))), "movies": int(len(np.unique(movie_col))),
            "ratings_bytes": path.stat().st_size, "movies_bytes": (folder / "movies.csv").stat().st_size}


# -- one load in a fresh process ---------------------------------------------------------
def _vm_hwm_mb() -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def _child(spec: dict) -> dict:
    import resource

    if spec["what"] == "write":
        t0 = time.perf_counter()
        data = write_synthetic(Path(spec["folder"]), spec["rows"], spec["users"], spec["movies"], spec["seed"])
        return {**data, "write_seconds": time.perf_counter() - t0}

    from recsys_jax.data import load_movielens, load_ratings

    t0, c0 = time.perf_counter(), time.process_time()
    if spec["what"] == "load_ratings":
        r = load_ratings(spec["path"], engine=spec["engine"], cache=spec["cache"], cache_dir=spec["cache_dir"])
    else:
        r = load_movielens("ml-32m", data_dir=spec["data_dir"], download=False,
                           cache_dir=spec["cache_dir"], cache=spec["cache"])
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"seconds": seconds, "cpu_seconds": cpu,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
            "vm_hwm_mb": _vm_hwm_mb(),
            "rows": len(r), "num_users": r.num_users, "num_items": r.num_items}


def run_child(spec: dict) -> dict:
    out = subprocess.run([sys.executable, "-m", "benchmarks.load", "--child", json.dumps(spec)],
                         cwd=REPO, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"the load {spec} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _loadavg() -> list[float] | None:
    try:
        return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return None


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=32_000_000)
    parser.add_argument("--users", type=int, default=200_000)
    parser.add_argument("--movies", type=int, default=84_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=5, help="loads from the cache (median)")
    parser.add_argument("--cold-repeats", type=int, default=3,
                        help="first loads, the cache emptied before each (median)")
    parser.add_argument("--tmp", default=None, help="folder for the file and the cache (default: a new "
                        "temporary folder, deleted at the end)")
    add_output_args(parser)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true", help="1M rows, 2 loads of each kind")
    args = parser.parse_args(argv)
    if args.quick:
        args.rows, args.repeats, args.cold_repeats = 1_000_000, 2, 1
    args.quick = args.quick or (args.rows, args.users, args.movies) != (32_000_000, 200_000, 84_000)
    if args.child is not None:
        print(json.dumps(_child(json.loads(args.child))))
        return

    files = resolve_outputs("load", "load-cpu", args, parser)
    work = Path(tempfile.mkdtemp(prefix="recsys-jax-load-", dir=args.tmp))
    try:
        folder, cache_dir = work / "ml-32m", work / "cache"
        data = run_child({"what": "write", "folder": str(folder), "rows": args.rows, "users": args.users,
                          "movies": args.movies, "seed": args.seed})
        print(f"[load] wrote {data['ratings_bytes'] / 1e9:.2f} GB ({data['rows']:,} rows) "
              f"in {data['write_seconds']:.0f} s", flush=True)
        path = str(folder / "ratings.csv")
        base = {"what": "load_ratings", "path": path, "cache_dir": str(cache_dir)}
        load_before = _loadavg()
        records = []

        def measure(label, spec):
            result = run_child(spec)
            print(f"[load] {label}: {result['seconds']:.2f} s, peak RSS {result['peak_rss_mb']:.0f} MiB",
                  flush=True)
            records.append({"case": label, **spec, **result})
            return result

        if hasattr(os, "sync"):
            os.sync()  # a real archive was unpacked long before: none of it waits to be written
        cold = []
        for i in range(args.cold_repeats):  # each into an empty cache of its own
            cold.append(measure(f"first load (parse + write cache) {i + 1}",
                                {**base, "engine": "auto", "cache": True, "cache_dir": f"{cache_dir}-{i}"}))
            if hasattr(os, "sync"):
                os.sync()
        parse = [measure(f"parse (cache off), default engine {i + 1}", {**base, "engine": "auto", "cache": False})
                 for i in range(args.cold_repeats)]
        measure("parse (cache off), pandas C parser", {**base, "engine": "c", "cache": False})
        warm = [measure(f"cached load {i + 1}",
                        {**base, "engine": "auto", "cache": True, "cache_dir": f"{cache_dir}-0"})
                for i in range(args.repeats)]
        ml = {"what": "load_movielens", "data_dir": str(work), "cache_dir": str(work / "ml-cache"),
              "cache": None, "engine": "auto"}
        if hasattr(os, "sync"):
            os.sync()
        measure("load_movielens ml-32m layout, first", ml)
        measure("load_movielens ml-32m layout, again", ml)
        load_after = _loadavg()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    env = environment()
    import pandas as pd

    try:
        import pyarrow

        env["pyarrow"] = pyarrow.__version__
    except ImportError:
        env["pyarrow"] = None
    env["pandas"] = pd.__version__
    summary = {
        "first_load_median_seconds": float(np.median([c["seconds"] for c in cold])),
        "first_load_peak_rss_mb": float(max(c["peak_rss_mb"] for c in cold)),
        "parse_only_median_seconds": float(np.median([p["seconds"] for p in parse])),
        "cached_median_seconds": float(np.median([w["seconds"] for w in warm])),
        "cached_peak_rss_mb": float(max(w["peak_rss_mb"] for w in warm)),
    }
    report = {"environment": env, "git_commit": env["git_commit"], "data": data, "loadavg_before": load_before,
              "loadavg_after": load_after, "summary": summary, "records": records}
    json_path = write_json(files.json, [report])
    rows = [[r["case"], f"{r['seconds']:.2f}", f"{r['cpu_seconds']:.2f}", f"{r['peak_rss_mb']:.0f}",
             "" if r["vm_hwm_mb"] is None else f"{r['vm_hwm_mb']:.0f}"] for r in records]
    md = "\n".join([
        f"### Loading a {data['rows']:,}-row ratings file ({data['ratings_bytes'] / 1e9:.2f} GB, "
        f"{data['users']:,} users, {data['movies']:,} movies)",
        "",
        f"Device: {env['cpu']} ({env['cpu_count']} cores); pandas {env['pandas']}, "
        f"pyarrow {env['pyarrow']}, numpy {env['numpy']}; commit {env['git_commit']}; "
        f"load average {load_before} before, {load_after} after.",
        f"Command: `{env['command']}`",
        "",
        markdown_table(["case", "wall s", "CPU s", "peak RSS MiB (getrusage)", "VmHWM MiB"], rows),
        "",
        f"First load (parse + write the cache): median {summary['first_load_median_seconds']:.2f} s "
        f"of {len(cold)}, peak RSS {summary['first_load_peak_rss_mb']:.0f} MiB; parsing alone (cache off): "
        f"median {summary['parse_only_median_seconds']:.2f} s. Cached load: median "
        f"{summary['cached_median_seconds']:.2f} s of {len(warm)}, peak RSS {summary['cached_peak_rss_mb']:.0f} MiB. "
        "Each load ran in a fresh process; CPU s above wall s means pyarrow's threads ran in parallel.",
        "",
    ])
    md_path = write_text(files.md, md)
    print_written("load", files, json_path, md_path)


if __name__ == "__main__":
    main()

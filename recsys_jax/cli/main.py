"""The ``recsys-jax`` command line.

    recsys-jax train   --dataset ml-latest-small --model bias --seed 0 [--json] [--out DIR]
    recsys-jax predict --checkpoint DIR --user 1 --movie 1
    recsys-jax download --dataset ml-latest-small

``train`` splits the ratings (random 80/20 by default), carves a validation slice from the
training split for per-epoch scores and early stopping, scores the test split once at the
end, and saves a checkpoint. A user's mistake (bad file, unknown id, bad option) ends with
a short message on stderr and exit status 2, never a traceback (set RECSYS_JAX_DEBUG=1 to see one).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from pathlib import Path

import numpy as np

from recsys_jax._version import __version__
from recsys_jax.cli import blend, info, inspect, use
from recsys_jax.cli.args import add_data_args, add_split_args, load_data, make_split_from_args, parse_model_options, report
from recsys_jax.models import DEFAULT_MODEL

EXIT_USAGE = 2

ENVIRONMENT = """\
environment:
  RECSYS_JAX_DATA      a folder holding extracted data sets (searched after --data-dir)
  RECSYS_JAX_CACHE     where downloads are extracted (default: ~/.cache/recsys_jax)
  RECSYS_JAX_BASE_URL  a mirror to download <dataset>.zip from instead of
                       https://files.grouplens.org/datasets/movielens (an http(s):// or
                       file:// URL of the folder holding the zips; the published sha256
                       is still checked)
  RECSYS_JAX_COMPILE_CACHE  train: the folder of JAX's persistent compilation cache
                       (default: <RECSYS_JAX_CACHE>/jax-compile); "off" disables it
  RECSYS_JAX_CACHE_MAX_MB  the compilation cache's size cap in MiB (default 2048; the least
                       recently used programs go first)
  RECSYS_JAX_KERNELS   "off": train without the CPU kernels (XLA's step)
  RECSYS_JAX_QUIET     set to 1 to silence the one-line notices (kernels, caches)
  RECSYS_JAX_DEBUG     set to 1 to see the traceback behind an error message"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="recsys-jax", description="Collaborative filtering on MovieLens in JAX.")
    parser.add_argument("--version", action="version", version=f"recsys-jax {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a model, score the test split, save a checkpoint",
                       epilog=ENVIRONMENT, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_args(t)
    t.add_argument("--model", default=DEFAULT_MODEL, help="a name in recsys_jax.models.MODELS (default: %(default)s)")
    t.add_argument("--preset", default="default",
                   help="default (tuned here), notebook (the course notebook exactly) or notebook_as_run "
                        "(the same at constant rates, as its Keras 1 code actually ran)")
    add_split_args(t)
    t.add_argument("--val-frac", type=float, default=None,
                   help="validation slice of the training split (0: none, train on all of it; "
                        "default: 0.1, or 0 for the notebook presets, which keep the last epoch)")
    t.add_argument("--no-refit", action="store_true",
                   help="keep the model fit on the training split less the validation slice (default: choose the "
                        "epoch count on the slice, then refit on the whole training split)")
    t.add_argument("--split-file", metavar="NPZ", help="use this saved split (recsys_jax.data.save_split)")
    t.add_argument("--save-split", metavar="NPZ", help="write the train/test split used to this file")
    for name, typ, helptext in [
        ("--epochs", int, "number of epochs"),
        ("--batch-size", int, "ratings per step"),
        ("--lr", float, "peak learning rate"),
        ("--schedule", str, "constant, piecewise, one_cycle or warmup_cosine"),
        ("--l2", float, "L2 on the touched embedding rows"),
        ("--bias-l2", float, "L2 on the touched biases"),
        ("--weight-decay", float, "decoupled weight decay (AdamW)"),
        ("--loss", str, "a name in recsys_jax.objectives.losses.LOSSES or PARAM_LOSSES (e.g. huber, ordinal, gaussian_nll)"),
        ("--patience", int, "early stopping patience in epochs"),
        ("--optimizer", str, "adam (dense), lazy_adam, adagrad, sgd (row-sparse: only the rows a batch touches), "
                         "or als (alternating least squares: dot and bias, squared error)"),
        ("--order", str, "the epoch's order of ratings: random (one shuffle), blocked (grouped into user x item "
                     "blocks, visited one at a time) or auto (blocked for row-sparse optimizers on tables over 8 MiB)"),
    ]:
        t.add_argument(name, type=typ, default=None, help=f"{helptext} (default: from the preset)")
    t.add_argument("--tune", type=float, default=None, metavar="SECONDS",
                   help="first search the model's settings on the training split alone (a 10%% search-validation "
                        "part cut from it; the preset's settings, then its search space in random order) for about "
                        "this many seconds, and train the best (settings given on the command line stay fixed)")
    t.add_argument("--embedding-dim", type=int, default=None, help="latent factors (default: 50)")
    t.add_argument("--option", action="append", metavar="KEY=VALUE",
                   help="a model option, a field of the model's Config (e.g. --option genres=off for bfm); "
                        "repeat for several")
    t.add_argument("--y-range", type=float, nargs=2, metavar=("LO", "HI"), help="sigmoid squash of the output")
    t.add_argument("--out", metavar="DIR", help="checkpoint folder (default: runs/<model>-<data>-seed<seed>)")
    t.add_argument("--no-save", action="store_true", help="do not write a checkpoint")
    t.add_argument("--overwrite", action="store_true", help="replace the checkpoint folder if it exists")
    t.add_argument("--resume-dir", metavar="DIR",
                   help="save training progress here after every epoch; rerunning the same command resumes")
    t.add_argument("--progress", action="store_true", help="show a tqdm progress bar")
    t.add_argument("--no-compile-cache", action="store_true",
                   help="do not use JAX's persistent compilation cache (default: on, in $RECSYS_JAX_COMPILE_CACHE "
                        "or <cache>/jax-compile, so a second run does not compile)")
    t.add_argument("--devices", type=int, default=None, metavar="N",
                   help="train on a mesh of the first N devices: tables split by rows, batches by examples "
                        "(on a CPU, XLA_FLAGS=--xla_force_host_platform_device_count=N makes N host devices)")
    t.add_argument("--json", action="store_true", help="end with one line of JSON with the results")

    p = sub.add_parser("predict", help="predict ratings from a checkpoint by raw MovieLens ids")
    p.add_argument("--checkpoint", required=True, metavar="DIR", help="a folder written by train")
    p.add_argument("--user", type=int, required=True, help="raw user id")
    p.add_argument("--movie", type=int, nargs="+", required=True, help="raw movie id(s)")
    p.add_argument("--fallback", action="store_true", help="bias-only prediction for unknown ids instead of an error")
    p.add_argument("--distribution", action="store_true",
                   help="models trained with --loss ordinal: the probability of each star level")
    p.add_argument("--json", action="store_true", help="end with one line of JSON, a list with one object per movie")

    m = sub.add_parser("similar", help="the movies most similar to a movie (cosine of the learned item vectors)")
    m.add_argument("--checkpoint", required=True, metavar="DIR", help="a folder written by train")
    m.add_argument("--movie", type=int, required=True, help="raw movie id")
    m.add_argument("-n", type=int, default=10, help="how many (default: %(default)s)")
    m.add_argument("--json", action="store_true",
                   help="end with one line of JSON: a list of objects with movieId, title and score")

    b = sub.add_parser("bench", help="run the quick benchmark suite (from a source checkout)")
    b.add_argument("--out", default="runs/bench-quick", metavar="DIR", help="where the results go (default: %(default)s)")

    d = sub.add_parser("download", help="fetch, verify and extract a MovieLens variant into the cache",
                       description="Fetch a MovieLens archive, check its size and sha256, and extract it\n"
                                   "into the cache, unless a copy is found in --data-dir, $RECSYS_JAX_DATA\n"
                                   "or the cache already. Each step of a download is reported on stderr.",
                       epilog=ENVIRONMENT, formatter_class=argparse.RawDescriptionHelpFormatter)
    d.add_argument("--dataset", default="ml-latest-small",
                   help="ml-latest-small, ml-100k, ml-1m, ml-10m, ml-20m, ml-25m or ml-32m (default: %(default)s)")
    d.add_argument("--data-dir", metavar="DIR",
                   help="look for an extracted copy here first (DIR/<dataset>/); downloads still go to the cache")
    for module in COMMAND_MODULES:
        COMMANDS.update(module.add_parsers(sub))
    return parser


# Modules adding subcommands: each has ``add_parsers(sub) -> {name: handler(args)}``.
COMMAND_MODULES = (use, inspect, blend, info)
COMMANDS: dict = {}


def _checkpoint_folder(args) -> Path | None:
    """Where ``train`` saves, checked before any work: an existing folder needs --overwrite."""
    if args.no_save:
        return None
    data = Path(args.ratings).stem if args.ratings else args.dataset  # `Ratings.name`'s stem
    dest = Path(args.out or f"runs/{args.model}-{data}-seed{args.seed}")
    if (dest.exists() or dest.is_symlink()) and not args.overwrite:
        raise FileExistsError(f"{dest} already exists; pass --overwrite to replace it, or --out another folder")
    return dest


def cmd_train(args) -> dict:
    from recsys_jax.use import checkpoint
    from recsys_jax.data import save_split
    from recsys_jax.training.experiment import run_experiment, split_parts
    from recsys_jax.use.recommender import to_recommender
    from recsys_jax.use.explore import item_stats
    from recsys_jax.training.presets import resolve

    if args.seed < 0:
        raise ValueError(f"--seed must be >= 0, got {args.seed}")
    mesh = None
    if args.devices is not None:  # before any data is read: a missing device fails at once
        from recsys_jax.engine.sharding import make_mesh

        try:
            mesh = make_mesh(args.devices)
        except ValueError as e:
            raise ValueError(f"--devices: {e}") from None
    options_given = parse_model_options(args.option, args.model)  # before the data: a typo fails at once
    held_out_users = args.split == "held-out-users" and not args.split_file
    if held_out_users:
        from recsys_jax.use.foldin import folds_in_users

        if not folds_in_users(args.model):
            raise ValueError(f"--split held-out-users: model {args.model!r} cannot fold a new user in (it trains "
                             "itself and has no solve for a new row), and the protocol scores users that way")
    dest = _checkpoint_folder(args)
    ratings = load_data(args)
    split = make_split_from_args(args, ratings)
    store = None
    if not args.no_compile_cache and os.environ.get("RECSYS_JAX_COMPILE_CACHE") != "off":
        from recsys_jax.engine.programs import enable_compile_cache, program_store

        # after the data loaded: a failed load leaves the cache folder untouched; a folder
        # that cannot be trusted is refused (a notice says why) and the run goes on without
        cache = enable_compile_cache()
        store = None if cache is None else program_store(cache)
    from recsys_jax.engine.options import resolve_options

    options = resolve_options(program_store=store)  # the kernels, the program store: once, here
    if args.save_split:
        save_split(args.save_split, split, seed=args.seed)

    model_overrides = dict(options_given)
    if args.embedding_dim is not None:
        model_overrides["embedding_dim"] = args.embedding_dim
    if args.y_range is not None:
        model_overrides["y_range"] = tuple(args.y_range)
    tc, model_config, val_frac = resolve(
        args.preset, args.model, model_overrides=model_overrides, val_frac=args.val_frac,
        **{k: getattr(args, k) for k in ("epochs", "batch_size", "lr", "schedule", "l2", "bias_l2", "weight_decay",
                                         "loss", "patience", "optimizer", "order")})

    tuned = None
    if args.tune is not None:
        if held_out_users:
            raise ValueError("--tune with --split held-out-users: the search scores ratings (RMSE); this protocol "
                             "ranks for new users")
        if args.resume_dir:
            raise ValueError("--tune with --resume-dir: a rerun would search again within a wall-clock budget and "
                             "might choose other settings than the progress saved; tune first, then pass the "
                             "chosen settings with --resume-dir")
        from recsys_jax.training.tune import search

        def report_trial(trial):
            settings = {k: v for k, v in trial.items() if k not in ("search_val_rmse", "seconds")}
            print(f"tune  {settings or 'the preset'}  search-val rmse {trial['search_val_rmse']:.4f}  "
                  f"({trial['seconds']:.1f} s)", flush=True)

        fixed = {k for k in ("epochs", "lr", "l2") if getattr(args, k) is not None} | set(model_overrides)
        tuned = search(ratings.take(split.train), args.model, seed=args.seed, budget=args.tune, train_config=tc,
                       model_config=model_config, val_frac=val_frac, options=options, report=report_trial,
                       fixed=fixed)
        tc, model_config = tuned.train_config, tuned.model_config
        print(f"tune  chose {tuned.choice or 'the preset'} ({len(tuned.trials)} of {tuned.num_candidates} candidates "
              f"in {tuned.seconds:.1f} s, on the training split alone)", flush=True)

    def on_epoch(epoch, rec):
        val_txt = f"  val_rmse {rec['val_rmse']:.4f}  val_mae {rec['val_mae']:.4f}" if rec["val_rmse"] else ""
        print(f"epoch {epoch:3d}  loss {rec['train_loss']:.4f}{val_txt}  ({rec['seconds']:.2f} s)", flush=True)

    # fit warns about divergence; the CLI reports it once, below, as its own line.
    warnings.filterwarnings("ignore", message="fit: non-finite", category=RuntimeWarning)
    out, result = run_experiment(
        ratings, split, args.model, seed=args.seed, train_config=tc, model_config=model_config,
        val_frac=val_frac, progress=args.progress, on_epoch=on_epoch, checkpoint_dir=args.resume_dir,
        refit=not args.no_refit, mesh=mesh, options=options, score_test=not held_out_users,
    )
    selection_history = out.pop("selection_history", None)
    if out["stop_reason"]:
        print(f"recsys-jax train: warning: {out['stop_reason']}", file=sys.stderr)
    out = {"preset": args.preset, "split": "file" if args.split_file else args.split, "test_frac": args.test_frac,
           **out}
    if tuned is not None:
        out["tuned"] = {"choice": tuned.choice, "trials": tuned.trials, "seconds": tuned.seconds,
                        "candidates": tuned.num_candidates, "budget": args.tune}
    refit_txt = f", then refit on all {out['num_fit']} training ratings" if out["refit"] else ""
    rec = None
    if held_out_users:
        rec = to_recommender(ratings, result, train_split=ratings.take(split.train), held_out=ratings.take(split.test))
        from recsys_jax.cli.use import held_out_users_report, print_held_out_users

        report = held_out_users_report(rec, ratings, args.seed, args.test_frac)
        out.update({f"test_{k}": v for k, v in report.items() if k != "popularity"})
        out.update({f"popularity_{k}": v for k, v in report["popularity"].items()})
        print_held_out_users(report, f"fit {out['fit_seconds']:.2f} s, best epoch {out['best_epoch']}{refit_txt}")
    elif out["num_test"] and out.get("test_ndcg") is not None:  # a model that ranks: no rating metrics
        k = out["ranking_k"]
        print(f"test  ndcg@{k} {out['test_ndcg']:.4f}  recall@{k} {out['test_recall']:.4f}  (popularity: ndcg@{k} "
              f"{out['popularity_ndcg']:.4f}, recall@{k} {out['popularity_recall']:.4f}; {out['ranking_users']} users "
              f"with a test rating >= {out['ranking_threshold']:g}; fit {out['fit_seconds']:.2f} s, "
              f"{out['best_epoch']} epochs{refit_txt})")
    elif out["num_test"]:
        print(f"test  rmse {out['test_rmse']:.4f}  mae {out['test_mae']:.4f}  ({out['num_test']} ratings; "
              f"fit {out['fit_seconds']:.2f} s, best epoch {out['best_epoch']}{refit_txt})")
    else:
        print(f"no test part (--test-frac 0): a model of every rating, for use; fit {out['fit_seconds']:.2f} s, "
              f"best epoch {out['best_epoch']}{refit_txt}")
    if dest is not None:
        # The history and each movie's training count and mean, for `inspect` and `plot`:
        # split_parts gives the same training rows run_experiment fit on (all of the training
        # split after a refit).
        train = ratings.take(split.train) if out["refit"] else split_parts(ratings, split, args.seed, val_frac)[0]
        # train_split: the pairs each user rated in training, which recommend leaves out.
        # held_out: the test part's pairs, which recommend leaves out too (the user rated them).
        if rec is None:
            rec = to_recommender(ratings, result, train_split=ratings.take(split.train),
                                 held_out=ratings.take(split.test))
        # The learning curve with validation scores is the selection fit's (the refit has no validation).
        checkpoint.save(dest, rec, extra=out, history=selection_history or result.history,
                        item_stats=item_stats(train, ratings.item_ids))
        out["checkpoint"] = str(dest)
        print(f"saved checkpoint to {dest}")
    if store is not None:  # keep the compilation cache under its cap, the least recently used first
        from recsys_jax.engine.programs import prune_caches

        prune_caches()
    if args.json:
        print(json.dumps(out))
    return out


FALLBACK_WHY = {"mu+b_i": "unknown user", "mu+b_u": "unknown movie", "mu": "the training mean"}


def cmd_similar(args) -> None:
    from recsys_jax.use import checkpoint

    rec = checkpoint.load(args.checkpoint)
    table = rec.similar_items(args.movie, args.n)
    title = rec.title(args.movie)
    print(f"movies most similar to {args.movie}" + (f" ({title})" if title else "")
          + f", by the cosine of the {rec.model} model's item vectors:")
    for row in table.itertuples(index=False):
        print(f"  {row.score:+.3f}  {row.movieId}" + (f"  {row.title}" if row.title else ""))
    if args.json:
        print(json.dumps([{"movieId": int(r.movieId), "title": r.title, "score": float(r.score)}
                          for r in table.itertuples(index=False)]))


def cmd_predict(args) -> None:
    from recsys_jax.use import checkpoint

    rec = checkpoint.load(args.checkpoint)
    movies = np.asarray(args.movie, np.int64)
    users = np.full(movies.shape, args.user, np.int64)
    preds = rec.predict(users, movies, unknown="fallback" if args.fallback else "error")
    kinds = rec.fallbacks(users, movies)
    rows = [{"user": args.user, "movie": int(m), "rating": float(r), "title": rec.title(m),
             "fallback": kind is not None, "fallback_kind": kind} for m, r, kind in zip(movies, preds, kinds)]
    from recsys_jax.models import get_model

    if get_model(rec.model).predict_std is not None and not any(kinds):  # a sampler: the posterior's spread too
        for row, std in zip(rows, rec.predict_std(users, movies)):
            row["std"] = float(std)
    if args.distribution:
        levels, probs = rec.rating_distribution(users, movies, unknown="fallback" if args.fallback else "error")
        for row, pr in zip(rows, probs):
            row["distribution"] = {f"{lv:g}": round(float(q), 4) for lv, q in zip(levels, pr)}
    for row in rows:
        title = f" ({row['title']})" if row["title"] else ""
        kind = row["fallback_kind"]
        mark = f"  [fallback {kind}: {FALLBACK_WHY[kind]}]" if kind else ""
        spread = f" ± {row['std']:.2f} (posterior predictive sd)" if "std" in row else ""
        print(f"user {row['user']}  movie {row['movie']}{title}: {row['rating']:.2f}{spread}{mark}")
        if "distribution" in row:
            print("    " + "  ".join(f"{s}*: {q:.2f}" for s, q in row["distribution"].items()))
    if args.json:
        print(json.dumps(rows))


QUICK_SUITE = ("accuracy", "time_to_accuracy", "throughput", "scaling", "many")


def cmd_bench(args) -> None:
    """Runs ``python -m benchmarks.<name> --quick`` for each script, results into ``--out``."""
    import subprocess

    repo = Path(__file__).resolve().parents[2]
    if not (repo / "benchmarks" / "accuracy.py").is_file():
        raise FileNotFoundError(f"the benchmark scripts live in the source checkout; none beside {repo}")
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    for name in QUICK_SUITE:
        cmd = [sys.executable, "-m", f"benchmarks.{name}", "--quick", "--json", str(out / f"{name}.json"),
               "--md", str(out / f"{name}.md")] + (["--png", str(out / "scaling.png")] if name == "scaling" else [])
        print(f"[bench] {' '.join(cmd[2:])}", flush=True)
        if subprocess.run(cmd, cwd=repo).returncode != 0:
            raise ValueError(f"benchmarks.{name} failed")
    print(f"[bench] results in {out}")


def cmd_download(args) -> None:
    from recsys_jax.data import load_movielens

    r = load_movielens(args.dataset, data_dir=args.data_dir, download=True, report_fn=report)
    print(f"{args.dataset}: {len(r)} ratings, {r.num_users} users, {r.num_items} items")


def main(argv=None) -> int:
    from recsys_jax.use.checkpoint import CheckpointError
    from recsys_jax.data import DataError, UnknownIdError

    args = build_parser().parse_args(argv)
    handlers = {"train": cmd_train, "predict": cmd_predict, "similar": cmd_similar, "bench": cmd_bench,
                "download": cmd_download, **COMMANDS}
    try:
        out = handlers[args.command](args)
        if isinstance(out, dict) and out.get("stop_reason"):
            return 1  # training diverged: results were printed, but the run did not succeed
    # OSError: a file that cannot be read or written (missing, permissions, disk full).
    except (DataError, UnknownIdError, CheckpointError, ValueError, OSError) as e:
        if os.environ.get("RECSYS_JAX_DEBUG"):
            raise
        # The library's advice names Python arguments (data_dir=); its CLI wording names flags.
        print(f"recsys-jax {args.command}: error: {getattr(e, 'cli_message', e)}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("recsys-jax: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Accuracy benchmark: test RMSE and MAE per model, preset and protocol, over seeds.

    python -m benchmarks.accuracy                 # full: every model, both presets, 5 seeds
    python -m benchmarks.accuracy --quick         # bias and dot, default preset, 2 seeds
    python -m benchmarks.accuracy --models bias --seeds 0 1 2 --json out.json

Files: benchmarks/results/accuracy.{json,md} for a full run from a clean commit, else
runs/benchmarks/ (the rule in `benchmarks.common`); ``--json``/``--md`` name them.

Protocols, run for each data set that is present locally (nothing is downloaded):

===================  ==============================================================
ml-latest-small      random 80/20, one split per seed (the course notebook's protocol)
ml-100k              canonical folds u1..u5; and 5-fold random CV (Surprise's protocol)
ml-1m                random 90/10 per seed; and 5-fold random CV
ml-10m               random 90/10 per seed
===================  ==============================================================

Every run goes through `recsys_jax.training.experiment.run_experiment`: a validation slice is carved
from the training split for per-epoch scores and the best epoch, the model is then refit on
the whole training split for that many epochs (``--no-refit``: the model fit without the
slice is scored instead), and the test split is scored once. Hyperparameters come from `recsys_jax.training.presets` (``default``: tuned on a validation
slice of the training split; ``notebook``: the course's own regimen) and are written into
every record. Each summary row carries the published reference for the same protocol.

Blend (unless ``--no-blend``): for each split and preset where two or more models ran with
the squared-error loss, the ``blend`` row is the linear blend of all of them
(`recsys_jax.training.blend`): ridge weights fitted on the validation slice (the same rows for every
model of the split) from the selection fits' predictions, applied to the refitted models'
test predictions; no extra training. Its fit seconds are the sum of its members'.

Ranking (unless ``--no-ranking``): each trained model also ranks the whole catalogue for
every test user (`recsys_jax.use.recommender.Recommender.evaluate`): precision, recall, NDCG,
MAP and hit rate at ``--k`` (10) with catalogue coverage, a test rating of at least 4 being
relevant and every movie the user did not rate in the training split a candidate; beside
it, on the same splits, the popularity baseline (movies ranked by their number of training
ratings).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections import defaultdict
from pathlib import Path

if not __package__:  # run as a file (python benchmarks/X.py): make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from benchmarks.common import (REPO, RESULTS, add_output_args, environment, markdown_table, print_written,
                               resolve_outputs, write_json, write_text)
from recsys_jax.eval import metrics
from recsys_jax.training.blend import combine, fit_weights
from recsys_jax.data import DataError, kfold_split, load_movielens, random_split
from recsys_jax.training.experiment import run_experiment
from recsys_jax.use.recommender import to_recommender
from recsys_jax.models import MODELS, get_model, make_config
from recsys_jax.training.presets import get_preset, model_options, settle_optimizer, val_frac

# Published results (facts, with their sources), keyed by (dataset, protocol).
REFERENCES = {
    ("ml-latest-small", "random 80/20"): [
        ("course notebook: bias model / NN (old ml-latest-small)", "~0.893 / ~0.891"),
        ("Surprise SVD, 5-fold (community runs on the 2018 build)", "~0.87"),
        ("notebook's 'academic state of the art' (LibRec, ml-100k)", "0.89"),
        ("a tuned PyTorch biased MF / Surprise KNNBaseline (random 80/20, as measured for issue 11)",
         "0.852 / 0.858"),
    ],
    ("ml-100k", "u1..u5 folds"): [("GLocal-K (u1) / GC-MC (u1)", "0.8889 / 0.905-0.910"),
                                  ("Sparse FC (as quoted in issue 11)", "0.895"),
                                  ("tuned PyTorch biased MF, mean of u1..u5 / u1 (issue 11)", "0.912 / 0.924")],
    ("ml-100k", "5-fold CV"): [("Surprise SVD / SVD++ / BaselineOnly", "0.934 / 0.919 / 0.944")],
    ("ml-1m", "random 90/10"): [("GLocal-K / Sparse FC / I-AutoRec", "0.8227 / 0.824 / 0.831")],
    ("ml-1m", "5-fold CV"): [("Surprise SVD / SVD++", "0.873 / 0.862")],
    ("ml-10m", "random 90/10"): [("SGD MF / Bayesian MF / Bayesian timeSVD++ flipped (Rendle et al. 2019)",
                                   "0.7720 / 0.7633 / 0.7485"), ("I-AutoRec (Sedhain et al. 2015)", "0.782")],
}


def protocols(name: str, ratings, seeds: list[int]):
    """Yields ``(protocol, seed, split, ratings)`` for the data set ``name``."""
    if name == "ml-latest-small":
        for s in seeds:
            yield "random 80/20", s, random_split(ratings, s, 0.2), ratings
    elif name == "ml-100k":
        from recsys_jax.data.movielens import load_ml100k_fold
        from recsys_jax.data.split import Split  # noqa: I001

        for k in range(1, 6):
            train, test = load_ml100k_fold(k, download=False)  # shared id maps
            both = dataclasses.replace(train, **{
                f: np.concatenate([getattr(train, f), getattr(test, f)])
                for f in ("users", "items", "ratings", "timestamps")
            })
            n = len(train)
            yield "u1..u5 folds", k, Split(np.arange(n), np.arange(n, len(both))), both
        for f, split in enumerate(kfold_split(ratings, 5, seeds[0])):
            yield "5-fold CV", f, split, ratings
    elif name == "ml-1m":
        for s in seeds:
            yield "random 90/10", s, random_split(ratings, s, 0.1), ratings
        for f, split in enumerate(kfold_split(ratings, 5, seeds[0])):
            yield "5-fold CV", f, split, ratings
    elif name == "ml-10m":
        for s in seeds:
            yield "random 90/10", s, random_split(ratings, s, 0.1), ratings


NOTEBOOK_MODELS = ("dot", "bias", "mlp")
# The ordinal loss's gradient in the score is bounded by 1, so it trains more slowly than
# MSE; these settings were chosen on a validation slice of the training split (seed 0).
LOSS_SETTINGS = {"ordinal": {"lr": 3e-2, "epochs": 10, "l2": 0.03}}


TUNED = RESULTS / "tuned.json"  # the published choices of `benchmarks.tune`


def train_config(preset: str, model: str, seed: int | None = None, tuned: str | Path | None = None):
    """A preset from `recsys_jax.training.presets`, or ``tuned``: ``default`` with the values that
    ``benchmarks.tune`` chose on the training split of this same split ``seed`` (nested),
    read from ``tuned`` (default `TUNED`); None when that seed was not tuned (the run is
    skipped, never borrowed from another seed)."""
    if preset != "tuned":
        return get_preset(preset, model)
    choice = tuned_choice(model, seed, tuned)
    return None if choice is None else get_preset("default", model)._replace(**choice["best"])


def model_config(preset: str, model: str, seed: int | None = None, tuned: str | Path | None = None):
    """The model config that goes with `train_config`: the preset's model options, or for
    ``tuned`` the model options that ``benchmarks.tune`` chose on this split (``best_model``,
    e.g. BPMF's K), else the model's defaults."""
    if preset != "tuned":
        return make_config(model, **model_options(preset, model))
    choice = tuned_choice(model, seed, tuned) or {}
    return make_config(model, **choice.get("best_model", {}))


def tuned_choice(model: str, seed: int | None, tuned: str | Path | None = None) -> dict | None:
    """``benchmarks.tune``'s per-seed record for ``model`` (None when that seed was not tuned)."""
    path = Path(tuned) if tuned is not None else TUNED
    if not path.is_file():
        raise SystemExit(f"{path} is missing: run `python -m benchmarks.tune` first (or pass --tuned PATH)")
    choices = json.loads(path.read_text())[0]["models"]
    return choices.get(model, {}).get("per_seed", {}).get(str(seed))


RANKING = ("precision", "recall", "ndcg", "map", "hit_rate", "coverage")
RELEVANT = 4.0  # a test rating of at least this is relevant


def ranking_record(data, split, result, k: int) -> tuple[dict, dict]:
    """``(model, popularity)``: the ranking metrics of the trained model and of the
    popularity baseline at ``k`` on the test split (see the module docstring)."""
    rec = to_recommender(data, result, train_split=data.take(split.train))
    out = rec.evaluate(data.take(split.test), k=k, threshold=RELEVANT)
    return {m: out[m] for m in (*RANKING, "num_users", "k")}, out["popularity"]


def summarise_ranking(records: list[dict]) -> list[dict]:
    """Mean ranking metrics per (dataset, protocol, model, preset, loss), and one popularity
    row per (dataset, protocol) from the same splits."""
    groups, baseline = defaultdict(list), defaultdict(dict)
    for r in records:
        if "ranking" not in r:
            continue
        groups[(r["dataset"], r["protocol"], r["model"], r["preset"], r["loss"])].append(r["ranking"])
        baseline[(r["dataset"], r["protocol"])][r["seed"]] = r["popularity_ranking"]
    rows = []
    for (dataset, protocol, model, preset, loss), rs in groups.items():
        rows.append({"dataset": dataset, "protocol": protocol, "model": model, "preset": preset, "loss": loss,
                     "runs": len(rs), "k": rs[0]["k"], **{m: float(np.mean([x[m] for x in rs])) for m in RANKING}})
    for (dataset, protocol), per_seed in baseline.items():
        rs = list(per_seed.values())
        rows.append({"dataset": dataset, "protocol": protocol, "model": "popularity", "preset": "-", "loss": "-",
                     "runs": len(rs), "k": rs[0]["k"], **{m: float(np.mean([x[m] for x in rs])) for m in RANKING}})
    return rows


def blend_record(parts: list[tuple[dict, dict]], test_ratings, scale: tuple[float, float]) -> dict:
    """The ``blend`` row of one split: weights fitted on the validation slice's predictions
    of the selection fits, applied to the test predictions of the results."""
    val_ratings = parts[0][1]["val_ratings"]
    for _, p in parts:
        if not np.array_equal(p["val_ratings"], val_ratings):
            raise ValueError("blend: the runs of one split carved different validation slices")
    intercept, weights = fit_weights(np.stack([p["val"] for _, p in parts]), val_ratings)
    test = combine(np.stack([p["test"] for _, p in parts]), intercept, weights, scale)
    val = combine(np.stack([p["val"] for _, p in parts]), intercept, weights, scale)
    first = parts[0][0]
    return {"model": "blend", "members": [r["model"] for r, _ in parts], "weights": weights.tolist(),
            "intercept": intercept, "test_rmse": metrics.rmse(test, test_ratings),
            "test_mae": metrics.mae(test, test_ratings), "val_rmse": metrics.rmse(val, val_ratings),
            "fit_seconds": float(sum(r["fit_seconds"] for r, _ in parts)), "epochs": None,
            "refit": first["refit"], "num_test": first["num_test"]}


def optimizer_name(record: dict) -> str:
    """What trained ``record``'s model: its TrainConfig's optimizer, "own" for a model that
    trains itself (its module's fit_epochs reads no optimizer), "-" for a blend (its members')."""
    if record["model"] not in MODELS:
        return "-"
    if get_model(record["model"]).fit_epochs is not None:
        return "own"
    return (record.get("train_config") or {}).get("optimizer", "adam")  # records from before: TrainConfig's default


def summarise(records: list[dict]) -> list[dict]:
    groups = defaultdict(list)
    for r in records:
        groups[(r["dataset"], r["protocol"], r["model"], r["preset"], r["loss"])].append(r)
    rows = []
    for (dataset, protocol, model, preset, loss), rs in groups.items():
        rmse = np.array([r["test_rmse"] for r in rs])
        mae = np.array([r["test_mae"] for r in rs])
        secs = np.array([r["fit_seconds"] for r in rs])
        rows.append({
            "dataset": dataset, "protocol": protocol, "model": model, "preset": preset, "loss": loss,
            "runs": len(rs), "rmse_mean": float(rmse.mean()), "rmse_std": float(rmse.std(ddof=1)) if len(rs) > 1 else 0.0,
            "mae_mean": float(mae.mean()), "mae_std": float(mae.std(ddof=1)) if len(rs) > 1 else 0.0,
            "fit_seconds_median": float(np.median(secs)), "epochs": rs[0]["epochs"],
            "optimizer": "/".join(sorted({optimizer_name(r) for r in rs})),
        })
    return rows


def comparisons(records: list[dict]) -> list[str]:
    """The questions the notebook and the literature raise, answered with these numbers.

    Both models of a comparison ran on the same splits (seeds or folds), so the gap is the
    mean of the per-split differences, stated with its standard error.
    """
    lines = []
    by = defaultdict(dict)
    for r in records:
        by[(r["dataset"], r["protocol"], r["model"], r["preset"], r["loss"])][r["seed"]] = r["test_rmse"]

    def compare(dataset, protocol, a, b, question):
        ra, rb = by.get((dataset, protocol, *a), {}), by.get((dataset, protocol, *b), {})
        common = sorted(set(ra) & set(rb))
        if not common:
            return
        d = np.array([ra[s] - rb[s] for s in common])
        se = d.std(ddof=1) / np.sqrt(len(d)) if len(d) > 1 else float("nan")
        verdict = "lower (better)" if d.mean() < 0 else "higher (worse)"
        wins = int(np.sum(d < 0))
        lines.append(f"- {question} On {dataset} ({protocol}), {a[0]} ({a[1]}) has test RMSE "
                     f"{np.mean([ra[s] for s in common]):.4f} against {np.mean([rb[s] for s in common]):.4f} "
                     f"for {b[0]} ({b[1]}): {abs(d.mean()):.4f} {verdict} (paired over {len(d)} splits, "
                     f"standard error {se:.4f}; lower on {wins} of {len(d)}).")

    for dataset, protocol in sorted({(r["dataset"], r["protocol"]) for r in records}):
        compare(dataset, protocol, ("mlp", "notebook", "mse"), ("bias", "notebook", "mse"),
                "Does the notebook's NN beat its bias model, each with the notebook's own regimen?")
        tuned = "tuned" if any(k[3] == "tuned" for k in by) else "default"
        compare(dataset, protocol, ("mlp", tuned, "mse"), ("bias", tuned, "mse"),
                "Does the NN beat the bias model when each has its own searched regimen (not the notebook's)?")
        compare(dataset, protocol, ("neumf", tuned, "mse"), ("bias", tuned, "mse"),
                "Learned similarity vs dot product (Rendle et al. 2020): NeuMF against the biased dot product.")
        compare(dataset, protocol, ("gmf", tuned, "mse"), ("bias", tuned, "mse"),
                "GMF (a weighted dot product without biases) against the biased dot product.")
        compare(dataset, protocol, ("fm", tuned, "mse"), ("bias", tuned, "mse"),
                "Side features: the factorization machine (genres, release year) against the bias model.")
    if lines:
        lines = ["#### Comparisons\n"] + lines + [""]
    return lines


def run_val_frac(preset: str, model: str) -> float:
    """The validation slice of one run: the preset's (0.1 for ``tuned``), or none for a sampler
    that keeps its last sweep (``ModelSpec.keeps_last``), as ``recsys-jax train`` runs it. Such a
    run has no validation predictions, so it is not in the blend."""
    if get_model(model).keeps_last:
        return 0.0
    return val_frac(preset) if preset != "tuned" else 0.1


def feature_notes(config: dict, model: str) -> str | None:
    """What a model that builds its own features read, from a record's ``model_config``."""
    if model != "bfm":
        return None
    groups = ["the user id", "the movie id"] + (["the rating's day"] if config.get("day") else []) + (
        ["the movies the user rated and the users who rated the movie (each set scaled 1/sqrt(size))"]
        if config.get("implicit") else []) + (["the movie's genres (from the movies table)"]
                                              if config.get("num_genres") else [])
    return (f"bfm (Bayesian FM by Gibbs sampling, rank {config['embedding_dim']}) reads "
            + ", ".join(groups) + (", all but the genres" if config.get("num_genres") else ", all")
            + " built from the training rows only; no validation slice (the mean of "
            "its last kept samples), so it is not in the blend")


def markdown(summary: list[dict], env: dict, records: list[dict]) -> str:
    out = []
    by_protocol = defaultdict(list)
    for row in summary:
        by_protocol[(row["dataset"], row["protocol"])].append(row)
    for (dataset, protocol), rows in by_protocol.items():
        rows.sort(key=lambda r: r["rmse_mean"])
        out.append(f"### {dataset}, {protocol} ({rows[0]['runs']} runs each; mean ± std)\n")
        out.append(markdown_table(
            ["model", "preset", "loss", "optimizer", "test RMSE", "test MAE", "fit s (median)"],
            [[r["model"], r["preset"], r["loss"], r["optimizer"], f"{r['rmse_mean']:.4f} ± {r['rmse_std']:.4f}",
              f"{r['mae_mean']:.4f} ± {r['mae_std']:.4f}", f"{r['fit_seconds_median']:.1f}"] for r in rows],
        ))
        out.append("\nEvery test pair is scored by the model itself, as the notebook did, including pairs "
                   "whose user or item has no training rating (their parameters stay near their initial "
                   "values; about 4% of test rows on ml-latest-small's random 80/20). Raw-id prediction "
                   "(`Recommender.predict`) treats such ids as unknown instead.")
        notes = {}
        for rec in records:
            if (rec["dataset"], rec["protocol"]) == (dataset, protocol) and rec["model"] not in notes:
                notes[rec["model"]] = feature_notes(rec.get("model_config") or {}, rec["model"])
        if any(notes.values()):
            out.append("\nFeatures: " + "; ".join(n for n in notes.values() if n) + ".")
        chosen = defaultdict(list)  # model -> [(seed, choice)] of the nested-tuned runs
        for rec in records:
            if (rec["dataset"], rec["protocol"]) == (dataset, protocol) and "tuned_choice" in rec:
                chosen[rec["model"]].append((rec["seed"], rec["tuned_choice"]))
        if chosen:
            out.append("\nChosen on each split's own training data (`benchmarks.tune`), by split seed: " + "; ".join(
                f"{model}: " + ", ".join(f"{seed}: " + " ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                                                                for k, v in choice.items())
                                         for seed, choice in sorted(runs))
                for model, runs in chosen.items()) + ".")
        refs = REFERENCES.get((dataset, protocol), [])
        if refs:
            out.append("\nPublished, same protocol unless noted: " + "; ".join(f"{n}: {v}" for n, v in refs) + ".")
        out.append("")
        ranking = [r for r in summarise_ranking(records) if (r["dataset"], r["protocol"]) == (dataset, protocol)]
        if ranking:
            ranking.sort(key=lambda r: -r["ndcg"])
            k = ranking[0]["k"]
            out.append(f"#### Ranking at k = {k} ({dataset}, {protocol}; mean over the same runs)\n")
            out.append(markdown_table(
                ["model", "preset", "loss", f"precision@{k}", f"recall@{k}", f"NDCG@{k}", f"MAP@{k}",
                 f"hit rate@{k}", "coverage"],
                [[r["model"], r["preset"], r["loss"], *(f"{r[m]:.4f}" for m in RANKING)] for r in ranking],
            ))
            out.append(f"\nA test rating of at least {RELEVANT:g} is relevant; the candidates of a user are every "
                       "movie it did not rate in the training split (the whole catalogue ranked with "
                       "`jax.lax.top_k`); coverage is the share of the catalogue in at least one user's top k. "
                       "The popularity baseline ranks movies by their number of training ratings.")
            out.append("")
    out += comparisons(records)
    out.append(f"Device: {env['device']} ({env['cpu']}, {env['cpu_count']} cores); jax {env['jax']}, "
               f"optax {env['optax']}; commit {env['git_commit']}; `{env['command']}`.")
    return "\n".join(out) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="bias and dot, default preset, seeds 0 1")
    # rating models only: a model that ranks (ModelSpec.ranks) has no RMSE; benchmarks.peers ranks it
    p.add_argument("--models", nargs="+", default=[m for m, spec in MODELS.items() if not spec.ranks])
    p.add_argument("--presets", nargs="+", default=["default", "notebook"],
                   help="default, notebook, or tuned (from --tuned)")
    p.add_argument("--tuned", metavar="PATH", default=None,
                   help="the tune choices for the tuned preset (default: benchmarks/results/tuned.json)")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    p.add_argument("--datasets", nargs="+", default=["ml-latest-small", "ml-100k", "ml-1m", "ml-10m"])
    p.add_argument("--losses", nargs="+", default=["mse"],
                   help="train each model with each loss (recsys_jax.objectives.losses LOSSES / PARAM_LOSSES)")
    add_output_args(p)
    p.add_argument("--no-refit", action="store_true",
                   help="score the model fit without the validation slice (no refit on the whole training split)")
    p.add_argument("--no-blend", action="store_true", help="no blend rows")
    p.add_argument("--k", type=int, default=10, help="cut-off of the ranking metrics (default: %(default)s)")
    p.add_argument("--no-ranking", action="store_true", help="rating metrics only (no whole-catalogue ranking)")
    p.add_argument("--from-json", metavar="PATH",
                   help="only re-render the summary of records in PATH (no training), beside it unless --md")
    args = p.parse_args(argv)
    if args.quick:
        args.models, args.presets, args.seeds = ["bias", "dot"], ["default"], [0, 1]
    if args.from_json:
        records = json.loads(Path(args.from_json).read_text())
        env = {k: records[0][k] for k in ("device", "cpu", "cpu_count", "jax", "optax", "git_commit", "command")}
        md_path = Path(args.md) if args.md else Path(args.from_json).with_suffix(".md")
        print(f"[accuracy] wrote {write_text(md_path, markdown(summarise(records), env, records))}")
        return 0
    files = resolve_outputs("accuracy", "accuracy", args, p)
    env = environment()
    records = []
    for name in args.datasets:
        try:
            ratings = load_movielens(name, download=False)
        except DataError:
            print(f"[accuracy] {name}: not present locally, skipped", file=sys.stderr)
            continue
        for protocol, seed, split, data in protocols(name, ratings, args.seeds):
            blend_parts = defaultdict(list)  # preset -> [(record, predictions)] of mse runs on this split
            for model in args.models:
                for preset, loss in [(p_, l_) for p_ in args.presets for l_ in args.losses]:
                    if preset.startswith("notebook") and model not in NOTEBOOK_MODELS:
                        continue  # the notebook's regimen exists for its own three models only
                    tc = train_config(preset, model, seed, args.tuned)
                    if tc is None:
                        print(f"[accuracy] {model} {preset}: seed {seed} was not tuned; skipped", file=sys.stderr)
                        continue
                    # A loss with learned parameters trains with dense Adam (presets.settle_optimizer).
                    tc = settle_optimizer(tc._replace(loss=loss, **LOSS_SETTINGS.get(loss, {})), model)
                    preds = {}
                    rec, result = run_experiment(data, split, model, seed=seed, train_config=tc,
                                                 model_config=model_config(preset, model, seed, args.tuned),
                                                 val_frac=run_val_frac(preset, model),
                                                 refit=not args.no_refit, predictions=preds)
                    rec.pop("selection_history", None)
                    if tc.loss == "mse" and "val" in preds:
                        blend_parts[preset].append((rec, preds))
                    if not args.no_ranking:
                        rec["ranking"], rec["popularity_ranking"] = ranking_record(data, split, result, args.k)
                    rec.update(bench="accuracy", dataset=name, protocol=protocol, preset=preset,
                               loss=tc.loss, **{k: env[k] for k in env if k not in rec})
                    if preset == "tuned":
                        rec["tuned_from"] = str(args.tuned or TUNED.relative_to(REPO))
                        choice = tuned_choice(model, seed, args.tuned)
                        rec["tuned_choice"] = {**choice["best"], **choice.get("best_model", {})}
                    records.append(rec)
                    ranked = "" if args.no_ranking else (
                        f" ndcg@{args.k} {rec['ranking']['ndcg']:.4f} (popularity "
                        f"{rec['popularity_ranking']['ndcg']:.4f})")
                    print(f"[accuracy] {name} {protocol} seed/fold {seed} {model:5s} {preset:8s} {loss:12s} "
                          f"rmse {rec['test_rmse']:.4f} mae {rec['test_mae']:.4f}{ranked} "
                          f"fit {rec['fit_seconds']:.1f} s", flush=True)
            for preset, parts in blend_parts.items():
                if len(parts) < 2 or args.no_blend:
                    continue
                rec = blend_record(parts, data.take(split.test).ratings, data.rating_scale)
                rec.update(bench="accuracy", dataset=name, protocol=protocol, preset=preset, loss="mse", seed=seed,
                           **{k: env[k] for k in env if k not in rec})
                records.append(rec)
                print(f"[accuracy] {name} {protocol} seed/fold {seed} blend of {len(parts)} {preset:8s} "
                      f"rmse {rec['test_rmse']:.4f} mae {rec['test_mae']:.4f}", flush=True)
    summary = summarise(records)
    json_path = write_json(files.json, records)
    write_text(files.md, markdown(summary, env, records))
    print(markdown(summary, env, records))
    print_written("accuracy", files, json_path, files.md)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``recsys-jax blend``: a linear blend of several models, scored on the test split.

    recsys-jax blend --models bias fm svdpp timesvd [--seed 0] [--mean] [--json]

Splits the data as ``train`` does (same seed, same test rows), then `recsys_jax.training.blend.fit_blend`
on the training split: each model chooses its epoch count on the validation slice, the
weights are fitted on that slice, each model is refit on the whole training split. Prints
each member's test RMSE, the blend's, and the weights. Nothing is saved.
"""
from __future__ import annotations

import json


def add_parsers(sub) -> dict:
    from recsys_jax.cli.args import add_data_args, add_split_args

    b = sub.add_parser("blend", help="fit a linear blend of models on a validation slice; score the test split",
                       description=__doc__.split("\n\n", 2)[2])
    add_data_args(b)
    b.add_argument("--models", nargs="+", required=True, metavar="MODEL",
                   help="names in recsys_jax.models.MODELS, each with its default preset; MODEL@S trains "
                        "it with seed S (a seed ensemble: bias@0 bias@1 ...)")
    add_split_args(b)
    b.add_argument("--split-file", metavar="NPZ", help="use this saved split (recsys_jax.data.save_split)")
    b.add_argument("--val-frac", type=float, default=0.1,
                   help="validation slice of the training split the weights are fitted on (default: %(default)s)")
    b.add_argument("--l2", type=float, default=1e-4, help="ridge penalty of the weights (default: %(default)s)")
    b.add_argument("--mean", action="store_true", help="average the members (weights 1/K) instead of fitting")
    b.add_argument("--no-refit", action="store_true", help="blend the models fit without the validation slice")
    b.add_argument("--progress", action="store_true", help="show a tqdm progress bar")
    b.add_argument("--json", action="store_true", help="end with one line of JSON with the results")
    return {"blend": cmd_blend}


def parse_member(text: str):
    from recsys_jax.training.blend import BlendMember
    from recsys_jax.models import get_model

    name, _, seed = text.partition("@")
    get_model(name)
    if seed and not seed.isdigit():
        raise ValueError(f"--models: {text!r}: the seed after @ must be a non-negative integer")
    return BlendMember(name, seed=int(seed) if seed else None)


def cmd_blend(args) -> dict:
    import time

    from recsys_jax.eval import metrics
    from recsys_jax.training.blend import fit_blend
    from recsys_jax.cli.args import load_data, make_split_from_args
    from recsys_jax.training.experiment import device_name

    if args.seed < 0:
        raise ValueError(f"--seed must be >= 0, got {args.seed}")
    members = [parse_member(m) for m in args.models]
    ratings = load_data(args)
    split = make_split_from_args(args, ratings)
    train_all, test = ratings.take(split.train), ratings.take(split.test)
    t0 = time.perf_counter()
    blend = fit_blend(train_all, members, seed=args.seed, val_frac=args.val_frac, l2=args.l2, mean=args.mean,
                      refit=not args.no_refit, progress=args.progress)
    seconds = time.perf_counter() - t0
    preds = blend.member_predictions(test)
    out = {"dataset": ratings.name, "seed": args.seed, "split": "file" if args.split_file else args.split,
           "members": [], "intercept": blend.intercept, "refit": not args.no_refit, "mean": args.mean,
           "val_rmse": blend.val_rmse, "fit_seconds": seconds, "num_test": len(test), "device": device_name()}
    for label, p, w, v in zip(blend.labels, preds, blend.weights, blend.member_val_rmse):
        rmse = metrics.rmse(p, test.ratings)
        out["members"].append({"model": label, "weight": float(w), "val_rmse": v, "test_rmse": rmse})
        print(f"{label:16s} weight {w:+.3f}  val rmse {v:.4f}  test rmse {rmse:.4f}")
    blended = blend.predict(test)
    out["test_rmse"], out["test_mae"] = metrics.rmse(blended, test.ratings), metrics.mae(blended, test.ratings)
    print(f"{'blend':16s} intercept {blend.intercept:+.3f}  val rmse {blend.val_rmse:.4f}  test rmse "
          f"{out['test_rmse']:.4f}  mae {out['test_mae']:.4f}  ({len(test)} ratings; fit {seconds:.1f} s)")
    if args.json:
        print(json.dumps(out))
    return out

"""Arguments that several subcommands share (the data, the split), and what they load."""
from __future__ import annotations

import argparse
import sys


def add_data_args(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group()
    src.add_argument("--dataset", default="ml-latest-small", help="a MovieLens variant (default: %(default)s)")
    src.add_argument("--ratings", metavar="FILE", help="your own ratings file (CSV/TSV) instead of --dataset")
    p.add_argument("--data-dir", metavar="DIR", help="where the dataset lives (else $RECSYS_JAX_DATA, the cache)")
    p.add_argument("--no-download", action="store_true", help="fail instead of downloading a missing dataset")
    p.add_argument("--sep", help="--ratings: field separator (default: sniffed)")
    p.add_argument("--no-header", action="store_true",
                   help="--ratings: the first line is data; give the --*-col options as 0-based positions "
                        "(default: columns 0, 1, 2, 3)")
    p.add_argument("--user-col", default="userId", help="--ratings: user column (default: %(default)s)")
    p.add_argument("--item-col", default="movieId", help="--ratings: item column (default: %(default)s)")
    p.add_argument("--rating-col", default="rating", help="--ratings: rating column (default: %(default)s)")
    p.add_argument("--timestamp-col", default="timestamp",
                   help="--ratings: timestamp column, used when present (default: %(default)s)")
    p.add_argument("--duplicates", default="error", choices=["error", "last", "mean"],
                   help="a repeated (user, item) pair: an error, or keep the last row or the mean rating "
                        "(default: %(default)s)")


def add_split_args(p: argparse.ArgumentParser) -> None:
    """``--seed``, ``--split``, ``--test-frac``, ``--last-k``: the test split, as `make_split_from_args` reads them."""
    p.add_argument("--seed", type=int, default=0, help="split seed and training key (default: %(default)s)")
    from recsys_jax.data.split import PROTOCOLS

    p.add_argument("--split", default="random", choices=PROTOCOLS,
                   help="test split protocol (held-out-users: --test-frac of the users held out whole; "
                        "evaluate folds each one in from 80%% of its positives and scores the rest)")
    p.add_argument("--test-frac", type=float, default=0.2, help="test fraction (default: %(default)s; 0: no test part, every rating trains: a model for use)")
    p.add_argument("--last-k", type=int, default=1, help="--split temporal: each user's last k ratings are test")


def load_data(args):
    from recsys_jax.data import load_movielens, load_ratings

    if args.ratings:
        columns = {}
        for flag, default in (("user_col", "userId"), ("item_col", "movieId"), ("rating_col", "rating"),
                              ("timestamp_col", "timestamp")):
            value = getattr(args, flag)
            if args.no_header and value.isdigit():
                value = int(value)
            elif args.no_header and value != default:
                raise ValueError(f"--no-header: give --{flag.replace('_', '-')} as a 0-based position, "
                                 f"not {value!r}")
            columns[flag] = value
        return load_ratings(args.ratings, sep=args.sep, header=not args.no_header,
                            duplicates=args.duplicates, **columns)
    return load_movielens(args.dataset, data_dir=args.data_dir, download=not args.no_download,
                          duplicates=args.duplicates, report_fn=report)


def make_split_from_args(args, ratings):
    from recsys_jax.data import load_split, make_split

    if args.split_file:
        return load_split(args.split_file, num_ratings=len(ratings))
    return make_split(ratings, args.split, seed=args.seed, test_frac=args.test_frac, last_k=args.last_k)


def report(line: str) -> None:
    """Download steps go to stderr: stdout keeps only results (and --json's line)."""
    print(f"recsys-jax: {line}", file=sys.stderr, flush=True)


_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def parse_model_options(pairs: list[str] | None, model: str) -> dict:
    """``--option KEY=VALUE`` pairs as model options (fields of the model's ``Config``), each
    value read as its field's default is typed (a bool: true/false, yes/no, on/off, 1/0).
    Unknown keys and values of the wrong type are errors that name the flag."""
    from recsys_jax.models import get_model

    if not pairs:
        return {}
    fields = get_model(model).Config._field_defaults
    out = {}
    for pair in pairs:
        key, eq, text = pair.partition("=")
        key, text = key.strip().replace("-", "_"), text.strip()
        if not eq or not key:
            raise ValueError(f"--option {pair!r}: expected KEY=VALUE, e.g. --option genres=off")
        if key not in fields:
            raise ValueError(f"--option {key}: model {model!r} has no option {key!r}; its options: "
                             f"{', '.join(fields)}")
        default = fields[key]
        if isinstance(default, bool):
            if text.lower() not in _TRUE + _FALSE:
                raise ValueError(f"--option {key}={text}: expected true or false")
            out[key] = text.lower() in _TRUE
        elif isinstance(default, (int, float, str)):
            try:
                out[key] = type(default)(text)
            except ValueError:
                raise ValueError(f"--option {key}={text}: expected a value of type {type(default).__name__}, "
                                 f"like the default {default!r}") from None
        else:
            raise ValueError(f"--option {key}: an option of this kind (default {default!r}) is not set from the "
                             "command line")
    return out

"""The `bp-jax predict` job: a trained run's predictions for new rows, in the target's own units.

    bp-jax predict RUN_DIR --data FILE [--out FILE]

Loads the run's newest checkpoint and its record (feature names, standardisation statistics, model config),
reads FILE with the same loader as `train` (its columns must be the run's features; the target column may be
present and is ignored), and writes one prediction per row as CSV: to stdout, or atomically to a new --out file.
"""

import sys
from pathlib import Path

import jax
import jax.numpy as jnp

from bp_jax.cli import data, folders, runs
from bp_jax.cli._args import UsageError


def add_arguments(parser) -> None:
    parser.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="a bp-jax train output directory")
    parser.add_argument("--data", type=Path, required=True, metavar="FILE",
                        help="a CSV with a header row (or .npz with an array x) holding the run's feature columns")
    parser.add_argument("--out", type=Path, metavar="FILE", help="write the CSV here (default: stdout); must not exist")


def run(args) -> int:
    if args.out is not None and args.out.exists():
        raise UsageError(f"--out {args.out} already exists; choose a new file")
    trained = runs.open_run(args.run_dir)
    model, params = trained.model_and_params()
    table = data.read(str(args.data))
    print(*(f"bp-jax: note: {note}\n" for note in table.attrs.get("notes", ())), sep="", end="", file=sys.stderr)
    frame = predictions(model, params, trained.scaling, table, str(args.data))
    if args.out is None:
        frame.to_csv(sys.stdout, index=False)
    else:
        folders.write_atomically(args.out, lambda temporary: frame.to_csv(temporary, index=False))
    return 0


def predictions(model, params, scaling: data.Scaling, frame, source: str):
    """A DataFrame with one column, named after the run's target, of the model's predictions for `frame`'s
    rows (standardised with `scaling`, and back in the target's units)."""
    import pandas as pd

    x = scaling.features(frame, source)
    with jax.default_matmul_precision("highest"):
        standardised = model.apply(params, jnp.asarray(x))
    return pd.DataFrame({scaling.target_name: scaling.target_units(standardised)})

"""The `bp-jax predict` job: a trained run's predictions for new rows: in the target's own units, or a class
and each class's probability.

    bp-jax predict RUN_DIR --data FILE [--out FILE] [--allow-diverged]

Loads the run's newest checkpoint and its record (feature names, standardisation statistics, model config),
reads FILE with the same loader as `train` (its columns must be the run's features; the target column and the
run's --sample-weight column may be present and are ignored; text columns are one-hot encoded with the training
categories, empty cells filled with the run's fill values if it imputed them), and writes one prediction per row
as CSV: to stdout, or atomically to a new --out file. A live run is read at its newest checkpoint
(`runs.read_trained`). A run that stopped on divergence is refused unless --allow-diverged; a prediction that is
not finite is never written: the rows are named instead. An ensemble (`train --ensemble K`) predicts the members'
mean with "<target>_std", their spread, or the averaged class probabilities with their "entropy" (`predictions`).
"""

import sys

import jax
import jax.numpy as jnp
import numpy as np

from bp_jax.cli import data, folders, interrupts, options, runs
from bp_jax.cli._args import UsageError


def add_arguments(parser) -> None:
    options.add_trained_run(parser, verb="predict with")
    options.add_data_file(
        parser,
        required=True,
        help="a CSV with a header row, a .parquet, or an .npz with an array x, holding the run's feature columns",
    )
    options.add_out_file(parser, help="write the CSV here (default: stdout)")


def run(args) -> int:
    if args.out is not None and args.out.exists():
        raise UsageError(f"--out {args.out} already exists; choose a new file")
    trained, model, params = runs.read_trained(args.run_dir)
    runs.refuse_diverged(trained, args.run_dir, allowed=args.allow_diverged)
    source, scaling = str(args.data), trained.scaling
    weight = trained.config.sample_weight  # a column of row weights is no feature: present or not, it is not read
    names = [name for name in data.column_names(source) if name != weight]
    table = data.read(source, columns=[name for name in names if name in scaling.feature_names])  # the features only
    print(*(f"bp-jax: note: {note}\n" for note in table.attrs.get("notes", ())), sep="", end="", file=sys.stderr)
    scaling.check_columns(names, source)
    frame = predictions(model, params, scaling, table, source, ensemble=trained.config.ensemble > 1)
    with interrupts.current().writing():  # a signal now lets the CSV be written whole
        if args.out is None:
            try:
                frame.to_csv(sys.stdout, index=False)
                sys.stdout.flush()  # here, so that a closed pipe or a full disk is seen while it can be reported
            except BrokenPipeError:
                raise  # the reader left (`| head`): `main` ends quietly, as Unix tools do
            except OSError as err:
                raise UsageError(f"could not write the predictions to stdout: {err.strerror or err}") from None
        else:
            folders.write_atomically(args.out, lambda temporary: frame.to_csv(temporary, index=False))
    return 0


def predictions(model, params, scaling: data.Scaling, frame, source: str, *, ensemble: bool = False):
    """A DataFrame of the model's predictions for `frame`'s rows (encoded and standardised with `scaling`):
    for regression one column, named after the run's target, in the target's units; for classification the
    predicted class under the target's name, spelled as in the training data, then one column "P(class)" per
    class, its softmax probability (each row sums to 1). An `ensemble` (params with a leading member axis) gives
    for regression the members' mean ȳ and "<target>_std", their std √(mean (y_k − ȳ)²), and for classification
    the averaged probabilities p̄ = mean_k softmax(o_k), the class of the largest, and "entropy" −Σ_c p̄_c log p̄_c
    (nats). UsageError naming the rows whose output is not finite."""
    import pandas as pd

    x = scaling.features(frame, source)
    apply = jax.jit(jax.vmap(model.apply, (0, None)) if ensemble else lambda params, x: model.apply(params, x)[None])
    with jax.default_matmul_precision("highest"):
        outputs = np.asarray(apply(params, jnp.asarray(x)), np.float64)  # (members, rows, outputs)
    bad = np.flatnonzero(~np.isfinite(outputs).all(axis=(0, 2))) + 1
    if len(bad):
        rows = ", ".join(map(str, bad[:5])) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise UsageError(
            f"{source}: the prediction for row(s) {rows} (from 1, after the header) is not finite "
            f"(the model overflows there); nothing written"
        )
    if scaling.task != "classification":
        units = np.stack([scaling.target_units(member) for member in outputs])
        spread = {f"{scaling.target_name}_std": units.std(axis=0)} if ensemble else {}
        return pd.DataFrame({scaling.target_name: units.mean(axis=0), **spread})
    shifted = np.exp(outputs - outputs.max(axis=2, keepdims=True))  # softmax, in float64
    probabilities = (shifted / shifted.sum(axis=2, keepdims=True)).mean(axis=0)
    predicted = pd.Series(np.asarray(scaling.classes, dtype=object)[probabilities.argmax(axis=1)])
    entropy = -np.sum(probabilities * np.log(np.maximum(probabilities, np.finfo(np.float64).tiny)), axis=1)
    return pd.DataFrame(
        {
            scaling.target_name: predicted,
            **{f"P({label})": probabilities[:, index] for index, label in enumerate(scaling.classes)},
            **({"entropy": entropy} if ensemble else {}),
        }
    )

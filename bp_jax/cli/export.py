"""The `bp-jax export` job: a trained run as a file that runs without bp_jax.

    bp-jax export RUN_DIR --format jax|onnx --out FILE [--allow-diverged]

Reads the run's newest checkpoint (`runs.read_trained`, a live run too) and writes FILE: `--format jax` a
serialized `jax.export.Exported` lowered for cpu, cuda, rocm and tpu (`jax.export.deserialize(data).call(x)`
runs it with jax and flatbuffers alone), `--format onnx` an ONNX model (the export extra: onnx). Either maps
float32 rows x (rows × inputs) to `bp-jax predict`'s numbers: the target in its units, shape (rows, 1), or each class's
probability, shape (rows, classes); the run's standardisation is inside (`bp_jax.export`). An ensemble's (`train
--ensemble K`) carries every member: the members' mean target and its std, shape (rows, 2), or the averaged
probabilities and their entropy, shape (rows, classes + 1): again `predict`'s numbers.

The inputs are the model's: a numeric feature is one column, a text feature one 0/1 column per training
category (one-hot), in the run's order. `FILE.inputs.json` beside FILE names them (column, and category for a
one-hot input), the outputs, and how a missing cell is given: a run trained with --missing impute fills a NaN
in any input with the training value (a numeric column's mean; for a text column, NaN in all its one-hot inputs
gives its most frequent category); in any other run a NaN input gives a NaN output row (`predict` refuses it).
Neither file may exist beforehand; both are written atomically, and the first is removed if the second fails.
"""

import importlib
import json
from pathlib import Path

import numpy as np

import bp_jax.export
from bp_jax.cli import data, folders, interrupts, options, runs
from bp_jax.cli._args import UsageError

#: --format -> what it writes
FORMATS = {
    "jax": "a serialized jax.export.Exported (jax and flatbuffers run it)",
    "onnx": "an ONNX model (onnxruntime …)",
}
#: --format -> the module it needs (jax serializes an Exported with flatbuffers, not a jax dependency), and where
NEEDS = {
    "jax": ("flatbuffers", "which jax serializes with, in the cli and export extras: pip install flatbuffers"),
    "onnx": ("onnx", "in the export extra: pip install 'bp_jax[export]'"),
}


def add_arguments(parser) -> None:
    options.add_trained_run(parser, verb="export")
    parser.add_argument(
        "--format",
        required=True,
        choices=FORMATS,
        help="; ".join(f"{name}: {what}" for name, what in FORMATS.items()),
    )
    options.add_out_file(parser, required=True, help="the file to write (and FILE.inputs.json)")


def inputs_path(out: Path) -> Path:
    return out.with_name(out.name + ".inputs.json")


def run(args) -> int:
    module, install = NEEDS[args.format]
    try:
        importlib.import_module(module)
    except ImportError:
        raise UsageError(f"--format {args.format} needs {module}, {install}") from None
    for path in (args.out, inputs_path(args.out)):
        if path.exists():
            raise UsageError(f"--out: {path} already exists; choose a new file")
    if not args.run_dir.is_dir():
        raise UsageError(f"{args.run_dir} is not a run folder: no such directory")
    trained, model, params = runs.read_trained(args.run_dir)
    runs.refuse_diverged(trained, args.run_dir, allowed=args.allow_diverged)
    scaling, ensemble = trained.scaling, trained.config.ensemble > 1
    if args.format == "jax":
        exported = bp_jax.export.to_jax_export(model, params, export_scaling(scaling), ensemble=ensemble)
        content = bytes(exported.serialize())
    else:
        content = bp_jax.export.to_onnx(model, params, export_scaling(scaling), ensemble=ensemble).SerializeToString()
    description = describe(scaling, args.format, args.run_dir, trained.step, members=trained.config.ensemble)
    with interrupts.current().writing():  # a signal now lets both files be written
        folders.write_atomically(args.out, lambda temporary: temporary.write_bytes(content))
        try:
            folders.write_atomically(
                inputs_path(args.out),
                lambda temporary: temporary.write_text(json.dumps(description, indent=2, ensure_ascii=False) + "\n"),
            )
        except UsageError:
            args.out.unlink()  # ours, written just now: no model file without its inputs
            raise
    print(
        f"wrote {args.out} ({len(content):,} bytes) and {inputs_path(args.out)}: "
        f"{len(description['inputs'])} inputs → {', '.join(description['outputs'])}"
    )
    return 0


def input_columns(scaling: data.Scaling) -> list[tuple[str, str | None]]:
    """(feature, category) per model input, in order: category None for a numeric feature's one input."""
    return [(name, category) for name in scaling.feature_names for category in scaling.categories.get(name, (None,))]


def fill_values(scaling: data.Scaling) -> list[float] | None:
    """Each input's value for a NaN (--missing impute): a numeric column's fill, or 1/0 for a one-hot input of a
    text column's fill category; NaN (no fill) for a column without one (a run recorded when only columns with gaps
    got one). None when the run fills nothing."""
    if not scaling.fill:
        return None
    fill = lambda name, category: (
        np.nan
        if name not in scaling.fill
        else float(scaling.fill[name])
        if category is None
        else float(category == scaling.fill[name])
    )
    return [fill(name, category) for name, category in input_columns(scaling)]


def export_scaling(scaling: data.Scaling) -> bp_jax.export.Scaling:
    """What `bp_jax.export` puts around a run's model: its fill values, standardisation, and target units or
    class probabilities."""
    classify = scaling.task == "classification"
    return bp_jax.export.Scaling(
        inputs=len(scaling.input_names),
        fill=fill_values(scaling),
        x_mean=scaling.x_mean,
        x_std=scaling.x_std,
        y_mean=None if classify else scaling.y_mean,
        y_std=None if classify else scaling.y_std,
        probabilities=classify,
    )


def describe(scaling: data.Scaling, format: str, run_dir: Path, step: int, members: int = 1) -> dict:
    """FILE.inputs.json: the run, each input column (its feature, the category of a one-hot input, its value for
    a NaN where the run imputes), the outputs (`predict`'s numeric columns: an ensemble of `members` > 1 adds
    "<target>_std" or "entropy") and what a NaN input does."""
    fills = fill_values(scaling)
    inputs = []
    for index, (name, category) in enumerate(input_columns(scaling)):
        entry: dict = {"name": name if category is None else f"{name}={category}", "feature": name}
        if category is not None:
            entry["category"] = category
        if fills is not None and not np.isnan(fills[index]):
            entry["nan_becomes"] = fills[index]
        inputs.append(entry)
    classify = scaling.task == "classification"
    return {
        "format": format,
        "run": str(run_dir.resolve()),
        "step": step,
        "task": scaling.task,
        "input": {"dtype": "float32", "shape": ["rows", len(inputs)]},
        "inputs": inputs,
        "outputs": (
            [f"P({label})" for label in scaling.classes] + ["entropy"] * (members > 1)
            if classify
            else [scaling.target_name] + [f"{scaling.target_name}_std"] * (members > 1)
        ),
        **({"members": members} if members > 1 else {}),
        "missing": (
            "an input with nan_becomes takes that value when it is NaN (a text column's NaN in all its one-hot inputs)"
            if fills is not None
            else "a NaN input gives a NaN output row: the run was not trained with --missing impute"
        ),
    }

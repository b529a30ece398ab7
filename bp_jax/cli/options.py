"""The options commands share, each defined once (pip's cmdoptions): their argument types, the flags several
commands take, the problem options of `train` and `sweep`, and the Config values they set.

    add_seed(parser, help=...)            # --seed: train, sweep
    add_split_seed(parser, default=...)   # --split-seed: train, sweep
    add_devices(group, splits="...")      # --devices N|all: train, sweep
    add_compile_cache(parser)             # --compile-cache DIR|off: train, sweep
    add_out_folder(parser, holding=..., default=...)   # --out DIR, a new or empty folder: train, sweep, explain
    add_out_file(parser, help=...)        # --out FILE, a new file: predict, export
    add_trained_run(parser, verb=...)     # RUN_DIR and --allow-diverged: predict, export
    add_data_file(parser, help=...)       # --data FILE: predict, and train and sweep beside --dataset
    add_problem_options(parser)           # --dataset/--data, --target, --task, --features, --missing, --hidden, …
    add_schedule_and_weights(parser)      # --schedule, --warmup-epochs, --weight-decay, --class-weight, --sample-weight
    add_early_stopping(parser)            # --early-stopping, --validation-fraction, --patience: train, sweep
    Config(**given_config(args))          # the values given on the command line, the rest defaulted

Only `data`'s names are imported here (`runs`, with jax and optax, when the problem options are added or read),
so a command that takes a shared option loads nothing more for it.
"""

import argparse
import dataclasses
import math
import re
from pathlib import Path

from bp_jax.cli import _cache, data


def _checked(text: str, parse, accepts, expected: str):
    """`parse(text)` when it parses and `accepts` the value, else argparse's error "expected {expected}, got 'text'"."""
    try:
        value = parse(text)
    except ValueError:
        value = None
    if value is None or not accepts(value):
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
    return value


def positive_int(text: str) -> int:
    return _checked(text, int, lambda value: value >= 1, "a positive integer")


def open_fraction(text: str) -> float:
    """A number strictly between 0 and 1."""
    return _checked(text, float, lambda value: 0 < value < 1, "a number between 0 and 1 (both excluded)")


def learning_rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be finite and > 0, got {text!r}")
    return value


def learning_rates(text: str) -> tuple[float, ...]:
    """Comma-separated learning rates, each finite and > 0, at least one."""
    try:
        return tuple(learning_rate(part) for part in text.split(","))
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers > 0 such as 0.001,0.01,0.1, got {text!r}"
        ) from None


def dropout_rate(text: str) -> float:
    """A Dropout rate: a number in [0, 1)."""
    return _checked(text, float, lambda value: 0 <= value < 1, "a number in [0, 1)")


def weight_decay(text: str) -> float:
    return _checked(text, float, lambda value: math.isfinite(value) and value >= 0, "a finite number ≥ 0")


def hidden_sizes(text: str) -> tuple[int, ...]:
    try:
        return tuple(positive_int(part) for part in text.split(","))
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated positive integers such as 5 or 16,8, got {text!r}"
        ) from None


def out_file(text: str) -> Path:
    """A path that names a file: not empty, not ending in a separator, `.` or `..` (those name a folder)."""
    path = Path(text)
    if not text or text.endswith("/") or path.name in ("", ".", ".."):
        raise argparse.ArgumentTypeError(f"expected the name of a file, got {text!r}")
    return path


def batch_size(text: str) -> int | str:
    return text if text == "full" else positive_int(text)  # "full" becomes None in given_config


def device_count(text: str) -> int | None:
    return None if text == "all" else positive_int(text)


def seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer in [0, 2**32 - 1], got {text!r}") from None
    if not 0 <= value < 2**32:
        raise argparse.ArgumentTypeError(f"expected an integer in [0, 2**32 - 1], got {text!r}")
    return value


#: One name of a --features list: "quoted" (kept exactly, "" for a quote inside) or plain (spaces around it dropped),
#: then a comma or the end.
COLUMN_NAME = re.compile(r'\s*(?:"((?:[^"]|"")*)"\s*|([^,"]*))(,|$)')


def column_names(text: str) -> tuple[str, ...]:
    """Column names as one CSV row: `a, b` is ('a', 'b'); quote a name to keep its commas and surrounding spaces:
    `"a,b", " c "` is ('a,b', ' c '). Each name at least one character, none twice."""
    names, position, separator = [], 0, ","
    while separator:
        match = COLUMN_NAME.match(text, position)
        quoted, plain = (None, "") if match is None else match.group(1, 2)
        name = quoted.replace('""', '"') if quoted is not None else plain.strip()
        if match is None or not name:
            raise argparse.ArgumentTypeError(
                "expected comma-separated column names such as age,bmi (quote a name "
                f'holding a comma or spaces to keep: "a,b"), got {text!r}'
            )
        if name in names:
            raise argparse.ArgumentTypeError(f"column {name!r} is named twice")
        names.append(name)
        position, separator = match.end(), match.group(3)
    return tuple(names)


def add_seed(parser, *, help: str) -> None:
    parser.add_argument("--seed", type=seed, help=help)


def add_split_seed(parser, *, default: int | None) -> None:
    shown = "--seed" if default is None else default
    parser.add_argument("--split-seed", type=seed, default=default, help=f"chooses the held-out rows (default {shown})")


def add_devices(parser, *, splits: str) -> None:
    """--devices N|all (default 1): over how many devices the command splits `splits`."""
    parser.add_argument(
        "--devices",
        type=device_count,
        default=1,
        metavar="N|all",
        help=f"split {splits} over N devices, or all of them (default 1)",
    )


def add_compile_cache(parser) -> None:
    """--compile-cache DIR|off: JAX's persistent compilation cache (`_cache`)."""
    parser.add_argument(
        "--compile-cache",
        metavar="DIR|off",
        help=f"where compiled programs are kept between runs, or 'off' (env {_cache.ENVIRONMENT}; "
        "default ~/.cache/bp_jax/jax)",
    )


def add_out_folder(parser, *, holding: str, default: str) -> None:
    """--out DIR: the folder the command writes `holding` into, new or empty (`folders.claimed`)."""
    parser.add_argument(
        "--out", type=Path, metavar="DIR", help=f"a new or empty directory for {holding} (default: {default})"
    )


def add_out_file(parser, *, help: str, required: bool = False) -> None:
    """--out FILE: a file the command creates, refused if it exists."""
    parser.add_argument("--out", type=out_file, required=required, metavar="FILE", help=f"{help}; must not exist")


def add_trained_run(parser, *, verb: str) -> None:
    """RUN_DIR, a `bp-jax train` folder, and --allow-diverged, to `verb` a run that stopped on divergence."""
    parser.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="a bp-jax train output directory")
    parser.add_argument(
        "--allow-diverged",
        action="store_true",
        help=f"{verb} a run that stopped on divergence (its last finite params)",
    )


def add_data_file(parser, *, help: str, required: bool = False) -> None:
    """--data FILE: a table (`data.read`: CSV, parquet or npz)."""
    parser.add_argument("--data", type=Path, required=required, metavar="FILE", help=help)


def add_problem_options(parser) -> None:
    """The options `train` and `sweep` share: the data, the model, the optimizer and the run length."""
    from bp_jax.cli.runs import ACTIVATIONS, OPTIMIZERS

    source = parser.add_mutually_exclusive_group()
    source.add_argument("--dataset", choices=data.NAMES, help="default: diabetes (442 × 10, from scikit-learn)")
    add_data_file(source, help="your own data: a CSV with a header row, a .parquet, or an .npz with arrays x and y")
    parser.add_argument("--target", metavar="COLUMN", help="the column to predict (default: the last one)")
    parser.add_argument(
        "--task",
        choices=data.TASKS,
        help="auto (default): classification for a text or true/false target, regression for numbers",
    )
    parser.add_argument(
        "--features",
        type=column_names,
        metavar="A,B,…",
        help="the columns to predict from (default: all but the target); quote a name to keep its "
        "commas and surrounding spaces: '\"a,b\", c'",
    )
    parser.add_argument(
        "--missing",
        choices=data.MISSING,
        help="empty cells: error (default), drop their rows, or impute features (training mean or "
        "most frequent category); rows without a target are left out",
    )
    parser.add_argument(
        "--hidden", type=hidden_sizes, help="hidden layer sizes, e.g. 5 or 16,8 (default 5; 16 for classes)"
    )
    parser.add_argument("--activation", choices=ACTIVATIONS, help="default relu")
    parser.add_argument(
        "--dropout",
        type=dropout_rate,
        metavar="P",
        help="dropout rate after every hidden activation, in [0, 1) (default 0: none); training only, predict and "
        "export never drop",
    )
    parser.add_argument(
        "--optimizer",
        choices=list(OPTIMIZERS),
        help="sgd: the hand-written update (default); optax-sgd, momentum (0.9), adam: optax",
    )
    length = parser.add_mutually_exclusive_group()
    length.add_argument("--steps", type=positive_int, help="total training steps")
    length.add_argument("--epochs", type=positive_int, help="passes over the training split (default 100)")
    parser.add_argument("--batch-size", type=batch_size, help="minibatch size, or 'full' (default 32)")


def add_schedule_and_weights(parser) -> None:
    """The learning-rate schedule, weight decay and row weights (`runs.optimizer`, `runs.row_weights`)."""
    from bp_jax.cli.runs import CLASS_WEIGHTS, PLATEAU, SCHEDULES

    group = parser.add_argument_group("schedule, weight decay and weights")
    group.add_argument(
        "--schedule",
        choices=SCHEDULES,
        help="the learning rate over the run: constant (default); cosine, from --lr to 0; warmup-cosine, from 0 to "
        "--lr over --warmup-epochs, then cosine to 0; plateau, × "
        f"{PLATEAU['factor']} after {PLATEAU['patience']} epochs without a better mean training loss (validation "
        "loss with --early-stopping)",
    )
    group.add_argument(
        "--warmup-epochs", type=positive_int, metavar="E", help="warmup-cosine's linear warm-up, fewer than the run's"
    )
    group.add_argument(
        "--weight-decay",
        type=weight_decay,
        metavar="W",
        help="decoupled weight decay (default 0): AdamW for adam, the others take g + W·w",
    )
    group.add_argument(
        "--class-weight",
        choices=CLASS_WEIGHTS,
        help="balanced: each row of class c weighs n / (k·n_c), from the training rows (scikit-learn's)",
    )
    group.add_argument(
        "--sample-weight",
        metavar="COLUMN",
        help="a column of row weights (numbers ≥ 0, not a feature); the loss is Σ w·loss / Σ w",
    )


def add_early_stopping(parser) -> None:
    """--early-stopping, --validation-fraction F and --patience N (`runs.validation_split`, `runs.stop_rule`): train,
    sweep."""
    group = parser.add_argument_group("early stopping")
    group.add_argument(
        "--early-stopping",
        action="store_true",
        default=None,
        help="score held-back training rows at each epoch's end, inside the compiled loop; stop after --patience "
        "epochs without improvement and keep the best params",
    )
    group.add_argument(
        "--validation-fraction",
        type=open_fraction,
        metavar="F",
        help="the training rows held back for validation, stratified for classes (default 0.1; needs --early-stopping)",
    )
    group.add_argument(
        "--patience",
        type=positive_int,
        metavar="N",
        help="epochs without a lower validation loss before stopping (default 10; needs --early-stopping)",
    )


def given_config(args) -> dict:
    """The Config values set on the command line."""
    from bp_jax.cli.runs import Config

    names = {field.name for field in dataclasses.fields(Config)}
    given = {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}
    if args.data is not None:
        given["dataset"] = str(args.data.absolute())
    if given.get("batch_size") == "full":
        given["batch_size"] = None
    return given

"""`bp-jax` (also `python -m bp_jax`): train the seed MLP, walk through the documents' examples, or check parity.

Bad values end with one line on stderr and exit status 2; a diverged run exits with status 1.
"""

import argparse
import math
import sys
import time
from pathlib import Path

from bp_jax import datasets


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, no usage dump
        self.exit(2, f"{self.prog}: error: {message}\n")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _learning_rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be finite and > 0, got {text!r}")
    return value


def _hidden_sizes(text: str) -> tuple[int, ...]:
    try:
        return tuple(_positive_int(part) for part in text.split(","))
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated positive integers such as 5 or 16,8, got {text!r}") from None


def _batch_size(text: str) -> int | str:
    return text if text == "full" else _positive_int(text)  # "full" becomes None once defaults are set


def _device_count(text: str) -> int | None:
    return None if text == "all" else _positive_int(text)


def build_parser() -> argparse.ArgumentParser:
    from bp_jax.train import LAYERS, MATMUL_PRECISIONS, OPTIMIZERS

    parser = _Parser(prog="bp-jax", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    train = commands.add_parser("train", help="train the seed MLP (10 → 5 → 1, ReLU, MSE, SGD) on real data")
    train.add_argument("--dataset", choices=datasets.NAMES, help="default: diabetes (442 × 10, from scikit-learn)")
    train.add_argument("--hidden", type=_hidden_sizes, help="hidden layer sizes, e.g. 5 or 16,8 (default 5)")
    train.add_argument("--activation", choices=sorted(LAYERS), help="default relu")
    train.add_argument("--optimizer", choices=list(OPTIMIZERS),
                       help="sgd: the hand-written update (default); optax-sgd, momentum (0.9), adam: optax")
    train.add_argument("--lr", type=_learning_rate, help="learning rate (default 0.01)")
    length = train.add_mutually_exclusive_group()
    length.add_argument("--steps", type=_positive_int, help="total training steps")
    length.add_argument("--epochs", type=_positive_int, help="passes over the training split (default 100)")
    train.add_argument("--batch-size", type=_batch_size, help="minibatch size, or 'full' (default 32)")
    train.add_argument("--seed", type=int, help="seeds the split, the init and the data order (default 0)")
    train.add_argument("--out", type=Path, help="output directory (default runs/DATASET-TIME, or the --resume directory)")
    train.add_argument("--resume", type=Path, metavar="DIR", help="carry on from the newest checkpoint in DIR")
    train.add_argument("--checkpoint-every", type=_positive_int, metavar="N",
                       help="save every N steps (always at the end)")
    parallel = train.add_argument_group("devices, precision and multi-process runs")
    parallel.add_argument("--devices", type=_device_count, default=1, metavar="N|all",
                          help="split each batch over N devices, or all of them (default 1)")
    parallel.add_argument("--matmul-precision", choices=MATMUL_PRECISIONS, default="highest",
                          help="highest: true float32 (default); high, default: TF32 on GPUs, bfloat16 on TPUs")
    parallel.add_argument("--coordinator", metavar="HOST:PORT|auto",
                          help="process 0's address (env BP_JAX_COORDINATOR); auto: detect a TPU pod or SLURM")
    parallel.add_argument("--num-processes", type=_positive_int, help="env BP_JAX_NUM_PROCESSES")
    parallel.add_argument("--process-id", type=int, help="0 … num-processes − 1 (env BP_JAX_PROCESS_ID)")
    parallel.add_argument("--init-timeout", type=_positive_int, default=120, metavar="SECONDS",
                          help="give up joining the run after this long (default 120)")
    train.set_defaults(run=_train)
    demo = commands.add_parser("demo", help="the documents' examples: manual vs autodiff, side by side")
    demo.set_defaults(run=_demo)
    check = commands.add_parser("check", help="the parity checks on every backend JAX sees, as a table")
    check.set_defaults(run=_check)
    return parser


def _train(args) -> int:
    import dataclasses

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    import jax

    import bp_jax
    from bp_jax import distributed, train

    distributed.initialize(args.coordinator, args.num_processes, args.process_id, timeout_s=args.init_timeout)
    given = {field.name: getattr(args, field.name) for field in dataclasses.fields(train.Config)
             if getattr(args, field.name) is not None}
    if given.get("batch_size") == "full":
        given["batch_size"] = None
    resume = args.resume and args.resume / "checkpoints"
    config = train.Config(**given) if resume is None else train.resumed_config(resume, given)
    out = args.out or args.resume or Path("runs") / f"{config.dataset}-{time.strftime('%Y%m%d-%H%M%S')}"
    epochs = 100 if args.epochs is args.steps is args.resume is None else args.epochs

    columns = (TextColumn("train"), BarColumn(), MofNCompleteColumn(), TextColumn("loss {task.fields[loss]}"),
               TextColumn("{task.fields[rate]} steps/s"), TimeElapsedColumn())
    console = Console(stderr=True)
    writer = jax.process_index() == 0
    with Progress(*columns, console=console, disable=not (console.is_terminal and writer)) as bar:
        task = bar.add_task("train", total=None, loss="…", rate="…")

        def progress(step, total, loss):
            bar.update(task, completed=step, total=total, loss=f"{loss:.4f}")
            speed = bar.tasks[0].speed
            bar.update(task, rate=f"{speed:,.0f}" if speed else "…")

        try:
            metrics = train.run(config, out=out, steps=args.steps, epochs=epochs,
                                checkpoint_every=args.checkpoint_every, resume=resume, devices=args.devices,
                                matmul_precision=args.matmul_precision, progress=progress)
        except bp_jax.NonFiniteLoss as err:
            print(f"bp-jax train: error: {err}; the last finite params are checkpointed in {out}",
                  file=sys.stderr)
            return 1

    table = Table(title=f"bp-jax train: {config.dataset}, step {metrics['final_step']}")
    table.add_column("quantity")
    table.add_column("value", justify="right")
    rows = [
        ("model", " → ".join(map(str, (metrics["examples"]["features"], *config.hidden, 1)))
         + f", {config.activation}"),
        ("optimizer", f"{config.optimizer}, lr {config.lr}, batch {config.batch_size or 'full'}"),
        ("train MSE", f"{metrics['train_mse']:.4f}"),
        ("held-out MSE", f"{metrics['held_out_mse']:.4f}"),
        ("held-out MSE, mean predictor", f"{metrics['baseline_held_out_mse']:.4f}"),
        ("wall time", f"{metrics['wall_time_s']:.2f} s"),
        ("device", metrics["device"] + (f" × {metrics['devices']}" if metrics["devices"] > 1 else "")
         + (f", {metrics['processes']} processes" if metrics["processes"] > 1 else "")),
        ("written to", f"{out}/"),
    ]
    for name, value in rows:
        table.add_row(name, value)
    if writer:
        Console().print(table)
    return 0


def _demo(args) -> int:
    from bp_jax.demo import run

    run()
    return 0


def _check(args) -> int:
    from bp_jax.backends import run

    return run()


def main(argv: list[str] | None = None) -> int:
    try:
        from bp_jax.checkpoints import CheckpointError
        from bp_jax.distributed import DistributedError
        from bp_jax.train import UsageError

        args = build_parser().parse_args(argv)
        return args.run(args)
    except ModuleNotFoundError as err:
        missing = err.name.partition(".")[0]
        print(f"bp-jax: error: {missing} is missing; the command needs its extra: pip install 'bp_jax[cli]'",
              file=sys.stderr)
    except (UsageError, CheckpointError, DistributedError, OSError) as err:
        print(f"bp-jax {args.command}: error: {err}", file=sys.stderr)
    return 2

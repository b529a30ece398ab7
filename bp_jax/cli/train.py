"""The `bp-jax train` job: an MLP on a built-in data set or the user's file, with progress, metrics, a loss
curve and checkpoints.

This is the edge of the library: it reads data, writes files and draws; the training itself is `fit`.
`run` goes in named steps: `_prepare` (data, model, initial state), `_resume` (the checkpoint to carry on
from), `_run_folder` (the folder, locked), `_train` (the one `fit` call; `_Recorder` keeps the history and
checkpoints between chunks) and `_finish` (metrics.json and the loss curve).
"""

import dataclasses
import math
import signal
import sys
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

import bp_jax
from bp_jax.cli import _args, _cache, checkpoints, data, distributed, folders, plots, runs
from bp_jax.cli._args import UsageError
from bp_jax.cli.runs import Config

MAX_HISTORY_POINTS = 2000
PROGRESS_EVERY = 1000
#: --matmul-precision: "highest" is true float32 (the reference); "high" and "default" allow TF32 on
#: GPUs and bfloat16 passes on TPUs, for speed.
MATMUL_PRECISIONS = ("highest", "high", "default")


class Diverged(Exception):
    """The loss or an update became non-finite; the last finite params are checkpointed in `out`."""

    def __init__(self, cause: bp_jax.NonFiniteLoss, out: Path):
        super().__init__(f"{cause}; the last finite params are checkpointed in {out}")
        self.step, self.out = cause.step, out


class Interrupted(Exception):
    """SIGINT or SIGTERM stopped training at `step`, which is checkpointed in `out`."""

    def __init__(self, signal_number: int, step: int, out: Path):
        super().__init__(f"interrupted at step {step}; resume with: bp-jax train --resume {out}")
        self.signal_number, self.step, self.out = signal_number, step, out


def add_problem_options(parser) -> None:
    """The options `train` and `sweep` share: the data, the model, the optimizer and the run length."""
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--dataset", choices=data.NAMES, help="default: diabetes (442 × 10, from scikit-learn)")
    source.add_argument("--data", type=Path, metavar="FILE",
                        help="your own data: a CSV with a header row, or an .npz with arrays x and y")
    parser.add_argument("--target", metavar="COLUMN", help="the column to predict (default: the last one)")
    parser.add_argument("--features", type=_args.column_names, metavar="A,B,…",
                        help='the columns to predict from (default: all but the target); quote a name to keep its '
                             'commas and surrounding spaces: \'"a,b", c\'')
    parser.add_argument("--hidden", type=_args.hidden_sizes, help="hidden layer sizes, e.g. 5 or 16,8 (default 5)")
    parser.add_argument("--activation", choices=sorted(runs.LAYERS), help="default relu")
    parser.add_argument("--optimizer", choices=list(runs.OPTIMIZERS),
                        help="sgd: the hand-written update (default); optax-sgd, momentum (0.9), adam: optax")
    length = parser.add_mutually_exclusive_group()
    length.add_argument("--steps", type=_args.positive_int, help="total training steps")
    length.add_argument("--epochs", type=_args.positive_int, help="passes over the training split (default 100)")
    parser.add_argument("--batch-size", type=_args.batch_size, help="minibatch size, or 'full' (default 32)")


def register(commands) -> None:
    train = commands.add_parser("train", help="train the seed MLP (10 → 5 → 1, ReLU, MSE, SGD) on real data")
    add_problem_options(train)
    train.add_argument("--lr", type=_args.learning_rate, help="learning rate (default 0.01)")
    train.add_argument("--seed", type=_args.seed, help="seeds the init and the data order, and the split unless "
                                                       "--split-seed is given (default 0)")
    train.add_argument("--split-seed", type=_args.seed, help="chooses the held-out rows (default: --seed)")
    train.add_argument("--out", type=Path, help="output directory (default: a new runs/DATASET-TIME, or the "
                                                "--resume directory)")
    train.add_argument("--resume", type=Path, metavar="DIR", help="carry on from the newest checkpoint in DIR")
    train.add_argument("--checkpoint-every", type=_args.positive_int, metavar="N",
                       help="save every N steps (always at the end, and when interrupted)")
    parallel = train.add_argument_group("devices, precision and multi-process runs")
    parallel.add_argument("--devices", type=_args.device_count, default=1, metavar="N|all",
                          help="split each batch over N devices, or all of them (default 1)")
    parallel.add_argument("--matmul-precision", choices=MATMUL_PRECISIONS, default="highest",
                          help="highest: true float32 (default); high, default: TF32 on GPUs, bfloat16 on TPUs")
    parallel.add_argument("--coordinator", metavar="HOST:PORT|auto",
                          help="process 0's address (env BP_JAX_COORDINATOR); auto: detect a TPU pod or SLURM")
    parallel.add_argument("--num-processes", type=_args.positive_int, help="env BP_JAX_NUM_PROCESSES")
    parallel.add_argument("--process-id", type=int, help="0 … num-processes − 1 (env BP_JAX_PROCESS_ID)")
    parallel.add_argument("--init-timeout", type=_args.positive_int, default=120, metavar="SECONDS",
                          help="give up joining the run after this long (default 120)")
    _cache.add_option(train)
    train.set_defaults(run=main)


def main(args) -> int:
    """The command: the run's settings, training with a progress bar, the summary table. SIGINT and SIGTERM
    stop training at the end of the current chunk, checkpointed (exit status 128 + the signal's number)."""
    distributed.initialize(args.coordinator, args.num_processes, args.process_id, timeout_s=args.init_timeout)
    given = given_config(args)
    resume = args.resume and args.resume / "checkpoints"
    config = Config(**given) if resume is None else resumed_config(resume, given)
    epochs = 100 if args.epochs is args.steps is args.resume is None else args.epochs
    signals = runs.StopSignals()
    with progress_bar("train") as progress, signals.caught():
        try:
            metrics = run(config, out=args.out or args.resume, steps=args.steps, epochs=epochs,
                          checkpoint_every=args.checkpoint_every, resume=resume, devices=args.devices,
                          matmul_precision=args.matmul_precision, progress=progress, stop=signals)
        except Diverged as err:
            print(f"bp-jax train: error: {err}", file=sys.stderr)
            return 1
        except Interrupted as err:
            print(f"bp-jax train: {err}", file=sys.stderr)
            return 128 + err.signal_number
    if jax.process_index() == 0:
        _print_summary(config, metrics)
    return 0


def given_config(args) -> dict:
    """The Config values set on the command line."""
    names = {field.name for field in dataclasses.fields(Config)}
    given = {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}
    if args.data is not None:
        given["dataset"] = str(args.data.absolute())
    if given.get("batch_size") == "full":
        given["batch_size"] = None
    return given


@contextmanager
def progress_bar(label: str):
    """A rich progress bar on a terminal (process 0 only); yields `progress(step, total, loss)`."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn(label), BarColumn(), MofNCompleteColumn(), TextColumn("loss {task.fields[loss]}"),
               TextColumn("{task.fields[rate]} steps/s"), TimeElapsedColumn())
    console = Console(stderr=True)
    with Progress(*columns, console=console, disable=not (console.is_terminal and jax.process_index() == 0)) as bar:
        task = bar.add_task(label, total=None, loss="…", rate="…")

        def progress(step, total, loss):
            bar.update(task, completed=step, total=total, loss=f"{loss:.4f}")
            speed = bar.tasks[0].speed
            bar.update(task, rate=f"{speed:,.0f}" if speed else "…")

        yield progress


def _print_summary(config: Config, metrics: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"bp-jax train: {config.name}, step {metrics['final_step']}")
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
        ("written to", f"{metrics['run_dir']}/"),
    ]
    for name, value in rows:
        table.add_row(name, value)
    Console().print(table)


def resumed_config(checkpoint_dir: Path, given: dict) -> Config:
    """The Config a checkpoint was trained with; CheckpointError if a value in `given` differs."""
    _, record = checkpoints.latest_record(checkpoints.manager(checkpoint_dir))
    where = f"the checkpoint in {checkpoint_dir}"
    saved, _ = runs.checked_record(record, where)
    saved.check_matches(given, where)
    return saved


def steps_per_epoch(n_train: int, batch_size: int | None) -> int:
    return 1 if batch_size is None else n_train // batch_size


def _chunk_sizes(checkpoint_every: int | None) -> tuple[int, ...]:
    """Chunks end every PROGRESS_EVERY steps (the progress bar, Ctrl-C) and on every checkpoint step;
    fit compiles one program whatever they are."""
    return (PROGRESS_EVERY,) if checkpoint_every is None else (PROGRESS_EVERY, checkpoint_every)


def mesh_for(devices: int | None, global_batch: int) -> jax.sharding.Mesh | None:
    """The mesh for `--devices` (None: all), or None for one device in one process; UsageError when more
    devices are asked than exist or the global batch does not split evenly over them."""
    if devices == 1 and jax.process_count() == 1:
        return None
    if jax.process_count() > 1 and devices not in (None, jax.device_count()):
        raise UsageError(f"a run of {jax.process_count()} processes trains on all {jax.device_count()} "
                         f"devices; pass --devices all, got {devices}")
    try:
        mesh = bp_jax.data_parallel_mesh(devices)
    except ValueError as err:
        raise UsageError(f"--devices: {err}") from None
    count = mesh.devices.size
    if global_batch % count:
        raise UsageError(f"the global batch of {global_batch} examples does not split evenly over {count} "
                         f"devices; use a --batch-size that is a multiple of {count}")
    return mesh


class Problem(NamedTuple):
    """What is trained: the config (target and features resolved), the data, the model, the mesh, and the
    state a checkpoint holds (params, optimizer state, data-order key)."""

    config: Config
    split: data.Split
    model: bp_jax.Model
    mesh: jax.sharding.Mesh | None
    state: dict


class Start(NamedTuple):
    """Where training begins: the state, its step, the loss history and wall time so far, and the total
    steps the checkpoint was heading for (None for a fresh run)."""

    state: dict
    step: int = 0
    history: list | tuple = ()
    wall_time_s: float = 0.0
    total_steps: int | None = None


def run(config: Config, *, out: Path | None = None, steps: int | None = None, epochs: int | None = None,
        checkpoint_every: int | None = None, resume: Path | None = None, devices: int | None = 1,
        matmul_precision: str = "highest", progress: Callable | None = None,
        stop: runs.StopSignals | None = None) -> dict:
    """Train, checkpoint and write metrics.json and loss_curve.png into `out` (default: a new
    runs/NAME-TIME folder); returns the metrics, with `run_dir`.

    `resume` is a checkpoints directory to carry on from. `devices` (None: all) splits each batch over that
    many devices; in a multi-process run (`distributed.initialize`) every process trains and only process 0
    writes files. Matmuls run at `matmul_precision` (see MATMUL_PRECISIONS). `progress(step, total, loss)`
    is called between chunks, and a signal in `stop.received` ends training there.
    Raises UsageError for bad values or a folder in use, CheckpointError for a checkpoint that cannot be
    resumed or written; Diverged or Interrupted after checkpointing and writing the metrics.
    """
    problem = _prepare(config, devices)
    start = Start(problem.state) if resume is None else _resume(problem, resume)
    total = _total_steps(problem, start, steps, epochs)
    writer = jax.process_index() == 0
    if out is None:
        out = folders.create_unique(Path("runs"), config.name) if writer else Path("runs") / config.name
    with _run_folder(out, resume, writer) as manager:
        recorder = _Recorder(problem, start, total, manager, checkpoint_every, progress, stop)
        with jax.default_matmul_precision(matmul_precision):
            result, stopped = _train(problem, start, total, recorder, checkpoint_every)
            metrics = _finish(problem, recorder, result, stopped, out, matmul_precision, writer)
    if isinstance(stopped, bp_jax.NonFiniteLoss):
        raise Diverged(stopped, out)
    if isinstance(stopped, _StopRequested):
        raise Interrupted(stopped.signal_number, result.step, out)
    return metrics


def _prepare(config: Config, devices: int | None) -> Problem:
    """Read and split the data, check the batch size, build the model and its initial state."""
    config, split = runs.load_data(config)
    n_train, features = split.x_train.shape
    mesh = mesh_for(devices, config.batch_size or n_train)
    model = runs.build_model(features, config)
    return Problem(config, split, model, mesh, runs.initial_state(model, config))


def _resume(problem: Problem, checkpoint_dir: Path) -> Start:
    """The newest checkpoint in `checkpoint_dir`, checked against the problem's config and data."""
    manager = checkpoints.manager(checkpoint_dir)
    step, record = checkpoints.latest_record(manager)
    where = f"checkpoint {step} in {manager.directory}"
    saved, record = runs.checked_record(record, where)
    saved.check_matches(problem.config.to_record(), where)
    if record["data"]["fingerprint"] != problem.split.fingerprint:
        raise checkpoints.CheckpointError(f"{where} was trained on other data than {problem.config.dataset} "
                                          f"holds now")
    state = checkpoints.restore(manager, step, problem.state)
    return Start(state, step, record["loss_history"], record["wall_time_s"], record["total_steps"])


def _total_steps(problem: Problem, start: Start, steps: int | None, epochs: int | None) -> int:
    n_train = len(problem.split.x_train)
    total = steps if epochs is None else epochs * steps_per_epoch(n_train, problem.config.batch_size)
    total = start.total_steps if total is None else total
    if total is None:
        raise UsageError("pass --steps or --epochs")
    if total < start.step:
        raise UsageError(f"the checkpoint is at step {start.step}; --steps must be at least that, got {total}")
    return total


@contextmanager
def _run_folder(out: Path, resume: Path | None, writer: bool):
    """Yield the checkpoint manager of `out`, locked for this run (None in processes that do not write)."""
    if not writer:
        yield None
        return
    with folders.claimed(out, continuing=resume and resume.parent):
        (out / "checkpoints").mkdir(exist_ok=True)  # orbax creates it only in a one-process run
        yield checkpoints.manager(out / "checkpoints", write=True)


class _StopRequested(Exception):
    """Raised out of `fit` by `_Recorder.on_chunk` after checkpointing `result`, on a stop signal."""

    def __init__(self, signal_number: int, result: bp_jax.FitResult):
        self.signal_number, self.result = signal_number, result


class _Recorder:
    """Between chunks: keeps the loss history (every k-th step for long runs), reports progress,
    checkpoints every `checkpoint_every` steps, at the end and when a stop signal came."""

    def __init__(self, problem: Problem, start: Start, total: int, manager, checkpoint_every, progress, stop):
        self.problem, self.start, self.total, self.manager = problem, start, total, manager
        self.checkpoint_every, self.progress, self.stop = checkpoint_every, progress, stop
        self.history = list(start.history)
        self.stride = max(1, math.ceil(total / MAX_HISTORY_POINTS))
        self.completed = start.step
        self.started = time.perf_counter()

    def record(self) -> dict:
        split = self.problem.split
        return runs.finite({
            "config": self.problem.config.to_record(), "total_steps": self.total, "loss_history": self.history,
            "wall_time_s": self.start.wall_time_s + time.perf_counter() - self.started,
            "data": {"scaling": split.scaling.to_record(), "fingerprint": split.fingerprint}})

    def extend_history(self, losses: np.ndarray, first: int) -> None:
        self.history.extend([s, float(v)] for s, v in enumerate(losses, first) if s % self.stride == 0)

    def save(self, result: bp_jax.FitResult) -> None:
        if self.manager is not None:
            arrays = {"params": result.params, "opt_state": result.opt_state, "key": self.start.state["key"]}
            if self.problem.mesh is not None:
                arrays = distributed.host_local(arrays)
            checkpoints.save(self.manager, result.step, arrays, self.record())

    def on_chunk(self, result: bp_jax.FitResult) -> None:
        self.completed = result.step
        losses = distributed.host_local(result.losses)
        self.extend_history(losses, result.step - len(losses))
        if self.progress is not None and jax.process_index() == 0:
            self.progress(result.step, self.total, float(losses[-1]))
        signal_number = self._stop_signal()
        due = self.checkpoint_every and result.step % self.checkpoint_every == 0
        if due or result.step == self.total or signal_number is not None:
            self.save(result)
        if signal_number is not None and result.step < self.total:
            raise _StopRequested(signal_number, result)

    def _stop_signal(self) -> int | None:
        """The stop signal received, agreed on by all processes (so that they stop at the same step)."""
        received = None if self.stop is None else self.stop.received
        if jax.process_count() == 1:
            return received
        from jax.experimental import multihost_utils

        numbers = multihost_utils.process_allgather(np.asarray(received or 0))
        return int(numbers.max()) or None


def _train(problem: Problem, start: Start, total: int, recorder: _Recorder, checkpoint_every: int | None):
    """(result, stopped): the one `fit` call, from `start` to `total`; `stopped` is the NonFiniteLoss or
    _StopRequested that ended it early (its params checkpointed), or None."""
    config, split = problem.config, problem.split
    transform = runs.optimizer(config)
    try:
        result = bp_jax.fit(
            bp_jax.loss_fn(problem.model), start.state["params"], jnp.asarray(split.x_train),
            jnp.asarray(split.y_train), steps=total - start.step, batch_size=config.batch_size,
            lr=config.lr if transform is None else None, optimizer=transform, opt_state=start.state["opt_state"],
            key=jax.random.wrap_key_data(start.state["key"]), start_step=start.step,
            chunk_size=_chunk_sizes(checkpoint_every), on_chunk=recorder.on_chunk, mesh=problem.mesh)
    except bp_jax.NonFiniteLoss as diverged:
        result = diverged.result
        recorder.extend_history(distributed.host_local(result.losses)[recorder.completed - start.step:],
                                recorder.completed)
        recorder.save(result)
        return result, diverged
    except _StopRequested as stop:
        return stop.result, stop
    return result, None


def _finish(problem: Problem, recorder: _Recorder, result: bp_jax.FitResult, stopped, out: Path,
            matmul_precision: str, writer: bool) -> dict:
    """The metrics of `result`, written with the loss curve into `out` by process 0."""
    metrics = _metrics(problem, distributed.host_local(result.params), recorder, result.step, stopped)
    metrics |= {"devices": 1 if problem.mesh is None else problem.mesh.devices.size,
                "processes": jax.process_count(), "matmul_precision": matmul_precision, "run_dir": str(out)}
    if writer:
        runs.write_json(out / "metrics.json", metrics)
        config = problem.config
        plots.loss_curve(out / "loss_curve.png", recorder.history,
                         title=f"bp-jax train: {config.name}, hidden {','.join(map(str, config.hidden))}, "
                               f"{config.optimizer} lr {config.lr}",
                         levels={"held-out MSE (final)": metrics["held_out_mse"],
                                 "held-out MSE, mean predictor": metrics["baseline_held_out_mse"]})
    return metrics


def _stop_reason(stopped: Exception) -> str:
    if isinstance(stopped, _StopRequested):
        return f"interrupted by {signal.Signals(stopped.signal_number).name}"
    return "non-finite loss"


def _metrics(problem: Problem, params, recorder: _Recorder, step: int, stopped) -> dict:
    split, model = problem.split, problem.model
    loss = jax.jit(bp_jax.loss_fn(model))
    mse = lambda x, y: float(loss(params, x, y))
    mean_predictor = np.full_like(split.y_test, split.y_train.mean())
    device = jax.devices()[0]
    return {
        **recorder.record(),
        "resumed_from_step": recorder.start.step,
        "final_step": step,
        "stopped": None if stopped is None else {"step": step, "reason": _stop_reason(stopped)},
        "train_mse": mse(split.x_train, split.y_train),
        "held_out_mse": mse(split.x_test, split.y_test),
        "baseline_held_out_mse": float(np.mean((mean_predictor - split.y_test) ** 2)),
        "examples": {"train": len(split.x_train), "held_out": len(split.x_test),
                     "features": split.x_train.shape[1]},
        "device": device.platform if device.device_kind == device.platform else
                  f"{device.platform}: {device.device_kind}",
        "jax": jax.__version__,
    }

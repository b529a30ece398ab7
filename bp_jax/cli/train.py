"""`bp-jax train`: an MLP on a built-in data set or the user's file, with progress, metrics, a loss curve
and checkpoints.

This is the edge of the library: it reads data, writes files and draws; the training itself is `fit`.
`run` goes in named steps: `_prepare` (data, model, initial state), `_resume` (the checkpoint to carry on
from), `_run_folder` (the folder, locked), `_train` (the one `fit` call, watched by `watch.Watch`, which
checkpoints between chunks) and `_finish` (metrics.json and the loss curve). With --early-stopping the
validation rows are carved from the training rows (`runs.validation_split`) and scored inside `fit`'s loop
(`runs.stop_rule`: `bp_jax.early_stopping`, one state per member of an ensemble; with --schedule plateau combined
by `bp_jax.stop_rules` with a plateau on the validation loss); the rule's state (best params, curve) is checkpointed
with the run, and the run ends with the best params. SIGINT and SIGTERM end the
process at once before the first chunk is done (nothing to save yet), stop training at the end of the
current chunk once it runs, checkpointed, and let metrics.json and the curve be written whole (exit status
128 + the signal's number; see `interrupts`); a diverged run keeps its last finite params and exits with
status 1. With --ensemble K the one call is `fit_ensemble`: K members from seeds --seed … --seed + K − 1, held
in one checkpoint with a leading member axis.
"""

import dataclasses
import math
import signal
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

import jax
import numpy as np

import bp_jax
from bp_jax.cli import checkpoints, console, data, distributed, folders, interrupts, options, plots, runs, shards
from bp_jax.cli._args import UsageError
from bp_jax.cli.runs import Config
from bp_jax.cli.watch import PROGRESS_EVERY, Watch

#: --matmul-precision: "highest" is true float32 (the reference); "high" and "default" allow TF32 on
#: GPUs and bfloat16 passes on TPUs, for speed.
MATMUL_PRECISIONS = ("highest", "high", "default")


def add_arguments(parser) -> None:
    options.add_problem_options(parser)
    options.add_schedule_and_weights(parser)
    parser.add_argument("--lr", type=options.learning_rate, help="learning rate (default 0.01; 0.1 for classes)")
    options.add_seed(
        parser, help="seeds the init and the data order, and the split unless --split-seed is given (default 0)"
    )
    options.add_split_seed(parser, default=None)
    parser.add_argument(
        "--ensemble",
        type=options.positive_int,
        metavar="K",
        help="train K members, seeds --seed … --seed + K − 1 (init and data order; one split), as one program; "
        "predict gives their mean and spread (default 1: one model)",
    )
    options.add_out_folder(
        parser,
        holding="checkpoints, metrics.json and loss_curve.png",
        default="a new runs/DATASET-TIME, or the --resume directory",
    )
    parser.add_argument("--resume", type=Path, metavar="DIR", help="carry on from the newest checkpoint in DIR")
    parser.add_argument(
        "--checkpoint-every",
        type=options.positive_int,
        metavar="N",
        help="save every N steps (always at the end, and when interrupted)",
    )
    options.add_early_stopping(parser)
    parallel = parser.add_argument_group("devices, precision and multi-process runs")
    options.add_devices(parallel, splits="each batch")
    parallel.add_argument(
        "--matmul-precision",
        choices=MATMUL_PRECISIONS,
        default="highest",
        help="highest: true float32 (default); high, default: TF32 on GPUs, bfloat16 on TPUs",
    )
    parallel.add_argument(
        "--coordinator",
        metavar="HOST:PORT|auto",
        help="process 0's address (env BP_JAX_COORDINATOR); auto: detect a TPU pod or SLURM",
    )
    parallel.add_argument("--num-processes", type=options.positive_int, help="env BP_JAX_NUM_PROCESSES")
    parallel.add_argument("--process-id", type=int, help="0 … num-processes − 1 (env BP_JAX_PROCESS_ID)")
    parallel.add_argument(
        "--shard-data",
        action="store_true",
        default=None,
        help="each process reads only its devices' blocks of a .parquet or .csv file, each device drawing its "
        "minibatch rows from its own block (docs/guides/devices.md)",
    )
    parallel.add_argument(
        "--init-timeout",
        type=options.positive_int,
        default=120,
        metavar="SECONDS",
        help="give up joining the run after this long (default 120)",
    )
    options.add_compile_cache(parser)


class Problem(NamedTuple):
    """What is trained: the config (target and features resolved), the data (with early stopping, the training
    rows without the validation rows; with --shard-data this process's rows), the model, the mesh, the state a
    checkpoint holds (params, optimizer state, data-order key; with early stopping the rule's state), the validation
    rows (x, y) or None, and with --shard-data the training rows of every process (`shards.Rows`)."""

    config: Config
    split: data.Split
    model: bp_jax.Model
    mesh: jax.sharding.Mesh | None
    state: dict
    validation: tuple | None = None
    rows: shards.Rows | None = None  # --shard-data: the training rows as `fit` reads them, from every process


class Start(NamedTuple):
    """Where training begins: the state, its step, the loss history and wall time so far, and the total
    steps the checkpoint was heading for (None for a fresh run)."""

    state: dict
    step: int = 0
    history: list | tuple = ()
    wall_time_s: float = 0.0
    total_steps: int | None = None


PER_PROCESS = {"coordinator", "num_processes", "process_id", "init_timeout", "compile_cache", "out"}  # may differ


def run(args) -> int:
    """Train, checkpoint and write metrics.json and loss_curve.png into --out (default: a new runs/NAME-TIME
    folder), then print the summary. In a multi-process run (`distributed.initialize`) every process trains
    and only process 0 writes files. Raises UsageError for bad values or a folder in use, CheckpointError
    for a checkpoint that cannot be resumed or written."""
    distributed.initialize(args.coordinator, args.num_processes, args.process_id, timeout_s=args.init_timeout)
    distributed.agree(
        {
            name: str(value) if isinstance(value, Path) else value
            for name, value in vars(args).items()
            if name not in PER_PROCESS
        }
    )
    writer = jax.process_index() == 0
    given = options.given_config(args)
    holder = None if args.resume is None or not writer else folders.live_holder(args.resume)
    if holder is not None:
        raise folders.in_use(args.resume, holder, "wait for it to end, then resume it")
    resumed = None if args.resume is None else runs.open_run(args.resume)
    runs.refuse_lone_stopping_flags(
        given, bool(given.get("early_stopping")) or (resumed is not None and resumed.config.early_stopping)
    )
    config = Config(**given) if resumed is None else _resumed_config(resumed, given)
    if config.seed + config.ensemble > 2**32:
        raise UsageError(f"--seed {config.seed} + --ensemble {config.ensemble} passes 2**32 − 1, the largest seed")
    runs.check_warmup(config)
    epochs = 100 if args.epochs is args.steps is args.resume is None else args.epochs
    signals = interrupts.current()
    with plots.drawing(second_process=writer) as painter, console.progress_bar("train") as progress:
        problem = _prepare(config, args.devices, given if resumed is None else None)
        start = Start(problem.state) if resumed is None else _resume(problem, resumed)
        total = _total_steps(problem, start, args.steps, epochs)
        out = args.out or args.resume
        if out is None:
            out = folders.create_unique(Path("runs"), config.name) if writer else Path("runs") / config.name
        with _run_folder(out, args.resume, writer) as manager:
            watch = Watch(
                total, start=start.step, history=start.history, progress=progress, signals=signals, average=np.mean
            )
            own = args.resume is not None and args.resume.resolve() == out.resolve()  # its files, written again
            with jax.default_matmul_precision(args.matmul_precision):
                result, diverged = _train(problem, start, watch, manager, args.checkpoint_every)
                with signals.writing():
                    metrics = _finish(
                        problem, start, watch, result, diverged, out, args.matmul_precision, writer, own, painter
                    )
                    painter.wait()
    if diverged is not None:
        print(f"bp-jax train: error: {diverged}; checkpointed in {out}, marked as diverged", file=sys.stderr)
        return 1
    if watch.stopped_by is not None:
        print(
            f"bp-jax train: interrupted at step {result.step}; resume with: bp-jax train --resume {out}",
            file=sys.stderr,
        )
        return 128 + watch.stopped_by
    if writer:
        _print_summary(problem.config, metrics)
    return 0


def mesh_for(devices: int | None, global_batch: int) -> jax.sharding.Mesh | None:
    """The mesh for `--devices` (None: all), or None for one device in one process; UsageError when more
    devices are asked than exist or the global batch does not split evenly over them."""
    if devices == 1 and jax.process_count() == 1:
        return None
    if jax.process_count() > 1 and devices not in (None, jax.device_count()):
        raise UsageError(
            f"a run of {jax.process_count()} processes trains on all {jax.device_count()} "
            f"devices; pass --devices all, got {devices}"
        )
    try:
        mesh = bp_jax.data_parallel_mesh(devices)
    except ValueError as err:
        raise UsageError(f"--devices: {err}") from None
    count = mesh.devices.size
    if global_batch % count:
        raise UsageError(
            f"the global batch of {global_batch} examples does not split evenly over {count} "
            f"devices; use a --batch-size that is a multiple of {count}"
        )
    return mesh


def _prepare(config: Config, devices: int | None, given: dict | None) -> Problem:
    """Read and split the data, check the batch size and that the run fits in memory, build the model and its
    initial state (`given`: the values set on the command line of a new run, see `runs.load_data`)."""
    if config.shard_data:
        return _prepare_sharded(config, devices, given)
    config, split = runs.load_data(config, given)
    split, validation = runs.validation_split(config, split) if config.early_stopping else (split, None)
    runs.check_memory(config, split, members=config.ensemble)  # before the params are allocated
    n_train, features = split.x_train.shape
    if config.ensemble == 1:
        mesh = mesh_for(devices, config.batch_size or n_train)
    elif jax.process_count() > 1:
        raise UsageError(
            f"--ensemble trains in one process (its members split over --devices), got {jax.process_count()}"
        )
    else:
        mesh = runs.member_mesh(devices, config.ensemble, "--ensemble")
    model = runs.build_model(features, config, split.scaling.outputs)
    return Problem(config, split, model, mesh, runs.initial_state(model, config), validation)


def _prepare_sharded(config: Config, devices: int | None, given: dict | None) -> Problem:
    """`_prepare` with --shard-data: the mesh first (one device at least), then only its blocks of the file read by
    this process (`shards.load`)."""
    shards.check(config, config.dataset)
    assert config.batch_size is not None  # shards.check
    mesh = mesh_for(devices, config.batch_size) or bp_jax.data_parallel_mesh(1)
    config, split, rows = shards.load(config, mesh, given)
    runs.check_memory(config, split)  # this process's rows
    model = runs.build_model(split.x_train.shape[1], config, split.scaling.outputs)
    return Problem(config, split, model, mesh, runs.initial_state(model, config), rows.validation, rows)


def _resumed_config(resumed: runs.Run, given: dict) -> Config:
    """The resumed run's Config; CheckpointError naming the values `given` that differ from it. A data file
    given at another path (moved, or a copy) is taken: its content decides (`_resume` checks it)."""
    dataset = given.get("dataset", resumed.config.dataset)
    moved = dataset != resumed.config.dataset and data.is_file(dataset) and data.is_file(resumed.config.dataset)
    resumed.config.check_matches(
        {name: value for name, value in given.items() if not (moved and name == "dataset")}, resumed.where
    )
    return dataclasses.replace(resumed.config, dataset=dataset)


def _resume(problem: Problem, resumed: runs.Run) -> Start:
    """The state of the opened checkpoint, checked against the problem's config and data (the data by its
    content: the file may have moved)."""
    config, saved = problem.config, resumed.config
    resumed.config.check_matches(
        {name: value for name, value in config.to_record().items() if name != "dataset"}, resumed.where
    )
    record = resumed.record
    if record["data"]["fingerprint"] != problem.split.fingerprint:
        raise checkpoints.CheckpointError(f"{resumed.where} was trained on other data than {config.dataset} holds now")
    if config.dataset != saved.dataset:
        print(
            f"bp-jax train: note: reading the data from {config.dataset}, which holds the same data as "
            f"{saved.dataset}, where the run was trained; the run records the new path",
            file=sys.stderr,
        )
    state = resumed.restore(problem.state)
    return Start(state, resumed.step, record["loss_history"], record["wall_time_s"], record["total_steps"])


def _total_steps(problem: Problem, start: Start, steps: int | None, epochs: int | None) -> int:
    """The step to train to: --steps, --epochs × steps per epoch, or the checkpoint's; UsageError, worded in
    the flag given, when it is before the checkpoint's step, or when the schedule does not fit it
    (`runs.check_schedule`)."""
    per_epoch = runs.steps_per_epoch(_training_rows(problem), problem.config.batch_size)
    total = steps if epochs is None else epochs * per_epoch
    total = start.total_steps if total is None else total
    if total is None:
        raise UsageError("pass --steps or --epochs")
    runs.check_total_steps(total)
    if total < start.step and epochs is not None:
        raise UsageError(
            f"the checkpoint is at step {start.step}, in epoch {start.step // per_epoch + 1} "
            f"({per_epoch} steps each); --epochs must be at least {math.ceil(start.step / per_epoch)}, "
            f"got {epochs}"
        )
    if total < start.step:
        raise UsageError(f"the checkpoint is at step {start.step}; --steps must be at least that, got {total}")
    runs.check_schedule(problem.config, total, per_epoch, start.total_steps)
    return total


def _training_rows(problem: Problem) -> int:
    """The training rows of the run: this process's, or with --shard-data every process's."""
    return len(problem.split.x_train) if problem.rows is None else problem.rows.train


def _validation_rows(problem: Problem) -> int:
    """The validation rows of an early-stopping run: this process's, or with --shard-data every process's."""
    assert problem.validation is not None
    return len(problem.validation[1]) if problem.rows is None else problem.rows.validation_rows


@contextmanager
def _run_folder(out: Path, resume: Path | None, writer: bool):
    """Yield the checkpoint manager of `out`, locked for this run (None in processes that do not write)."""
    if not writer:
        yield None
        return
    with folders.claimed(out, continuing=resume):
        (out / "checkpoints").mkdir(exist_ok=True)  # orbax creates it only in a one-process run
        yield checkpoints.manager(out / "checkpoints", write=True)


def _record(problem: Problem, start: Start, watch: Watch, diverged_at: int | None = None) -> dict:
    """The JSON record a checkpoint carries (and metrics.json begins with); `diverged_at`: the step whose loss
    or update was not finite (the checkpoint then holds the params before it), else None."""
    split = problem.split
    return folders.finite(
        {
            "config": problem.config.to_record(),
            "total_steps": watch.total,
            "loss_history": watch.history,
            "wall_time_s": start.wall_time_s + watch.elapsed_s,
            "diverged_at": diverged_at,
            "data": {"scaling": split.scaling.to_record(), "fingerprint": split.fingerprint},
        }
    )


class MemberDiverged(FloatingPointError):
    """An ensemble member's loss or update was not finite at `step` (`fit_ensemble` froze it at its last finite
    params; the run stops at the end of that chunk)."""

    def __init__(self, step: int, member: int, seed: int):
        super().__init__(f"member {member} (seed {seed}): the loss or update became non-finite at step {step}")
        self.step = step


def _train(problem: Problem, start: Start, watch: Watch, manager, checkpoint_every: int | None):
    """(result, diverged): the one `fit` call (`fit_ensemble` for an ensemble, each member with its own data-order
    key), from `start` to `watch.total`, checkpointed into `manager` every `checkpoint_every` steps, at the end,
    when stopped, and when it diverged (`diverged`: the NonFiniteLoss or MemberDiverged, else None): one model at
    its last finite params, an ensemble at the end of the chunk in which its first member diverged."""
    config, split = problem.config, problem.split
    ensemble = config.ensemble > 1

    def save(result, diverged_at: int | None = None) -> None:
        if manager is not None:
            arrays = {"params": result.params, "opt_state": result.opt_state, "key": start.state["key"]}
            if config.early_stopping:  # the rule's state (a plateau schedule's is in the optimizer state)
                arrays["rule"] = runs.stopping_state(result)._asdict()
            if ensemble:  # members may be split over devices: gathered whole
                arrays = jax.device_get(arrays)
            elif problem.mesh is not None:
                arrays = distributed.host_local(arrays)
            # a step checkpointed in this run before its loss proved non-finite is written again, marked
            checkpoints.save(
                manager,
                result.step,
                arrays,
                _record(problem, start, watch, diverged_at),
                overwrite=diverged_at is not None and result.step != start.step,
            )

    def on_chunk(result) -> bool:
        stop = watch.on_chunk(result)
        if ensemble and (result.diverged >= 0).any():
            return True  # saved, marked, once fit_ensemble returns
        if stop or result.step == watch.total or (checkpoint_every and result.step % checkpoint_every == 0):
            save(result)
        return stop

    per_epoch = runs.steps_per_epoch(_training_rows(problem), config.batch_size)
    transform = runs.optimizer(config, watch.total, per_epoch)
    if problem.rows is not None:  # every process's rows, weighed by what every block gives
        x, y = problem.rows.x, problem.rows.y
    else:
        x, y = jax.device_put(split.x_train), jax.device_put(runs.targets(config, split))
    chunk_sizes = (PROGRESS_EVERY,) if checkpoint_every is None else (PROGRESS_EVERY, checkpoint_every)
    model = runs.training_model(split.x_train.shape[1], config, split.scaling.outputs)
    loss = runs.loss(model, split.scaling, weighted=isinstance(y, dict))
    rule = runs.stop_rule(
        config,
        problem.model,
        split,
        problem.validation,
        start.state["params"],
        per_epoch,
        members=config.ensemble if ensemble else None,
        state=start.state.get("rule"),
    )
    # the models early stopping stopped before the checkpoint stay frozen: resumed, no step is taken twice
    stopped_at = runs.stopped_at(start.state["rule"], config.patience, per_epoch) if config.early_stopping else None
    arguments = {
        "steps": watch.total - start.step,
        "batch_size": config.batch_size,
        "lr": config.lr if transform is None else None,
        "optimizer": transform,
        "opt_state": start.state["opt_state"],
        "key": jax.random.wrap_key_data(start.state["key"]),
        "start_step": start.step,
        "stopped_at": stopped_at,
        "chunk_size": chunk_sizes,
        "on_chunk": on_chunk,
        "mesh": problem.mesh,
        "stop_rule": rule,
        "keep_losses": False,  # the watch keeps the history, bounded
    }
    if problem.rows is not None:
        arguments["shard_rows"] = problem.rows.counts
    if ensemble:
        members = bp_jax.fit_ensemble(loss, start.state["params"], x, y, **arguments)
        diverged = np.flatnonzero(members.diverged >= 0)
        if not len(diverged):
            if members.stopped_at is not None and np.all(members.stopped_at >= 0):  # all stopped early: as below
                watch.add_rest(members.losses, members.step - len(members.losses))
                save(members)
            return members, None
        first = int(diverged[np.argmin(members.diverged[diverged])])
        error = MemberDiverged(int(members.diverged[first]), first, config.seed + first)
        save(members, error.step)
        return members, error
    try:
        result = bp_jax.fit(loss, start.state["params"], x, y, **arguments)
    except bp_jax.NonFiniteLoss as diverged:
        losses = distributed.host_local(diverged.result.losses)  # those of the chunk it stopped in, to its step
        watch.add_rest(losses, diverged.step + 1 - len(losses))
        save(diverged.result, diverged.step)
        return diverged.result, diverged
    if result.stopped_at >= 0:  # on_chunk saw no part-chunk: its losses and the checkpoint here
        watch.add_rest(distributed.host_local(result.losses), result.step - len(result.losses))
        save(result)
    return result, None


def _finish(
    problem: Problem,
    start: Start,
    watch: Watch,
    result: bp_jax.FitResult,
    diverged,
    out: Path,
    matmul_precision: str,
    writer: bool,
    replace: bool,
    painter: plots.Painter,
) -> dict:
    """The metrics of `result`, written with the loss curve (drawn by `painter`) into `out` by process 0: new
    files, or replacing the resumed run's own (`replace`). An ensemble's scores are those of its prediction
    (`runs.ensemble_scores`), each member's under "members"; its curve is the members' mean loss and their range."""
    split, config = problem.split, problem.config
    history, spread, stopping = watch.history, None, None
    to_host = jax.device_get if config.ensemble > 1 else distributed.host_local  # members may be split over devices
    rule_state = to_host(runs.stopping_state(result)._asdict()) if config.early_stopping else None
    if rule_state is not None:
        stopping = _stopping_metrics(problem, rule_state)
    if config.ensemble > 1:
        params = runs.best_params({"params": jax.device_get(result.params), "rule": rule_state})
        scores = runs.ensemble_scores(problem.model, split)(params)
        each = runs.scores(problem.model, split, ensemble=True)(params)
        scores["members"] = [
            {"seed": config.seed + member, **{name: float(values[member]) for name, values in each.items()}}
            for member in range(config.ensemble)
        ]
        losses = np.asarray([member_losses for _, member_losses in watch.history], np.float64).reshape(
            -1, config.ensemble
        )
        steps = [step for step, _ in watch.history]
        # a member that stopped early has no loss from then on: the curve is the others'
        history = [[step, loss] for step, loss in zip(steps, np.nanmean(losses, axis=1).tolist())]
        spread = [
            [step, *low_high]
            for step, *low_high in zip(steps, np.nanmin(losses, 1).tolist(), np.nanmax(losses, 1).tolist())
        ]
    else:
        params = distributed.host_local(runs.best_params({"params": result.params, "rule": rule_state}))
        measure = (
            runs.scores(problem.model, split)
            if problem.rows is None
            else shards.scores(problem.model, split, problem.rows)
        )
        scores = {name: float(value) for name, value in measure(params).items()}
    classify = config.task == "classification"
    if diverged is not None:
        stopped = {"step": result.step, "reason": "non-finite loss"}
    elif watch.stopped_by is not None:
        stopped = {"step": result.step, "reason": f"interrupted by {signal.Signals(watch.stopped_by).name}"}
    elif stopping is not None and stopping["stopped_early"]:
        stopped = {"step": result.step, "reason": f"early stopping: {config.patience} epochs without improvement"}
    else:
        stopped = None
    metrics = {
        **_record(problem, start, watch, None if diverged is None else diverged.step),
        "resumed_from_step": start.step,
        "final_step": result.step,
        "stopped": stopped,
        "task": config.task,
        **scores,
        **(runs.baseline(split) if problem.rows is None else {}),  # shards.scores has it
        "weights": runs.weights_record(config, split) if problem.rows is None else problem.rows.weights,
        "examples": {
            "train": _training_rows(problem),
            "held_out": len(split.x_test) if problem.rows is None else problem.rows.held_out,
            "features": split.x_train.shape[1],
            **({"left_out": dict(split.left_out)} if any(split.left_out.values()) else {}),
            **(
                {"classes": runs.class_counts(split) if problem.rows is None else problem.rows.classes}
                if classify
                else {}
            ),
            **({"validation": _validation_rows(problem)} if problem.validation is not None else {}),
        },
        **({"early_stopping": stopping} if stopping is not None else {}),
        "device": console.device_description(),
        "jax": jax.__version__,
        "devices": 1 if problem.mesh is None else problem.mesh.devices.size,
        "processes": jax.process_count(),
        "matmul_precision": matmul_precision,
        "run_dir": str(out),
    }
    if writer:
        folders.write_json(out / "metrics.json", metrics, replace=replace)
        title = (
            f"bp-jax train: {config.name}, hidden {','.join(map(str, config.hidden))}, "
            f"{config.optimizer} lr {config.lr}" + (f", {config.ensemble} members" if config.ensemble > 1 else "")
        )
        ending = "final" if stopping is None else "best epoch's params"
        if classify:
            painter.draw(
                "loss_curve",
                out / "loss_curve.png",
                history,
                replace=replace,
                spread=spread,
                title=title,
                loss="cross-entropy",
                validation=_validation_curve(stopping),
                levels={f"held-out log loss ({ending})": metrics["held_out_log_loss"]},
                accuracy={
                    f"held-out ({ending})": metrics["held_out_accuracy"],
                    "majority class": metrics["baseline_held_out_accuracy"],
                },
            )
        else:
            painter.draw(
                "loss_curve",
                out / "loss_curve.png",
                history,
                replace=replace,
                spread=spread,
                title=title,
                validation=_validation_curve(stopping),
                levels={
                    f"held-out MSE ({ending})": metrics["held_out_mse"],
                    "held-out MSE, mean predictor": metrics["baseline_held_out_mse"],
                },
            )
    return metrics


def _stopping_metrics(problem: Problem, state: dict) -> dict:
    """metrics.json's "early_stopping" (`runs.stopping_record`), an ensemble's members each with its seed."""
    config = problem.config
    record = runs.stopping_record(config, runs.steps_per_epoch(_training_rows(problem), config.batch_size), state)
    if config.ensemble > 1:
        record["members"] = [{"seed": config.seed + i} | member for i, member in enumerate(record["members"])]
    return record


def _validation_curve(stopping: dict | None) -> list:
    """[step, validation loss] pairs for the loss plot: epoch e's loss at its last step, (e + 1) · steps per epoch;
    an ensemble's, the mean of the members that scored epoch e."""
    if stopping is None:
        return []
    per_epoch = stopping["steps_per_epoch"]
    curves = [member["validation_loss"] for member in stopping.get("members", [stopping])]
    epochs = max(map(len, curves))
    padded = np.asarray([curve + [np.nan] * (epochs - len(curve)) for curve in curves], np.float64)
    means = np.nanmean(padded, axis=0) if epochs else []
    return [[(epoch + 1) * per_epoch, float(loss)] for epoch, loss in enumerate(means)]


def _print_summary(config: Config, metrics: dict) -> None:
    classes = metrics["examples"].get("classes", {}).get("train", {})
    if classes:
        scores = [
            ("classes", ", ".join(classes)),
            ("train accuracy", f"{metrics['train_accuracy']:.1%}"),
            ("held-out accuracy", f"{metrics['held_out_accuracy']:.1%}"),
            ("held-out accuracy, majority class", f"{metrics['baseline_held_out_accuracy']:.1%}"),
            ("held-out log loss", f"{metrics['held_out_log_loss']:.4f}"),
        ]
    else:
        scores = [
            ("train MSE", f"{metrics['train_mse']:.4f}"),
            ("held-out MSE", f"{metrics['held_out_mse']:.4f}"),
            ("held-out MSE, mean predictor", f"{metrics['baseline_held_out_mse']:.4f}"),
        ]
    stopping = metrics.get("early_stopping")
    if stopping is not None and "members" in stopping:
        best = [member["best_epoch"] for member in stopping["members"] if member["best_epoch"] is not None]
        stopped = sum(member["stopped_early"] for member in stopping["members"])
        scores.append(
            (
                "early stopping",
                (f"best epochs {min(best)} … {max(best)}, " if best else "")
                + f"{stopped} of {config.ensemble} members stopped early",
            )
        )
    elif stopping is not None and stopping["best_epoch"] is not None:
        scores.append(
            (
                "early stopping",
                f"best epoch {stopping['best_epoch']} (validation loss {stopping['best_validation_loss']:.4f}), "
                + ("stopped early" if stopping["stopped_early"] else "ran to the end"),
            )
        )
    if config.ensemble > 1:
        ranked = "held_out_accuracy" if classes else "held_out_mse"
        member_scores = [member[ranked] for member in metrics["members"]]
        scores.insert(
            0, ("ensemble", f"{config.ensemble} members, seeds {config.seed}–{config.seed + config.ensemble - 1}")
        )
        label = "held-out accuracy" if classes else "held-out MSE"
        scores.append((f"{label}, members", f"{min(member_scores):.4f} … {max(member_scores):.4f}"))
        if not classes:
            scores.append(("held-out coverage of mean ± 2 std", f"{metrics['held_out_coverage_2sd']:.1%}"))
    left_out = metrics["examples"].get("left_out", {})
    console.print_table(
        f"bp-jax train: {config.name}, step {metrics['final_step']}",
        ("quantity", "value"),
        [
            (
                "model",
                " → ".join(map(str, (metrics["examples"]["features"], *config.hidden, len(classes) or 1)))
                + f", {config.activation}"
                + (f", dropout {config.dropout}" if config.dropout else ""),
            ),
            (
                "optimizer",
                f"{config.optimizer}, lr {config.lr}"
                + f", {config.schedule} schedule" * (config.schedule != "constant")
                + f", weight decay {config.weight_decay}" * bool(config.weight_decay)
                + f", batch {config.batch_size or 'full'}",
            ),
            *[
                (
                    "rows",
                    f"{metrics['examples']['train']} train, {metrics['examples']['held_out']} held out"
                    + (
                        f", {metrics['examples']['validation']} validation"
                        if "validation" in metrics["examples"]
                        else ""
                    )
                    + "".join(
                        f", {count} left out ({why.replace('_', ' ')})" for why, count in left_out.items() if count
                    ),
                )
            ]
            * bool(classes or left_out or "validation" in metrics["examples"]),
            *scores,
            ("wall time", f"{metrics['wall_time_s']:.2f} s"),
            (
                "device",
                metrics["device"]
                + (f" × {metrics['devices']}" if metrics["devices"] > 1 else "")
                + (f", {metrics['processes']} processes" if metrics["processes"] > 1 else ""),
            ),
            ("written to", f"{metrics['run_dir']}/"),
        ],
    )

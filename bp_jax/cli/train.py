"""The `bp-jax train` job: the seed MLP on real data, with progress, metrics, a loss curve and checkpoints.

This is the edge of the library: it reads data, writes files and draws; the training itself is `fit`.
"""

import dataclasses
import json
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

import bp_jax
from bp_jax.cli import _args, _cache, checkpoints, data, distributed
from bp_jax.cli._args import UsageError

OPTIMIZERS: dict[str, Callable[[float], optax.GradientTransformation] | None] = {
    "sgd": None,  # the hand-written update w ← w − lr·g
    "optax-sgd": optax.sgd,
    "momentum": lambda lr: optax.sgd(lr, momentum=0.9),
    "adam": optax.adam,
}
LAYERS = {"relu": bp_jax.ReLU, "sigmoid": bp_jax.Sigmoid, "tanh": bp_jax.Tanh}
MAX_HISTORY_POINTS = 2000
#: --matmul-precision: "highest" is true float32 (the reference); "high" and "default" allow TF32 on
#: GPUs and bfloat16 passes on TPUs, for speed.
MATMUL_PRECISIONS = ("highest", "high", "default")


@dataclasses.dataclass(frozen=True)
class Config:
    """What defines a run; a resumed run must match it (steps excepted)."""

    dataset: str = "diabetes"
    hidden: tuple[int, ...] = (5,)
    activation: str = "relu"
    optimizer: str = "sgd"
    lr: float = 0.01
    batch_size: int | None = 32
    seed: int = 0


def register(commands) -> None:
    train = commands.add_parser("train", help="train the seed MLP (10 → 5 → 1, ReLU, MSE, SGD) on real data")
    train.add_argument("--dataset", choices=data.NAMES, help="default: diabetes (442 × 10, from scikit-learn)")
    train.add_argument("--hidden", type=_args.hidden_sizes, help="hidden layer sizes, e.g. 5 or 16,8 (default 5)")
    train.add_argument("--activation", choices=sorted(LAYERS), help="default relu")
    train.add_argument("--optimizer", choices=list(OPTIMIZERS),
                       help="sgd: the hand-written update (default); optax-sgd, momentum (0.9), adam: optax")
    train.add_argument("--lr", type=_args.learning_rate, help="learning rate (default 0.01)")
    length = train.add_mutually_exclusive_group()
    length.add_argument("--steps", type=_args.positive_int, help="total training steps")
    length.add_argument("--epochs", type=_args.positive_int, help="passes over the training split (default 100)")
    train.add_argument("--batch-size", type=_args.batch_size, help="minibatch size, or 'full' (default 32)")
    train.add_argument("--seed", type=int, help="seeds the split, the init and the data order (default 0)")
    train.add_argument("--out", type=Path, help="output directory (default runs/DATASET-TIME, or the --resume directory)")
    train.add_argument("--resume", type=Path, metavar="DIR", help="carry on from the newest checkpoint in DIR")
    train.add_argument("--checkpoint-every", type=_args.positive_int, metavar="N",
                       help="save every N steps (always at the end)")
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
    """The command: parse the run's settings, train with a progress bar, print the summary table."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    distributed.initialize(args.coordinator, args.num_processes, args.process_id, timeout_s=args.init_timeout)
    given = {field.name: getattr(args, field.name) for field in dataclasses.fields(Config)
             if getattr(args, field.name) is not None}
    if given.get("batch_size") == "full":
        given["batch_size"] = None
    resume = args.resume and args.resume / "checkpoints"
    config = Config(**given) if resume is None else resumed_config(resume, given)
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
            metrics = run(config, out=out, steps=args.steps, epochs=epochs,
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


def resumed_config(checkpoint_dir: Path, given: dict) -> Config:
    """The Config a checkpoint was trained with; CheckpointError if a value in `given` differs."""
    _, record = checkpoints.latest_record(checkpoints.manager(checkpoint_dir))
    return _matching_config(record, given, checkpoint_dir)


def _matching_config(record: dict, given: dict, checkpoint_dir: Path) -> Config:
    saved = Config(**record["config"] | {"hidden": tuple(record["config"]["hidden"])})
    clash = [f"{name}={getattr(saved, name)!r}, not {value!r}" for name, value in given.items()
             if getattr(saved, name) != value]
    if clash:
        raise checkpoints.CheckpointError(f"the checkpoint in {checkpoint_dir} was trained with "
                                          + ", ".join(clash))
    return saved


def build_model(features: int, config: Config) -> bp_jax.Model:
    """Linear(features, h1), act, …, Linear(hk, 1): the seed MLP for hidden = (5,) and relu."""
    sizes = (features, *config.hidden, 1)
    layers = []
    for fan_in, fan_out in zip(sizes, sizes[1:]):
        layers += [bp_jax.Linear(fan_in, fan_out), LAYERS[config.activation]()]
    return bp_jax.Sequential(*layers[:-1])


def steps_per_epoch(n_train: int, batch_size: int | None) -> int:
    return 1 if batch_size is None else n_train // batch_size


def _chunk_size(checkpoint_every: int | None, steps: int) -> int:
    """Chunks end on every checkpoint step and are short enough for a live progress bar."""
    if checkpoint_every is None:
        return max(1, min(500, steps))
    return next(d for d in range(min(500, checkpoint_every), 0, -1) if checkpoint_every % d == 0)


def _check_writable(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise UsageError(f"--out {out} is not writable: {err.strerror or err}") from None


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


def run(config: Config, *, out: Path, steps: int | None = None, epochs: int | None = None,
        checkpoint_every: int | None = None, resume: Path | None = None, devices: int | None = 1,
        matmul_precision: str = "highest", progress: Callable | None = None) -> dict:
    """Train, checkpoint and write metrics.json and loss_curve.png into `out`; returns the metrics.

    `devices` (None: all) splits each batch over that many devices; in a multi-process run
    (`distributed.initialize`) every process trains and only process 0 writes files.
    Matmuls run at `matmul_precision` (see MATMUL_PRECISIONS).
    `progress(step, total, loss)` is called between chunks. Raises UsageError for bad values,
    CheckpointError for a checkpoint that cannot be resumed, NonFiniteLoss (after checkpointing the
    last finite params and writing the metrics) if training diverges.
    """
    split = data.load(config.dataset, seed=config.seed)
    n_train, features = split.x_train.shape
    if config.batch_size is not None and not 1 <= config.batch_size <= n_train:
        raise UsageError(f"--batch-size must be between 1 and {n_train} (the training examples), "
                         f"got {config.batch_size}")
    mesh = mesh_for(devices, config.batch_size or n_train)
    writer = jax.process_index() == 0
    total = steps if epochs is None else epochs * steps_per_epoch(n_train, config.batch_size)
    model = build_model(features, config)
    params_key, data_key = jax.random.split(jax.random.key(config.seed))
    make_optimizer = OPTIMIZERS[config.optimizer]
    optimizer = None if make_optimizer is None else make_optimizer(config.lr)
    params = model.init(params_key)
    state = {"params": params, "opt_state": None if optimizer is None else optimizer.init(params),
             "key": jax.random.key_data(data_key)}
    start, history, wall_before = 0, [], 0.0

    if resume is not None:
        manager = checkpoints.manager(resume)
        step, record = checkpoints.latest_record(manager)
        _matching_config(record, dataclasses.asdict(config), resume)
        state = checkpoints.restore(manager, step, state)
        start, history, wall_before = step, record["loss_history"], record["wall_time_s"]
        total = record["total_steps"] if total is None else total
        if total < start:
            raise UsageError(f"the checkpoint is at step {start}; --steps must be at least that, got {total}")
    if total is None or total < 0:
        raise UsageError(f"steps must be a non-negative int, got {total}")

    if writer:
        _check_writable(out)
        (out / "checkpoints").mkdir(exist_ok=True)
        manager = checkpoints.manager(out / "checkpoints")
        if resume is None and manager.latest_step() is not None:
            raise UsageError(f"{out} already holds checkpoints; pass --resume {out} to continue, or another --out")
    stride = max(1, math.ceil(total / MAX_HISTORY_POINTS))
    x, y = jnp.asarray(split.x_train), jnp.asarray(split.y_train)
    loss = bp_jax.loss_fn(model)
    started = time.perf_counter()

    def record():
        return {"config": dataclasses.asdict(config), "total_steps": total, "loss_history": history,
                "wall_time_s": wall_before + time.perf_counter() - started}

    def save(result):
        if writer:
            arrays = {"params": result.params, "opt_state": result.opt_state, "key": state["key"]}
            checkpoints.save(manager, result.step, arrays if mesh is None else distributed.host_local(arrays),
                             record())

    def extend_history(losses, first):  # losses: host-local numpy
        history.extend([s, float(v)] for s, v in enumerate(losses, first) if s % stride == 0)

    completed = start

    def on_chunk(result):
        nonlocal completed
        completed = result.step
        losses = distributed.host_local(result.losses)
        extend_history(losses, result.step - len(losses))
        if progress is not None and writer:
            progress(result.step, total, float(losses[-1]))
        if (checkpoint_every and result.step % checkpoint_every == 0) or result.step == total:
            save(result)

    stopped = None
    try:
        with jax.default_matmul_precision(matmul_precision):
            result = bp_jax.fit(
                loss, state["params"], x, y, steps=total - start, batch_size=config.batch_size,
                lr=config.lr if optimizer is None else None, optimizer=optimizer, opt_state=state["opt_state"],
                key=jax.random.wrap_key_data(state["key"]), start_step=start,
                chunk_size=_chunk_size(checkpoint_every, total), on_chunk=on_chunk, mesh=mesh)
    except bp_jax.NonFiniteLoss as diverged:
        result, stopped = diverged.result, diverged
        extend_history(distributed.host_local(result.losses)[completed - start:], completed)
        save(result)

    with jax.default_matmul_precision(matmul_precision):
        metrics = _metrics(config, model, distributed.host_local(result.params), split, record(), start,
                           result.step, stopped)
    metrics |= {"devices": 1 if mesh is None else mesh.devices.size, "processes": jax.process_count(),
                "matmul_precision": matmul_precision}
    if writer:
        (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
        _plot(history, metrics, out / "loss_curve.png")
    if stopped is not None:
        raise stopped
    return metrics


def _metrics(config, model, params, split, record, start, step, stopped) -> dict:
    mse = lambda x, y: float(bp_jax.mse(model.apply(params, jnp.asarray(x)), jnp.asarray(y)))
    mean_predictor = np.full_like(split.y_test, split.y_train.mean())
    device = jax.devices()[0]
    return {
        **record,
        "resumed_from_step": start,
        "final_step": step,
        "stopped": None if stopped is None else {"step": stopped.step, "reason": "non-finite loss"},
        "train_mse": mse(split.x_train, split.y_train),
        "held_out_mse": mse(split.x_test, split.y_test),
        "baseline_held_out_mse": float(np.mean((mean_predictor - split.y_test) ** 2)),
        "examples": {"train": len(split.x_train), "held_out": len(split.x_test),
                     "features": split.x_train.shape[1]},
        "device": device.platform if device.device_kind == device.platform else
                  f"{device.platform}: {device.device_kind}",
        "jax": jax.__version__,
    }


def _plot(history, metrics, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4), dpi=120)
    if history:
        steps, losses = np.asarray(history).T
        window = max(1, len(losses) // 50)
        smooth = np.convolve(losses, np.ones(window) / window, mode="valid")
        axes.plot(steps, losses, lw=0.6, alpha=0.35, color="tab:blue", label="training loss (minibatch MSE)")
        axes.plot(steps[window - 1:], smooth, lw=2, color="tab:blue", label=f"running mean of {window} steps")
    axes.axhline(metrics["held_out_mse"], color="tab:green", ls="--", label="held-out MSE (final)")
    axes.axhline(metrics["baseline_held_out_mse"], color="tab:red", ls=":", label="held-out MSE, mean predictor")
    config = metrics["config"]
    axes.set(xlabel="step", ylabel="MSE (standardised target)", yscale="log",
             title=f"bp-jax train: {config['dataset']}, hidden {','.join(map(str, config['hidden']))}, "
                   f"{config['optimizer']} lr {config['lr']}")
    axes.legend()
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)

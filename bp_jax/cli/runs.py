"""What a run is: its Config, its model and the state a checkpoint holds, and `open_run`, the one way to
read a run folder back.

    config, split = load_data(config, given)       # the data, target, feature columns and task resolved
    y = targets(config, split)                     # y_train, or {"target": y_train, "weight": w} (`row_weights`)
    transform = optimizer(config, steps, per_epoch)   # --optimizer with --schedule and --weight-decay
    model = build_model(inputs, config, outputs)   # bp_jax.mlp((inputs, *hidden, outputs), activation, dropout=…)
    run = open_run(folder)                         # newest checkpoint: manager, step, Config, record
    state = run.restore(initial_state(model, run.config))   # or: model, params = run.model_and_params()
    run, model, params = read_trained(folder)      # the same, also while the run in `folder` is live

Shared by `train` (which writes runs and resumes them), `predict` (which reads them) and `sweep` (which
trains many at once).
"""

import dataclasses
import functools
import itertools
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

import bp_jax
from bp_jax._fit import CAPACITY
from bp_jax._fit_checks import MAX_STEP
from bp_jax.cli import checkpoints, console, data, folders
from bp_jax.cli._args import UsageError
from bp_jax.cli.watch import MAX_HISTORY_POINTS, PROGRESS_EVERY

if TYPE_CHECKING:  # for the annotations only: orbax loads when a checkpoint is read or written
    import orbax.checkpoint as ocp

OPTIMIZERS: dict[str, Callable[[float], optax.GradientTransformation] | None] = {
    "sgd": None,  # the hand-written update w ← w − lr·g
    "optax-sgd": optax.sgd,
    "momentum": lambda lr: optax.sgd(lr, momentum=0.9),
    "adam": optax.adam,
}
#: the hidden layers' activations the command offers (bp_jax.ACTIVATIONS less the identity)
ACTIVATIONS = ("relu", "sigmoid", "tanh")
#: how often `read_trained` reads a live run's newest checkpoint again when the run deleted it meanwhile
LIVE_READS = 20
#: a class target's defaults where they differ from Config's: a first run on a few hundred rows (100 epochs of
#: minibatches of 32) then beats the majority class clearly (the iris and penguin-like tables of the README and tests)
CLASSIFICATION_DEFAULTS = {"hidden": (16,), "lr": 0.1}
#: --schedule: the learning rate over a run (`learning_rate`, `optimizer`)
SCHEDULES = ("constant", "cosine", "warmup-cosine", "plateau")
#: --schedule plateau: optax.contrib.reduce_on_plateau's settings: η × 0.1 once 10 epochs in a row failed to
#: bring the epoch's mean training loss below (1 − 1e-4) × the best so far
PLATEAU = {"factor": 0.1, "patience": 10, "rtol": 1e-4}
#: --class-weight
CLASS_WEIGHTS = ("balanced",)
#: the Config of a record written before each field was added: what such a run did
OLDER_CONFIG = {
    "task": "regression",  # before classification
    "missing": "error",  # before --missing
    "early_stopping": False,  # before --early-stopping
    "validation_fraction": 0.1,
    "patience": 10,
    "ensemble": 1,  # before --ensemble
    "dropout": 0.0,  # before --dropout
    "schedule": "constant",  # before --schedule, --weight-decay and the weights
    "warmup_epochs": 0,
    "weight_decay": 0.0,
    "class_weight": None,
    "sample_weight": None,
    "shard_data": False,  # before --shard-data
}
RECORD_KEYS = {"config", "data", "total_steps", "loss_history", "wall_time_s", "diverged_at"}
#: the optimizer state's size, in copies of the params (inject_hyperparams adds a few scalars)
OPTIMIZER_COPIES = {"sgd": 0, "optax-sgd": 0, "momentum": 1, "adam": 2}
#: host bytes per member beyond its arrays: its sweep.json entry and table row, as Python objects
REPORT_BYTES_PER_MEMBER = 2048
#: --early-stopping: the epochs whose validation loss the run keeps (the rule's curve buffer, one shape for every
#: run length, so resuming with more epochs restores it; later epochs are scored, not kept)
VALIDATION_CURVE_EPOCHS = 10_000


def _check_keys(what: str, got: dict, expected: set, where: str) -> None:
    """CheckpointError naming the keys `got` lacks and those it has beyond `expected`."""
    missing, extra = sorted(expected - set(got)), sorted(set(got) - expected)
    if missing or extra:
        raise checkpoints.CheckpointError(
            f"{where} was written by another version of bp_jax: its {what} "
            + " and ".join(
                [f"lacks {', '.join(missing)}"] * bool(missing) + [f"has unknown {', '.join(extra)}"] * bool(extra)
            )
            + "; resume it with that version, or start a new run"
        )


@dataclasses.dataclass(frozen=True)
class Config:
    """What defines a run; a resumed run must match it (steps excepted). `dataset` is a built-in name or the
    data file's absolute path; `target` and `features` are column names (None before the data is read:
    the last column, and all the others); `split_seed` chooses the held-out rows (None: `seed`); `task` is
    "auto" until the data is read, then "regression" or "classification" (`data.load`); `missing`: what to do
    with empty cells (`data.MISSING`); `early_stopping`: a `validation_fraction` of the training rows
    (`data.validation_rows`) scored at each epoch's end, the run ending after `patience` epochs without
    improvement, with the best params; `ensemble`: how many members, seeded seed, seed + 1, …, trained as one
    program (1: one model, a plain run); `dropout`: the Dropout rate after each hidden activation (0: none);
    `schedule` (SCHEDULES, with `warmup_epochs` for warmup-cosine) and `weight_decay`: see `optimizer`;
    `class_weight` ("balanced" or None) and `sample_weight` (a column of row weights, or None): see
    `row_weights`; `shard_data`: each process reads only its devices' blocks of the file (`shards`)."""

    dataset: str = "diabetes"
    target: str | None = None
    features: tuple[str, ...] | None = None
    hidden: tuple[int, ...] = (5,)
    activation: str = "relu"
    optimizer: str = "sgd"
    lr: float = 0.01
    batch_size: int | None = 32
    seed: int = 0
    split_seed: int | None = None
    task: str = "auto"
    missing: str = "error"
    early_stopping: bool = False
    validation_fraction: float = 0.1
    patience: int = 10
    ensemble: int = 1
    dropout: float = 0.0
    schedule: str = "constant"
    warmup_epochs: int = 0
    weight_decay: float = 0.0
    class_weight: str | None = None
    sample_weight: str | None = None
    shard_data: bool = False

    def __post_init__(self):
        if self.split_seed is None:
            object.__setattr__(self, "split_seed", self.seed)

    @property
    def name(self) -> str:
        """A short name for titles and default folders: the data set, or the data file's stem."""
        return Path(self.dataset).stem if data.is_file(self.dataset) else self.dataset

    def to_record(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_record(cls, record: dict, where: str) -> "Config":
        """The Config in a checkpoint's record (the fields an older one lacks: OLDER_CONFIG); CheckpointError if its
        keys are not this version's."""
        record = OLDER_CONFIG | record
        _check_keys("config", record, {field.name for field in dataclasses.fields(cls)}, where)
        values: dict[str, Any] = {
            name: tuple(value) if isinstance(value, list) else value for name, value in record.items()
        }
        return cls(**values)

    def check_matches(self, given: dict, where: str) -> None:
        """CheckpointError naming every value in `given` that differs from this (the saved) Config."""
        clash = [
            f"{name}={getattr(self, name)!r}, not {value!r}"
            for name, value in given.items()
            if getattr(self, name) != value
        ]
        if clash:
            raise checkpoints.CheckpointError(f"{where} was trained with " + ", ".join(clash))


def load_data(config: Config, given=None) -> tuple[Config, data.Split]:
    """The split `config` names, and `config` with its target, feature columns and task resolved: a new run
    (`given`: the names set on the command line) of a class target takes CLASSIFICATION_DEFAULTS for the values
    not given; UsageError when the batch size does not fit the training rows, or class weights are asked of a
    regression."""
    assert config.split_seed is not None  # Config.__post_init__ sets it
    split = data.load(
        config.dataset,
        target=config.target,
        features=config.features,
        split_seed=config.split_seed,
        task=config.task,
        missing=config.missing,
        sample_weight=config.sample_weight,
    )
    print(*(f"bp-jax: note: {note}\n" for note in split.notes), sep="", end="", file=sys.stderr)
    config = resolved(config, split.scaling, given)
    n_train = len(split.x_train)
    if config.batch_size is not None and not 1 <= config.batch_size <= n_train:
        source = f"{config.dataset}: " if data.is_file(config.dataset) else ""
        raise UsageError(
            f"{source}--batch-size must be between 1 and {n_train} (the training examples), got {config.batch_size}"
        )
    return config, split


def resolved(config: Config, scaling: data.Scaling, given=None) -> Config:
    """`config` with the target, features and task of `scaling`, and for a new run (`given`: the names set on the
    command line) of a class target CLASSIFICATION_DEFAULTS for the values not given; UsageError for class weights
    asked of a regression."""
    config = dataclasses.replace(config, target=scaling.target_name, features=scaling.feature_names, task=scaling.task)
    if config.class_weight is not None and config.task != "classification":
        raise UsageError(
            f"--class-weight {config.class_weight} weighs classes; the target {config.target!r} is a regression "
            f"target (numbers); pass --task classification if its values are classes"
        )
    if given is not None and config.task == "classification":
        defaults: dict[str, Any] = {name: value for name, value in CLASSIFICATION_DEFAULTS.items() if name not in given}
        config = dataclasses.replace(config, **defaults)
    return config


def steps_per_epoch(n_train: int, batch_size: int | None) -> int:
    return 1 if batch_size is None else n_train // batch_size


def bytes_needed(
    config: Config, features: int, outputs: int, rows: int, members: int = 1, steps: int | None = None
) -> int:
    """About how many bytes training `members` models of `config` for `steps` steps (None: any number) needs,
    from the per-member sizes (float32, 4 bytes): params, their gradients and the optimizer's copies of them (with
    early stopping, the best params and a validation curve of up to `steps` epochs, kept as Python floats too); the
    activations and their gradients for a batch, and the activations over all `rows` when the scores are
    evaluated; the losses of one fit call (CAPACITY steps) on the device and of one chunk on the host (fit keeps
    no others), and the history's Python floats (32 bytes each); plus each member's report entry."""
    steps = MAX_STEP if steps is None else steps
    widths = (features, *config.hidden, outputs)
    params = sum((fan_in + 1) * fan_out for fan_in, fan_out in itertools.pairwise(widths))
    batch = config.batch_size or rows
    curve = min(steps, VALIDATION_CURVE_EPOCHS) if config.early_stopping else 0
    floats = (
        params * (2 + OPTIMIZER_COPIES[config.optimizer] + config.early_stopping)
        + (2 * batch + rows) * sum(widths)
        + CAPACITY
        + 2 * min(steps, PROGRESS_EVERY)
        + curve
    )
    return members * (4 * floats + 32 * (min(steps + 1, MAX_HISTORY_POINTS) + curve) + REPORT_BYTES_PER_MEMBER)


def memory_limit() -> tuple[int, str]:
    """The bytes a run may use, and what they are: the machine's physical memory, or the memory of this
    process's first device where JAX reports it (GPU, TPU) and it is smaller."""
    limit, what = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"), "this machine's memory"
    stats = jax.local_devices()[0].memory_stats() or {}  # this process's: another's device reports nothing here
    if stats.get("bytes_limit") and stats["bytes_limit"] < limit:
        limit, what = stats["bytes_limit"], f"the memory of {console.device_description()}"
    return limit, what


def check_memory(
    config: Config, split: data.Split, *, members: int = 1, steps: int | None = None, fewer: str | None = None
) -> None:
    """UsageError, before anything is allocated, when `members` models of `config` trained on `split` for `steps`
    steps need more than `memory_limit()` (`bytes_needed`): one line naming the model, asking for `fewer` of
    something (a sweep's members) or a smaller model or batch."""
    features, outputs = split.x_train.shape[1], split.scaling.outputs
    rows = len(split.x_train) + len(split.x_test)
    needed, (limit, where) = bytes_needed(config, features, outputs, rows, members, steps), memory_limit()
    if needed > limit:
        model = " → ".join(map(str, (features, *config.hidden, outputs)))
        plural = lambda count, noun: f"{count:,} {noun}{'s' * (count != 1)}"
        what = "the run's arrays" if steps is None else f"{plural(members, 'member')} × {plural(steps, 'step')}"
        raise UsageError(
            f"{what} need about {needed / 2**30:,.1f} GiB (a {model} model's params, optimizer state and one "
            f"batch's activations{' each' * (members > 1)}), more than {where} ({limit / 2**30:,.1f} GiB); ask for "
            + ", ".join([*([fewer] if fewer else []), "a smaller --hidden or --batch-size"])
        )


def check_total_steps(total: int) -> None:
    """UsageError when a run of `total` steps passes `fit`'s step counter (int32)."""
    if total > MAX_STEP:
        raise UsageError(
            f"--steps or --epochs ask for {total:,} steps; at most {MAX_STEP:,} (the step counter is int32)"
        )


def mean_predictor_mse(split: data.Split) -> float:
    """The held-out MSE of predicting the training split's mean target for every row: the baseline."""
    return float(np.mean((split.y_test - split.y_train.mean()) ** 2))


def build_model(inputs: int, config: Config, outputs: int = 1) -> bp_jax.Model:
    """Linear(inputs, h1), act, …, Linear(hk, outputs): the seed MLP for hidden = (5,), relu and one output;
    a classifier has one output (logit) per class; with `config.dropout` > 0, a Dropout after each activation
    (applied in training only: `fit` draws its masks from the run's data-order key)."""
    return bp_jax.mlp((inputs, *config.hidden, outputs), config.activation, dropout=config.dropout)


def training_model(inputs: int, config: Config, outputs: int = 1) -> bp_jax.Model:
    """The model the run trains: `build_model`'s, or for an ensemble of minibatches without dropout whose hidden
    layers are no wider than a batch, the same function of the same params computed with the activations held as
    (features, rows) (`mlp`'s layout "columns") and each layer contracted as `fit_ensemble`'s members'
    ("auto": `bp_jax._contraction.choose`, on CPU a matmul for the first layer of each member's own minibatch and
    the fused product and sum for a layer of at most MEMBER_SUM_WEIGHTS weights, e.g. 5 → 1). Each member reads
    its own minibatch, and XLA:CPU runs the members' matmuls with the rows minor about 2× faster (`--ensemble 16`
    on diabetes: benchmarks/training.py). Predict and export read `build_model`'s Sequential."""
    batch = config.batch_size
    if config.ensemble == 1 or config.dropout > 0 or batch is None or max(config.hidden, default=0) > batch:
        return build_model(inputs, config, outputs)
    return bp_jax.mlp((inputs, *config.hidden, outputs), config.activation, layout="columns")


@dataclasses.dataclass(frozen=True)
class Weighted:
    """Σᵢ wᵢ·ℓᵢ / Σᵢ wᵢ over the rows of y = {"target": t, "weight": w}, ℓᵢ = `loss` of row i alone; 0 where Σw = 0
    (a minibatch of rows that weigh nothing takes no step). Equal for equal losses: one compiled loop."""

    loss: Callable

    def __call__(self, pred, y):
        each = jax.vmap(lambda row, target: self.loss(row[None], target[None]))(pred, y["target"])
        total = jnp.sum(y["weight"])
        return jnp.sum(y["weight"] * each) / jnp.where(total > 0, total, 1)


def loss(model: bp_jax.Model, scaling: data.Scaling, *, weighted: bool = False) -> Callable:
    """The training loss: softmax cross-entropy over the classes, or the MSE of the standardised target; with
    `weighted`, their `Weighted` mean over y = {"target": t, "weight": w}."""
    classify = scaling.task == "classification"
    each = bp_jax.softmax_cross_entropy if classify else bp_jax.mse
    return bp_jax.loss_fn(model, Weighted(each) if weighted else each)


def scores(model: bp_jax.Model, split: data.Split, *, ensemble: bool = False) -> Callable:
    """`params -> metrics` (float64, one per member of an `ensemble`) from one compiled program: regression:
    train_mse, held_out_mse; classification: train_accuracy, train_log_loss, held_out_accuracy, held_out_log_loss
    (log loss: the mean softmax cross-entropy; accuracy: rows right over rows, divided exactly on the host)."""
    fn = loss(model, split.scaling)
    classify = split.scaling.task == "classification"
    parts = {"train": (split.x_train, split.y_train), "held_out": (split.x_test, split.y_test)}

    def measured(params, parts):  # the rows are arguments: as constants of the program they would be compiled in
        metrics = {}
        for name, (x, y) in parts.items():
            if classify:
                metrics[f"{name}_accuracy"] = jnp.sum(jnp.argmax(model.apply(params, x), axis=1) == y)
                metrics[f"{name}_log_loss"] = fn(params, x, y)
            else:
                metrics[f"{name}_mse"] = fn(params, x, y)
        return metrics

    program = jax.jit(jax.vmap(measured, (0, None)) if ensemble else measured)

    def on_host(params) -> dict:
        metrics = {name: np.asarray(value, np.float64) for name, value in program(params, parts).items()}
        for name, (_, y) in parts.items() if classify else ():
            metrics[f"{name}_accuracy"] /= len(y)
        return metrics

    return on_host


def ensemble_scores(model: bp_jax.Model, split: data.Split) -> Callable:
    """`params -> metrics` (float64) of an ensemble's prediction, params with a leading member axis, from one
    compiled program. Regression: the mean of the members' outputs ō, train_mse and held_out_mse of ō, and
    held_out_coverage_2sd, the share of held-out rows with |y − ō| ≤ 2·σ (σ: the members' std, ddof 0; the same in
    the target's units, a linear map of the standardised one). Classification: the averaged probabilities p̄,
    train_/held_out_accuracy of argmax p̄ and train_/held_out_log_loss, the mean −log p̄_y."""
    classify = split.scaling.task == "classification"
    parts = {"train": (split.x_train, split.y_train), "held_out": (split.x_test, split.y_test)}
    outputs = jax.vmap(model.apply, (0, None))

    @jax.jit
    def measured(params, parts):  # the rows as arguments, as in `scores`
        metrics = {}
        for name, (x, y) in parts.items():
            members = outputs(params, x)  # (members, rows, outputs)
            if classify:
                mean = jnp.mean(jax.nn.softmax(members, axis=-1), axis=0)
                metrics[f"{name}_accuracy"] = jnp.sum(jnp.argmax(mean, axis=1) == y)
                metrics[f"{name}_log_loss"] = -jnp.mean(jnp.log(jnp.take_along_axis(mean, y[:, None], axis=1)))
            else:
                mean, std = jnp.mean(members, axis=0), jnp.std(members, axis=0)
                metrics[f"{name}_mse"] = jnp.mean((mean - y.reshape(mean.shape)) ** 2)
                if name == "held_out":
                    metrics["held_out_coverage_2sd"] = jnp.sum(jnp.abs(y.reshape(mean.shape) - mean) <= 2 * std)
        return metrics

    counted = {"train_accuracy": len(split.y_train), "held_out_accuracy": len(split.y_test)}
    counted["held_out_coverage_2sd"] = len(split.y_test)

    def on_host(params) -> dict:  # counts divided exactly here, as `scores` does
        return {name: float(value) / counted.get(name, 1) for name, value in measured(params, parts).items()}

    return on_host


def baseline(split: data.Split) -> dict:
    """What a model must beat on the held-out rows: the MSE of predicting the training split's mean target
    for every row, or the accuracy of predicting its most frequent class."""
    if split.scaling.task == "classification":
        majority = np.bincount(split.y_train, minlength=split.scaling.outputs).argmax()
        return {"baseline_held_out_accuracy": float(np.mean(split.y_test == majority))}
    return {"baseline_held_out_mse": mean_predictor_mse(split)}


def class_counts(split: data.Split) -> dict:
    """Rows per class in each split, keyed by the class as text (JSON keys are text)."""
    count = lambda y: dict(
        zip(map(str, split.scaling.classes), np.bincount(y, minlength=split.scaling.outputs).tolist())
    )
    return {"train": count(split.y_train), "held_out": count(split.y_test)}


def learning_rate(config: Config, steps: int, steps_per_epoch: int) -> float | optax.Schedule:
    """η_t, t the step, for `config.schedule` over a run of T = `steps` steps: constant and plateau η (plateau
    scales the update instead: `plateau_rule`); cosine η·½(1 + cos(π·t/T)); warmup-cosine η·t/W for t < W =
    warmup_epochs × `steps_per_epoch`, then η·½(1 + cos(π·(t − W)/(T − W))): η times optax's schedule from 1 (so η
    may be traced: a sweep's per-member rate)."""
    if config.schedule not in ("cosine", "warmup-cosine"):
        return config.lr
    if config.schedule == "cosine":
        unit = optax.cosine_decay_schedule(1.0, steps)
    else:
        unit = optax.warmup_cosine_decay_schedule(0.0, 1.0, config.warmup_epochs * steps_per_epoch, steps)
    lr = config.lr
    return lambda step: lr * unit(step)


def optimizer(config: Config, steps: int = MAX_STEP, steps_per_epoch: int = 1) -> optax.GradientTransformation | None:
    """The optax transformation of a run of `steps` steps, `steps_per_epoch` an epoch (the schedule's length: the
    state has one structure for any), or None for the hand-written update w ← w − η·g. sgd with a schedule or weight
    decay is optax's sgd (the same update, with η_t). Weight decay λ is decoupled: adam is optax.adamw,
    w ← w − η_t·(adam(g) + λ·w); the others take g + λ·w (optax.add_decayed_weights first). plateau multiplies the
    update by reduce_on_plateau's scale, which `plateau_rule` sets."""
    make = OPTIMIZERS[config.optimizer]
    if make is None and config.schedule == "constant" and not config.weight_decay:
        return None
    make = optax.sgd if make is None else make
    lr = learning_rate(config, steps, steps_per_epoch)
    if config.weight_decay and config.optimizer == "adam":
        transform = optax.adamw(lr, weight_decay=config.weight_decay)
    elif config.weight_decay:
        transform = optax.chain(optax.add_decayed_weights(config.weight_decay), make(lr))
    else:
        transform = make(lr)
    return optax.chain(transform, _scaled_by_plateau()) if config.schedule == "plateau" else transform


def _scaled_by_plateau() -> optax.GradientTransformation:
    """The update × the scale of a reduce_on_plateau state, which it leaves as it is (`plateau_rule` advances it)."""
    scaled = lambda updates, state, params=None: (jax.tree.map(lambda u: state.scale * u, updates), state)
    return optax.GradientTransformation(optax.contrib.reduce_on_plateau(**PLATEAU).init, scaled)


def _advanced(plateau: optax.GradientTransformation, opt_state, value):
    """`opt_state` with its reduce_on_plateau state (wherever it is: inject_hyperparams' inner state) given `value`."""
    watched = lambda node: isinstance(node, optax.contrib.ReduceLROnPlateauState)
    advance = lambda node: plateau.update(None, node, value=value)[1] if watched(node) else node
    return jax.tree.map(advance, opt_state, is_leaf=watched)


@functools.lru_cache(maxsize=16)  # one update per epoch length: one compiled loop for the runs that share it
def _plateau_update(steps_per_epoch: int) -> Callable:
    plateau = optax.contrib.reduce_on_plateau(**PLATEAU, accumulation_size=steps_per_epoch)

    def update(state, step, loss, opt_state):
        return state, jnp.zeros((), bool), _advanced(plateau, opt_state, loss)

    return update


@functools.lru_cache(maxsize=16)  # one update per loss function: every validation set shares a program
def _validation_plateau_update(loss_fn: Callable) -> Callable:
    plateau = optax.contrib.reduce_on_plateau(**PLATEAU, accumulation_size=1)

    def update(state, step, loss, opt_state, *, params, data):
        epoch_end = (step + 1) % data["steps_per_epoch"] == 0  # the members share it: a cond even under vmap
        scored = lambda opt_state: _advanced(plateau, opt_state, loss_fn(params, data["x"], data["y"]))
        return state, jnp.zeros((), bool), jax.lax.cond(epoch_end, scored, lambda opt_state: opt_state, opt_state)

    return update


def plateau_rule(config: Config, steps_per_epoch: int, validation: tuple | None = None) -> bp_jax.StopRule | None:
    """--schedule plateau's `StopRule` (it never stops), None for the other schedules. Without `validation`, each
    applied step's training loss goes to reduce_on_plateau (PLATEAU), whose state in the optimizer's (so
    checkpointed and resumed with it) averages an epoch's `steps_per_epoch` losses and, at the epoch's end, sets
    the scale `optimizer` multiplies the update by. With `validation` = (loss_fn, x_val, y_val) (--early-stopping),
    reduce_on_plateau (accumulation_size=1) is given the validation loss loss_fn(params, x_val, y_val) at each
    epoch's end instead, the value early stopping scores (computed again: one more pass over the validation rows
    an epoch); combine the two with `bp_jax.stop_rules`."""
    if config.schedule != "plateau":
        return None
    if validation is None:
        return bp_jax.StopRule(_plateau_update(steps_per_epoch), {}, touches_opt_state=True)
    loss_fn, x_val, y_val = validation
    data = {"x": x_val, "y": y_val, "steps_per_epoch": np.int32(steps_per_epoch)}
    return bp_jax.StopRule(
        _validation_plateau_update(loss_fn), {}, touches_opt_state=True, touches_params=True, data=data
    )


def check_warmup(config: Config) -> None:
    """UsageError when --warmup-epochs goes without warmup-cosine (known before the data is read)."""
    if config.warmup_epochs and config.schedule != "warmup-cosine":
        raise UsageError(
            f"--warmup-epochs {config.warmup_epochs} goes with --schedule warmup-cosine, not {config.schedule}"
        )


def check_schedule(config: Config, steps: int, steps_per_epoch: int, planned: int | None) -> None:
    """UsageError when warmup-cosine's warm-up is not shorter than the run (`steps` steps of `steps_per_epoch` an
    epoch), or when a cosine schedule, which spans the `planned` steps of the run resumed, is asked to end
    elsewhere."""
    if config.schedule == "warmup-cosine" and not 1 <= config.warmup_epochs * steps_per_epoch < steps:
        given = (
            f"{config.warmup_epochs} ({config.warmup_epochs * steps_per_epoch} steps)"
            if config.warmup_epochs
            else "none"
        )
        raise UsageError(
            f"--schedule warmup-cosine needs --warmup-epochs E, a warm-up shorter than the run's {steps} steps "
            f"({steps_per_epoch} an epoch), got {given}"
        )
    if config.schedule in ("cosine", "warmup-cosine") and planned is not None and steps != planned:
        raise UsageError(
            f"the run's {config.schedule} schedule spans its {planned} steps; resume it to step {planned} "
            f"(a run of {steps} steps is a new run), got {steps}"
        )


def class_weights(split: data.Split) -> np.ndarray:
    """scikit-learn's balanced class weights from the training rows: n / (k·n_c) for class c with n_c of the n rows
    (k the classes among them; 0 for a class with none)."""
    return balanced(np.bincount(split.y_train, minlength=split.scaling.outputs))


def balanced(counts: np.ndarray) -> np.ndarray:
    """n / (k·n_c) for each class c of `counts` (n_c rows of n; k the classes with a row), 0 for a class without."""
    present = counts > 0
    return np.where(present, counts.sum() / (present.sum() * np.maximum(counts, 1)), 0.0)


def row_weights(config: Config, split: data.Split) -> np.ndarray | None:
    """Each training row's weight, float32: its --sample-weight cell times its class's `class_weights` (each 1
    where not asked), or None when neither is asked (the unweighted program)."""
    if config.class_weight is None and split.w_train is None:
        return None
    weights = np.ones(len(split.y_train)) if split.w_train is None else split.w_train
    if config.class_weight is not None:
        weights = weights * class_weights(split)[split.y_train]
    return weights.astype(np.float32)


def targets(config: Config, split: data.Split):
    """What `fit` trains on as y: the training targets, or {"target": targets, "weight": `row_weights`}."""
    weights = row_weights(config, split)
    return split.y_train if weights is None else {"target": split.y_train, "weight": weights}


def weights_record(config: Config, split: data.Split) -> dict | None:
    """metrics.json's account of the weights: the class weights by class (or None), the --sample-weight column (or
    None) and the sum of the training rows' weights; None for an unweighted run."""
    weights = row_weights(config, split)
    if weights is None:
        return None
    by_class = None
    if config.class_weight is not None:
        by_class = dict(zip(map(str, split.scaling.classes), class_weights(split).tolist()))
    return {"class_weight": by_class, "sample_weight": config.sample_weight, "train_sum": float(weights.sum())}


def state_from_key(model: bp_jax.Model, transform: optax.GradientTransformation | None) -> Callable:
    """`key -> state`: what a checkpoint holds at step 0 for the run seeded by `key`: params from its first
    half, the optimizer state, and the data-order key (its second half)."""

    def state(key):
        params_key, data_key = jax.random.split(key)
        params = model.init(params_key)
        return {
            "params": params,
            "opt_state": None if transform is None else transform.init(params),
            "key": jax.random.key_data(data_key),
        }

    return state


def initial_state(model: bp_jax.Model, config: Config) -> dict:
    """The state at step 0 of the run `config` describes, made from the seed by one compiled program (eager, each
    small op, the key's included, would be a program of its own); with early stopping, also the rule's state
    ("rule", `early_stopping_state`); an ensemble's (`member_states` of seeds seed, …, seed + ensemble − 1) has a
    leading member axis on every leaf, its rule state one per member."""
    with_rule = lambda start: start | {"rule": early_stopping_state(start["params"])}
    if config.ensemble > 1:
        seeds = np.arange(config.seed, config.seed + config.ensemble, dtype=np.uint32)
        states = member_states(model, optimizer(config), seeds, 1)
        return jax.jit(jax.vmap(with_rule))(states) if config.early_stopping else states
    make = state_from_key(model, optimizer(config))
    first = lambda seed: with_rule(make(jax.random.key(seed))) if config.early_stopping else make(jax.random.key(seed))
    return jax.jit(first)(np.uint32(config.seed))


def early_stopping_state(params) -> dict:
    """`bp_jax.early_stopping`'s first state for float32 losses, as the dict a checkpoint holds: the best params
    (the starting ones), no best loss or epoch yet, and VALIDATION_CURVE_EPOCHS epochs of curve."""
    return bp_jax.EarlyStopping(
        params=params,
        best_loss=jnp.float32(jnp.inf),
        best_epoch=jnp.int32(-1),
        count=jnp.int32(0),
        loss=jnp.float32(jnp.nan),
        losses=jnp.full(VALIDATION_CURVE_EPOCHS, jnp.nan, jnp.float32),
    )._asdict()


def refuse_lone_stopping_flags(given: dict, early_stopping: bool) -> None:
    """UsageError for --validation-fraction or --patience given without `early_stopping` (on the command line or
    the resumed run): they would silently do nothing."""
    lone = [f"--{name.replace('_', '-')}" for name in ("validation_fraction", "patience") if name in given]
    if lone and not early_stopping:
        raise UsageError(
            f"{' and '.join(lone)} set how --early-stopping stops; add --early-stopping, or leave them out"
        )


def validation_split(config: Config, split: data.Split) -> tuple[data.Split, tuple]:
    """(the split without the validation rows, (x_val, y_val)): `data.validation_rows` of the training rows (drawn by
    the split seed: every member of a sweep or an ensemble holds back the same rows); UsageError when the training or
    the validation rows would be fewer than a batch."""
    classify = config.task == "classification"
    assert config.split_seed is not None  # Config.__post_init__ sets it
    train, held = data.validation_rows(split.y_train, config.validation_fraction, config.split_seed, classify=classify)
    batch = config.batch_size or 1
    if min(len(train), len(held)) < batch:
        raise UsageError(
            f"--validation-fraction {config.validation_fraction} leaves {len(train)} training and {len(held)} "
            f"validation rows of {len(split.y_train)}; each needs at least a batch ({batch} row{'s' * (batch > 1)}): "
            f"change the fraction or --batch-size"
        )
    rows = lambda part: (split.x_train[part], split.y_train[part])
    x_train, y_train = rows(train)
    w_train = None if split.w_train is None else split.w_train[train]
    return split._replace(x_train=x_train, y_train=y_train, w_train=w_train), rows(held)


def stop_rule(
    config: Config,
    model: bp_jax.Model,
    split: data.Split,
    validation: tuple | None,
    params,
    steps_per_epoch: int,
    *,
    members: int | None = None,
    epochs: int = VALIDATION_CURVE_EPOCHS,
    state: dict | None = None,
) -> bp_jax.StopRule | None:
    """A run's `StopRule`, None without one: without `validation`, `plateau_rule`'s; with `validation` = (x_val,
    y_val), `bp_jax.early_stopping` on those rows from `params` (`members`: one state per member, stacked params),
    its curve `epochs` long, starting from `state` (a checkpoint's "rule") if given, combined by `bp_jax.stop_rules`
    with a plateau schedule on the validation loss. The validation loss is unweighted (as Keras's class_weight):
    the rows as they come; y_val = {"target": t, "weight": 1 or 0} (--shard-data's rows, laid out with padding)
    is their `Weighted` mean over the rows of weight 1."""
    if validation is None:
        return plateau_rule(config, steps_per_epoch)
    validation_loss = loss(model, split.scaling, weighted=isinstance(validation[1], dict))
    x_val, y_val = jax.tree.map(lambda leaf: leaf if isinstance(leaf, jax.Array) else jax.device_put(leaf), validation)
    stopping = bp_jax.early_stopping(
        validation_loss,
        params,
        x_val,
        y_val,
        steps_per_epoch=steps_per_epoch,
        patience=config.patience,
        epochs=epochs,
        members=members,
    )
    if state is not None:
        stopping = stopping._replace(init=bp_jax.EarlyStopping(**state))
    plateau = plateau_rule(config, steps_per_epoch, (validation_loss, x_val, y_val))
    return stopping if plateau is None else bp_jax.stop_rules(stopping, plateau)


def stopping_state(result) -> bp_jax.EarlyStopping:
    """The early stopping rule's state in `result` (the first of a combined rule's)."""
    state = result.rule_state
    return state if isinstance(state, bp_jax.EarlyStopping) else state[0]


def stopping_record(config: Config, steps_per_epoch: int, state: dict) -> dict:
    """metrics.json's "early_stopping" for the rule `state` (on the host): the settings, then one model's
    `model_stopping`, or for members (a leading axis on `state`) each one's under "members" and "stopped_early"
    when all stopped."""
    settings = {
        "validation_fraction": config.validation_fraction,
        "patience": config.patience,
        "steps_per_epoch": steps_per_epoch,
    }
    if np.ndim(state["best_epoch"]) == 0:
        return settings | model_stopping(state, config.patience, steps_per_epoch)
    members = [
        model_stopping(
            {name: state[name][member] for name in state if name != "params"}, config.patience, steps_per_epoch
        )
        for member in range(len(state["best_epoch"]))
    ]
    return settings | {"stopped_early": all(member["stopped_early"] for member in members), "members": members}


def model_stopping(state: dict, patience: int, steps_per_epoch: int) -> dict:
    """One model's early stopping: the validation loss after each epoch it scored (`validation_loss[e]`: epoch e's,
    counted from 0; best epoch + 1 + the epochs since, as far as the state's curve reaches), the best epoch, its step
    and loss (None before any epoch ended), whether the rule stopped it and the epochs since the best."""
    best, count = int(state["best_epoch"]), int(state["count"])
    scored = min(best + 1 + count, len(state["losses"]))
    return {
        "validation_loss": np.asarray(state["losses"][:scored], np.float64).tolist(),
        "best_epoch": best if best >= 0 else None,
        "best_step": (best + 1) * steps_per_epoch if best >= 0 else None,
        "best_validation_loss": float(state["best_loss"]) if best >= 0 else None,
        "stopped_early": count >= patience,
        "epochs_without_improvement": count,
    }


def stopped_at(state: dict, patience: int, steps_per_epoch: int) -> np.ndarray:
    """Per model, the step after which early stopping stopped it (−1: running), from its rule `state` (a checkpoint's
    "rule"): its count reached patience at the end of epoch e = best_epoch + patience, step (e + 1)·steps_per_epoch − 1.
    """
    best, count = np.asarray(state["best_epoch"]), np.asarray(state["count"])
    return np.where(count >= patience, (best + patience + 1) * steps_per_epoch - 1, -1)


def best_params(state: dict):
    """The params a run ends with: with early stopping, the best epoch's (the last step's before any epoch
    ended), else the last step's; an ensemble's, each member's own."""
    rule = state.get("rule")
    if rule is None:
        return state["params"]
    if np.ndim(rule["best_epoch"]) == 0:
        return state["params"] if int(rule["best_epoch"]) < 0 else rule["params"]
    scored = np.asarray(rule["best_epoch"]) >= 0
    by_member = lambda leaf: scored.reshape(-1, *(1,) * (np.ndim(leaf) - 1))
    return jax.tree.map(lambda best, last: np.where(by_member(last), best, last), rule["params"], state["params"])


def member_states(
    model: bp_jax.Model, transform: optax.GradientTransformation | None, seeds: np.ndarray, copies: int
) -> dict:
    """The step-0 states of `copies` × len(seeds) members, lr-major (member i has seed seeds[i % len(seeds)]),
    each what `bp-jax train --seed s` starts from (`state_from_key` of `jax.random.key(s)`): one
    compiled program of the seed array, vmapped, so set-up is O(members) work in a program of fixed size."""
    state_from_seed = state_from_key(model, transform)

    @jax.jit
    def states(seeds):
        per_seed = jax.vmap(lambda seed: state_from_seed(jax.random.key(seed)))(seeds)
        return jax.tree.map(lambda leaf: jnp.tile(leaf, (copies,) + (1,) * (leaf.ndim - 1)), per_seed)

    return states(jnp.asarray(seeds, jnp.uint32))


def member_mesh(devices: int | None, members: int, what: str) -> jax.sharding.Mesh | None:
    """The `ensemble_mesh` splitting `members` (`what` they are, for the message) over --devices (None: all), or
    None for one device; UsageError when the devices are too many or do not divide the members."""
    if devices == 1:
        return None
    try:
        mesh = bp_jax.ensemble_mesh(devices)
    except ValueError as err:
        raise UsageError(f"--devices: {err}") from None
    if members % mesh.devices.size:
        raise UsageError(f"the {members} members ({what}) do not split evenly over {mesh.devices.size} devices")
    return mesh


class Run(NamedTuple):
    """A run folder's newest checkpoint, opened: its record read and checked, its arrays not yet read."""

    manager: "ocp.CheckpointManager"
    step: int
    config: Config
    record: dict

    @property
    def where(self) -> str:
        """How messages name the checkpoint: "checkpoint STEP in FOLDER/checkpoints"."""
        return _where(self.manager, self.step)

    @property
    def scaling(self) -> data.Scaling:
        return data.Scaling.from_record(self.record["data"]["scaling"])

    def restore(self, like) -> dict:
        """The checkpoint's state (params, opt_state, key), which must have the structure and shapes of `like`."""
        return checkpoints.restore(self.manager, self.step, like)

    def model_and_params(self) -> tuple[bp_jax.Model, object]:
        """The run's model and its params at this checkpoint, with early stopping the best so far (restored into
        the state's shapes, which are traced, not computed: nothing compiles)."""
        model = build_model(len(self.scaling.x_mean), self.config, self.scaling.outputs)
        return model, best_params(self.restore(jax.eval_shape(lambda: initial_state(model, self.config))))


def open_run(folder: Path) -> Run:
    """The newest checkpoint of the run in `folder`; CheckpointError if there is none, it is damaged, or its
    record is not this version's."""
    manager = checkpoints.manager(folder / "checkpoints")
    step, record = checkpoints.latest_record(manager)
    where = _where(manager, step)
    record = {"diverged_at": None} | record  # older records lack the mark; predict still refuses non-finite output
    _check_keys("record", record, RECORD_KEYS, where)
    return Run(manager, step, Config.from_record(record["config"], where), record)


def read_trained(folder: Path) -> tuple[Run, bp_jax.Model, object]:
    """The run in `folder` (`open_run`), its model and the params of its newest checkpoint. A live run (one
    whose command holds the folder's lock) saves checkpoints and deletes old ones as it is read: its newest
    checkpoint is copied aside and read there, copied again from the then newest when it vanished midway
    (up to LIVE_READS times). CheckpointError saying the run is live when that fails, or it has no checkpoint
    yet."""
    for _ in range(LIVE_READS):
        holder = folders.live_holder(folder)
        if holder is None:
            run = open_run(folder)
            return run, *run.model_and_params()
        steps = [path.name for path in (folder / "checkpoints").glob("*") if path.name.isdigit()]
        if not steps:
            raise checkpoints.CheckpointError(
                f"no checkpoint in {folder} yet: the run there (pid {holder}) is still "
                f"training; wait for its first checkpoint"
            )
        newest = folder / "checkpoints" / max(steps, key=int)
        with tempfile.TemporaryDirectory(prefix="bp-jax-predict-") as snapshot:
            try:
                shutil.copytree(newest, Path(snapshot) / "checkpoints" / newest.name)
                run = open_run(Path(snapshot))
                return run, *run.model_and_params()
            except (OSError, checkpoints.CheckpointError) as err:
                if newest.exists():  # not deleted while read: damaged, or not this version's
                    raise checkpoints.CheckpointError(str(err).replace(snapshot, str(folder))) from None
    raise checkpoints.CheckpointError(
        f"{folder} holds a live run (pid {holder}) whose newest checkpoint was "
        f"deleted {LIVE_READS} times while being read; try again, or once it ends"
    )


def refuse_diverged(run: Run, folder: Path, *, allowed: bool) -> None:
    """UsageError when the run in `folder` stopped on divergence, unless `allowed` (--allow-diverged)."""
    diverged_at = run.record["diverged_at"]
    if diverged_at is not None and not allowed:
        raise UsageError(
            f"{folder} stopped on divergence at step {diverged_at} (non-finite loss): its params "
            f"are the last finite ones, not a trained model; retrain with a smaller --lr, or pass "
            f"--allow-diverged"
        )


def _where(manager: "ocp.CheckpointManager", step: int) -> str:
    return f"checkpoint {step} in {manager.directory}"

"""What a run is: its Config, its model and the state a checkpoint holds, and `open_run`, the one way to
read a run folder back.

    config, split = load_data(config, given)       # the data, target, feature columns and task resolved
    model = build_model(inputs, config, outputs)   # bp_jax.mlp((inputs, *hidden, outputs), activation, dropout=…)
    run = open_run(folder)                         # newest checkpoint: manager, step, Config, record
    state = run.restore(initial_state(model, run.config))   # or: model, params = run.model_and_params()
    run, model, params = read_trained(folder)      # the same, also while the run in `folder` is live

Shared by `train` (which writes runs and resumes them), `predict` (which reads them) and `sweep` (which
trains many at once).
"""

import dataclasses
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
    program (1: one model, a plain run); `dropout`: the Dropout rate after each hidden activation (0: none)."""

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
        """The Config in a checkpoint's record (one written before classification: regression, empty cells
        refused; before early stopping: none; before ensembles: one model; before dropout: none); CheckpointError if
        its keys are not this version's."""
        before = {"task": "regression", "missing": "error", "early_stopping": False, "ensemble": 1, "dropout": 0.0}
        record = before | {"validation_fraction": 0.1, "patience": 10} | record
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
    not given; UsageError when the batch size does not fit the training rows."""
    assert config.split_seed is not None  # Config.__post_init__ sets it
    split = data.load(
        config.dataset,
        target=config.target,
        features=config.features,
        split_seed=config.split_seed,
        task=config.task,
        missing=config.missing,
    )
    print(*(f"bp-jax: note: {note}\n" for note in split.notes), sep="", end="", file=sys.stderr)
    config = dataclasses.replace(
        config, target=split.scaling.target_name, features=split.scaling.feature_names, task=split.scaling.task
    )
    if given is not None and config.task == "classification":
        defaults: dict[str, Any] = {name: value for name, value in CLASSIFICATION_DEFAULTS.items() if name not in given}
        config = dataclasses.replace(config, **defaults)
    n_train = len(split.x_train)
    if config.batch_size is not None and not 1 <= config.batch_size <= n_train:
        source = f"{config.dataset}: " if data.is_file(config.dataset) else ""
        raise UsageError(
            f"{source}--batch-size must be between 1 and {n_train} (the training examples), got {config.batch_size}"
        )
    return config, split


def steps_per_epoch(n_train: int, batch_size: int | None) -> int:
    return 1 if batch_size is None else n_train // batch_size


def bytes_needed(
    config: Config, features: int, outputs: int, rows: int, members: int = 1, steps: int | None = None
) -> int:
    """About how many bytes training `members` models of `config` for `steps` steps (None: any number) needs,
    from the per-member sizes (float32, 4 bytes): params, their gradients and the optimizer's copies of them; the
    activations and their gradients for a batch, and the activations over all `rows` when the scores are
    evaluated; the losses of one fit call (CAPACITY steps) on the device and of one chunk on the host (fit keeps
    no others), and the history's Python floats (32 bytes each); plus each member's report entry."""
    steps = MAX_STEP if steps is None else steps
    widths = (features, *config.hidden, outputs)
    params = sum((fan_in + 1) * fan_out for fan_in, fan_out in itertools.pairwise(widths))
    batch = config.batch_size or rows
    floats = (
        params * (2 + OPTIMIZER_COPIES[config.optimizer])
        + (2 * batch + rows) * sum(widths)
        + CAPACITY
        + 2 * min(steps, PROGRESS_EVERY)
    )
    return members * (4 * floats + 32 * min(steps + 1, MAX_HISTORY_POINTS) + REPORT_BYTES_PER_MEMBER)


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


def loss(model: bp_jax.Model, scaling: data.Scaling) -> Callable:
    """The training loss: softmax cross-entropy over the classes, or the MSE of the standardised target."""
    classify = scaling.task == "classification"
    return bp_jax.loss_fn(model, bp_jax.softmax_cross_entropy if classify else bp_jax.mse)


def scores(model: bp_jax.Model, split: data.Split, *, ensemble: bool = False) -> Callable:
    """`params -> metrics` (float64, one per member of an `ensemble`) from one compiled program: regression:
    train_mse, held_out_mse; classification: train_accuracy, train_log_loss, held_out_accuracy, held_out_log_loss
    (log loss: the mean softmax cross-entropy; accuracy: rows right over rows, divided exactly on the host)."""
    fn = loss(model, split.scaling)
    classify = split.scaling.task == "classification"
    parts = (("train", split.x_train, split.y_train), ("held_out", split.x_test, split.y_test))

    def measured(params):
        metrics = {}
        for name, x, y in parts:
            if classify:
                metrics[f"{name}_accuracy"] = jnp.sum(jnp.argmax(model.apply(params, x), axis=1) == y)
                metrics[f"{name}_log_loss"] = fn(params, x, y)
            else:
                metrics[f"{name}_mse"] = fn(params, x, y)
        return metrics

    program = jax.jit(jax.vmap(measured) if ensemble else measured)

    def on_host(params) -> dict:
        metrics = {name: np.asarray(value, np.float64) for name, value in program(params).items()}
        for name, _, y in parts if classify else ():
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
    parts = (("train", split.x_train, split.y_train), ("held_out", split.x_test, split.y_test))
    outputs = jax.vmap(model.apply, (0, None))

    @jax.jit
    def measured(params):
        metrics = {}
        for name, x, y in parts:
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
        return {name: float(value) / counted.get(name, 1) for name, value in measured(params).items()}

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


def optimizer(config: Config) -> optax.GradientTransformation | None:
    """The optax transformation, or None for the hand-written update."""
    make = OPTIMIZERS[config.optimizer]
    return None if make is None else make(config.lr)


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
    leading member axis on every leaf (an ensemble has no early stopping: `train` refuses the two together)."""
    if config.ensemble > 1:
        seeds = np.arange(config.seed, config.seed + config.ensemble, dtype=np.uint32)
        return member_states(model, optimizer(config), seeds, 1)
    make = state_from_key(model, optimizer(config))

    def state(seed):
        start = make(jax.random.key(seed))
        return start | {"rule": early_stopping_state(start["params"])} if config.early_stopping else start

    return jax.jit(state)(np.uint32(config.seed))


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


def best_params(state: dict):
    """The params a run ends with: with early stopping, the best epoch's (the last step's before any epoch
    ended), else the last step's."""
    rule = state.get("rule")
    return state["params"] if rule is None or int(rule["best_epoch"]) < 0 else rule["params"]


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

"""What a run is: its Config, its model and the state a checkpoint holds, its JSON files, and its stop signals.

Shared by `train` (which writes runs), `predict` (which reads them) and any command that trains several.
"""

import dataclasses
import json
import math
import os
import signal
import sys
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

import jax
import optax

import bp_jax
from bp_jax.cli import checkpoints, data
from bp_jax.cli._args import UsageError

OPTIMIZERS: dict[str, Callable[[float], optax.GradientTransformation] | None] = {
    "sgd": None,  # the hand-written update w ← w − lr·g
    "optax-sgd": optax.sgd,
    "momentum": lambda lr: optax.sgd(lr, momentum=0.9),
    "adam": optax.adam,
}
LAYERS = {"relu": bp_jax.ReLU, "sigmoid": bp_jax.Sigmoid, "tanh": bp_jax.Tanh}
RECORD_KEYS = {"config", "data", "total_steps", "loss_history", "wall_time_s"}


@dataclasses.dataclass(frozen=True)
class Config:
    """What defines a run; a resumed run must match it (steps excepted). `dataset` is a built-in name or the
    data file's absolute path; `target` and `features` are column names (None before the data is read:
    the last column, and all the others); `split_seed` chooses the held-out rows (None: `seed`)."""

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
        """The Config in a checkpoint's record; CheckpointError if its keys are not this version's."""
        fields = {field.name for field in dataclasses.fields(cls)}
        missing, extra = sorted(fields - set(record)), sorted(set(record) - fields)
        if missing or extra:
            raise checkpoints.CheckpointError(
                f"{where} was written by another version of bp_jax: its config "
                + " and ".join([f"lacks {', '.join(missing)}"] * bool(missing) + [f"has unknown {', '.join(extra)}"]
                               * bool(extra)) + "; resume it with that version, or start a new run")
        return cls(**{name: tuple(value) if isinstance(value, list) else value for name, value in record.items()})

    def check_matches(self, given: dict, where: str) -> None:
        """CheckpointError naming every value in `given` that differs from this (the saved) Config."""
        clash = [f"{name}={getattr(self, name)!r}, not {value!r}" for name, value in given.items()
                 if getattr(self, name) != value]
        if clash:
            raise checkpoints.CheckpointError(f"{where} was trained with " + ", ".join(clash))


def load_data(config: Config) -> tuple[Config, data.Split]:
    """The split `config` names, and `config` with its target and feature columns resolved; UsageError
    when the batch size does not fit the training rows."""
    split = data.load(config.dataset, target=config.target, features=config.features, split_seed=config.split_seed)
    print(*(f"bp-jax: note: {note}\n" for note in split.notes), sep="", end="", file=sys.stderr)
    config = dataclasses.replace(config, target=split.scaling.target_name, features=split.scaling.feature_names)
    n_train = len(split.x_train)
    if config.batch_size is not None and not 1 <= config.batch_size <= n_train:
        source = f"{config.dataset}: " if data.is_file(config.dataset) else ""
        raise UsageError(f"{source}--batch-size must be between 1 and {n_train} (the training examples), "
                         f"got {config.batch_size}")
    return config, split


def build_model(features: int, config: Config) -> bp_jax.Model:
    """Linear(features, h1), act, …, Linear(hk, 1): the seed MLP for hidden = (5,) and relu."""
    sizes = (features, *config.hidden, 1)
    layers = []
    for fan_in, fan_out in zip(sizes, sizes[1:]):
        layers += [bp_jax.Linear(fan_in, fan_out), LAYERS[config.activation]()]
    return bp_jax.Sequential(*layers[:-1])


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
        return {"params": params, "opt_state": None if transform is None else transform.init(params),
                "key": jax.random.key_data(data_key)}

    return state


def initial_state(model: bp_jax.Model, config: Config) -> dict:
    """The state at step 0 of the run `config` describes, made by one compiled program (eager, each small
    op would compile on its own)."""
    return jax.jit(state_from_key(model, optimizer(config)))(jax.random.key(config.seed))


def checked_record(record: dict, where: str) -> tuple[Config, dict]:
    """(Config, record) of a checkpoint's record; CheckpointError if it is not this version's layout."""
    missing, extra = sorted(RECORD_KEYS - set(record)), sorted(set(record) - RECORD_KEYS)
    if missing or extra:
        raise checkpoints.CheckpointError(
            f"{where} was written by another version of bp_jax: its record "
            + " and ".join([f"lacks {', '.join(missing)}"] * bool(missing) + [f"has unknown {', '.join(extra)}"]
                           * bool(extra)) + "; resume it with that version, or start a new run")
    return Config.from_record(record["config"], where), record


class Trained(NamedTuple):
    """A run's newest checkpoint, ready to predict with."""

    config: Config
    scaling: data.Scaling
    model: bp_jax.Model
    params: object
    step: int


def load(folder: Path) -> Trained:
    """The newest checkpoint in a run folder; CheckpointError if there is none usable."""
    manager = checkpoints.manager(folder / "checkpoints")
    step, record = checkpoints.latest_record(manager)
    where = f"checkpoint {step} in {manager.directory}"
    config, record = checked_record(record, where)
    scaling = data.Scaling.from_record(record["data"]["scaling"])
    model = build_model(len(scaling.feature_names), config)
    state = checkpoints.restore(manager, step, initial_state(model, config))
    return Trained(config, scaling, model, state["params"], step)


def finite(tree):
    """`tree` (dicts, lists, numbers) with every NaN or infinity replaced by None, so it is strict JSON."""
    if isinstance(tree, dict):
        return {key: finite(value) for key, value in tree.items()}
    if isinstance(tree, (list, tuple)):
        return [finite(value) for value in tree]
    return None if isinstance(tree, float) and not math.isfinite(tree) else tree


def write_atomically(path: Path, write: Callable[[Path], None]) -> None:
    """`write(temporary)` then rename over `path`: readers see the old file or the new one, never half."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(temporary)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def write_json(path: Path, value) -> None:
    write_atomically(path, lambda temporary: temporary.write_text(json.dumps(finite(value), indent=1,
                                                                             allow_nan=False)))


class StopSignals:
    """SIGINT and SIGTERM, caught: `received` holds the first one's number, for a training loop to see
    between chunks and stop there. A second signal acts as it would have without this (ends the process)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.received: int | None = None
        self._previous = {}

    def _handle(self, number, frame):
        self.received = number
        self._restore()

    def _restore(self):
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        self._previous = {}

    @contextmanager
    def caught(self):
        self._previous = {number: signal.signal(number, self._handle) for number in self.SIGNALS}
        try:
            yield self
        finally:
            self._restore()

"""Suite 10, training options: what `bp-jax train`'s early stopping, dropout and ensembles cost on diabetes.

The seed MLP (10 → 5 → 1) on the diabetes training split `bp-jax train` reads by default, built and trained as
the command builds and calls it (`bp_jax.cli.runs`: its Config, model, loss, initial state and data-order key;
hand-written SGD, lr 0.01, minibatches of 32). Each pair is timed in turns, compilation excluded:

- validation: `fit` with `bp_jax.early_stopping` (the command's `--early-stopping`: 10 % of the training rows
  scored inside the loop at each epoch's end, patience set past the run so that both run every step) against
  the same `fit` without the rule, on the same rows;
- dropout: `fit` of the model with `--dropout 0.1` (a stochastic loss: fresh masks each step) against without;
- ensemble: `fit_ensemble` of `--ensemble 16`'s members (seeds 0 … 15, one data order each) against `fit` of the
  one model `--seed 0` trains, each the command's default run of 100 epochs (1100 steps, chunks of 1000); as a
  diagnostic, the same members reading one shared data order (`fit_ensemble`'s groups: one gather a step). This
  times the training the flag changes; the command's process start, data loading, checkpoints and plot are the
  same work either way and metrics.json's wall_time_s also counts the loop's compilation, so the call is timed;
- the command itself: `python -m bp_jax train` and `python -m bp_jax train --ensemble 16` (the default 100 epochs,
  each into a new `--out`, a compile cache that a first run of each filled, as a user's second run finds it),
  in turns: the training's wall time as the command reports it (metrics.json's `wall_time_s`: from the first
  step's compilation to the last checkpoint), and the process's.
"""

import dataclasses
import functools
import json
import tempfile
import time
from pathlib import Path

import jax

import bp_jax
from benchmarks.records import SuiteRecord
from benchmarks.startup import process
from benchmarks.timing import Timer, scaled, time_interleaved
from bp_jax.cli import data, runs
from bp_jax.cli.watch import PROGRESS_EVERY

PLAIN = "bp_jax fit (the command's plain run)"
VALIDATION = "bp_jax fit with early_stopping (validation scored in the loop each epoch)"
DROPOUT_RATE = 0.1
DROPOUT = f"bp_jax fit, mlp(..., dropout={DROPOUT_RATE}) (masks drawn each step)"
MEMBERS = 16
ONE_MODEL = "bp-jax train: fit of one model (--seed 0)"
ENSEMBLE = f"bp-jax train --ensemble {MEMBERS}: fit_ensemble of {MEMBERS} members"
SHARED_ORDER = f"diagnostic: fit_ensemble of the {MEMBERS} members reading one data order (member 0's key)"
COMMAND = "python -m bp_jax train (the command; metrics.json wall_time_s)"
COMMAND_ENSEMBLE = f"python -m bp_jax train --ensemble {MEMBERS} (the command; metrics.json wall_time_s)"
BASES = {  # each timed against
    VALIDATION: PLAIN,
    DROPOUT: PLAIN,
    ENSEMBLE: ONE_MODEL,
    SHARED_ORDER: ONE_MODEL,
    COMMAND_ENSEMBLE: COMMAND,
}
EPOCHS = 100  # the command's default length


def run(smoke: bool) -> dict:
    steps, repeats = (200, 2) if smoke else (20_000, 9)
    record = SuiteRecord()
    config, split = runs.load_data(runs.Config())
    per_epoch = runs.steps_per_epoch(len(split.x_train), config.batch_size)
    command_steps = 2 * per_epoch if smoke else EPOCHS * per_epoch
    fit_args = {"batch_size": config.batch_size, "lr": config.lr, "chunk_size": PROGRESS_EVERY, "keep_losses": False}
    timers = {}

    def add(name: str, call, steps_per_call: int) -> None:
        timer = record.warmed(
            name,
            lambda: Timer(
                lambda: call().params, steps_per_call=steps_per_call, calls_per_repeat=None, min_repeat_s=0.05
            ),
        )
        if timer is not None:
            timers[name] = timer

    def command_fit(ensemble: int = 1, dropout: float = 0.0):
        """(loss, params, data-order key) of the run `bp-jax train [--ensemble E] [--dropout P]` starts from."""
        run_config = dataclasses.replace(config, ensemble=ensemble, dropout=dropout)
        model = runs.training_model(split.x_train.shape[1], run_config, split.scaling.outputs)
        state = runs.initial_state(model, run_config)
        return runs.loss(model, split.scaling), state["params"], jax.random.wrap_key_data(state["key"])

    # the validation rows carved as --early-stopping carves them; both contenders fit the rest
    fitting, held = data.validation_rows(split.y_train, config.validation_fraction, config.split_seed, classify=False)
    x, y = jax.device_put(split.x_train[fitting]), jax.device_put(split.y_train[fitting])
    x_val, y_val = jax.device_put(split.x_train[held]), jax.device_put(split.y_train[held])
    loss, params, key = command_fit()
    rule_epoch = runs.steps_per_epoch(len(fitting), config.batch_size)
    rule = bp_jax.early_stopping(  # the validation curve kept, as the command keeps it
        loss, params, x_val, y_val, steps_per_epoch=rule_epoch, patience=steps, epochs=runs.VALIDATION_CURVE_EPOCHS
    )
    plain = functools.partial(bp_jax.fit, loss, params, x, y, steps=steps, key=key, **fit_args)
    add(PLAIN, plain, steps)
    add(VALIDATION, functools.partial(plain, stop_rule=rule), steps)
    dropout_loss, dropout_params, _ = command_fit(dropout=DROPOUT_RATE)
    add(
        DROPOUT,
        functools.partial(bp_jax.fit, dropout_loss, dropout_params, x, y, steps=steps, key=key, **fit_args),
        steps,
    )

    x, y = jax.device_put(split.x_train), jax.device_put(split.y_train)
    for name, fitter, members in ((ONE_MODEL, bp_jax.fit, 1), (ENSEMBLE, bp_jax.fit_ensemble, MEMBERS)):
        loss, params, key = command_fit(ensemble=members)
        train = functools.partial(fitter, loss, params, x, y, steps=command_steps, **fit_args)
        add(name, functools.partial(train, key=key), command_steps)
    add(SHARED_ORDER, functools.partial(train, key=key[0]), command_steps)

    timings = time_interleaved(timers, repeats=repeats)
    for name, per_step in timings.items():
        base = BASES.get(name)
        record.rows.append(
            {
                "name": name,
                "per_step_s": per_step,
                "per_call_s": scaled(per_step, timers[name].steps_per_call),
                "steps_per_call": timers[name].steps_per_call,
                "base": base,
                "vs_base": per_step["median"] / timings[base]["median"] if base in timings else None,
            }
        )
    record.guarded(
        COMMAND, lambda: _command_rows(record, repeats=1 if smoke else 7, epochs=2 if smoke else EPOCHS, warm=not smoke)
    )
    return record.as_dict(
        problem={
            "data": f"diabetes, the {len(split.x_train)} training rows of bp-jax train's default split",
            "sizes": [split.x_train.shape[1], *config.hidden, 1],
            "batch": config.batch_size,
            "lr": config.lr,
            "validation_rows": len(held),
            "dropout": DROPOUT_RATE,
            "members": MEMBERS,
            "steps_per_call": steps,
            "command_steps": command_steps,
        },
        repeats="interleaved: one of each per round",
    )


def _command_rows(record: SuiteRecord, repeats: int, epochs: int, warm: bool) -> None:
    """COMMAND and COMMAND_ENSEMBLE in turns, new processes: each row's times are metrics.json's wall_time_s (per
    call; per step over the run's steps), with the processes' wall times as `process_s`; `warm`: a first run of
    each, not timed, fills the compile cache."""
    arguments = {COMMAND: (), COMMAND_ENSEMBLE: ("--ensemble", str(MEMBERS))}
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        cache = {"BP_JAX_COMPILE_CACHE": str(scratch / "cache")}

        def train(name: str) -> tuple[float, float, int]:
            """(wall_time_s, the process's seconds, total_steps) of one run."""
            out = Path(tempfile.mkdtemp(dir=scratch)) / "run"
            start = time.perf_counter()
            process(
                ("-m", "bp_jax", "train", "--epochs", str(epochs), *arguments[name], "--out", str(out)),
                cwd=scratch,
                env=cache,
            )
            elapsed = time.perf_counter() - start
            metrics = json.loads((out / "metrics.json").read_text())
            return metrics["wall_time_s"], elapsed, metrics["total_steps"]

        for name in arguments if warm else ():
            train(name)
        samples: dict[str, list[tuple[float, float, int]]] = {name: [] for name in arguments}
        for _ in range(repeats):
            for name in arguments:
                samples[name].append(train(name))
    summary = Timer(lambda: None).summary  # median, quartiles and extremes of a list of seconds
    walls = {name: summary([wall for wall, _, _ in taken]) for name, taken in samples.items()}
    for name, taken in samples.items():
        steps, base = taken[0][2], BASES.get(name)
        record.rows.append(
            {
                "name": name,
                "per_step_s": scaled(walls[name], 1 / steps),
                "per_call_s": walls[name],
                "steps_per_call": steps,
                "process_s": summary([seconds for _, seconds, _ in taken]),
                "base": base,
                "vs_base": walls[name]["median"] / walls[base]["median"] if base in walls else None,
            }
        )

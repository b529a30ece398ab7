"""Suite 4, data size: the seed MLP's `fit` step as the data set grows, what compiles when, and the wall
time of the `bp-jax train` command.

Step rows: seconds per step of `fit(..., steps=S, chunk_size=1000)` (call time / S) with minibatches of 32
rows out of 354 … 1 000 000 (x, y ~ N(0, 1)), and with the full batch of 32 rows (the same arithmetic
without the gather), a 3-class classifier's (10 → 5 → 3, softmax cross-entropy, labels drawn uniformly) on
the 354 rows, and the same 10 → 5 → 3 network as an MSE regression, beside the documents' train_step on 32
rows drawn per step from the largest data set, all timed in turns. Compile rows: a `fit` of a configuration
never compiled before (a new model's loss function), then one of the same configuration with new steps, chunk
size and start step, in turns, with the number of XLA compilations each made. Command rows: wall time of
`python -m bp_jax train` processes, in turns.
"""

import functools
import tempfile
from collections.abc import Callable
from pathlib import Path

import jax
import numpy as np

import bp_jax
from benchmarks import startup
from benchmarks.compiles import counting
from benchmarks.problems import SEED_BATCH, SEED_ROWS, SEED_SIZES, mlp_problem
from benchmarks.records import SuiteRecord, torch_baselines
from benchmarks.timing import Timer, time_interleaved

ROWS = (SEED_ROWS, 10_000, 100_000, 1_000_000)
FULL_BATCH = f"bp_jax fit, full batch of {SEED_BATCH} rows"
CLASSES = 3
CLASSIFIER = (
    f"bp_jax fit, {CLASSES}-class softmax cross-entropy (10 → 5 → {CLASSES}), minibatch {SEED_BATCH} of "
    f"{SEED_ROWS} rows"
)
#: the classifier's network trained as a regression (MSE on 3 outputs): the same arithmetic but the loss
REGRESSION_3 = (
    f"bp_jax fit, {CLASSES}-output MSE regression (10 → 5 → {CLASSES}), minibatch {SEED_BATCH} of {SEED_ROWS} rows"
)
FIRST_FIT = "first fit of a configuration (compile included)"
SECOND_FIT = "second fit of it: new steps, chunk size and start step"
COLD = "bp-jax train --steps 1, cold (a fresh, empty BP_JAX_COMPILE_CACHE)"
WARM = "bp-jax train --steps 1, warm (the BP_JAX_COMPILE_CACHE a previous run filled)"
CACHE_OFF = "bp-jax train --steps 1, BP_JAX_COMPILE_CACHE=off"
FIRST_CALL = {"steps": 1000, "chunk_size": 1000}  # minibatches of 32 of 354 rows, as `bp-jax train`
SECOND_CALL = {"steps": 1500, "chunk_size": 300, "start_step": 7}
CHECKPOINT_STEPS = 20_000


def spaced(count: int) -> str:
    return f"{count:,}".replace(",", " ")


def minibatch_name(rows: int) -> str:
    return f"bp_jax fit, minibatch {SEED_BATCH} of {spaced(rows)} rows"


def torch_name(rows: int) -> str:
    return f"torch: the documents' train_step on {SEED_BATCH} of {spaced(rows)} rows drawn per step (torch.randint)"


def checkpoint_name(every: int) -> str:
    return f"bp-jax train --steps {CHECKPOINT_STEPS} --batch-size {SEED_BATCH} --checkpoint-every {every} (warm cache)"


def run(smoke: bool) -> dict:
    record = SuiteRecord()
    steps = 200 if smoke else 10_000
    record.guarded("fit step by data size", lambda: _step_rows(record, smoke, steps))
    record.guarded("compile and re-use", lambda: _compile_rows(record, repeats=2 if smoke else 5))
    if smoke:
        for name in (COLD, WARM, CACHE_OFF, checkpoint_name(997), checkpoint_name(1000)):
            record.skip(name, "not run in --smoke (each run is a new Python process that compiles: seconds)")
    else:
        record.guarded("bp-jax train", lambda: _command_rows(record, repeats=3))
    return record.as_dict(
        problem={
            "sizes": SEED_SIZES,
            "batch": SEED_BATCH,
            "dtype": "float32",
            "fit_steps_per_call": steps,
            "chunk_size": 1000,
            "first_fit": _options(FIRST_CALL),
            "second_fit": _options(SECOND_CALL),
        },
        repeats="interleaved within each group: one of each per round",
    )


def _options(call: dict) -> str:
    return ", ".join(f"{name}={value}" for name, value in call.items())


def _step_rows(record: SuiteRecord, smoke: bool, steps: int) -> None:
    rows, repeats, torch_calls = (ROWS[:2], 3, 20) if smoke else (ROWS, 11, 500)
    model, params, x, y = mlp_problem(SEED_SIZES, max(rows))
    fit = functools.partial(bp_jax.fit, bp_jax.loss_fn(model), params, steps=steps, lr=0.01, chunk_size=1000)
    runs = {FULL_BATCH: (SEED_BATCH, functools.partial(fit, x[:SEED_BATCH], y[:SEED_BATCH]))}
    runs |= {
        minibatch_name(n): (n, functools.partial(fit, x[:n], y[:n], batch_size=SEED_BATCH, key=jax.random.key(0)))
        for n in rows
    }
    classifier = bp_jax.mlp((*SEED_SIZES[:-1], CLASSES), "relu")
    labels = jax.random.randint(jax.random.key(1), (SEED_ROWS,), 0, CLASSES)
    runs[CLASSIFIER] = (
        SEED_ROWS,
        functools.partial(
            bp_jax.fit,
            bp_jax.loss_fn(classifier, bp_jax.softmax_cross_entropy),
            classifier.init(jax.random.key(0)),
            x[:SEED_ROWS],
            labels,
            steps=steps,
            lr=0.01,
            chunk_size=1000,
            batch_size=SEED_BATCH,
            key=jax.random.key(0),
        ),
    )
    runs[REGRESSION_3] = (
        SEED_ROWS,
        functools.partial(
            bp_jax.fit,
            bp_jax.loss_fn(classifier),
            classifier.init(jax.random.key(0)),
            x[:SEED_ROWS],
            jax.random.normal(jax.random.key(2), (SEED_ROWS, CLASSES)),
            steps=steps,
            lr=0.01,
            chunk_size=1000,
            batch_size=SEED_BATCH,
            key=jax.random.key(0),
        ),
    )
    timers, sizes = {}, {}
    for name, (size, call) in runs.items():
        timer = record.warmed(name, lambda call=call: Timer(lambda: call().losses, steps_per_call=steps))
        if timer is not None:
            timers[name], sizes[name] = timer, (size, "bp_jax")
    torch_row = torch_name(max(rows))
    if record.needs_torch(torch_row):
        timer = record.warmed(
            torch_row,
            lambda: Timer(
                torch_baselines.sampled_step(np.array(x), np.array(y)),
                calls_per_repeat=torch_calls,
                warmup=torch_calls,
                sync=torch_baselines.sync,
            ),
        )
        if timer is not None:
            timers[torch_row], sizes[torch_row] = timer, (max(rows), "torch")
    timings = time_interleaved(timers, repeats=repeats)
    full, torch_step = timings.get(FULL_BATCH), timings.get(torch_row)
    for name, timing in timings.items():
        record.rows.append(
            {
                "name": name,
                "group": "step",
                "framework": sizes[name][1],
                "rows": sizes[name][0],
                "per_step_s": timing,
                "vs_full_batch": full and timing["median"] / full["median"],
                "torch_speedup": torch_step and torch_step["median"] / timing["median"],
            }
        )


def _compile_rows(record: SuiteRecord, repeats: int) -> None:
    """Each round: a fit of a new configuration, then one of the same with new steps, chunk size and start
    step (time_interleaved keeps the order within a round)."""
    _, params, x, y = mlp_problem(SEED_SIZES, SEED_ROWS)
    fit = functools.partial(bp_jax.fit, params=params, x=x, y=y, lr=0.01, batch_size=SEED_BATCH, key=jax.random.key(0))
    latest, counts = {}, {FIRST_FIT: [], SECOND_FIT: []}

    def first():
        # a new model (new functions, so a new loss_fn): a configuration nothing has compiled; an equal
        # loss_fn(model) would reuse the compiled loop
        latest["loss"] = bp_jax.loss_fn(bp_jax.mlp(SEED_SIZES, "relu"))
        return fit(latest["loss"], **FIRST_CALL)

    def second():
        return fit(latest["loss"], **SECOND_CALL)

    def counted(name, call):
        def call_and_count():
            with counting() as compiled:
                call()
            counts[name].append(len(compiled))

        return call_and_count

    timings = time_interleaved(
        {name: Timer(counted(name, call), warmup=0) for name, call in ((FIRST_FIT, first), (SECOND_FIT, second))},
        repeats=repeats,
    )
    for name, timing in timings.items():
        record.rows.append(
            {"name": name, "group": "compile", "framework": "bp_jax", "seconds": timing, "compilations": counts[name]}
        )


def _command_rows(record: SuiteRecord, repeats: int) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        warm_cache = tempfile.mkdtemp(dir=scratch)
        fresh = lambda: tempfile.mkdtemp(dir=scratch)
        runs = {COLD: ((), fresh), WARM: ((), lambda: warm_cache), CACHE_OFF: ((), lambda: "off")}
        runs |= {
            checkpoint_name(every): (
                ("--steps", str(CHECKPOINT_STEPS), "--batch-size", str(SEED_BATCH), "--checkpoint-every", str(every)),
                lambda: warm_cache,
            )
            for every in (997, 1000)
        }
        timers = {}
        for name, (options, cache) in runs.items():
            call = functools.partial(_train, options or ("--steps", "1"), cache, scratch)
            timer = record.warmed(name, lambda call=call, name=name: Timer(call, warmup=int(name == WARM)))
            if timer is not None:
                timers[name] = timer
        for name, timing in time_interleaved(timers, repeats=repeats).items():
            record.rows.append({"name": name, "group": "command", "framework": "bp_jax", "seconds": timing})


def _train(options: tuple[str, ...], cache: Callable[[], str], scratch: Path) -> None:
    """`python -m bp_jax train OPTIONS` in a new process writing into a new folder, with
    BP_JAX_COMPILE_CACHE=cache()."""
    startup.process(
        ("-m", "bp_jax", "train", *options, "--out", tempfile.mkdtemp(dir=scratch)),
        cwd=scratch,
        env={"BP_JAX_COMPILE_CACHE": cache()},
    )

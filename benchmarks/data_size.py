"""Suite 4, data size: the seed MLP's `fit` step as the data set grows, what compiles when, and the wall
time of the `bp-jax train` command.

Step rows: seconds per step of `fit(..., steps=S, chunk_size=1000)` (call time / S) with minibatches of 32
rows out of 354 … 1 000 000 (x, y ~ N(0, 1)), and with the full batch of 32 rows (the same arithmetic
without the gather), a 3-class classifier's (10 → 5 → 3, softmax cross-entropy, labels drawn uniformly) on
the 354 rows, and the same 10 → 5 → 3 network as an MSE regression, beside the documents' train_step on 32
rows drawn per step from the largest data set, all timed in turns. Compile rows: a `fit` of a configuration
never compiled before (a new model's loss function), then one of the same configuration with new steps, chunk
size and start step, in turns, with the number of XLA compilations each made. Command rows: wall time of
`python -m bp_jax train` processes, in turns. Table rows (#34): the commands on tables of 2 000 000 rows the suite
writes (10 numeric features and a target; the same with two of the features text and 1 % of three columns' cells
empty), each a new process in turns with its baseline (`train --steps 1` on diabetes; pandas reading the table
and writing a column of 2 000 000 numbers as CSV, what predict writes), with each process's peak memory
(ru_maxrss, through a small process between: a child starts with its parent's peak), and `data.load` in this
process in turns with `pandas.read_parquet`.
"""

import functools
import os
import subprocess
import sys
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
TABLE_ROWS = 2_000_000
TABLE_FEATURES = 10
NUMERIC = f"{TABLE_ROWS:,} × {TABLE_FEATURES} numbers".replace(",", " ")
TEXT = f"{TABLE_ROWS:,} × {TABLE_FEATURES}, 2 text columns, 1 % empty cells in 3 columns".replace(",", " ")
TABLE_DIABETES = "bp-jax train --dataset diabetes --steps 1 (warm cache)"
TABLE_NUMERIC = f"bp-jax train --data numeric.parquet --steps 1 ({NUMERIC}; warm cache)"
TABLE_TEXT = f"bp-jax train --data text.parquet --missing impute --steps 1 ({TEXT}; warm cache)"
TABLE_PREDICT = f"bp-jax predict RUN --data numeric.parquet --out FILE ({NUMERIC}; warm cache)"
TABLE_PANDAS = "python: pandas.read_parquet(numeric.parquet), its target column .to_csv(FILE)"
TABLE_LOAD = "bp_jax.cli.data.load(numeric.parquet), in this process"
TABLE_READ = "pandas.read_parquet(numeric.parquet), in this process"
#: each row's baseline: what the goal allows it beyond (seconds): train 3 s over diabetes, text 6 s, predict 3 s
#: over pandas reading and writing
TABLE_BASELINES = {
    TABLE_NUMERIC: (TABLE_DIABETES, 3.0),
    TABLE_TEXT: (TABLE_DIABETES, 6.0),
    TABLE_PREDICT: (TABLE_PANDAS, 3.0),
    TABLE_LOAD: (TABLE_READ, None),
}


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
        for name in (COLD, WARM, CACHE_OFF, checkpoint_name(997), checkpoint_name(1000), *_TABLE_NAMES):
            record.skip(name, "not run in --smoke (each run is a new Python process that compiles: seconds)")
    else:
        record.guarded("bp-jax train", lambda: _command_rows(record, repeats=3))
        record.guarded("tables of 2 000 000 rows", lambda: _table_rows(record, repeats=5))
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


_TABLE_NAMES = (TABLE_DIABETES, TABLE_NUMERIC, TABLE_TEXT, TABLE_PREDICT, TABLE_PANDAS, TABLE_LOAD, TABLE_READ)


def _write_tables(folder: Path) -> None:
    """numeric.parquet: x ~ N(0, 1) and y = sin(x·a) + noise; text.parquet: the same with x0 and x1 as text
    (5 and 40 categories) and 1 % of x0, x1 and x2 empty."""
    import pandas as pd

    rng = np.random.default_rng(0)
    x = rng.standard_normal((TABLE_ROWS, TABLE_FEATURES))
    table = pd.DataFrame({f"x{i}": x[:, i] for i in range(TABLE_FEATURES)})
    table["y"] = np.sin(x @ (rng.standard_normal(TABLE_FEATURES) / 3)) + 0.1 * rng.standard_normal(TABLE_ROWS)
    table.to_parquet(folder / "numeric.parquet")
    for name, categories in (("x0", 5), ("x1", 40)):
        table[name] = pd.Series(
            np.asarray([f"c{k}" for k in range(categories)])[rng.integers(0, categories, TABLE_ROWS)]
        )
    for name in ("x0", "x1", "x2"):
        table.loc[rng.uniform(size=TABLE_ROWS) < 0.01, name] = None
    table.to_parquet(folder / "text.parquet")


#: run a command, then print its peak resident memory (ru_maxrss, KiB): a small process between this one and
#: the command, whose memory Linux would count as the command's own (a child starts with its parent's peak)
PEAK = (
    "import os, subprocess, sys; process = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL); "
    "_, status, usage = os.wait4(process.pid, 0); print(usage.ru_maxrss); sys.exit(os.waitstatus_to_exitcode(status))"
)


def _peak_process(argv: tuple[str, ...], cwd: Path, env: dict, peaks: list) -> None:
    """Run `python ARGV` to its end, appending its peak resident memory (bytes) to `peaks`; RuntimeError with
    the last line of its stderr if it fails."""
    done = subprocess.run(
        [sys.executable, "-c", PEAK, sys.executable, *argv],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=os.environ | env,
    )
    if done.returncode:
        last = (done.stderr.strip().splitlines() or ["no stderr"])[-1]
        raise RuntimeError(f"python {' '.join(argv)} exited with {done.returncode}: {last}")
    peaks.append(int(done.stdout.split()[-1]) * 1024)


def _table_rows(record: SuiteRecord, repeats: int) -> None:
    """The table rows, each command a new process in turns with its baseline, with its peak memory."""
    import pandas as pd

    from bp_jax.cli import data

    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        _write_tables(scratch)
        env = {"BP_JAX_COMPILE_CACHE": tempfile.mkdtemp(dir=scratch)}
        out = lambda: tempfile.mkdtemp(dir=scratch)
        train = ("-m", "bp_jax", "train", "--steps", "1")
        _peak_process((*train, "--data", "numeric.parquet", "--out", str(scratch / "run")), scratch, env, [])
        pandas_code = (
            "import sys, pandas; pandas.read_parquet('numeric.parquet')[['y']].to_csv(sys.argv[1], index=False)"
        )
        commands = {
            TABLE_DIABETES: lambda: (*train, "--dataset", "diabetes", "--out", out()),
            TABLE_NUMERIC: lambda: (*train, "--data", "numeric.parquet", "--out", out()),
            TABLE_TEXT: lambda: (*train, "--data", "text.parquet", "--missing", "impute", "--out", out()),
            TABLE_PREDICT: lambda: (
                "-m",
                "bp_jax",
                "predict",
                "run",
                "--data",
                "numeric.parquet",
                "--out",
                out() + "/p.csv",
            ),
            TABLE_PANDAS: lambda: ("-c", pandas_code, out() + "/p.csv"),
        }
        peaks: dict[str, list] = {name: [] for name in commands}
        timers = {
            name: record.warmed(
                name,
                lambda argv=argv, name=name: Timer(
                    lambda: _peak_process(argv(), scratch, env, peaks[name]), sync=lambda _: None
                ),
            )
            for name, argv in commands.items()
        }
        source = str(scratch / "numeric.parquet")
        timers[TABLE_LOAD] = record.warmed(TABLE_LOAD, lambda: Timer(lambda: data.load(source), sync=lambda _: None))
        timers[TABLE_READ] = record.warmed(
            TABLE_READ, lambda: Timer(lambda: pd.read_parquet(source), sync=lambda _: None)
        )
        timings = time_interleaved(
            {name: timer for name, timer in timers.items() if timer is not None}, repeats=repeats
        )
    table_bytes = 8 * TABLE_ROWS * (TABLE_FEATURES + 1)
    median_peak = {name: float(np.median(values[-repeats:])) for name, values in peaks.items() if values}
    for name, timing in timings.items():
        baseline, allowed = TABLE_BASELINES.get(name, (None, None))
        row = {"name": name, "group": "table", "framework": "bp_jax", "seconds": timing}
        if name in median_peak:
            row["peak_memory_bytes"] = median_peak[name]
        if baseline in timings:
            row |= {"baseline": baseline, "over_baseline_s": timing["median"] - timings[baseline]["median"]}
            row["allowed_over_baseline_s"] = allowed
        if baseline in median_peak:
            row["memory_over_baseline_in_tables"] = (median_peak[name] - median_peak[baseline]) / table_bytes
        record.rows.append(row)

"""Suite 7, export: a trained run's predictions for 1 and 10 000 rows by `bp-jax predict`'s own path, by its
`bp-jax export --format jax` file and by its `--format onnx` file in onnxruntime (CPU), timed in turns.

The run: `bp-jax train` (the seed MLP on diabetes, 1100 steps; 40 in a smoke run), exported by `bp-jax export`
both ways. The rows: diabetes patients in their original units, drawn with replacement. Timed per call, from
raw rows in memory to predictions in memory:
- predict's path: `bp_jax.cli.predict.predictions(model, params, scaling, frame)` on a DataFrame, what the
  command does per file once the run is loaded (encode and standardise, the model, the target's units); not
  the process start, reading the checkpoint or the CSV;
- `exported.call(x)`: the deserialized `jax.export.Exported` called as is on float32 rows;
- `jax.jit(exported.call)(x)`: the same, jitted once, as a server would hold it;
- `onnxruntime InferenceSession.run`: the ONNX file, CPUExecutionProvider.
Each row also records the largest |difference| from predict's numbers, in the target's units.
"""

import tempfile
from pathlib import Path

import jax
import numpy as np

from benchmarks.records import SuiteRecord
from benchmarks.timing import Timer, time_interleaved
from bp_jax import cli
from bp_jax.cli import data, predict, runs

PREDICT = "bp-jax predict's path (predictions on a DataFrame)"
CALL = "jax.export file: exported.call(x)"
JITTED = "jax.export file: jax.jit(exported.call)(x)"
ONNX = "ONNX file: onnxruntime InferenceSession.run"
ROWS = (1, 10_000)


def _predictors(folder: Path, run: Path) -> dict:
    """Each way's `rows -> predictions (rows,)` from (frame, x): a DataFrame and its float32 array."""
    trained, model, params = runs.read_trained(run)
    exported = jax.export.deserialize(bytearray((folder / "model.jax").read_bytes()))
    jitted = jax.jit(exported.call)
    predictors = {
        PREDICT: lambda frame, x: (
            predict.predictions(model, params, trained.scaling, frame, "rows").iloc[:, 0].to_numpy()
        ),
        CALL: lambda frame, x: exported.call(x),
        JITTED: lambda frame, x: jitted(x),
    }
    try:
        import onnxruntime

        session = onnxruntime.InferenceSession(folder / "model.onnx", providers=["CPUExecutionProvider"])
        predictors[ONNX] = lambda frame, x: session.run(None, {"x": x})[0]
    except ImportError as error:
        predictors[ONNX] = error
    return predictors


def run(smoke: bool) -> dict:
    record, rows, repeats = SuiteRecord(), ((1, 100) if smoke else ROWS), (3 if smoke else 15)
    with tempfile.TemporaryDirectory(prefix="bp-jax-bench-export-") as temporary:
        folder = Path(temporary)
        run_dir = folder / "run"
        steps = ["--steps", "40"] if smoke else []
        for argv in (
            ["train", "--out", str(run_dir), "--compile-cache", "off", *steps],
            ["export", str(run_dir), "--format", "jax", "--out", str(folder / "model.jax")],
            ["export", str(run_dir), "--format", "onnx", "--out", str(folder / "model.onnx")],
        ):
            if cli.main(argv) != 0:
                raise RuntimeError(f"bp-jax {' '.join(argv)} failed")
        predictors = _predictors(folder, run_dir)
        patients = data.read("diabetes").drop(columns="target")
        timers, results = {}, {}
        for count in rows:
            frame = patients.sample(count, replace=True, random_state=count).reset_index(drop=True)
            x = frame.to_numpy(np.float32)
            for name, predictor in predictors.items():
                if isinstance(predictor, Exception):
                    record.skip(f"{name}, {count} rows", f"onnxruntime is not importable ({predictor})")
                    continue
                label = f"{name}, {count} rows"
                results[label] = record.guarded(label, lambda p=predictor, f=frame, x=x: np.asarray(p(f, x)))
                timer = record.warmed(
                    label,
                    lambda p=predictor, f=frame, x=x: Timer(
                        lambda: p(f, x), calls_per_repeat=None, min_repeat_s=0.05, warmup=3
                    ),
                )
                if timer is not None:
                    timers[(name, count)] = timer
        timings = time_interleaved(timers, repeats=repeats)
        for (name, count), timing in timings.items():
            reference = results.get(f"{PREDICT}, {count} rows")
            result = results[f"{name}, {count} rows"]
            baseline = timings.get((PREDICT, count))
            record.rows.append(
                {
                    "name": name,
                    "rows": count,
                    "per_call_s": timing,
                    "per_row_s": timing["median"] / count,
                    "speedup_vs_predict": baseline["median"] / timing["median"] if baseline else None,
                    "max_abs_difference_from_predict": None
                    if reference is None or result is None
                    else float(np.max(np.abs(result.reshape(-1).astype(np.float64) - reference))),
                }
            )
    return record.as_dict(
        problem={
            "run": f"bp-jax train on diabetes (seed MLP, {'40 steps' if smoke else '1100 steps'})",
            "rows": list(rows),
            "input": "diabetes patients in original units, drawn with replacement; float32 for the exports",
        }
    )

"""The issue's targets, each checked against this run: met, missed, or not run (and why)."""

import math

from benchmarks import autodiff, data_size, ensemble, estimators, startup, training
from benchmarks.seed import CUDA_GRAPH, FIT, TORCH_EAGER


def _row(results: dict, name: str, suite: str = "seed") -> dict | None:
    rows = results.get(suite, {}).get("rows", [])
    return next((row for row in rows if row["name"] == name), None)


def _largest_bf16(results: dict, name: str) -> dict | None:
    rows = [
        row for row in results.get("scaling", {}).get("rows", []) if row["name"] == name and row["dtype"] == "bfloat16"
    ]
    return max(rows, key=lambda row: (row["width"], row["batch"]), default=None)


def _target(text: str, device: str, measured: str | None, met: bool | None, why_not_run: str = "") -> dict:
    status = "not run" if measured is None else ("met" if met else "missed")
    return {"target": text, "device": device, "measured": measured or why_not_run, "status": status}


def _speedup_target(results, text, device, name, bar):
    row = _row(results, name)
    speedup = row and row["speedup_vs_torch_eager"]
    if not speedup:
        return _target(text, device, None, None, "no seed-suite row for it or for torch eager in this run")
    return _target(
        text,
        device,
        f"{speedup:.1f}× ({row['per_step_s']['median'] * 1e6:.2f} µs/step vs "
        f"{_row(results, TORCH_EAGER)['per_step_s']['median'] * 1e6:.1f} µs/step)",
        speedup >= bar,
    )


def _growth_slope(rows: list[dict], method: str) -> float:
    """Log-log slope of time against parameter count over the three largest sizes."""
    points = [(math.log(row["params"]), math.log(row["per_call_s"][method]["median"])) for row in rows[-3:]]
    mean_x = sum(x for x, _ in points) / len(points)
    mean_y = sum(y for _, y in points) / len(points)
    return sum((x - mean_x) * (y - mean_y) for x, y in points) / sum((x - mean_x) ** 2 for x, _ in points)


def evaluate(results: dict, platform: str) -> list[dict]:
    """One entry per target: text, device, measured value and status for the run in `results`."""
    on_gpu, gpu_reason = platform == "gpu", f"needs an NVIDIA GPU; this run was on {platform}"
    cpu_reason = f"a CPU target; this run was on {platform}"
    targets = []
    for text, name, bar in (
        ("CPU: sgd_step ≥ 5× faster per step than the documents' train_step", "bp_jax sgd_step, one call per step", 5),
        ("CPU: fused fit ≥ 30× faster per step than the documents' train_step", FIT, 30),
    ):
        targets.append(
            _speedup_target(results, text, "cpu", name, bar)
            if platform == "cpu"
            else _target(text, "cpu", None, None, cpu_reason)
        )
    fit, text = _row(results, FIT), "CPU: fused seed step ≤ 1 µs per step (stretch)"
    if platform == "cpu" and fit:
        speedup = fit["speedup_vs_torch_eager"]
        targets.append(
            _target(
                text,
                "cpu",
                f"{fit['per_step_s']['median'] * 1e6:.2f} µs/step"
                + (f" ({speedup:.1f}× the documents' train_step)" if speedup else ""),
                fit["per_step_s"]["median"] <= 1e-6,
            )
        )
    else:
        targets.append(_target(text, "cpu", None, None, cpu_reason if platform != "cpu" else "a row is missing"))

    graph = _row(results, CUDA_GRAPH)
    text = "H100: fused seed step ≤ 5 µs per step"
    targets.append(
        _target(text, "gpu", f"{fit['per_step_s']['median'] * 1e6:.2f} µs/step", fit["per_step_s"]["median"] <= 5e-6)
        if on_gpu and fit
        else _target(text, "gpu", None, None, gpu_reason)
    )
    text = "H100: fused seed step ≥ 7× faster than PyTorch's CUDA-graph replay"
    if on_gpu and fit and graph:
        ratio = graph["per_step_s"]["median"] / fit["per_step_s"]["median"]
        targets.append(_target(text, "gpu", f"{ratio:.1f}×", ratio >= 7))
    else:
        targets.append(_target(text, "gpu", None, None, gpu_reason if not on_gpu else "a row is missing"))

    large, compiled = _largest_bf16(results, "bp_jax sgd_step"), _largest_bf16(results, "torch.compile")
    text = "H100: large bf16 MLP step ≥ 90% of the bare matmul's TFLOP/s"
    if on_gpu and large and large.get("pct_of_matmul"):
        targets.append(
            _target(
                text,
                "gpu",
                f"{large['pct_of_matmul']:.0f}% ({large['tflops']:.0f} TFLOP/s, {large['width']}×{large['batch']})",
                large["pct_of_matmul"] >= 90,
            )
        )
    else:
        targets.append(_target(text, "gpu", None, None, gpu_reason if not on_gpu else "a row is missing"))
    text = "H100: large bf16 MLP step ahead of torch.compile"
    if on_gpu and large and compiled:
        ratio = compiled["per_step_s"]["median"] / large["per_step_s"]["median"]
        targets.append(_target(text, "gpu", f"{ratio:.2f}× torch.compile's speed", ratio > 1))
    else:
        targets.append(_target(text, "gpu", None, None, gpu_reason if not on_gpu else "a row is missing"))

    targets += _data_targets(results) + _ensemble_targets(results, platform, cpu_reason) + _sklearn_targets(results)
    targets.append(_per_example_target(results, platform, cpu_reason))
    targets.append(_startup_target(results))
    targets += _training_targets(results)

    grad_rows = sorted(results.get("grad", {}).get("rows", []), key=lambda row: row["params"])
    reverse_text = "Reverse-mode gradient ≤ 4× the forward time at every size"
    growth_text = "{} grows with the parameter count"
    growing = ("forward mode (jax.jacfwd)", "central finite differences")
    if not grad_rows:
        return targets + [
            _target(text, "any", None, None, "grad suite not run")
            for text in (reverse_text, *map(growth_text.format, growing))
        ]
    worst = max(row["ratio_to_forward"]["reverse (jax.grad)"] for row in grad_rows)
    targets.append(
        _target(
            reverse_text,
            "any",
            f"at most {worst:.2f}× over n = {grad_rows[0]['params']}…{grad_rows[-1]['params']}",
            worst <= 4,
        )
    )
    for method in growing:
        slope = _growth_slope(grad_rows, method)
        targets.append(
            _target(
                growth_text.format(method),
                "any",
                f"log-log slope {slope:.2f} over the three largest sizes",
                slope >= 0.5,
            )
        )
    return targets


def _ratio_target(text: str, device: str, row: dict | None, base: dict | None, bar: float) -> dict:
    """Met if the row's median time per step ≤ bar × the base row's."""
    if not (row and base):
        return _target(text, device, None, None, "a row is missing in this run")
    ratio = row["per_step_s"]["median"] / base["per_step_s"]["median"]
    return _target(
        text,
        device,
        f"{ratio:.2f}× ({row['per_step_s']['median'] * 1e6:.3g} µs vs "
        f"{base['per_step_s']['median'] * 1e6:.3g} µs per step)",
        ratio <= bar,
    )


def _data_targets(results: dict) -> list[dict]:
    row = lambda name: _row(results, name, "data")
    smallest, largest = (row(data_size.minibatch_name(rows)) for rows in (data_size.ROWS[0], data_size.ROWS[-1]))
    targets = [
        _ratio_target(
            f"Minibatch step at {data_size.spaced(data_size.ROWS[-1])} rows ≤ 1.5× its cost at "
            f"{data_size.ROWS[0]} rows",
            "any",
            largest,
            smallest,
            1.5,
        ),
        _ratio_target(
            f"Minibatch step ({data_size.ROWS[0]} rows) ≤ 1.5× the full batch of the same size",
            "any",
            smallest,
            row(data_size.FULL_BATCH),
            1.5,
        ),
    ]
    targets.append(
        _ratio_target(
            f"{data_size.CLASSES}-class fit step (softmax cross-entropy) ≤ 1.3× the regression "
            f"fit step of the same size (10 → 5 → {data_size.CLASSES}, MSE; {data_size.ROWS[0]} rows, minibatch)",
            "any",
            row(data_size.CLASSIFIER),
            row(data_size.REGRESSION_3),
            1.3,
        )
    )
    every_997, every_1000 = row(data_size.checkpoint_name(997)), row(data_size.checkpoint_name(1000))
    text = "`bp-jax train --checkpoint-every 997` within 1.5× of `--checkpoint-every 1000` (wall time)"
    if every_997 and every_1000:
        ratio = every_997["seconds"]["median"] / every_1000["seconds"]["median"]
        targets.append(
            _target(
                text,
                "any",
                f"{ratio:.2f}× ({every_997['seconds']['median']:.2f} s vs {every_1000['seconds']['median']:.2f} s)",
                ratio <= 1.5,
            )
        )
    else:
        targets.append(_target(text, "any", None, None, "a row is missing in this run"))
    second, text = row(data_size.SECOND_FIT), "Second fit of a new length, chunk size and start step: 0 compilations"
    targets.append(
        _target(
            text,
            "any",
            f"{max(second['compilations'])} in {len(second['compilations'])} "
            f"fits ({second['seconds']['median'] * 1e3:.3g} ms each)",
            max(second["compilations"]) == 0,
        )
        if second
        else _target(text, "any", None, None, "a row is missing in this run")
    )
    warm, text = row(data_size.WARM), "Warm `bp-jax train --steps 1` ≤ 2 s wall"
    targets.append(
        _target(text, "any", f"{warm['seconds']['median']:.2f} s", warm["seconds"]["median"] <= 2)
        if warm
        else _target(text, "any", None, None, "a row is missing in this run")
    )
    return targets


def _ensemble_targets(results: dict, platform: str, cpu_reason: str) -> list[dict]:
    rows = [
        row
        for row in results.get("ensemble", {}).get("rows", [])
        if row["name"] == ensemble.ENSEMBLE and row["members"] >= 256
    ]
    worst = max(rows, key=lambda row: row["per_model_step_s"]["median"], default=None)
    texts = (
        "CPU: fit_ensemble ≤ 0.5 µs per model-step at E ≥ 256",
        "CPU: fit_ensemble's model-step ≤ 0.25× one model's fit step at E ≥ 256",
    )
    if platform != "cpu" or worst is None or worst["vs_one_fit"] is None:
        return [
            _target(
                text,
                "cpu",
                None,
                None,
                cpu_reason if platform != "cpu" else "no E ≥ 256 row or no one-model fit row in this run",
            )
            for text in texts
        ]
    median, where = worst["per_model_step_s"]["median"], f"E = {worst['members']}, the worst of E ≥ 256"
    return [
        _target(texts[0], "cpu", f"{median * 1e6:.3g} µs ({where})", median <= 0.5e-6),
        _target(texts[1], "cpu", f"{worst['vs_one_fit']:.3g}× ({where})", worst["vs_one_fit"] <= 0.25),
    ]


def _per_example_target(results: dict, platform: str, cpu_reason: str) -> dict:
    """bp_jax's hand-written per-example gradients ≥ 10× torch.func's vmap(grad) at every batch size: the worst."""
    text = f"CPU: {autodiff.MANUAL} ≥ 10× {autodiff.TORCH_FUNC} (seed MLP, every batch)"
    rows = [row for row in results.get("autodiff", {}).get("rows", []) if row["group"] == "per-example"]
    ours = {row["batch"]: row for row in rows if row["name"] == autodiff.MANUAL}
    theirs = {row["batch"]: row for row in rows if row["name"] == autodiff.TORCH_FUNC}
    if platform != "cpu" or not ours or set(ours) != set(theirs):
        return _target(text, "cpu", None, None, cpu_reason if platform != "cpu" else "a row is missing in this run")
    speedups = {
        batch: theirs[batch]["per_call_s"]["median"] / ours[batch]["per_call_s"]["median"] for batch in sorted(ours)
    }
    measured = ", ".join(
        f"{speedup:.3g}× at {batch} ({_us(ours[batch])} vs {_us(theirs[batch])})" for batch, speedup in speedups.items()
    )
    return _target(text, "cpu", measured, min(speedups.values()) >= 10)


def _startup_target(results: dict) -> dict:
    """A warm `bp-jax train --steps 1` within 2× of importing jax and running one op (medians, in turns)."""
    text = f"`{startup.TRAIN}` ≤ 2× `{startup.JAX_ONLY}` (wall time, in turns)"
    row = _row(results, startup.STARTUP, "startup")
    if row is None:
        return _target(text, "any", None, None, "startup suite not run")
    train, jax_only = (row["seconds"][name]["median"] for name in (startup.TRAIN, startup.JAX_ONLY))
    return _target(
        text,
        "any",
        f"{row['ratio']:.2f}× ({train:.2f} s vs {jax_only:.2f} s)",
        row["ratio"] <= 2,
    )


def _training_targets(results: dict) -> list[dict]:
    """Early stopping's in-loop check ≤ 1.3× the plain step, dropout ≤ 1.5×, `--ensemble 16` ≤ 3× one model's
    training time (medians, in turns): its fit calls alone, and the command's own wall_time_s."""
    row = lambda name: _row(results, name, "training")
    targets = [
        _ratio_target(
            "Validation early stopping (the check in the loop) ≤ 1.3× the plain fit step",
            "any",
            row(training.VALIDATION),
            row(training.PLAIN),
            1.3,
        ),
        _ratio_target(
            f"Dropout ({training.DROPOUT_RATE}, masks drawn each step) ≤ 1.5× the plain fit step",
            "any",
            row(training.DROPOUT),
            row(training.PLAIN),
            1.5,
        ),
    ]
    members = training.MEMBERS
    for text, members_row, one in (
        (
            f"`bp-jax train --ensemble {members}` trains in ≤ 3× one model's time (diabetes, the fit calls alone)",
            row(training.ENSEMBLE),
            row(training.ONE_MODEL),
        ),
        (
            f"`bp-jax train --ensemble {members}` trains in ≤ 3× one model's wall time (diabetes, the command's "
            "metrics.json wall_time_s, warm compile cache)",
            row(training.COMMAND_ENSEMBLE),
            row(training.COMMAND),
        ),
    ):
        if members_row and one:
            ours, theirs = members_row["per_call_s"]["median"], one["per_call_s"]["median"]
            measured = f"{ours / theirs:.2f}× ({_time(ours)} vs {_time(theirs)} a training)"
            targets.append(_target(text, "any", measured, ours / theirs <= 3))
        else:
            targets.append(_target(text, "any", None, None, "a row is missing in this run"))
    return targets


def _time(seconds: float) -> str:
    return f"{seconds * 1e3:.3g} ms"


def _us(row: dict) -> str:
    return f"{row['per_call_s']['median'] * 1e6:.3g} µs"


def _sklearn_targets(results: dict) -> list[dict]:
    """The estimator fits ≥ their goals × sklearn's (with both held-out scores), the grid search ≥ 10× / ≥ 100×."""
    rows = {row["name"]: row for row in results.get("sklearn", {}).get("rows", [])}
    targets = []
    for kind, (ours, theirs) in estimators.FIT.items():
        bar = estimators.FIT_GOALS[kind]
        text = f"{ours} ≥ {bar}× {theirs} (second fits, {'up to 200 iterations' if kind == 'lbfgs' else '200 epochs'})"
        if ours in rows and theirs in rows and rows[ours]["speedup_vs_sklearn"]:
            speedup = rows[ours]["speedup_vs_sklearn"]
            targets.append(
                _target(
                    text,
                    "any",
                    f"{speedup:.3g}× (held-out score {rows[ours]['held_out_score']:.3f} "
                    f"vs {rows[theirs]['held_out_score']:.3f})",
                    speedup >= bar,
                )
            )
        else:
            targets.append(_target(text, "any", None, None, "a row is missing in this run"))
    for name, bar in ((estimators.GRID_SKLEARN_OURS, 10), (estimators.GRID_SKLEARN, 100)):
        text = f"{estimators.GRID_OURS} ≥ {bar}× {name}"
        speedup = rows.get(name, {}).get("bp_jax_grid_speedup")
        targets.append(
            _target(text, "any", f"{speedup:.3g}×", speedup >= bar)
            if speedup
            else _target(text, "any", None, None, "a row is missing in this run")
        )
    return targets

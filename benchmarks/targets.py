"""The issue's targets, each checked against this run: met, missed, or not run (and why)."""

import math

from benchmarks.seed import CUDA_GRAPH, FIT, TORCH_EAGER


def _seed_row(results: dict, name: str) -> dict | None:
    rows = results.get("seed", {}).get("rows", [])
    return next((row for row in rows if row["name"] == name), None)


def _largest_bf16(results: dict, name: str) -> dict | None:
    rows = [row for row in results.get("scaling", {}).get("rows", [])
            if row["name"] == name and row["dtype"] == "bfloat16"]
    return max(rows, key=lambda row: (row["width"], row["batch"]), default=None)


def _target(text: str, device: str, measured: str | None, met: bool | None, why_not_run: str = "") -> dict:
    status = "not run" if measured is None else ("met" if met else "missed")
    return {"target": text, "device": device, "measured": measured or why_not_run, "status": status}


def _speedup_target(results, text, device, name, bar):
    row = _seed_row(results, name)
    speedup = row and row["speedup_vs_torch_eager"]
    if not speedup:
        return _target(text, device, None, None, "no seed-suite row for it or for torch eager in this run")
    return _target(text, device, f"{speedup:.1f}× ({row['per_step_s']['median'] * 1e6:.2f} µs/step vs "
                   f"{_seed_row(results, TORCH_EAGER)['per_step_s']['median'] * 1e6:.1f} µs/step)", speedup >= bar)


def _growth_slope(rows: list[dict], method: str) -> float:
    """Log-log slope of time against parameter count over the three largest sizes."""
    points = [(math.log(row["params"]), math.log(row["per_call_s"][method]["median"])) for row in rows[-3:]]
    mean_x = sum(x for x, _ in points) / len(points)
    mean_y = sum(y for _, y in points) / len(points)
    return (sum((x - mean_x) * (y - mean_y) for x, y in points)
            / sum((x - mean_x) ** 2 for x, _ in points))


def evaluate(results: dict, platform: str) -> list[dict]:
    """One entry per target: text, device, measured value and status for the run in `results`."""
    on_gpu, gpu_reason = platform == "gpu", f"needs an NVIDIA GPU; this run was on {platform}"
    cpu_reason = f"a CPU target; this run was on {platform}"
    targets = []
    for text, name, bar in (("CPU: sgd_step ≥ 5× faster per step than the documents' train_step",
                             "bp_jax sgd_step, one call per step", 5),
                            ("CPU: fused fit ≥ 30× faster per step than the documents' train_step", FIT, 30)):
        targets.append(_speedup_target(results, text, "cpu", name, bar) if platform == "cpu"
                       else _target(text, "cpu", None, None, cpu_reason))
    fit, text = _seed_row(results, FIT), "CPU: fused seed step ≤ 1 µs per step (stretch)"
    if platform == "cpu" and fit:
        speedup = fit["speedup_vs_torch_eager"]
        targets.append(_target(text, "cpu", f"{fit['per_step_s']['median'] * 1e6:.2f} µs/step" +
                               (f" ({speedup:.1f}× the documents' train_step)" if speedup else ""),
                               fit["per_step_s"]["median"] <= 1e-6))
    else:
        targets.append(_target(text, "cpu", None, None, cpu_reason if platform != "cpu" else "a row is missing"))

    graph = _seed_row(results, CUDA_GRAPH)
    text = "H100: fused seed step ≤ 5 µs per step"
    targets.append(_target(text, "gpu", f"{fit['per_step_s']['median'] * 1e6:.2f} µs/step",
                           fit["per_step_s"]["median"] <= 5e-6) if on_gpu and fit
                   else _target(text, "gpu", None, None, gpu_reason))
    text = "H100: fused seed step ≥ 7× faster than PyTorch's CUDA-graph replay"
    if on_gpu and fit and graph:
        ratio = graph["per_step_s"]["median"] / fit["per_step_s"]["median"]
        targets.append(_target(text, "gpu", f"{ratio:.1f}×", ratio >= 7))
    else:
        targets.append(_target(text, "gpu", None, None, gpu_reason if not on_gpu else "a row is missing"))

    large, compiled = _largest_bf16(results, "bp_jax sgd_step"), _largest_bf16(results, "torch.compile")
    text = "H100: large bf16 MLP step ≥ 90% of the bare matmul's TFLOP/s"
    if on_gpu and large and large.get("pct_of_matmul"):
        targets.append(_target(text, "gpu", f"{large['pct_of_matmul']:.0f}% ({large['tflops']:.0f} TFLOP/s, "
                               f"{large['width']}×{large['batch']})", large["pct_of_matmul"] >= 90))
    else:
        targets.append(_target(text, "gpu", None, None, gpu_reason if not on_gpu else "a row is missing"))
    text = "H100: large bf16 MLP step ahead of torch.compile"
    if on_gpu and large and compiled:
        ratio = compiled["per_step_s"]["median"] / large["per_step_s"]["median"]
        targets.append(_target(text, "gpu", f"{ratio:.2f}× torch.compile's speed", ratio > 1))
    else:
        targets.append(_target(text, "gpu", None, None, gpu_reason if not on_gpu else "a row is missing"))

    grad_rows = sorted(results.get("grad", {}).get("rows", []), key=lambda row: row["params"])
    reverse_text = "Reverse-mode gradient ≤ 4× the forward time at every size"
    growth_text = "{} grows with the parameter count"
    growing = ("forward mode (jax.jacfwd)", "central finite differences")
    if not grad_rows:
        return targets + [_target(text, "any", None, None, "grad suite not run")
                          for text in (reverse_text, *map(growth_text.format, growing))]
    worst = max(row["ratio_to_forward"]["reverse (jax.grad)"] for row in grad_rows)
    targets.append(_target(reverse_text, "any", f"at most {worst:.2f}× over n = {grad_rows[0]['params']}…"
                           f"{grad_rows[-1]['params']}", worst <= 4))
    for method in growing:
        slope = _growth_slope(grad_rows, method)
        targets.append(_target(growth_text.format(method), "any",
                               f"log-log slope {slope:.2f} over the three largest sizes", slope >= 0.5))
    return targets

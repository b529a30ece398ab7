"""The benchmark runner works end to end: a smoke-sized run of each suite writes well-formed JSON, Markdown and PNGs.

No timing is asserted: this checks the runner, not the machine.
"""

import importlib.util
import json
import math
import os
import sys
from pathlib import Path

import jax
import pytest
from helpers import process_state

HEADINGS = {
    "seed": "## 1. Seed step",
    "scaling": "## 2. Scaling",
    "grad": "## 3. One backward pass",
    "data": "## 4. Data size",
    "ensemble": "## 5. Ensembles",
    "sklearn": "## 6. scikit-learn",
    "export": "## 7. export",
    "autodiff": "## 8. Autodiff beyond one gradient",
    "startup": "## 9. Start-up",
    "training": "## 10. Training options",
}
PLOTS = {name: f"{name}.png" for name in ("seed", "scaling", "grad", "data", "ensemble", "autodiff")}


def smoke_run(suite: str, out: Path, monkeypatch) -> Path:
    """`python -m benchmarks --smoke --suite SUITE --out OUT` run in this process (`benchmarks.__main__.main`) as in
    a process of its own: under JAX's default settings, and the processes it starts without coverage (line tracing
    would slow their timing loops many times over); JAX's settings and torch's thread count are as before
    afterwards (skorch's rows set one thread)."""
    from benchmarks.__main__ import main

    argv = ["--smoke", "--suite", suite, "--out", str(out)]
    monkeypatch.setattr(sys, "argv", ["benchmarks", *argv])
    for variable in [name for name in os.environ if name.startswith("COVERAGE_")]:
        monkeypatch.delenv(variable)
    torch = sys.modules.get("torch")  # imported with the benchmarks where it is installed
    threads = torch.get_num_threads() if torch else None
    try:
        with process_state():
            jax.config.update("jax_numpy_rank_promotion", "allow")  # conftest's "raise" is for bp_jax's own tests
            main(argv)
    finally:
        if torch:
            torch.set_num_threads(threads)
    return out


def test_the_runner_knows_every_suite():
    from benchmarks.__main__ import SUITES

    assert set(SUITES) == set(HEADINGS)


def _positive_finite(value) -> bool:
    return isinstance(value, float) and math.isfinite(value) and value > 0


def _summaries(tree):
    """Every timing summary (a dict with a median) anywhere in a row."""
    if isinstance(tree, dict):
        if "median" in tree:
            yield tree
        for value in tree.values():
            yield from _summaries(value)


@pytest.mark.slow  # a smoke run of one suite
@pytest.mark.filterwarnings("ignore:Tight layout not applied")  # matplotlib, on the seed plot's many tiny rows
@pytest.mark.parametrize("suite", list(HEADINGS))
def test_each_suite_records_machine_rows_targets_report_and_plots(suite, tmp_path, monkeypatch):
    out = smoke_run(suite, tmp_path, monkeypatch)
    results = json.loads((out / "results.json").read_text())
    assert results["smoke"] is True
    assert {"date_utc", "cpu", "cpu_cores", "platform", "device", "versions"} <= set(results["machine"])
    assert results["machine"]["versions"]["jax"]
    assert set(results["suites"]) == {suite}
    assert results["suites"][suite]["rows"], results["suites"][suite]["skipped"]
    assert all(skip["reason"] for skip in results["suites"][suite]["skipped"])
    assert {target["status"] for target in results["targets"]} <= {"met", "missed", "not run"}
    for row in results["suites"][suite]["rows"]:
        for timing in _summaries(row):
            assert all(_positive_finite(timing[key]) for key in ("median", "q25", "q75", "min", "max")), row
            assert timing["min"] <= timing["median"] <= timing["max"]
    markdown = (out / "README.md").read_text()
    assert "## Targets" in markdown and HEADINGS[suite] in markdown
    if suite in PLOTS and importlib.util.find_spec("matplotlib") is not None:
        assert (out / PLOTS[suite]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"]({PLOTS[suite]})" in markdown
    CHECKS.get(suite, lambda results: None)(results)


def _check_seed(results):
    torch = importlib.util.find_spec("torch") is not None
    seed_rows = {row["name"]: row for row in results["suites"]["seed"]["rows"]}
    assert {
        "bp_jax sgd_step, one call per step",
        "bp_jax optax_step (optax.sgd), one call per step",
        "bp_jax fit, fused (full batch 32, chunk 1000)",
        "bp_jax fit, minibatch 32 of 354 rows",
        "diagnostic: bare lax.scan of the SGD update (unroll 1; no finite guard, no chunks)",
    } <= set(seed_rows)
    for row in seed_rows.values():
        if torch:
            assert _positive_finite(row["speedup_vs_torch_eager"])


def _check_scaling(results):
    for row in results["suites"]["scaling"]["rows"]:
        assert _positive_finite(row["tflops"])
        if row["name"] == "bp_jax sgd_step":
            assert _positive_finite(row["pct_of_matmul"])
            assert row["memory"]["params_bytes"] > 0


def _check_grad(results):
    for row in results["suites"]["grad"]["rows"]:
        assert all(_positive_finite(ratio) for ratio in row["ratio_to_forward"].values())
        assert row["max_abs_diff_jacfwd_vs_grad"] < 1e-4  # the methods time the same gradient


def _check_data(results):
    suite = results["suites"]["data"]
    torch = importlib.util.find_spec("torch") is not None
    data = {row["name"]: row for row in suite["rows"]}
    steps = [row for row in data.values() if row["group"] == "step"]
    assert {row["rows"] for row in steps if row["framework"] == "bp_jax"} == {32, 354, 10_000}
    assert data["bp_jax fit, 3-class softmax cross-entropy (10 → 5 → 3), minibatch 32 of 354 rows"]["group"] == "step"
    assert len([row for row in steps if row["framework"] == "torch"]) == torch
    for row in steps:
        assert _positive_finite(row["vs_full_batch"])
        assert _positive_finite(row["torch_speedup"]) if torch else row["torch_speedup"] is None
    first = data["first fit of a configuration (compile included)"]
    second = data["second fit of it: new steps, chunk size and start step"]
    assert len(first["compilations"]) == len(second["compilations"]) == first["seconds"]["repeats"]
    assert min(first["compilations"]) >= 1  # a new configuration compiles: the counting works
    assert all(isinstance(count, int) and count >= 0 for count in second["compilations"])
    skipped = {skip["name"] for skip in suite["skipped"]}
    assert {name for name in skipped if name.startswith("bp-jax train")} and not any(
        name.startswith("bp-jax train") for name in data
    )  # the command rows are full-run only


def _check_ensemble(results):
    torch = importlib.util.find_spec("torch") is not None
    ensemble = results["suites"]["ensemble"]["rows"]
    measured = {(row["name"], row["members"]) for row in ensemble if row["measured"]}
    for members in (1, 16):
        assert {
            ("bp_jax fit_ensemble (full batch 32 shared)", members),
            ("bp_jax fit_ensemble (minibatch 32 of 354 rows, one key shared)", members),
        } <= measured
        assert any(name.startswith("torch.func ensemble") for name, count in measured if count == members) == torch
    assert ("bp_jax fit, one model (full batch 32)", 1) in measured
    estimates = [row for row in ensemble if not row["measured"]]
    assert {row["members"] for row in estimates} == {16} and len(estimates) == 1 + torch
    for row in ensemble:
        assert _positive_finite(row["vs_one_fit"])
        assert math.isclose(row["per_model_step_s"]["median"] * row["members"], row["per_step_s"]["median"])


@pytest.mark.slow  # importing the benchmarks imports torch and scikit-learn
def test_unknown_suite_is_refused(capsys):
    from benchmarks.__main__ import main

    with pytest.raises(SystemExit) as refused:
        main(["--suite", "nope"])
    assert refused.value.code == 2 and "unknown suite" in capsys.readouterr().err


def _check_sklearn(results):
    suite = results["suites"]["sklearn"]
    rows = {row["name"]: row for row in suite["rows"]}
    for ours, theirs in (
        ("bp_jax MLPRegressor.fit", "sklearn MLPRegressor.fit"),
        ("bp_jax MLPClassifier.fit", "sklearn MLPClassifier.fit"),
        ("bp_jax MLPRegressor.fit, lbfgs", "sklearn MLPRegressor.fit, lbfgs"),
    ):
        assert _positive_finite(rows[ours]["speedup_vs_sklearn"]) and rows[theirs]["speedup_vs_sklearn"] is None
        assert all(1 <= rows[name]["n_iter"] <= suite["problem"]["config"]["max_iter"] for name in (ours, theirs))
        assert all(math.isfinite(rows[name]["held_out_score"]) for name in (ours, theirs))
        assert rows[ours]["time_over_bp_jax"] == 1 and _positive_finite(rows[theirs]["time_over_bp_jax"])
    has_skorch = importlib.util.find_spec("skorch") is not None
    grids = [row for row in suite["rows"] if row["group"] == "grid"]
    assert len(grids) == 5 + has_skorch and all(_positive_finite(row["bp_jax_grid_speedup"]) for row in grids)
    assert [row["n_jobs"] for row in grids][:5] == [None, None, None, 2, 2]
    assert rows["bp_jax GridSearchCV, n_jobs > 1 (concurrent programs on threads)"]["bp_jax_grid_speedup"] == 1
    assert {row["members"] for row in grids} == {8}
    if has_skorch:
        skorch = rows["skorch NeuralNetRegressor.fit (PyTorch)"]
        assert _positive_finite(skorch["time_over_bp_jax"]) and math.isfinite(skorch["held_out_score"])
    assert [skip["name"].split()[0] for skip in suite["skipped"]] == ([] if has_skorch else ["skorch"])


def _check_export(results):
    suite = results["suites"]["export"]
    rows = {(row["name"], row["rows"]): row for row in suite["rows"]}
    names = {name for name, _ in rows}
    assert len(names) == 4 and {count for _, count in rows} == {1, 100}, suite["skipped"]
    for (name, _), row in rows.items():
        assert _positive_finite(row["per_call_s"]["median"]) and _positive_finite(row["speedup_vs_predict"])
        difference = row["max_abs_difference_from_predict"]
        assert (difference == 0.0) if name.startswith("bp-jax predict") else (0 <= difference < 1e-3), row


def _check_autodiff(results):
    rows = results["suites"]["autodiff"]["rows"]
    torch = importlib.util.find_spec("torch") is not None
    per_example = [row for row in rows if row["group"] == "per-example"]
    names = {
        "bp_jax manual.per_example_grads (jit)",
        "jax.vmap(jax.grad) (jit)",
        "plain batch gradient jax.grad (jit)",
    } | ({"torch.func vmap(grad)", "torch loop of loss.backward()"} if torch else set())
    assert {(row["name"], row["batch"]) for row in per_example} == {(name, b) for name in names for b in (4, 8)}
    for row in per_example:
        assert _positive_finite(row["vs_batch_grad"]) and _positive_finite(row["per_example_s"])
        if row["name"] == "bp_jax manual.per_example_grads (jit)":
            assert row["max_abs_diff_vs_vmap_grad"] < 1e-5  # the methods time the same gradients
    second = [row for row in rows if row["group"] == "second-order"]
    assert [row["params"] for row in second] == [9, 25]
    for row in second:
        assert all(_positive_finite(ratio) for ratio in row["ratio_to_grad"].values())
        assert row["max_abs_diff_hvp_vs_hessian_v"] < 1e-4
    (target,) = [t for t in results["targets"] if "per_example_grads" in t["target"]]
    assert target["status"] in (
        ("met", "missed") if torch and results["machine"]["platform"] == "cpu" else ("not run",)
    )


def _check_training(results):
    rows = {row["name"]: row for row in results["suites"]["training"]["rows"]}
    plain, one = "bp_jax fit (the command's plain run)", "bp-jax train: fit of one model (--seed 0)"
    bases = {
        "bp_jax fit with early_stopping (validation scored in the loop each epoch)": plain,
        "bp_jax fit, mlp(..., dropout=0.1) (masks drawn each step)": plain,
        "bp-jax train --ensemble 16: fit_ensemble of 16 members": one,
        "python -m bp_jax train --ensemble 16 (the command; metrics.json wall_time_s)": (
            "python -m bp_jax train (the command; metrics.json wall_time_s)"
        ),
    }
    assert set(bases) | set(bases.values()) <= set(rows)
    for name, base in bases.items():
        assert rows[name]["base"] == base and _positive_finite(rows[name]["vs_base"])
    for row in rows.values():
        assert math.isclose(row["per_call_s"]["median"], row["per_step_s"]["median"] * row["steps_per_call"])
    training = [t for t in results["targets"] if "dropout" in t["target"].lower() or "--ensemble" in t["target"]]
    training += [t for t in results["targets"] if t["target"].startswith("Validation early stopping")]
    assert len(training) == 4 and all(t["status"] in ("met", "missed") for t in training), training
    commands = [row for row in rows.values() if "process_s" in row]
    assert len(commands) == 2 and all(row["process_s"]["median"] > row["per_call_s"]["median"] for row in commands)


CHECKS = {
    "seed": _check_seed,
    "scaling": _check_scaling,
    "grad": _check_grad,
    "data": _check_data,
    "ensemble": _check_ensemble,
    "sklearn": _check_sklearn,
    "export": _check_export,
    "autodiff": _check_autodiff,
    "training": _check_training,
}

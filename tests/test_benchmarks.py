"""The benchmark runner works end to end: a smoke-sized run writes well-formed JSON, Markdown and PNGs.

No timing is asserted: this checks the runner, not the machine.
"""

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import without_coverage

ROOT = Path(__file__).parent.parent


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bench")
    subprocess.run(
        [sys.executable, "-m", "benchmarks", "--smoke", "--out", str(out)],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
        timeout=400,
        env=without_coverage(),  # line tracing would slow its timing loops many times over
    )
    return out


def _positive_finite(value) -> bool:
    return isinstance(value, float) and math.isfinite(value) and value > 0


def _summaries(tree):
    """Every timing summary (a dict with a median) anywhere in a row."""
    if isinstance(tree, dict):
        if "median" in tree:
            yield tree
        for value in tree.values():
            yield from _summaries(value)


@pytest.mark.slow  # the smoke run: every suite, in a process of its own
def test_json_records_machine_suites_and_targets(smoke_run):
    results = json.loads((smoke_run / "results.json").read_text())
    assert results["smoke"] is True
    assert {"date_utc", "cpu", "cpu_cores", "platform", "device", "versions"} <= set(results["machine"])
    assert results["machine"]["versions"]["jax"]
    suites = {"seed", "scaling", "grad", "data", "ensemble", "sklearn", "export", "autodiff", "startup"}
    assert set(results["suites"]) == suites
    for suite in results["suites"].values():
        assert suite["rows"], suite["skipped"]
        assert all(skip["reason"] for skip in suite["skipped"])
    assert {target["status"] for target in results["targets"]} <= {"met", "missed", "not run"}


@pytest.mark.slow  # the smoke run: every suite, in a process of its own
def test_every_time_and_ratio_is_positive_and_finite(smoke_run):
    suites = json.loads((smoke_run / "results.json").read_text())["suites"]
    for suite in suites.values():
        for row in suite["rows"]:
            for timing in _summaries(row):
                assert all(_positive_finite(timing[key]) for key in ("median", "q25", "q75", "min", "max")), row
                assert timing["min"] <= timing["median"] <= timing["max"]
    torch = importlib.util.find_spec("torch") is not None
    seed_rows = {row["name"]: row for row in suites["seed"]["rows"]}
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
    for row in suites["scaling"]["rows"]:
        assert _positive_finite(row["tflops"])
        if row["name"] == "bp_jax sgd_step":
            assert _positive_finite(row["pct_of_matmul"])
            assert row["memory"]["params_bytes"] > 0
    for row in suites["grad"]["rows"]:
        assert all(_positive_finite(ratio) for ratio in row["ratio_to_forward"].values())
        assert row["max_abs_diff_jacfwd_vs_grad"] < 1e-4  # the methods time the same gradient


@pytest.mark.slow  # the smoke run: every suite, in a process of its own
def test_data_and_ensemble_suites_record_their_rows(smoke_run):
    suites = json.loads((smoke_run / "results.json").read_text())["suites"]
    torch = importlib.util.find_spec("torch") is not None
    data = {row["name"]: row for row in suites["data"]["rows"]}
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
    skipped = {skip["name"] for skip in suites["data"]["skipped"]}
    assert {name for name in skipped if name.startswith("bp-jax train")} and not any(
        name.startswith("bp-jax train") for name in data
    )  # the command rows are full-run only

    ensemble = suites["ensemble"]["rows"]
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


@pytest.mark.slow  # the smoke run: every suite, in a process of its own
def test_markdown_and_plots_are_written(smoke_run):
    markdown = (smoke_run / "README.md").read_text()
    for heading in (
        "## Targets",
        "## 1. Seed step",
        "## 2. Scaling",
        "## 3. One backward pass",
        "## 4. Data size",
        "## 5. Ensembles",
        "## 6. scikit-learn",
        "## 7. export",
        "## 8. Autodiff beyond one gradient",
    ):
        assert heading in markdown
    if importlib.util.find_spec("matplotlib") is None:
        pytest.skip("matplotlib is not installed: the report says so instead of plotting")
    for name in ("seed.png", "scaling.png", "grad.png", "data.png", "ensemble.png", "autodiff.png"):
        assert (smoke_run / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"]({name})" in markdown


def test_unknown_suite_is_refused():
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--suite", "nope"], cwd=ROOT, capture_output=True, text=True
    )
    assert done.returncode == 2 and "unknown suite" in done.stderr


@pytest.mark.slow  # the smoke run: every suite, in a process of its own
def test_sklearn_suite_records_fits_grids_and_skorch(smoke_run):
    suite = json.loads((smoke_run / "results.json").read_text())["suites"]["sklearn"]
    rows = {row["name"]: row for row in suite["rows"]}
    for ours, theirs in (
        ("bp_jax MLPRegressor.fit", "sklearn MLPRegressor.fit"),
        ("bp_jax MLPClassifier.fit", "sklearn MLPClassifier.fit"),
    ):
        assert _positive_finite(rows[ours]["speedup_vs_sklearn"]) and rows[theirs]["speedup_vs_sklearn"] is None
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


@pytest.mark.slow  # the smoke run: every suite, in a process of its own
def test_export_suite_times_each_predictor_against_predicts_numbers(smoke_run):
    suite = json.loads((smoke_run / "results.json").read_text())["suites"]["export"]
    rows = {(row["name"], row["rows"]): row for row in suite["rows"]}
    names = {name for name, _ in rows}
    assert len(names) == 4 and {count for _, count in rows} == {1, 100}, suite["skipped"]
    for (name, _), row in rows.items():
        assert _positive_finite(row["per_call_s"]["median"]) and _positive_finite(row["speedup_vs_predict"])
        difference = row["max_abs_difference_from_predict"]
        assert (difference == 0.0) if name.startswith("bp-jax predict") else (0 <= difference < 1e-3), row


@pytest.mark.slow  # the smoke run: every suite, in a process of its own
def test_autodiff_suite_records_per_example_and_second_order_rows(smoke_run):
    results = json.loads((smoke_run / "results.json").read_text())
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

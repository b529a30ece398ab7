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

ROOT = Path(__file__).parent.parent


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bench")
    subprocess.run([sys.executable, "-m", "benchmarks", "--smoke", "--out", str(out)], cwd=ROOT, check=True,
                   capture_output=True, text=True, timeout=120)
    return out


def _positive_finite(value) -> bool:
    return isinstance(value, float) and math.isfinite(value) and value > 0


def test_json_records_machine_suites_and_targets(smoke_run):
    results = json.loads((smoke_run / "results.json").read_text())
    assert results["smoke"] is True
    assert {"date_utc", "cpu", "cpu_cores", "platform", "device", "versions"} <= set(results["machine"])
    assert results["machine"]["versions"]["jax"]
    assert set(results["suites"]) == {"seed", "scaling", "grad"}
    for suite in results["suites"].values():
        assert suite["rows"], suite["skipped"]
        assert all(skip["reason"] for skip in suite["skipped"])
    assert {target["status"] for target in results["targets"]} <= {"met", "missed", "not run"}


def test_every_time_and_ratio_is_positive_and_finite(smoke_run):
    suites = json.loads((smoke_run / "results.json").read_text())["suites"]
    seed_rows = {row["name"]: row for row in suites["seed"]["rows"]}
    assert {"bp_jax sgd_step, one call per step", "bp_jax optax_step (optax.sgd), one call per step",
            "bp_jax fit, fused lax.scan (unroll=4, chunk 1000)"} <= set(seed_rows)
    for row in seed_rows.values():
        timing = row["per_step_s"]
        assert all(_positive_finite(timing[key]) for key in ("median", "q25", "q75", "min", "max"))
        assert timing["min"] <= timing["median"] <= timing["max"]
        if importlib.util.find_spec("torch"):
            assert _positive_finite(row["speedup_vs_torch_eager"])
    for row in suites["scaling"]["rows"]:
        assert _positive_finite(row["tflops"])
        if row["name"] == "bp_jax sgd_step":
            assert _positive_finite(row["pct_of_matmul"])
            assert row["memory"]["params_bytes"] > 0
    for row in suites["grad"]["rows"]:
        assert all(_positive_finite(ratio) for ratio in row["ratio_to_forward"].values())
        assert row["max_abs_diff_jacfwd_vs_grad"] < 1e-4  # the methods time the same gradient


def test_markdown_and_plots_are_written(smoke_run):
    markdown = (smoke_run / "README.md").read_text()
    for heading in ("## Targets", "## 1. Seed step", "## 2. Scaling", "## 3. One backward pass"):
        assert heading in markdown
    if importlib.util.find_spec("matplotlib") is None:
        pytest.skip("matplotlib is not installed: the report says so instead of plotting")
    for name in ("seed.png", "scaling.png", "grad.png"):
        assert (smoke_run / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"]({name})" in markdown


def test_unknown_suite_is_refused():
    done = subprocess.run([sys.executable, "-m", "benchmarks", "--suite", "nope"], cwd=ROOT,
                          capture_output=True, text=True)
    assert done.returncode == 2 and "unknown suite" in done.stderr

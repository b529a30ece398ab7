"""`bp-jax train --dropout P` (and `bp-jax sweep`'s): recorded in the run's config, masks drawn from the run's key,
resumed bit-identically; predict and the ONNX export never drop; a rate outside [0, 1) refused in one line."""

import io
import json

import numpy as np
import pandas as pd
import pytest
from helpers import assert_same_state, run_cli, strict_json

from bp_jax.cli import runs

TRAIN = ("--hidden", "8", "--dropout", "0.3", "--batch-size", "8")


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    """A 40-row CSV of three numbers and a numeric target."""
    folder = tmp_path_factory.mktemp("dropout")
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(rng.normal(size=(40, 3)).round(3), columns=["a", "b", "c"])
    frame["target"] = (frame["a"] - 2 * frame["b"] + rng.normal(0, 0.1, 40)).round(3)
    frame.to_csv(folder / "table.csv", index=False)
    return folder


@pytest.fixture(scope="module")
def whole(table):
    """A run of 12 steps with --dropout 0.3 (four minibatches of 8 an epoch)."""
    run_cli("train", "--data", table / "table.csv", *TRAIN, "--steps", 12, "--out", table / "whole")
    return table / "whole"


@pytest.mark.parametrize("rate", ["1", "-0.1", "1.5", "half"])
def test_a_rate_outside_0_1_is_one_line_exit_2_and_writes_nothing(table, rate):
    out = table / f"refused-{rate}"
    done = run_cli("train", "--data", table / "table.csv", "--dropout", rate, "--steps", 1, "--out", out, check=False)
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "--dropout" in done.stderr and f"expected a number in [0, 1), got {rate!r}" in done.stderr
    assert not out.exists()


def test_the_run_records_its_rate_and_old_records_load_as_no_dropout(whole):
    metrics = strict_json(whole / "metrics.json")
    assert metrics["config"]["dropout"] == 0.3
    run, model, _ = runs.read_trained(whole)
    assert run.config.dropout == 0.3 and model.stochastic and "Dropout(0.3)" in model.name
    record = {name: value for name, value in run.config.to_record().items() if name != "dropout"}
    assert runs.Config.from_record(record, "an old run").dropout == 0.0


@pytest.mark.slow  # two commands
def test_resume_continues_the_masks_bit_identically(whole, table):
    split = table / "split"
    run_cli("train", "--data", table / "table.csv", *TRAIN, "--steps", 5, "--out", split)
    run_cli("train", "--resume", split, "--steps", 12)
    assert_same_state(whole, split)
    history = lambda run: json.loads((run / "metrics.json").read_text())["loss_history"]
    assert history(split) == history(whole)


def test_predict_and_the_onnx_export_never_drop(whole, table):
    onnxruntime = pytest.importorskip("onnxruntime")
    predicted = run_cli("predict", whole, "--data", table / "table.csv").stdout
    again = run_cli("predict", whole, "--data", table / "table.csv").stdout
    assert predicted == again
    run_cli("export", whole, "--format", "onnx", "--out", table / "model.onnx")
    session = onnxruntime.InferenceSession(table / "model.onnx", providers=["CPUExecutionProvider"])
    x = pd.read_csv(table / "table.csv")[["a", "b", "c"]].to_numpy(np.float32)
    (y,) = session.run(None, {"x": x})  # the graph has no Dropout node: the inference function
    np.testing.assert_allclose(y[:, 0], pd.read_csv(io.StringIO(predicted))["target"], rtol=1e-5, atol=1e-5)


@pytest.mark.slow  # a sweep's program
def test_sweep_takes_dropout_and_its_member_is_the_train_run_of_its_seed(whole, table):
    out = table / "sweep"
    run_cli("sweep", "--data", table / "table.csv", *TRAIN, "--lr", "0.01", "--seeds", 2, "--steps", 12, "--out", out)
    report = strict_json(out / "sweep.json")
    assert report["config"]["dropout"] == 0.3
    trained = strict_json(whole / "metrics.json")
    np.testing.assert_allclose(report["runs"][0]["held_out_mse"], trained["held_out_mse"], rtol=1e-5)
    assert report["runs"][0]["held_out_mse"] != report["runs"][1]["held_out_mse"]

"""Data-parallel and multi-process training, on fake CPU devices in subprocesses (JAX_NUM_CPU_DEVICES is
read when JAX starts, so this pytest process keeps its single device: the one-device reference runs here)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import (
    ROOT,
    bp_jax_cli,
    command,
    commands_in_a_process,
    fake_devices,
    final_state,
    finished,
    free_port,
    run_cli,
    strict_json,
    weighted_table,
)

TOLERANCE = 1e-5  # float32: sums split over devices round differently
TRAIN = ("--dataset", "synthetic", "--steps", 120, "--batch-size", 32, "--optimizer", "momentum", "--seed", 2)


def cli(*args, cpu_devices=8, timeout=240):
    return bp_jax_cli(*args, check=False, env=fake_devices(cpu_devices), timeout=timeout)


def trained(run_dir: Path) -> tuple[list[np.ndarray], list[float]]:
    """The newest checkpoint's arrays and the run's loss history."""
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return final_state(run_dir)[1], [loss for _, loss in metrics["loss_history"]]


def assert_close_runs(a: Path, b: Path):
    (leaves_a, losses_a), (leaves_b, losses_b) = trained(a), trained(b)
    assert len(leaves_a) == len(leaves_b) and len(losses_a) == len(losses_b) == 120
    for left, right in zip(leaves_a, leaves_b):
        np.testing.assert_allclose(left, right, rtol=TOLERANCE, atol=TOLERANCE)
    np.testing.assert_allclose(losses_a, losses_b, rtol=TOLERANCE, atol=TOLERANCE)


@pytest.fixture(scope="module")
def one_device_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("one-device")
    run_cli("train", "--out", out, "--devices", 1, *TRAIN)  # this process: one device
    return out


@pytest.mark.slow  # processes of their own, 8 devices or 2 processes
def test_sharded_fit_and_steps_equal_one_device():
    result = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "data_parallel_worker.py")],
        capture_output=True,
        text=True,
        env=os.environ | fake_devices(8),
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert len(report["fit"]) == 6
    for case, difference in report["fit"].items():
        assert difference < TOLERANCE, case
    assert report["replicated"], "params after a sharded fit should be replicated over the mesh"
    stop = report["stop_rule"]  # fit(mesh=, stop_rule=): stopped at the same step, with the same state
    assert stop["stopped_at"][0] == stop["stopped_at"][1] <= 20 and stop["step"] == [stop["stopped_at"][0] + 1] * 2
    assert stop["difference"] < TOLERANCE
    assert max(report["steps"].values()) < TOLERANCE and report["step_output_devices"] == 8
    assert report["shard_rows"] < TOLERANCE  # fit(shard_rows=) on 4 devices against sgd_step on its blocks' rows
    assert report["all_reduce"] == {"sgd_step": True, "fit": True}
    errors = report["errors"]
    assert "global batch of 12 examples does not split evenly over the mesh's 8" in errors["indivisible batch"]
    assert "global batch of 60 examples" in errors["indivisible full batch"]
    assert errors["too many devices"].startswith("asked for 16 devices, but JAX sees 8")


BAD_SETTINGS = [
    (["--devices", 16], "--devices: asked for 16 devices, but JAX sees 8"),
    (["--devices", 8, "--batch-size", 30], "global batch of 30 examples does not split evenly over 8 devices"),
    (["--devices", 6, "--batch-size", "full"], "global batch of 800 examples does not split evenly over 6 devices"),
    (["--coordinator", "127.0.0.1:1234"], "missing BP_JAX_NUM_PROCESSES, BP_JAX_PROCESS_ID"),
    (["--coordinator", "nowhere", "--num-processes", 2, "--process-id", 1], "must be HOST:PORT"),
    (["--coordinator", "127.0.0.1:1234", "--num-processes", 2, "--process-id", 2], "process id must be in [0, 2)"),
]


def combos(table: Path) -> dict:
    """The training options' combinations run on 2 devices and on 1, on `weighted_table(80)` (64 training rows, 8 a
    batch): an ensemble with dropout and early stopping (its 2 members split over the devices), dropout and both
    weights (each batch split over them), and a weighted class sweep with early stopping (its members split)."""
    data = ("--data", table, "--features", "a,b", "--batch-size", 8)
    weights = ("--class-weight", "balanced", "--sample-weight", "w")
    stopping = ("--early-stopping", "--validation-fraction", 0.2, "--patience", 2, "--epochs", 10)
    stopping_sooner = (*stopping[:-3], 1, *stopping[-2:])  # patience 1: one member of the ensemble stops early
    return {
        "ensemble": ["train", *data, "--target", "y", "--lr", 0.1, "--ensemble", 2, "--dropout", 0.2, *stopping_sooner],
        "dropout": ["train", *data, "--target", "y", "--dropout", 0.3, "--epochs", 3],
        "weights": ["train", *data, "--target", "cls", *weights, "--epochs", 3],
        "sweep": ["sweep", *data, "--target", "cls", *weights, *stopping, "--lr", "0.1,1"],
    }


@pytest.fixture(scope="module")
def on_8_devices(tmp_path_factory) -> tuple[dict, Path]:
    """The file's `bp-jax train` commands on 8 devices, one after another in one process of 8 devices
    (commands_in_a_process): each of BAD_SETTINGS ("refused 0", …), TRAIN on all of them ("all"), TRAIN resumed
    on 8 from a one-device checkpoint at step 50 trained here ("resumed"), and each of `combos` on 2 devices ("2
    ensemble", …; the table in the folder). {name: its result}, and the folder holding the runs."""
    folder = tmp_path_factory.mktemp("eight-devices")
    weighted_table(80).to_csv(folder / "table.csv", index=False)
    run_cli("train", "--out", folder / "resumed", "--devices", 1, *TRAIN[:2], "--steps", 50, *TRAIN[4:])
    commands = {
        **{
            f"refused {i}": ["train", "--out", folder / f"refused-{i}", "--dataset", "synthetic", "--steps", 5, *args]
            for i, (args, _) in enumerate(BAD_SETTINGS)
        },
        "all": ["train", "--out", folder / "all", "--devices", "all", *TRAIN],
        "resumed": ["train", "--resume", folder / "resumed", "--steps", 120, "--devices", 8],
        **{
            f"2 {name}": [*argv, "--devices", 2, "--out", folder / f"2-{name}"]
            for name, argv in combos(folder / "table.csv").items()
        },
    }
    results = commands_in_a_process(commands.values(), env=os.environ | fake_devices(8))
    return dict(zip(commands, results)), folder


@pytest.mark.slow  # processes of their own, 8 devices or 2 processes
def test_train_on_8_devices_equals_one_device(on_8_devices, one_device_run):
    results, folder = on_8_devices
    assert results["all"].returncode == 0, results["all"].stderr
    metrics = json.loads((folder / "all" / "metrics.json").read_text())
    assert (metrics["devices"], metrics["processes"], metrics["matmul_precision"]) == (8, 1, "highest")
    assert "cpu × 8" in results["all"].stdout
    assert_close_runs(folder / "all", one_device_run)


@pytest.mark.slow  # processes of their own, 8 devices or 2 processes
def test_resume_on_8_devices_from_a_one_device_checkpoint(on_8_devices, one_device_run):
    results, folder = on_8_devices
    assert results["resumed"].returncode == 0, results["resumed"].stderr
    assert_close_runs(folder / "resumed", one_device_run)


def assert_same_stops(ours: list[dict], theirs: list[dict]) -> None:
    """Early stopping records alike: the same epochs and stops, the losses to float32 rounding; one member stopped
    early, the other ran to the end."""
    losses = lambda record: {name: value for name, value in record.items() if "loss" in name}
    assert {record["stopped_early"] for record in theirs} == {True, False}
    for mine, reference in zip(ours, theirs, strict=True):
        assert mine | losses(reference) == reference
        np.testing.assert_allclose(mine["validation_loss"], reference["validation_loss"], rtol=TOLERANCE)


@pytest.mark.slow  # a process of its own, 8 devices
def test_ensembles_dropout_weights_and_early_stopping_on_2_devices_equal_1(on_8_devices):
    """Each of `combos` on 2 devices ends as on 1 (run here) to float32 rounding: the checkpoint's arrays (params,
    optimizer state, the rule's best params and curve) and the scores; a sweep's members their scores and stops."""
    results, folder = on_8_devices
    for name, argv in combos(folder / "table.csv").items():
        assert results[f"2 {name}"].returncode == 0, results[f"2 {name}"].stderr
        run_cli(*argv, "--out", folder / f"1-{name}")
        two, one = folder / f"2-{name}", folder / f"1-{name}"
        if name == "sweep":
            ours, theirs = strict_json(two / "sweep.json")["runs"], strict_json(one / "sweep.json")["runs"]
            assert_same_stops([run["early_stopping"] for run in ours], [run["early_stopping"] for run in theirs])
            for mine, reference in zip(ours, theirs, strict=True):
                for score in ("held_out_log_loss", "train_log_loss", "held_out_accuracy"):
                    assert mine[score] == pytest.approx(reference[score], rel=TOLERANCE), (name, score)
            continue
        (step_two, leaves_two), (step_one, leaves_one) = final_state(two), final_state(one)
        assert step_two == step_one and len(leaves_two) == len(leaves_one)
        for left, right in zip(leaves_two, leaves_one):
            np.testing.assert_allclose(left, right, rtol=TOLERANCE, atol=TOLERANCE, err_msg=name)
        metrics_two, metrics_one = strict_json(two / "metrics.json"), strict_json(one / "metrics.json")
        assert metrics_two["devices"] == 2 and metrics_one["devices"] == 1
        if "early_stopping" in metrics_one:
            assert_same_stops(metrics_two["early_stopping"]["members"], metrics_one["early_stopping"]["members"])
        for score in ("held_out_mse", "held_out_log_loss", "held_out_coverage_2sd"):
            if score in metrics_one:
                assert metrics_two[score] == pytest.approx(metrics_one[score], rel=TOLERANCE), (name, score)


@pytest.mark.parametrize("case", range(len(BAD_SETTINGS)), ids=[message for _, message in BAD_SETTINGS])
@pytest.mark.slow
def test_bad_device_and_process_settings_give_one_line(on_8_devices, case):
    result = on_8_devices[0][f"refused {case}"]
    assert result.returncode == 2
    assert BAD_SETTINGS[case][1] in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr


def test_processes_started_with_other_options_are_refused_in_one_line(monkeypatch):
    """Each process's options as `gathered_json` gives them (here: process 1's --lr and --ensemble changed)."""
    from bp_jax.cli import distributed

    ours = {"lr": 0.1, "ensemble": 2, "data": "t.csv"}
    monkeypatch.setattr(distributed.jax, "process_count", lambda: 2)
    monkeypatch.setattr(distributed, "gathered_json", lambda value: [value, {**value, "lr": 0.5, "ensemble": None}])
    message = r"process 1 was started with other options than process 0 \(--ensemble \(not given\) against 2, --lr 0\.5"
    with pytest.raises(distributed.DistributedError, match=message):
        distributed.agree(ours)
    monkeypatch.setattr(distributed, "gathered_json", lambda value: [value, dict(value)])
    distributed.agree(ours)


@pytest.mark.slow  # processes of their own, 8 devices or 2 processes
def test_two_processes_on_localhost_equal_one_process(one_device_run, tmp_path):
    coordinator = f"127.0.0.1:{free_port()}"
    processes = [
        subprocess.Popen(
            command(
                "train",
                "--out",
                tmp_path / f"process-{i}",
                "--coordinator",
                coordinator,
                "--num-processes",
                2,
                "--process-id",
                i,
                "--devices",
                "all",
                "--init-timeout",
                60,
                *TRAIN,
            ),
            env=os.environ | fake_devices(2) | {"COLUMNS": "200"},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    outputs = finished(processes)
    metrics = json.loads((tmp_path / "process-0" / "metrics.json").read_text())
    assert (metrics["devices"], metrics["processes"]) == (4, 2)
    assert not (tmp_path / "process-1").exists(), "only process 0 writes files"
    assert "cpu × 4, 2 processes" in outputs[0][0] and "held-out MSE" not in outputs[1][0]
    assert_close_runs(tmp_path / "process-0", one_device_run)


@pytest.mark.slow
def test_a_coordinator_that_never_answers_times_out_with_a_clear_error(tmp_path):
    port = free_port()  # nobody listens here
    result = cli(
        "train",
        "--out",
        tmp_path,
        "--dataset",
        "synthetic",
        "--steps",
        5,
        "--coordinator",
        f"127.0.0.1:{port}",
        "--num-processes",
        2,
        "--process-id",
        1,
        "--init-timeout",
        3,
        timeout=60,
    )
    assert result.returncode == 2
    assert f"the coordinator 127.0.0.1:{port} did not answer within 3 s (process 1 of 2)" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1

"""Data-parallel and multi-process training, on fake CPU devices in subprocesses (JAX_NUM_CPU_DEVICES is
read when JAX starts, so this pytest process keeps its single device: the one-device reference runs here)."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import ROOT, bp_jax_cli, command, commands_in_a_process, fake_devices, final_state, run_cli

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


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


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


@pytest.fixture(scope="module")
def on_8_devices(tmp_path_factory) -> tuple[dict, Path]:
    """The file's `bp-jax train` commands on 8 devices, one after another in one process of 8 devices
    (commands_in_a_process): each of BAD_SETTINGS ("refused 0", …), TRAIN on all of them ("all"), and TRAIN resumed
    on 8 from a one-device checkpoint at step 50 trained here ("resumed"). {name: its result}, and the folder
    holding the runs."""
    folder = tmp_path_factory.mktemp("eight-devices")
    run_cli("train", "--out", folder / "resumed", "--devices", 1, *TRAIN[:2], "--steps", 50, *TRAIN[4:])
    commands = {
        **{
            f"refused {i}": ["train", "--out", folder / f"refused-{i}", "--dataset", "synthetic", "--steps", 5, *args]
            for i, (args, _) in enumerate(BAD_SETTINGS)
        },
        "all": ["train", "--out", folder / "all", "--devices", "all", *TRAIN],
        "resumed": ["train", "--resume", folder / "resumed", "--steps", 120, "--devices", 8],
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


@pytest.mark.parametrize("case", range(len(BAD_SETTINGS)), ids=[message for _, message in BAD_SETTINGS])
@pytest.mark.slow
def test_bad_device_and_process_settings_give_one_line(on_8_devices, case):
    result = on_8_devices[0][f"refused {case}"]
    assert result.returncode == 2
    assert BAD_SETTINGS[case][1] in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr


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
    try:
        outputs = [process.communicate(timeout=240) for process in processes]
    finally:
        for process in processes:
            process.kill()
    for process, (_, stderr) in zip(processes, outputs):
        assert process.returncode == 0, stderr
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

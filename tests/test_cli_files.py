"""What the commands write, and what they read from a run: never a file of the user's replaced, every file
whole or absent and named when its write fails, diverged and live runs read truthfully, a closed pipe quiet.
Commands run in this process (run_cli), in a process of their own where the process is what is checked (a file
size limit, a closed pipe, a live run)."""

import errno
import json
import shutil
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
from helpers import checkpoint_steps, command, commands_in_a_process, run_cli, strict_json, without_coverage

from bp_jax.cli import plots
from bp_jax.cli._args import UsageError

#: the commands load what another compiled from the session's compile cache (tests/conftest.py)
QUICK = ("--dataset", "synthetic")


def features_csv(path, rows: int, seed: int = 0):
    """`rows` rows of the synthetic data set's features x0 … x9, as a CSV for `predict`."""
    frame = pd.DataFrame(np.random.default_rng(seed).standard_normal((rows, 10)), columns=[f"x{i}" for i in range(10)])
    frame.to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A finished synthetic run."""
    run = tmp_path_factory.mktemp("trained") / "run"
    run_cli("train", "--out", run, "--steps", 30, *QUICK)
    return run


#: (the command's arguments before --out, the name of the file it writes there)
WRITERS = {
    "train": (["train", "--steps", 10, *QUICK], "loss_curve.png"),
    "sweep": (["sweep", "--lr", "0.01", "--steps", 10, *QUICK], "sweep.png"),
    "explain": (["explain", "tiny-net"], "graph.svg"),
}


@pytest.mark.parametrize("name", list(WRITERS))
@pytest.mark.parametrize("user_file", ["same name", "notes.txt"])
@pytest.mark.slow
def test_no_command_writes_into_a_folder_holding_the_users_files(tmp_path, name, user_file):
    argv, written = WRITERS[name]
    out = tmp_path / "d"
    out.mkdir()
    mine = out / (written if user_file == "same name" else user_file)
    mine.write_text("notes\n")
    result = run_cli(*argv, "--out", out, check=False)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert f"{out} is not empty (it holds {mine.name})" in result.stderr
    assert [path.name for path in out.iterdir()] == [mine.name] and mine.read_text() == "notes\n"


def test_predict_never_replaces_a_file(trained, tmp_path):
    out = tmp_path / "predictions.csv"
    out.write_text("mine\n")
    result = run_cli("predict", trained, "--data", features_csv(tmp_path / "x.csv", 5), "--out", out, check=False)
    assert result.returncode == 2 and "already exists" in result.stderr and out.read_text() == "mine\n"


def test_explain_without_out_gets_a_new_folder_each_time(tmp_path):
    for _ in range(2):
        run_cli("explain", "neuron", cwd=tmp_path)
    folders = sorted((tmp_path / "runs").iterdir())
    assert len(folders) == 2 and all(folder.name.startswith("explain-neuron-") for folder in folders)
    assert all(
        {path.name for path in folder.iterdir()} >= {"graph.dot", "graph.svg", "graph.png"} for folder in folders
    )


@pytest.fixture(scope="module")
def limited_writes(trained, tmp_path_factory) -> dict:
    """Each writer's command, and predict of 2000 rows, one after another in one process whose files the kernel
    refuses to grow beyond 16 kB (commands_in_a_process): {name: (its result, the file it writes)}. 16 kB: the
    checkpoints (a few kB per file), metrics.json and graph.dot fit; the pictures and the predictions of 2000 rows
    do not."""
    folder = tmp_path_factory.mktemp("limited")
    commands, targets = {}, {"predict": folder / "y.csv"}
    for name, (argv, written) in WRITERS.items():
        cache = ["--compile-cache", "off"] if name != "explain" else []  # the limit would refuse the cache's files
        commands[name], targets[name] = [*argv, *cache, "--out", folder / name], folder / name / written
    rows = features_csv(folder / "x.csv", 2000)
    commands["predict"] = ["predict", trained, "--data", rows, "--out", targets["predict"]]
    results = commands_in_a_process(
        commands.values(),
        env=without_coverage(),  # coverage could not write its data under the limit
        file_size_limit=16_000,
    )
    return {name: (result, targets[name]) for name, result in zip(commands, results)}


@pytest.mark.parametrize("name", [*WRITERS, "predict"])
@pytest.mark.slow
def test_a_failed_write_names_the_file_and_leaves_nothing_half_written(limited_writes, name):
    result, target = limited_writes[name]
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert f"error: could not write {target}: File too large" in result.stderr
    assert not target.exists() and not list(target.parent.glob(".*tmp*"))


def test_explain_on_a_full_disk_leaves_no_truncated_picture(tmp_path, monkeypatch):
    """The disk fills up halfway through graph.svg: the drawing's write raises ENOSPC as the OS would."""
    from bp_jax import draw

    def full(graph, path, engine=None, save=draw.save):
        if path.suffix != ".svg":
            return save(graph, path, engine)
        path.write_text("<svg")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(draw, "save", full)
    result = run_cli("explain", "tiny-net", "--out", tmp_path, check=False)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert f"could not write {tmp_path / 'graph.svg'}: No space left on device" in result.stderr
    assert sorted(path.name for path in tmp_path.iterdir()) == [".bp-jax.lock", "graph.dot"]


def record(run, step: int) -> dict:
    return json.loads((run / "checkpoints" / str(step) / "record" / "metadata").read_text())


@pytest.mark.slow
def test_a_diverged_run_is_marked_and_predicting_from_it_needs_a_flag(tmp_path):
    """lr 3 diverges within a few steps; with a checkpoint every step, the step it diverged at was already
    checkpointed, unmarked, and is written again, marked."""
    run = tmp_path / "run"
    result = run_cli("train", "--out", run, "--lr", 3, "--steps", 200, "--checkpoint-every", 1, *QUICK, check=False)
    assert result.returncode == 1
    step = int(result.stderr.split("non-finite at step ")[1].split(";")[0])
    assert checkpoint_steps(run)[-1] == step and record(run, step)["diverged_at"] == step
    assert all(record(run, earlier)["diverged_at"] is None for earlier in checkpoint_steps(run)[:-1])
    assert strict_json(run / "metrics.json")["diverged_at"] == step

    rows = features_csv(tmp_path / "x.csv", 50)
    refused = run_cli("predict", run, "--data", rows, check=False)
    assert refused.returncode == 2 and refused.stdout == "" and len(refused.stderr.strip().splitlines()) == 1
    assert f"stopped on divergence at step {step}" in refused.stderr and "--allow-diverged" in refused.stderr
    allowed = run_cli("predict", run, "--data", rows, "--allow-diverged", "--out", tmp_path / "y.csv", check=False)
    if allowed.returncode == 0:  # whatever it writes is finite
        assert np.isfinite(pd.read_csv(tmp_path / "y.csv")["y"]).all()
    else:
        assert "is not finite" in allowed.stderr and not (tmp_path / "y.csv").exists()


def test_predictions_that_are_not_finite_are_refused_naming_the_rows(trained, tmp_path):
    frame = pd.read_csv(features_csv(tmp_path / "x.csv", 6))
    frame.iloc[2] = frame.iloc[4] = 3e38  # float32 holds it; the network's sums overflow
    frame.to_csv(tmp_path / "x.csv", index=False)
    result = run_cli("predict", trained, "--data", tmp_path / "x.csv", check=False)
    assert result.returncode == 2 and result.stdout == "" and len(result.stderr.strip().splitlines()) == 1
    assert "the prediction for row(s) 3, 5 (from 1, after the header) is not finite" in result.stderr


def start_training(out, *args) -> subprocess.Popen:
    """A long `bp-jax train` into `out`, returned once it holds the folder's lock."""
    process = subprocess.Popen(
        command("train", "--out", out, "--steps", 10**9, *args, *QUICK),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    lock, deadline = out / ".bp-jax.lock", time.monotonic() + 240
    while not (lock.exists() and lock.read_text().strip()) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert process.poll() is None, "training ended before it could be read"
    return process


@pytest.mark.slow
def test_a_live_run_is_read_at_a_consistent_checkpoint(tmp_path):
    """Checkpoints every 20000 steps: several a second, each deleted three saves later."""
    run = tmp_path / "live"
    process = start_training(run, "--checkpoint-every", 20000)
    try:
        deadline = time.monotonic() + 240
        while len(checkpoint_steps(run)) < 3 and time.monotonic() < deadline:
            time.sleep(0.1)
        rows = features_csv(tmp_path / "x.csv", 20)
        results = [run_cli("predict", run, "--data", rows, check=False) for _ in range(3)]
        assert process.poll() is None, "the run ended while it was read"
    finally:
        process.kill()
        process.wait()
    for result in results:
        assert result.returncode == 0 and len(result.stdout.splitlines()) == 21, result.stderr


@pytest.mark.slow
def test_a_live_run_without_a_checkpoint_is_named_live(tmp_path):
    run = tmp_path / "live"
    process = start_training(run, "--checkpoint-every", 10**8)
    try:
        resumed = run_cli("train", "--resume", run, check=False)
        predicted = run_cli("predict", run, "--data", features_csv(tmp_path / "x.csv", 5), check=False)
    finally:
        process.kill()
        process.wait()
    assert resumed.returncode == 2 and f"in use by a running bp-jax command (pid {process.pid})" in resumed.stderr
    assert (
        predicted.returncode == 2
        and f"no checkpoint in {run} yet: the run there (pid {process.pid})" in predicted.stderr
    )


@pytest.mark.slow
def test_predict_into_a_closed_pipe_ends_quietly(trained, tmp_path):
    """As `bp-jax predict RUN --data F | head -1`: the reader leaves after one line of 20000."""
    process = subprocess.Popen(
        command("predict", trained, "--data", features_csv(tmp_path / "x.csv", 20000)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout.readline().strip() == "y"
    process.stdout.close()
    stderr = process.stderr.read()
    assert process.wait(timeout=300) == 141 and stderr == ""


@pytest.mark.slow
def test_resume_with_the_same_data_at_another_path_uses_it(tmp_path):
    frame = pd.read_csv(features_csv(tmp_path / "x.csv", 200))
    frame["y"] = frame.sum(axis=1)
    frame.to_csv(tmp_path / "a.csv", index=False)
    run_cli("train", "--data", tmp_path / "a.csv", "--out", tmp_path / "run", "--steps", 20)
    (tmp_path / "moved").mkdir()
    shutil.move(tmp_path / "a.csv", tmp_path / "moved" / "a.csv")
    moved = run_cli("train", "--resume", tmp_path / "run", "--data", tmp_path / "moved" / "a.csv", "--steps", 30)
    assert f"reading the data from {tmp_path / 'moved' / 'a.csv'}" in moved.stderr
    assert record(tmp_path / "run", 30)["config"]["dataset"] == str(tmp_path / "moved" / "a.csv")
    frame.assign(y=frame["y"] + 1).to_csv(tmp_path / "other.csv", index=False)
    other = run_cli("train", "--resume", tmp_path / "run", "--data", tmp_path / "other.csv", "--steps", 40, check=False)
    assert other.returncode == 2 and "was trained on other data" in other.stderr


@pytest.mark.slow
def test_a_fresh_run_into_a_sweep_folder_does_not_suggest_resume(tmp_path):
    run_cli("sweep", "--lr", "0.01", "--steps", 10, "--out", tmp_path / "sweep", *QUICK)
    result = run_cli("train", "--out", tmp_path / "sweep", "--steps", 10, *QUICK, check=False)
    assert result.returncode == 2 and "holds a run: a sweep (sweep.json)" in result.stderr
    assert "--resume" not in result.stderr


def test_resume_refuses_too_few_epochs_in_epochs(trained):
    """The run is at step 30 of 25 per epoch (800 rows, batch 32): epoch 2."""
    result = run_cli("train", "--resume", trained, "--epochs", 1, check=False)
    assert result.returncode == 2 and "--epochs must be at least 2, got 1" in result.stderr
    assert "--steps" not in result.stderr


@pytest.mark.slow
def test_a_figure_drawn_by_a_second_process_is_the_figure_drawn_here(tmp_path, monkeypatch):
    """A command draws in a second Python (plots.Painter) when matplotlib is not loaded yet: the same PNG, byte for
    byte, as drawn in this process; a failed write raises here as it would here; a block that fails stops it."""
    history = [[step, 1 / (1 + step)] for step in range(50)]
    figure = {"title": "bp-jax train", "levels": {"held-out MSE": 0.5}}
    plots.loss_curve(tmp_path / "here.png", history, **figure)
    monkeypatch.delitem(sys.modules, "matplotlib.figure")  # as in a fresh `bp-jax train`
    with plots.drawing() as painter:
        painter.draw("loss_curve", tmp_path / "there.png", history, **figure)
        drew_elsewhere = painter._process is not None
    assert drew_elsewhere and (tmp_path / "there.png").read_bytes() == (tmp_path / "here.png").read_bytes()
    nowhere = f"could not write {tmp_path / 'nowhere' / 'there.png'}: No such file"
    with pytest.raises(UsageError, match=nowhere), plots.drawing() as painter:
        painter.draw("loss_curve", tmp_path / "nowhere" / "there.png", history, **figure)
    with pytest.raises(KeyboardInterrupt), plots.drawing() as painter:
        process = painter._process
        raise KeyboardInterrupt
    assert process.poll() is not None

"""`bp-jax` end to end: in this process (run_cli), and in processes of its own where only a process shows what is
checked (signals, kills, fresh imports, runs started together)."""

import ast
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from helpers import (
    ROOT,
    assert_same_state,
    checkpoint_steps,
    command,
    final_state,
    run_cli,
    strict_json,
    weighted_table,
)

import bp_jax
from bp_jax import cli
from bp_jax.cli.interrupts import Signals
from bp_jax.cli.watch import Watch, shown_loss


def test_train_learns_diabetes_and_writes_metrics_plot_and_checkpoint(tmp_path, monkeypatch):
    out = tmp_path / "run"
    fit, held = bp_jax.fit, []
    monkeypatch.setattr(bp_jax, "fit", lambda *args, **kwargs: held.append(fit(*args, **kwargs)) or held[-1])
    result = run_cli("train", "--out", out, "--epochs", 60, "--checkpoint-every", 300)
    assert len(held[0].losses) == 660 - 600  # the host keeps the last chunk's losses, not every step's
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["config"]["hidden"] == [5] and metrics["config"]["dataset"] == "diabetes"
    assert metrics["examples"] == {"train": 354, "held_out": 88, "features": 10} and metrics["weights"] is None
    assert metrics["final_step"] == 60 * (354 // 32)
    assert metrics["held_out_mse"] < 0.8 * metrics["baseline_held_out_mse"]  # it learnt something
    assert metrics["loss_history"][0][0] == 0 and len(metrics["loss_history"]) == metrics["final_step"]
    assert metrics["device"].startswith(jax.default_backend())
    assert (out / "loss_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert checkpoint_steps(out) == [300, 600, 660]
    assert "held-out MSE" in result.stdout and "mean predictor" in result.stdout


@pytest.mark.parametrize("optimizer", ["optax-sgd", "momentum", "adam"])
@pytest.mark.slow
def test_each_optimizer_trains(tmp_path, optimizer):
    run_cli(
        "train",
        "--out",
        tmp_path,
        "--dataset",
        "synthetic",
        "--optimizer",
        optimizer,
        "--hidden",
        "8,4",
        "--activation",
        "tanh",
        "--steps",
        300,
        "--lr",
        0.01,
    )
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    history = [loss for _, loss in metrics["loss_history"]]
    assert np.mean(history[-30:]) < np.mean(history[:30])


@pytest.mark.slow
def test_resume_ends_with_the_params_of_an_uninterrupted_run(tmp_path):
    args = ("--dataset", "synthetic", "--optimizer", "momentum", "--batch-size", 16, "--seed", 3)
    run_cli("train", "--out", tmp_path / "whole", "--steps", 500, *args)
    run_cli("train", "--out", tmp_path / "split", "--steps", 200, *args)
    run_cli("train", "--resume", tmp_path / "split", "--steps", 500)
    assert_same_state(tmp_path / "whole", tmp_path / "split")
    whole = json.loads((tmp_path / "whole" / "metrics.json").read_text())
    split = json.loads((tmp_path / "split" / "metrics.json").read_text())
    assert split["resumed_from_step"] == 200 and split["loss_history"] == whole["loss_history"]


@pytest.mark.slow
def test_sigkill_then_resume_loses_nothing_before_the_last_checkpoint(tmp_path):
    killed, args = tmp_path / "killed", ("--dataset", "synthetic", "--seed", "1")
    process = subprocess.Popen(
        command("train", "--out", killed, "--steps", 50000000, "--checkpoint-every", 2000, *args),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 240
        while len(checkpoint_steps(killed)) < 2 and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert process.poll() is None, "training ended before it could be killed"
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.kill()
        process.wait()
    last = checkpoint_steps(killed)[-1]
    assert last % 2000 == 0 and last >= 4000
    target = last + 1000
    run_cli("train", "--resume", killed, "--steps", target)
    run_cli("train", "--out", tmp_path / "whole", "--steps", target, *args)
    assert_same_state(killed, tmp_path / "whole")


def test_corrupt_truncated_or_mismatched_checkpoints_are_refused(tmp_path):
    run = tmp_path / "run"
    run_cli("train", "--out", run, "--dataset", "synthetic", "--steps", 50)
    mismatched = run_cli("train", "--resume", run, "--hidden", 7, "--steps", 60, check=False)
    assert mismatched.returncode == 2
    assert "trained with hidden=(5,), not (7,)" in mismatched.stderr
    other_optimizer = run_cli("train", "--resume", run, "--optimizer", "adam", check=False)
    assert other_optimizer.returncode == 2 and "optimizer='sgd', not 'adam'" in other_optimizer.stderr

    for data_file in (run / "checkpoints" / "50" / "state").rglob("*"):
        if data_file.is_file() and data_file.stat().st_size > 0 and data_file.parent.name == "d":
            data_file.write_bytes(data_file.read_bytes()[: data_file.stat().st_size // 2])
    truncated = run_cli("train", "--resume", run, "--steps", 60, check=False)
    assert truncated.returncode == 2 and "Traceback" not in truncated.stderr
    assert "corrupt" in truncated.stderr and len(truncated.stderr.strip().splitlines()) == 1

    (run / "checkpoints" / "50" / "record" / "metadata").write_text("{not json")
    garbled = run_cli("train", "--resume", run, "--steps", 60, check=False)
    assert garbled.returncode == 2 and "unreadable" in garbled.stderr


def test_a_diverging_run_stops_naming_the_step_and_keeps_finite_params(tmp_path):
    result = run_cli("train", "--out", tmp_path, "--dataset", "synthetic", "--lr", 1e6, "--steps", 500, check=False)
    assert result.returncode == 1
    step = int(result.stderr.split("non-finite at step ")[1].split(";")[0])
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["stopped"] == {"step": step, "reason": "non-finite loss"}
    saved_step, leaves = final_state(tmp_path)
    assert saved_step == step and all(np.isfinite(leaf).all() for leaf in leaves)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--dataset", "mnist"], "invalid choice: 'mnist'"),
        (["--lr", "0"], "--lr: must be finite and > 0"),
        (["--lr", "nan"], "--lr: must be finite and > 0"),
        (["--hidden", "5,x"], "--hidden: expected comma-separated positive integers"),
        (["--hidden", "0"], "--hidden: expected comma-separated positive integers"),
        (["--batch-size", "0"], "--batch-size: expected a positive integer"),
        (["--batch-size", "100000"], "--batch-size must be between 1 and 354"),
        (["--steps", "10", "--epochs", "2"], "not allowed with argument"),
        (["--steps", str(10**10)], "ask for 10,000,000,000 steps; at most 2,147,483,647"),
        (["--epochs", str(10**9)], "ask for 11,000,000,000 steps; at most 2,147,483,647"),
        (["--hidden", "1000000,1000000"], "model's params, optimizer state and one batch's activations), more than"),
        (["--out", "/proc/forbidden/run"], "is not writable"),
        (["--resume", "/nonexistent/run"], "no checkpoint in"),
        (["--seed", "-1"], "--seed: expected an integer in [0, 2**32 - 1]"),
        (["--seed", str(2**70)], "--seed: expected an integer in [0, 2**32 - 1]"),
        (["--split-seed", "x"], "--split-seed: expected an integer"),
        (["--data", "synthetic"], "expected a .csv, .parquet or .npz file"),  # --data is not short for --dataset
        (["--datas", "synthetic"], "unrecognized arguments: --datas"),
    ],
)
def test_bad_arguments_give_one_line_and_a_non_zero_exit(args, message):
    result = (
        run_cli("train", "--steps", 5, *args, check=False)
        if "--steps" not in args and "--epochs" not in args
        else run_cli("train", *args, check=False)
    )
    assert result.returncode == 2
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr


def test_a_second_fresh_run_into_the_same_directory_is_refused(tmp_path):
    run_cli("train", "--out", tmp_path, "--dataset", "synthetic", "--steps", 20)
    again = run_cli("train", "--out", tmp_path, "--dataset", "synthetic", "--steps", 20, check=False)
    assert again.returncode == 2 and "already holds a run" in again.stderr


def test_a_missing_extra_is_named_with_the_install_command():
    code = "import sys; sys.modules['rich'] = None; from bp_jax.cli import main; sys.exit(main(['demo']))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "bp-jax: error: rich is missing; the command needs its extra: pip install 'bp_jax[cli]'"
    )


def start_training(out: Path, *args) -> subprocess.Popen:
    """A long `bp-jax train` into `out`, returned once it holds the folder's lock (its pid is in the lock file)
    and has checkpointed (it trains: a signal now stops it at the end of a chunk, as before the first chunk
    there is nothing to save and a signal ends it at once)."""
    process = subprocess.Popen(
        command("train", "--out", out, *args), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    lock, deadline = out / ".bp-jax.lock", time.monotonic() + 240
    while (
        not (lock.exists() and lock.read_text().strip() and checkpoint_steps(out))
        and process.poll() is None
        and time.monotonic() < deadline
    ):
        time.sleep(0.05)
    assert process.poll() is None, "training ended before it could be interrupted"
    return process


@pytest.mark.slow
def test_a_signal_checkpoints_writes_metrics_and_resume_matches_an_uninterrupted_run(tmp_path):
    """A live run's folder is refused to a second run; SIGTERM then stops it at a chunk's end, checkpointed
    (SIGINT alike: tests/test_interrupts.py), and resuming it ends with an uninterrupted run's state."""
    stopped, args = tmp_path / "stopped", ("--dataset", "synthetic", "--optimizer", "adam", "--seed", 2)
    process = start_training(stopped, "--steps", 50_000_000, "--checkpoint-every", 100_000, *args)
    try:
        in_use = run_cli("train", "--out", stopped, "--steps", 10, *args, check=False)
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=240)
    finally:
        process.kill()
    assert in_use.returncode == 2 and f"in use by a running bp-jax command (pid {process.pid})" in in_use.stderr
    assert process.returncode == 143
    assert len(stderr.strip().splitlines()) == 1 and "Traceback" not in stderr
    step = int(stderr.split("interrupted at step ")[1].split(";")[0])
    assert f"resume with: bp-jax train --resume {stopped}" in stderr
    assert checkpoint_steps(stopped)[-1] == step  # the stop's own checkpoint
    metrics = json.loads((stopped / "metrics.json").read_text())
    assert metrics["stopped"] == {"step": step, "reason": "interrupted by SIGTERM"}
    assert metrics["final_step"] == step and (stopped / "loss_curve.png").exists()
    run_cli("train", "--resume", stopped, "--steps", step + 700)
    run_cli("train", "--out", tmp_path / "whole", "--steps", step + 700, *args)
    assert_same_state(stopped, tmp_path / "whole")


@pytest.mark.slow
def test_runs_started_together_without_out_get_folders_of_their_own(tmp_path):
    processes = [
        subprocess.Popen(
            command("train", "--dataset", "synthetic", "--steps", 30),
            cwd=tmp_path,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for _ in range(2)
    ]
    for process in processes:
        assert process.wait(timeout=300) == 0, process.stderr.read()
    folders = sorted((tmp_path / "runs").iterdir())
    assert len(folders) == 2 and all(folder.name.startswith("synthetic-") for folder in folders)
    assert all(checkpoint_steps(folder) == [30] and (folder / "metrics.json").exists() for folder in folders)


def test_resume_into_a_folder_holding_another_run_is_refused(tmp_path):
    run_cli("train", "--out", tmp_path / "a", "--dataset", "synthetic", "--steps", 20)
    run_cli("train", "--out", tmp_path / "b", "--dataset", "synthetic", "--steps", 30, "--seed", 1)
    before = (tmp_path / "b" / "metrics.json").read_text()
    refused = run_cli("train", "--resume", tmp_path / "a", "--out", tmp_path / "b", "--steps", 40, check=False)
    assert refused.returncode == 2 and "already holds a run" in refused.stderr
    assert checkpoint_steps(tmp_path / "b") == [30] and (tmp_path / "b" / "metrics.json").read_text() == before
    run_cli("train", "--resume", tmp_path / "a", "--out", tmp_path / "c", "--steps", 40)
    assert checkpoint_steps(tmp_path / "c") == [40]


def test_resuming_a_missing_folder_creates_nothing(tmp_path):
    result = run_cli("train", "--resume", tmp_path / "typo", check=False)
    assert result.returncode == 2 and "no checkpoint in" in result.stderr
    assert not (tmp_path / "typo").exists()


def test_divergence_between_checkpoints_and_its_resume_exit_1_with_metrics_and_curve(tmp_path):
    args = ("--dataset", "synthetic", "--lr", 1e9, "--checkpoint-every", 2, "--steps", 100)
    for attempt in (("--out", tmp_path), ("--resume", tmp_path)):
        (tmp_path / "metrics.json").unlink(missing_ok=True)
        result = run_cli("train", *attempt, *args, check=False)
        assert result.returncode == 1 and "non-finite at step" in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
        metrics = strict_json(tmp_path / "metrics.json")
        assert metrics["stopped"]["reason"] == "non-finite loss"
        assert (tmp_path / "loss_curve.png").exists()
    assert checkpoint_steps(tmp_path)[-1] == metrics["stopped"]["step"]


def test_a_damaged_newest_checkpoint_names_the_newest_intact_one(tmp_path):
    run = tmp_path / "run"
    run_cli("train", "--out", run, "--dataset", "synthetic", "--steps", 300, "--checkpoint-every", 100)
    run_cli("train", "--out", tmp_path / "whole", "--dataset", "synthetic", "--steps", 400)
    for data_file in (run / "checkpoints" / "300" / "state").rglob("*"):
        if data_file.is_file() and data_file.stat().st_size > 0 and data_file.parent.name == "d":
            data_file.write_bytes(data_file.read_bytes()[:10])
    refused = run_cli("train", "--resume", run, "--steps", 400, check=False)
    assert refused.returncode == 2 and len(refused.stderr.strip().splitlines()) == 1
    assert "checkpoint 300" in refused.stderr and "the newest intact one is step 200" in refused.stderr
    move = refused.stderr.split("(mv ")[1].split(")")[0].split()
    Path(move[0]).rename(move[1])  # what the message says to do
    run_cli("train", "--resume", run, "--steps", 400)
    assert_same_state(run, tmp_path / "whole")


def edit_record(run: Path, step: int, edit):
    path = run / "checkpoints" / str(step) / "record" / "metadata"
    path.write_text(json.dumps(edit(json.loads(path.read_text()))))


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda r: r | {"config": {k: v for k, v in r["config"].items() if k != "split_seed"}}, "lacks split_seed"),
        (lambda r: r | {"config": r["config"] | {"future_setting": 0.5}}, "has unknown future_setting"),
        (lambda r: r | {"config": r["config"] | {"hidden": [7]}}, "holds arrays that do not match its record"),
    ],
)
@pytest.mark.slow
def test_a_record_from_another_version_or_not_matching_its_arrays_is_one_line(tmp_path, edit, message):
    run_cli("train", "--out", tmp_path, "--dataset", "synthetic", "--steps", 20)
    edit_record(tmp_path, 20, edit)
    for argv in (["train", "--resume", tmp_path, "--steps", 30], ["predict", tmp_path, "--data", "any.csv"]):
        result = run_cli(*argv, check=False, cwd=tmp_path)
        assert result.returncode == 2 and message in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1


#: the Config fields issue 31 added (early stopping, ensembles, dropout, schedules, weight decay, weights)
ISSUE_31_FIELDS = (
    *("early_stopping", "validation_fraction", "patience", "ensemble", "dropout", "schedule", "warmup_epochs"),
    *("weight_decay", "class_weight", "sample_weight"),
)


@pytest.mark.slow  # train, predict twice, export, resume
def test_a_run_recorded_before_the_training_options_predicts_exports_and_resumes(tmp_path):
    """A checkpoint whose record lacks the fields issue 31 added predicts as it did, exports (the jax program gives
    predict's numbers) and resumes to the bits of the run never stopped."""
    onnxruntime = pytest.importorskip("onnxruntime")
    weighted_table(40).to_csv(tmp_path / "t.csv", index=False)
    weighted_table(6, seed=1)[["a", "b"]].to_csv(tmp_path / "new.csv", index=False)
    args = ("--data", tmp_path / "t.csv", "--target", "y", "--features", "a,b", "--batch-size", 8)
    run_cli(
        "train", *args, "--optimizer", "momentum", "--steps", 20, "--checkpoint-every", 10, "--out", tmp_path / "whole"
    )
    for name in ("current", "old"):
        shutil.copytree(tmp_path / "whole", tmp_path / name, ignore=shutil.ignore_patterns("*.json", "*.png"))
        shutil.rmtree(tmp_path / name / "checkpoints" / "20")
    edit_record(
        tmp_path / "old",
        10,
        lambda r: r | {"config": {k: v for k, v in r["config"].items() if k not in ISSUE_31_FIELDS}},
    )
    predict = lambda name: run_cli("predict", tmp_path / name, "--data", tmp_path / "new.csv").stdout
    predicted = predict("old")
    assert predicted == predict("current") and len(predicted.splitlines()) == 7
    x = np.loadtxt(tmp_path / "new.csv", delimiter=",", skiprows=1, dtype=np.float32)
    expected = np.loadtxt(predicted.splitlines()[1:])
    for format in ("jax", "onnx"):
        run_cli("export", tmp_path / "old", "--format", format, "--out", tmp_path / f"old.{format}")
    exported = jax.export.deserialize(bytearray((tmp_path / "old.jax").read_bytes()))
    (onnx_y,) = onnxruntime.InferenceSession(tmp_path / "old.onnx", providers=["CPUExecutionProvider"]).run(
        None, {"x": x}
    )
    for y in (np.asarray(exported.call(x)), onnx_y):
        np.testing.assert_allclose(y[:, 0], expected, rtol=1e-5, atol=1e-5)
    run_cli("train", "--resume", tmp_path / "old", "--steps", 20)
    assert_same_state(tmp_path / "whole", tmp_path / "old")
    assert (
        strict_json(tmp_path / "old" / "metrics.json")["config"]
        == strict_json(tmp_path / "whole" / "metrics.json")["config"]
    )


def test_a_leftover_temporary_checkpoint_is_cleaned_up_by_the_next_run(tmp_path):
    run_cli("train", "--out", tmp_path, "--dataset", "synthetic", "--steps", 20)
    leftover = tmp_path / "checkpoints" / "30.orbax-checkpoint-tmp"  # as a save killed midway leaves it
    (leftover / "state").mkdir(parents=True)
    run_cli("train", "--resume", tmp_path, "--steps", 30)
    assert not leftover.exists() and checkpoint_steps(tmp_path) == [20, 30]


def test_a_full_disk_while_checkpointing_is_one_line_and_leaves_no_partial_checkpoint(tmp_path, monkeypatch):
    """The disk fills up as orbax writes the checkpoint's record (after its arrays): its file write raises
    ENOSPC as the OS would."""
    from orbax.checkpoint._src.handlers import json_checkpoint_handler as handler

    async def full(self, item, directory):
        raise OSError(errno.ENOSPC, "No space left on device", str(directory / "metadata"))

    monkeypatch.setattr(handler.JsonCheckpointHandler, "_save_fn", full)
    args = ("--dataset", "synthetic", "--steps", 50, "--checkpoint-every", 25)
    result = run_cli("train", "--out", tmp_path, *args, check=False)
    assert result.returncode == 2
    assert result.stderr.startswith(f"bp-jax train: error: could not write checkpoint 25 in {tmp_path}")
    assert "No space left on device" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert list((tmp_path / "checkpoints").iterdir()) == []


def test_a_failed_checkpoint_waits_for_a_writer_thread_caught_between_start_and_running():
    """orbax may have just started a writer when a save fails: enumerate() lists it, join() would raise
    "cannot join thread before it is started" (a flaky exit 1 of the full-disk test); _join waits for it."""
    import threading
    import time

    from bp_jax.cli.checkpoints import _join

    not_started = threading.Thread(target=lambda: None)
    _join(not_started, time.monotonic() + 0.05)  # join() alone raises RuntimeError
    release = threading.Event()
    running = threading.Thread(target=release.wait)
    starter = threading.Timer(0.05, running.start)
    starter.start()
    threading.Timer(0.1, release.set).start()
    _join(running, time.monotonic() + 10)
    assert running.ident is not None and not running.is_alive()


HEAVY = ("pandas", "orbax", "matplotlib")


@pytest.mark.parametrize("argv", [["--help"], ["demo"]])
@pytest.mark.slow
def test_help_and_demo_load_only_what_they_need(argv):
    """A command's module, and so its heavy imports, loads only when that command runs; the demo prints the
    documents' numbers."""
    code = (
        f"import contextlib, io, sys\nfrom bp_jax.cli import main\n"
        f"with contextlib.redirect_stdout(io.StringIO()) as shown:\n"
        f"    try:\n        status = main({argv!r})\n    except SystemExit as exit:\n        status = exit.code\n"
        f"modules = {{name.split('.')[0] for name in sys.modules}}\n"
        f"print(status, sorted(modules & {set(HEAVY)!r}), sorted(name for name in sys.modules "
        f"if name.startswith('bp_jax.cli.')))\nprint(shown.getvalue())"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
        env=os.environ | {"COLUMNS": "120"},
    )
    summary, _, shown = result.stdout.partition("\n")
    status, heavy, loaded = summary.split(" ", 2)
    assert status == "0" and heavy == "[]", result.stdout
    commands = {module for module, _ in cli.COMMANDS.values()}
    assert commands & set(ast.literal_eval(loaded)) == ({"bp_jax.cli.demo"} if argv == ["demo"] else set())
    if argv == ["demo"]:
        for needle in ("-9.000000", "-3.000000", "-2.250000", "2.250000", "1.500000", "sigmoid", "tanh"):
            assert needle in shown
        assert "model[0].weight" in shown


def test_help_lists_every_command_with_its_help_and_each_command_its_options():
    listed = " ".join(run_cli("--help").stdout.split())
    for name, (_, summary) in cli.COMMANDS.items():
        assert f"{name} {' '.join(summary.split())}" in listed
    assert "--checkpoint-every" in run_cli("train", "--help").stdout
    assert "--seeds" in run_cli("sweep", "--help").stdout


def command_module_imports(name: str) -> set[str]:
    """The bp_jax.cli modules that command `name`'s module imports, read from its source."""
    tree = ast.parse((ROOT / "bp_jax" / "cli" / f"{name}.py").read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module == "bp_jax.cli":
            imported |= {f"bp_jax.cli.{alias.name}" for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module)
    return {module for module in imported if module.startswith("bp_jax.cli.")}


@pytest.mark.parametrize("name", list(cli.COMMANDS))
def test_commands_share_one_entry_point_shape_and_never_import_each_other(name):
    module, _ = cli.COMMANDS[name]
    assert module == f"bp_jax.cli.{name}"
    others = {other for other, _ in cli.COMMANDS.values()} - {module}
    assert not command_module_imports(name) & others
    functions = {
        node.name: node
        for node in ast.parse((ROOT / "bp_jax" / "cli" / f"{name}.py").read_text()).body
        if isinstance(node, ast.FunctionDef)
    }
    assert [arg.arg for arg in functions["add_arguments"].args.args] == ["parser"]
    assert [arg.arg for arg in functions["run"].args.args] == ["args"]


def test_watch_keeps_every_kth_loss_and_a_signal_stops_fit_at_the_next_chunk():
    model = bp_jax.mlp((3, 4, 1), "tanh")
    x = jax.random.normal(jax.random.key(1), (16, 3))
    signals = Signals()
    watch = Watch(4500, signals=signals)  # at most 2000 points: every ⌈4500 / 2000⌉ = 3rd step

    def on_chunk(result):
        stop = watch.on_chunk(result)
        signals.received = signal.SIGINT  # arrives during the second chunk
        return stop

    result = bp_jax.fit(
        bp_jax.loss_fn(model),
        model.init(jax.random.key(0)),
        x,
        x[:, :1],
        steps=4500,
        lr=0.01,
        chunk_size=1000,
        on_chunk=on_chunk,
    )
    assert result.step == 2000 and watch.stopped_by == signal.SIGINT
    assert [step for step, _ in watch.history] == list(range(0, 2000, 3))
    assert [loss for _, loss in watch.history] == result.losses[::3].tolist()
    # resumed towards 8000 steps: the history so far is thinned to the new stride, ⌈8000 / 2000⌉ = 4
    resumed = Watch(8000, start=result.step, history=watch.history)
    assert [step for step, _ in resumed.history] == list(range(0, 2000, 12))


def test_the_progress_loss_of_an_ensemble_leaves_out_diverged_and_stopped_members():
    """shown_loss: the average of the last losses of the members still training; a stopped member's loss is NaN."""
    chunk = bp_jax.EnsembleResult(
        params=None,
        opt_state=None,
        losses=np.array([[9.0, 9.0, 9.0, 9.0, 9.0], [5.0, 1.0, np.nan, 4.0, 2.0]]),
        step=2,
        diverged=np.array([1, -1, -1, -1, -1]),
    )
    assert shown_loss(chunk) == 2.0 and shown_loss(chunk, np.mean) == pytest.approx(7 / 3)
    gone = chunk._replace(losses=np.array([[np.inf, np.nan, np.nan, np.nan, np.nan]]))
    assert np.isnan(shown_loss(gone))

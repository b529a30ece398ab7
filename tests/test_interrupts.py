"""SIGINT and SIGTERM over a command's whole life, from the entry point's first line to the process's exit:
every outcome is the complete result and exit status 0, one line `interrupted` and 128 + the signal's number
with what was done kept whole, or the command's own one-line refusal (exit status 2); never a traceback, never
a death by the signal. Also: `import bp_jax` and `bp-jax --help` load no jax, so the command's handling is in
place before anything heavy starts.

Each moment is a process of its own (the process is what is checked), `python -m bp_jax` as a user starts it:
sent the signal by the test a fraction of the command's whole run after it started (started with both signals
blocked, as one sent before Python itself runs gets Python's default treatment), or sending it to itself at a
named moment (SIGNAL_AT). A few run at a time. No test times anything.
"""

import ast
import concurrent.futures
import io
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple

import jax
import numpy as np
import pytest
from helpers import ROOT, checkpoint_steps, command, run_cli, strict_json

from bp_jax.cli import folders
from bp_jax.cli.interrupts import Interrupted, Signals

EXIT_STATUS = {signal.SIGINT: 130, signal.SIGTERM: 143}
STEPS = 2500  # three chunks of training (1000, 1000, 500): a signal in the first stops it at step 2000

#: `python -c SIGNAL_AT NUMBER MOMENT[,MOMENT…] ARGS…`: `python -m bp_jax ARGS` (run as -m runs it), sending
#: itself signal NUMBER at each MOMENT: "import:MODULE" (as MODULE begins to load), "call:MODULE:NAME" or
#: "return:MODULE:NAME" (a function, or Class.method), "compile:MODULE:NAME" (in the first compilation after
#: the call begins, between lowering and XLA's compile), "exit" (in the atexit handlers, at the process's end).
SIGNAL_AT = """
import atexit, importlib, os, runpy, sys, time

number, moments, *args = sys.argv[1:]

def at(moment):
    kind, _, target = moment.partition(":")
    sent = []

    def send(*ignored):  # once, then a moment for the command's signal thread to see it there
        if not sent:
            sent.append(True)
            os.kill(os.getpid(), int(number))
            time.sleep(0.5)

    class AtImport:
        def find_spec(self, name, path, target_module=None):
            if name == target:
                send()

    def wrapped(*args, **kwargs):
        if kind == "call":
            send()
        if kind == "compile":
            import jax
            jax.monitoring.register_event_duration_secs_listener(
                lambda event, *rest, **kwargs: event == "/jax/core/compile/jaxpr_to_mlir_module_duration" and send()
            )
        result = original(*args, **kwargs)
        if kind == "return":
            send()
        return result

    if kind == "exit":
        return atexit.register(send)
    if kind == "import":
        return sys.meta_path.insert(0, AtImport())
    module, attribute = target.split(":")
    owner = importlib.import_module(module)
    *path, name = attribute.split(".")
    for part in path:
        owner = getattr(owner, part)
    original = getattr(owner, name)
    setattr(owner, name, wrapped)

for moment in moments.split(","):
    at(moment)
sys.argv = ["bp_jax", *args]
runpy.run_module("bp_jax", run_name="__main__", alter_sys=True)
"""


class Case(NamedTuple):
    """A command (`arguments`' key) and the moment it gets signal `number`: named moments (SIGNAL_AT) or a
    fraction of the command's whole run; `expect`: the outcome the moment must give (`outcome`), or None for
    any of them."""

    arguments: str
    moment: str | float
    number: int
    expect: str | None = None

    @property
    def command(self) -> str:
        return self.arguments.split("-")[0]


INT, TERM = signal.SIGINT, signal.SIGTERM
#: a signal while train compiles, its folder claimed a moment ago (locked, checkpoints/ made): ends it at once
CLAIMED = Case("train", "compile:bp_jax:fit", INT, "interrupted")
#: a few moments of each command, SIGINT and SIGTERM alike; "MOMENT,exit" signals again at the process's end,
#: which must change nothing
CASES = [
    Case("train", 0.0, INT, "interrupted"),
    Case("train", "import:bp_jax.cli", TERM, "interrupted"),  # before the command's modules are loaded
    CLAIMED,
    Case("train", 0.6, TERM),
    Case("train", "return:bp_jax.cli.watch:Watch.on_chunk,exit", INT, "stopped"),  # at the chunk's end, saved
    Case("train", "call:bp_jax.cli.folders:write_json,exit", INT, "written"),
    Case("train-into-a-run", "exit", INT, "refused"),  # its one line written, then the signal
    Case("sweep", 0.0, TERM, "interrupted"),
    Case("sweep", 0.4, INT),
    # stopped at the chunk's end; a second signal while it writes what was trained lets that finish
    Case("sweep", "return:bp_jax.cli.watch:Watch.on_chunk,call:bp_jax.cli.folders:write_json,exit", TERM, "stopped"),
    Case("predict", 0.0, TERM, "interrupted"),
    Case("predict", 0.5, INT),
    Case("predict", "return:bp_jax.cli.predict:run,exit", INT, "result"),  # the CSV written: the outcome is decided
    Case("export-jax", 0.0, INT, "interrupted"),
    Case("export-jax", "import:bp_jax.cli", INT, "interrupted"),
    Case("export-jax", 0.3, TERM),
    Case("export-jax", "call:bp_jax.cli.folders:write_atomically,exit", TERM, "written"),  # the first of two files
    Case("export-onnx", "exit", INT, "result"),
]


def small_table(path: Path) -> Path:
    """40 rows of three features and a target y, as a CSV."""
    rows = np.random.default_rng(0).standard_normal((40, 3))
    path.write_text("a,b,c,y\n" + "".join(f"{a:.4f},{b:.4f},{c:.4f},{a - 2 * b + c / 2:.4f}\n" for a, b, c in rows))
    return path


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """A small table, a run trained on it and what predict gives for it (in this process)."""
    folder = tmp_path_factory.mktemp("reference")
    table, run = small_table(folder / "table.csv"), folder / "run"
    run_cli("train", "--data", table, "--steps", STEPS, "--out", run)
    return {"table": table, "run": run, "predictions": run_cli("predict", run, "--data", table).stdout}


#: what a command writes, named in its --out (stdout for predict)
OUTPUTS = {"train": "run", "sweep": "sweep", "export-jax": "model.jax", "export-onnx": "model.onnx"}


def arguments(case: Case, out: Path, reference: dict) -> list:
    """The command line of `case`, writing into `out`."""
    table, run = reference["table"], reference["run"]
    return {
        "train": ["train", "--data", table, "--steps", STEPS, "--out", out],
        "train-into-a-run": ["train", "--data", table, "--steps", STEPS, "--out", run],
        "sweep": ["sweep", "--data", table, "--lr", "0.01,0.1", "--steps", STEPS, "--out", out],
        "predict": ["predict", run, "--data", table],
        "export-jax": ["export", run, "--format", "jax", "--out", out],
        "export-onnx": ["export", run, "--format", "onnx", "--out", out],
    }[case.arguments]


def signalled(case: Case, argv: list, whole_run_s: float):
    """Run `case`: (its exit status, stdout, stderr, seconds it ran)."""
    named = isinstance(case.moment, str)
    argv = [sys.executable, "-c", SIGNAL_AT, str(int(case.number)), case.moment, *argv] if named else command(*argv)
    # sent by the test: the process starts with the signals blocked (it inherits this thread's mask)
    held = signal.pthread_sigmask(signal.SIG_BLOCK, set() if named else set(EXIT_STATUS))
    started = time.monotonic()
    try:
        process = subprocess.Popen(list(map(str, argv)), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)
    try:
        if not isinstance(case.moment, str):
            time.sleep(case.moment * whole_run_s)
            process.send_signal(case.number)
        stdout, stderr = process.communicate(timeout=300)
    finally:
        process.kill()
    return process.returncode, stdout, stderr, time.monotonic() - started


def no_temporary_files(folder: Path) -> bool:
    return not [path for path in folder.rglob("*") if path.name.endswith(".tmp") or "tmp" in path.name.split(".")]


def is_png(path: Path) -> bool:
    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def predicts(exported: Path, reference: dict) -> bool:
    """Whether the exported model gives predict's numbers for the table's rows (float32, to 1e-5)."""
    x = np.loadtxt(reference["table"], delimiter=",", skiprows=1, usecols=(0, 1, 2), dtype=np.float32)
    if exported.suffix == ".jax":
        y = jax.export.deserialize(bytearray(exported.read_bytes())).call(x)
    else:
        import onnxruntime

        (y,) = onnxruntime.InferenceSession(exported.read_bytes()).run(None, {"x": x})
    expected = np.loadtxt(io.StringIO(reference["predictions"]), skiprows=1)
    return np.allclose(np.asarray(y)[:, 0], expected, rtol=1e-5, atol=1e-5)


def written(case: Case, out: Path, stdout: str, reference: dict) -> bool:
    """Whether `case` wrote its results, each checked whole, or nothing (a run's folder then free for the next
    run); anything partial fails."""
    if case.command == "predict":  # to stdout
        assert stdout in ("", reference["predictions"]), stdout
        return stdout != ""
    if case.command == "export":
        inputs = out.with_name(out.name + ".inputs.json")
        assert out.exists() == inputs.exists(), "a model file without its inputs, or the reverse"
        assert not out.exists() or (strict_json(inputs)["outputs"] == ["y"] and predicts(out, reference))
        return out.exists()
    report = out / {"train": "metrics.json", "sweep": "sweep.json"}[case.command]
    if not report.exists():
        assert not out.exists() or folders._not_empty(out, resumable=True) is None, list(out.rglob("*"))
        return False
    if case.command == "train":
        record = strict_json(report)
        step, stop = record["final_step"], {"reason": f"interrupted by {signal.Signals(case.number).name}"}
        assert checkpoint_steps(out)[-1] == step and is_png(out / "loss_curve.png")
    else:
        record = strict_json(report)
        step, stop = record["steps"], {"signal": case.number}
        assert is_png(out / "sweep.png")
    assert record["stopped"] == (None if step == STEPS else {"step": step, **stop})
    return True


def outcome(case: Case, out: Path, status: int, stdout: str, stderr: str, reference: dict) -> str:
    """Which of the allowed outcomes `case` ended in, having checked it: "result" (exit status 0, the results
    whole), "refused" (exit status 2, one line), or exit status 128 + the signal's number and one line:
    "interrupted" (nothing written), "written" (the results whole) or "stopped" (training stopped at a chunk's
    end, what was trained written). Never a traceback or a temporary file left, never a death by the signal."""
    assert "Traceback" not in stderr and "Exception ignored" not in stderr, stderr
    assert no_temporary_files(out.parent)
    lines, label = stderr.splitlines(), f"bp-jax {case.command}"
    if status == 2:
        assert len(lines) == 1 and lines[0].startswith(f"{label}: error: "), stderr
        return "refused"
    assert status in (0, EXIT_STATUS[case.number]), (status, stderr)  # a death by the signal is negative
    whole = written(case, out, stdout, reference)
    if status == 0:
        assert lines == [] and whole, (case, stderr)
        return "result"
    (line,) = lines
    if line == f"{label}: interrupted":
        return "written" if whole else "interrupted"
    step = int(line.split("interrupted at step ")[1].split(";")[0])
    stopped = {
        "train": f"resume with: bp-jax train --resume {out}",
        "sweep": f"wrote what was trained so far to {out}",
    }[case.command]
    assert line == f"{label}: interrupted at step {step}; {stopped}" and whole
    assert 0 < step < STEPS and step % 1000 == 0
    return "stopped"


@pytest.mark.slow
def test_a_signal_at_any_moment_of_every_command_is_one_of_the_three_outcomes(reference, tmp_path):
    """The named moments first, a few at a time; the quickest run of each command that ran to its end then
    spreads its other moments. A named moment gives the outcome it must: interrupted with nothing written before
    the results are written (a folder claimed a moment ago left free for the next run), the results whole and
    then interrupted while they are written, stopped at the chunk's end once training runs, and once the results
    are whole the outcome decided (the result, or the refusal) whatever comes."""
    out = {case: tmp_path / str(index) / OUTPUTS.get(case.arguments, "out") for index, case in enumerate(CASES)}
    whole_run_s: dict[str, float] = {}
    got = {}
    with concurrent.futures.ThreadPoolExecutor(max_workers=3) as pool:
        for named in (True, False):
            runs = {}
            for case in CASES:
                if isinstance(case.moment, str) == named:
                    out[case].parent.mkdir()
                    argv = arguments(case, out[case], reference)
                    runs[case] = pool.submit(signalled, case, argv, whole_run_s.get(case.command, 0.0))
            for case, run in runs.items():
                status, stdout, stderr, seconds = run.result()
                got[case] = outcome(case, out[case], status, stdout, stderr, reference)
                if got[case] in ("result", "written", "stopped"):  # it ran to its end
                    whole_run_s[case.command] = min(seconds, whole_run_s.get(case.command, seconds))
    assert {case: got[case] for case in CASES if case.expect} == {case: case.expect for case in CASES if case.expect}
    assert sorted(path.name for path in out[CLAIMED].rglob("*")) == [".bp-jax.lock", "checkpoints"]


def test_a_folder_left_by_a_signal_before_the_first_checkpoint_is_no_run_and_free_for_the_next(tmp_path):
    """What a run stopped between claiming its folder and its first checkpoint leaves (the lock file and an empty
    checkpoints/, as CLAIMED shows): predict, export and --resume refuse it in one line; a new run claims it."""
    left = tmp_path / "left"
    (left / "checkpoints").mkdir(parents=True)
    (left / folders.LOCK).write_text("12345\n")
    table = small_table(tmp_path / "table.csv")
    for argv in (
        ["predict", left, "--data", table],
        ["export", left, "--format", "jax", "--out", tmp_path / "model.jax"],
        ["train", "--resume", left],
    ):
        refused = run_cli(*argv, check=False)
        assert refused.returncode == 2
        assert refused.stderr == f"bp-jax {argv[0]}: error: no checkpoint in {left}/checkpoints\n"
    with folders.claimed(left):  # what train and sweep do first: no UsageError
        pass


def test_the_phases_keep_a_signal_for_training_answer_one_that_came_while_writing_and_then_ignore_them():
    """In-process, without a handler: what `arrived` does in the phases where it does not end the process."""
    signals = Signals("bp-jax sweep")
    signals.training()
    signals.arrived(signal.SIGTERM)  # training: kept for the loop, which stops on it
    assert signals.received == signal.SIGTERM
    signals.stopped = True
    with signals.writing():
        signals.arrived(signal.SIGINT)  # a second one while writing: the stop's own exit path reports it
    late = Signals()
    late.training()
    late.arrived(signal.SIGINT)  # in the last chunk: too late to stop it, answered after the writes
    with pytest.raises(Interrupted) as interrupted, late.writing():
        pass
    assert interrupted.value.number == signal.SIGINT and late.phase == "done"
    ended = []
    late.end = ended.append  # what would end the process
    late.arrived(signal.SIGTERM)  # the outcome decided: nothing changes
    starting = Signals()
    starting.end = ended.append
    starting.arrived(signal.SIGTERM)
    starting.done()
    starting.arrived(signal.SIGINT)
    assert ended == [signal.SIGTERM]


@pytest.mark.slow
def test_import_bp_jax_and_help_load_no_jax_and_every_public_name_resolves():
    code = (
        "import contextlib, io, sys\nimport bp_jax\nfrom bp_jax.cli import main\nloaded = 'jax' in sys.modules\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n    try:\n        main(['--help'])\n"
        "    except SystemExit:\n        pass\n"
        "print(loaded, 'jax' in sys.modules)\n"
        "names = {}\nexec('from bp_jax import *', names)\nimport bp_jax.manual\n"
        "print(sorted(set(names) - {'__builtins__'}) == sorted(bp_jax.__all__), "
        "set(bp_jax.__all__) <= set(dir(bp_jax)), bp_jax.manual is names['manual'], bp_jax.fit.__module__)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.split() == ["False", "False", "True", "True", "True", "bp_jax._fit"], done.stdout


def test_what_type_checkers_see_is_the_lazy_list():
    """The `if TYPE_CHECKING:` imports name each public name from the submodule `_EXPORTS` gives it."""
    import bp_jax

    tree = ast.parse((ROOT / "bp_jax" / "__init__.py").read_text())
    block = next(node for node in tree.body if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING")
    seen = {}
    for node in block.body:
        for alias in node.names:
            seen[alias.name] = alias.name if node.module == "bp_jax" else node.module.removeprefix("bp_jax.")
    assert seen == bp_jax._EXPORTS
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        bp_jax.nothing  # noqa: B018


def test_help_shows_the_whole_description():
    from bp_jax import cli

    shown = " ".join(run_cli("--help").stdout.split())
    assert " ".join(cli.__doc__.split("\n\n")[0].split()) in shown

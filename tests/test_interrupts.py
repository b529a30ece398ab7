"""SIGINT and SIGTERM at every moment of a command's life (start-up, set-up, compile, training, writing
results): exit status 128 + the signal's number, exactly one line on stderr, no traceback, nothing
half-written. Also: `import bp_jax` and `bp-jax --help` load no jax, so the command's handling is in place
before anything heavy starts.

Each command runs in its own process, started with SIGINT and SIGTERM blocked (`preexec_fn`), as a signal
sent right after spawn is held by the kernel until the command's handler is in place and unblocks them; a
signal that came while Python itself was starting, before bp_jax ran, would get Python's default treatment.
The moments inside a command are reached by a small wrapper that sends the signal to its own process when a
named function is called, returns, or has its program compiled (with the compile cache off: a compile, not a
load; after it, the session's cache). No test times anything.
"""

import ast
import signal
import subprocess
import sys
import time

import pytest
from helpers import ROOT, checkpoint_steps, command, run_cli, strict_json

from bp_jax.cli.interrupts import Interrupted, Signals

EXIT_STATUS = {signal.SIGINT: 130, signal.SIGTERM: 143}

#: `python -c SIGNAL_AT MODULE ATTRIBUTE WHEN SIGNAL bp-jax-args…`: bp-jax, signalling itself when
#: MODULE.ATTRIBUTE (a function, or Class.method) is called ("call"), has returned ("return"), or has
#: compiled a program ("compile": in the middle of the first compilation after the call begins, between
#: lowering and XLA's compile).
SIGNAL_AT = """
import importlib, os, signal, sys
import jax
from bp_jax.cli import main

module_name, attribute, when, number = sys.argv[1:5]
owner = importlib.import_module(module_name)
*path, name = attribute.split(".")
for part in path:
    owner = getattr(owner, part)
original, sent = getattr(owner, name), []

def send():
    if not sent:
        sent.append(True)
        os.kill(os.getpid(), int(number))

def on_compile_event(event, duration, **kwargs):
    if event == "/jax/core/compile/jaxpr_to_mlir_module_duration":
        send()

def wrapped(*args, **kwargs):
    if when == "call":
        send()
    if when == "compile":
        jax.monitoring.register_event_duration_secs_listener(on_compile_event)
    result = original(*args, **kwargs)
    if when == "return":
        send()
    return result

setattr(owner, name, wrapped)
sys.exit(main(sys.argv[5:]))
"""


def block_stop_signals():
    signal.pthread_sigmask(signal.SIG_BLOCK, set(EXIT_STATUS))


def spawn(argv, cwd) -> subprocess.Popen:
    return subprocess.Popen(
        argv, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=block_stop_signals
    )


def finish(process) -> tuple[int, str]:
    try:
        _, stderr = process.communicate(timeout=300)
    finally:
        process.kill()
    return process.returncode, stderr


def signalled_at(tmp_path, target: str, when: str, number: int, *args) -> tuple[int, str]:
    module, attribute = target.split(":")
    return finish(
        spawn([sys.executable, "-c", SIGNAL_AT, module, attribute, when, str(int(number)), *map(str, args)], tmp_path)
    )


def assert_one_line(stderr: str, expected: str):
    assert stderr.strip().splitlines() == [expected], stderr
    assert "Traceback" not in stderr and "Exception ignored" not in stderr


def no_temporary_files(folder) -> bool:
    return not [path for path in folder.rglob("*") if path.name.endswith(".tmp") or "tmp" in path.name.split(".")]


@pytest.mark.parametrize(
    "delay_s, number", [(0, signal.SIGINT), (0, signal.SIGTERM), (0.3, signal.SIGINT), (0.8, signal.SIGTERM)]
)
def test_a_signal_at_start_up_is_one_line_and_128_plus_its_number(tmp_path, delay_s, number):
    """Right after spawn, and while jax and the data load: the process ends at once (or, had training begun
    already, at the end of the chunk, checkpointed)."""
    out = tmp_path / "run"
    process = spawn(
        command("train", "--dataset", "synthetic", "--steps", 50_000_000, "--out", out, "--compile-cache", "off"),
        tmp_path,
    )
    time.sleep(delay_s)
    process.send_signal(number)
    status, stderr = finish(process)
    assert status == EXIT_STATUS[number]
    if "interrupted at step" in stderr:  # training had begun: the existing stop at the chunk's end
        step = int(stderr.split("interrupted at step ")[1].split(";")[0])
        assert_one_line(stderr, f"bp-jax train: interrupted at step {step}; resume with: bp-jax train --resume {out}")
        assert checkpoint_steps(out) == [step] and strict_json(out / "metrics.json")["final_step"] == step
    else:
        assert_one_line(stderr, "bp-jax train: interrupted")
        assert not (out / "metrics.json").exists() and checkpoint_steps(out) == []


@pytest.mark.parametrize(
    "target, when, number",
    [
        ("bp_jax.cli.sweep:_train", "call", signal.SIGINT),  # set-up of the members
        ("bp_jax:fit_ensemble", "compile", signal.SIGTERM),  # compiling the training program of 20000 members
    ],
)
@pytest.mark.slow
def test_a_signal_during_a_big_sweeps_set_up_or_compile_ends_it_at_once(tmp_path, target, when, number):
    status, stderr = signalled_at(
        tmp_path,
        target,
        when,
        number,
        "sweep",
        "--lr",
        "0.01,0.1",
        "--seeds",
        10_000,
        "--steps",
        5,
        "--out",
        tmp_path / "sweep",
        "--compile-cache",
        "off",
    )
    assert status == EXIT_STATUS[number]
    assert_one_line(stderr, "bp-jax sweep: interrupted")
    assert not (tmp_path / "sweep" / "sweep.json").exists() and no_temporary_files(tmp_path)


@pytest.mark.slow
def test_a_signal_while_train_compiles_ends_it_at_once_with_nothing_written(tmp_path):
    status, stderr = signalled_at(
        tmp_path,
        "bp_jax:fit",
        "compile",
        signal.SIGINT,
        "train",
        "--dataset",
        "synthetic",
        "--steps",
        5000,
        "--out",
        tmp_path / "run",
        "--compile-cache",
        "off",
    )
    assert status == 130
    assert_one_line(stderr, "bp-jax train: interrupted")
    assert checkpoint_steps(tmp_path / "run") == [] and not (tmp_path / "run" / "metrics.json").exists()


@pytest.mark.slow
def test_a_signal_while_a_sweep_trains_stops_at_the_chunks_end_and_writes_what_was_trained(tmp_path):
    out = tmp_path / "sweep"
    status, stderr = signalled_at(
        tmp_path,
        "bp_jax.cli.watch:Watch.on_chunk",
        "return",
        signal.SIGTERM,
        "sweep",
        "--lr",
        "0.01,0.03",
        "--seeds",
        2,
        "--steps",
        5000,
        "--out",
        out,
    )
    assert status == 143
    report = strict_json(out / "sweep.json")
    step = report["steps"]  # the end of the chunk after the first (or the next, had the signal come late)
    assert_one_line(stderr, f"bp-jax sweep: interrupted at step {step}; wrote what was trained so far to {out}")
    assert 1000 < step < 5000 and step % 1000 == 0 and report["stopped"] == {"step": step, "signal": signal.SIGTERM}


@pytest.mark.parametrize("name, written", [("sweep", "sweep.json"), ("train", "metrics.json")])
@pytest.mark.slow
def test_a_signal_while_results_are_written_lets_them_finish_then_exits(tmp_path, name, written):
    out = tmp_path / "out"
    args = ("--lr", "0.01,0.03", "--seeds", 2) if name == "sweep" else ("--dataset", "synthetic")
    status, stderr = signalled_at(
        tmp_path,
        "bp_jax.cli.folders:write_json",
        "call",
        signal.SIGINT,
        name,
        *args,
        "--steps",
        300,
        "--out",
        out,
    )
    assert status == 130
    assert_one_line(stderr, f"bp-jax {name}: interrupted")
    strict_json(out / written)  # whole, and valid
    picture = out / ("sweep.png" if name == "sweep" else "loss_curve.png")
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and no_temporary_files(tmp_path)


def test_the_phases_keep_a_signal_for_training_and_answer_one_that_came_while_writing():
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
    late.arrived(signal.SIGINT)  # in the last chunk: too late to stop training, answered after the writes
    with pytest.raises(Interrupted) as interrupted, late.writing():
        pass
    assert interrupted.value.number == signal.SIGINT and late.phase == "starting"


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

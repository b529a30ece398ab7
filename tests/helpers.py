"""What the command's tests share: running `bp-jax` in this process (`run_cli`) or in a subprocess as a user would
(`bp_jax_cli`), and reading what it wrote.

`run_cli` is the default: `bp_jax.cli.main(argv)` called here, its output and exit status returned as a
subprocess's are, without a second interpreter, JAX start-up and compilation per call. A real subprocess is
for what only a process shows: signals, an exit status or output that depends on the process (a closed pipe,
os._exit, a module missing at start-up), a fresh import, variables read when JAX starts (JAX_*, XLA_*:
devices), several processes at once. `commands_in_a_process` runs several commands that need the same process
(several devices, a file size limit) one after another in one.
"""

import contextlib
import io
import json
import logging
import os
import socket
import subprocess
import sys
import tempfile
import threading
import traceback
import warnings
from pathlib import Path

import jax
import numpy as np

ROOT = Path(__file__).parent.parent


def command(*args) -> list[str]:
    """The argv of `python -m bp_jax ARGS`, for subprocess.Popen."""
    return [sys.executable, "-m", "bp_jax", *map(str, args)]


def bp_jax_cli(*args, check: bool = True, env: dict | None = None, timeout: float = 300, **kwargs):
    """Run `bp-jax ARGS` to its end (`env`: variables set on top of this process's); with `check`, assert
    that it exited with status 0."""
    result = subprocess.run(
        command(*args),
        capture_output=True,
        text=True,
        timeout=timeout,
        env=None if env is None else os.environ | env,
        **kwargs,
    )
    if check:
        assert result.returncode == 0, result.stderr
    return result


#: the variables JAX reads when it starts: a command that needs them runs in a process of its own (bp_jax_cli)
STARTUP_VARIABLES = ("JAX_", "XLA_", "TF_CPP_", "PYTHONPATH")
#: the warnings a fresh interpreter shows (Python's default filters), for run_cli's stderr
_DEFAULT_FILTERS = (
    ("default", DeprecationWarning, "__main__"),
    ("ignore", DeprecationWarning, ""),
    ("ignore", PendingDeprecationWarning, ""),
    ("ignore", ImportWarning, ""),
    ("ignore", ResourceWarning, ""),
)
#: loggers whose filters a command may add (bp_jax.cli.checkpoints quiets orbax's echoes for the process)
_LOGGERS = ("asyncio", "absl", "concurrent.futures")


@contextlib.contextmanager
def _environment(env: dict | None, cwd):
    """os.environ with `env` on top (a value of None removes the variable), and the working directory `cwd`,
    for the block."""
    env = {key: None if value is None else str(value) for key, value in (env or {}).items()}
    refused = [key for key in env if key.startswith(STARTUP_VARIABLES)]
    assert not refused, f"{refused} are read when JAX starts: run the command in a subprocess (bp_jax_cli)"
    saved, directory = {key: os.environ.get(key) for key in env}, os.getcwd()
    try:
        for key, value in env.items():
            os.environ.pop(key, None) if value is None else os.environ.__setitem__(key, value)
        if cwd is not None:
            os.chdir(cwd)
        yield
    finally:
        os.chdir(directory)
        for key, value in saved.items():
            os.environ.pop(key, None) if value is None else os.environ.__setitem__(key, value)


@contextlib.contextmanager
def process_state():
    """JAX's settings, the exception hooks and the loggers' filters as they were before the block: a command
    that changes them (--compile-cache points JAX's persistent cache at a folder) changes them for itself alone."""
    import jax
    from jax._src import compilation_cache

    settings = dict(jax.config.values)
    hooks = sys.excepthook, sys.unraisablehook, threading.excepthook
    filters = {name: list(logging.getLogger(name).filters) for name in _LOGGERS}
    try:
        yield
    finally:
        changed = {name: value for name, value in settings.items() if jax.config.values.get(name) != value}
        for name, value in changed.items():
            jax.config.update(name, value)
        if "jax_compilation_cache_dir" in changed or compilation_cache.is_initialized():
            compilation_cache.reset_cache()  # the cache object JAX made holds the folder it was made with
        sys.excepthook, sys.unraisablehook, threading.excepthook = hooks
        for name, kept in filters.items():
            logging.getLogger(name).filters[:] = kept


@contextlib.contextmanager
def _captured_descriptors():
    """What is written to file descriptors 1 and 2 below Python (XLA's own logging) during the block."""
    sys.stdout.flush(), sys.stderr.flush()
    written: dict[int, str] = {}
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        saved = {}
        try:
            for fd, file in ((1, out), (2, err)):
                saved[fd] = os.dup(fd)
                os.dup2(file.fileno(), fd)
            yield written
        finally:
            for fd, copy in saved.items():
                os.dup2(copy, fd)
                os.close(copy)
            for fd, file in ((1, out), (2, err)):
                file.seek(0)
                written[fd] = file.read().decode(errors="replace")


def run_cli(*args, check: bool = True, env: dict | None = None, cwd=None, timeout: float | None = None):
    """Run `bp-jax ARGS` in this process (`bp_jax.cli.main`), as bp_jax_cli does in a subprocess: the result
    has its returncode, stdout and stderr (what a subprocess would print: an uncaught exception's traceback and
    exit status 1, a SystemExit's status, the warnings a fresh interpreter shows). `env`: variables set on top of
    this process's for the run (None: unset; none that JAX reads at start-up); `cwd`: the working directory
    for the run; `timeout` is accepted for bp_jax_cli's signature. With `check`, assert that it exited with
    status 0. The command runs under JAX's default settings, as in a fresh process (rank promotion allowed); JAX's
    settings, os.environ, the working directory and the hooks are as before afterwards."""
    from bp_jax.cli import main

    argv = [str(arg) for arg in args]
    stdout, stderr, status = io.StringIO(), io.StringIO(), 1
    with (
        _environment(env, cwd),
        process_state(),
        _captured_descriptors() as descriptors,
        warnings.catch_warnings(record=True) as caught,
    ):
        import jax

        # as in a user's process: conftest's rank promotion "raise" is for the library's own tests; restored by
        # process_state
        jax.config.update("jax_numpy_rank_promotion", "allow")
        warnings.resetwarnings()
        for action, category, module in reversed(_DEFAULT_FILTERS):
            warnings.filterwarnings(action, category=category, module=module)
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            try:
                status = main(argv)
            except SystemExit as exit:  # argparse: --help (0), a usage error (2)
                code = exit.code
                status = code if isinstance(code, int) else 0 if code is None else 1
                if not isinstance(code, int | None):
                    print(code, file=sys.stderr)
            except Exception:
                traceback.print_exc()
        for warning in caught:
            stderr.write(warnings.formatwarning(warning.message, warning.category, warning.filename, warning.lineno))
    result = subprocess.CompletedProcess(
        ["bp-jax", *argv], status, stdout.getvalue() + descriptors[1], stderr.getvalue() + descriptors[2]
    )
    if check:
        assert result.returncode == 0, result.stderr
    return result


def normal(seed: int, *shape: int) -> jax.Array:
    """N(0, 1) draws of `shape` in the default float dtype (float64 under jax.enable_x64), by numpy: test data
    without jax.random, which compiles a program (about a second on CPU) for every new shape and dtype."""
    return jax.numpy.asarray(np.random.default_rng(seed).normal(size=shape))


def params_of(model, seed: int = 0):
    """Params for `model` drawn by numpy, each leaf uniform in ±1/√(its last axis's size), in the dtypes of
    `model.init`'s (float64 under jax.enable_x64): the structure from `jax.eval_shape`, which compiles nothing,
    where `model.init` compiles a jax.random program for every leaf shape and dtype."""
    rng = np.random.default_rng(seed)
    bound = lambda shape: 1 / np.sqrt(shape[-1] if shape else 1)
    return jax.tree.map(
        lambda leaf: jax.numpy.asarray((rng.uniform(-1, 1, leaf.shape) * bound(leaf.shape)).astype(leaf.dtype)),
        jax.eval_shape(model.init, jax.random.key(0)),
    )


def together(*functions):
    """`(f(*args), g(*args), …)` as one jitted program: one compilation for a test comparing several functions of
    the same arguments, where each run eagerly compiles a program per operation and shape."""
    return jax.jit(lambda *args: tuple(function(*args) for function in functions))


def commands_in_a_process(argvs, *, env: dict | None = None, file_size_limit: int | None = None, timeout: float = 300):
    """`bp-jax ARGV` for each ARGV of `argvs`, one after another in one new process (tests/commands_worker.py: run_cli
    there), for what only that process has: `env`, its variables (default: this process's; those JAX reads when it
    starts: several devices), or `file_size_limit` bytes beyond which the kernel refuses to grow a file. Each
    command's result as run_cli gives it."""
    argvs = [[str(arg) for arg in argv] for argv in argvs]
    done = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "commands_worker.py"), json.dumps(argvs)]
        + ([str(file_size_limit)] if file_size_limit else []),
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    results = json.loads(done.stdout)
    return [
        subprocess.CompletedProcess(["bp-jax", *argv], *result) for argv, result in zip(argvs, results, strict=True)
    ]


def without_coverage() -> dict:
    """This process's variables less coverage's, for a subprocess that coverage must not measure: one whose
    files cannot grow (coverage could not write its data) or whose own timing loops it would slow many times."""
    return {key: value for key, value in os.environ.items() if not key.startswith("COVERAGE_")}


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on now (a multi-process run's coordinator)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def finished(processes, timeout: float = 240) -> list[tuple[str, str]]:
    """Each process's (stdout, stderr) once all have exited, each having exited 0 (all are killed on a timeout)."""
    try:
        outputs = [process.communicate(timeout=timeout) for process in processes]
    finally:
        for process in processes:
            process.kill()
    for process, (_, stderr) in zip(processes, outputs):
        assert process.returncode == 0, stderr
    return outputs


def fake_devices(count: int) -> dict:
    """The variables that give a `bp-jax` subprocess `count` CPU devices (read when JAX starts)."""
    return {"JAX_NUM_CPU_DEVICES": str(count), "PYTHONPATH": str(ROOT)}


def strict_json(path: Path):
    """The JSON in `path`, refusing NaN and infinities, which strict JSON does not have."""

    def refuse(constant):
        raise ValueError(f"{path} holds {constant}, which is not JSON")

    return json.loads(path.read_text(), parse_constant=refuse)


def checkpoint_steps(run_dir: Path) -> list[int]:
    directory = run_dir / "checkpoints"
    return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit()) if directory.exists() else []


def final_state(run_dir: Path) -> tuple[int, list[np.ndarray]]:
    """The newest checkpoint's step and arrays, restored without a template, as a flat list of numpy arrays."""
    import orbax.checkpoint as ocp

    manager = ocp.CheckpointManager((run_dir / "checkpoints").absolute())
    step = manager.latest_step()
    state = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]
    return step, [np.asarray(leaf) for leaf in jax.tree.leaves(state)]


def assert_same_state(a: Path, b: Path):
    (step_a, leaves_a), (step_b, leaves_b) = final_state(a), final_state(b)
    assert step_a == step_b
    assert len(leaves_a) == len(leaves_b)
    for left, right in zip(leaves_a, leaves_b):
        np.testing.assert_array_equal(left, right)


def weighted_table(rows: int = 40, seed: int = 0):
    """A DataFrame of two features a and b, row weights w (0, 1 or 2), an unequal class cls tied to a, and a number
    y: for the row and class weights (`--sample-weight w`, `--class-weight balanced` of cls)."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    a, b = rng.normal(size=(2, rows))
    return pd.DataFrame(
        {
            "a": a,
            "b": b,
            "w": rng.integers(0, 3, rows).astype(float),
            "cls": np.where(a + 0.5 * rng.normal(size=rows) > 0.6, "yes", "no"),
            "y": 2 * a + b,
        }
    )

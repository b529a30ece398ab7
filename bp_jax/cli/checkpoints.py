"""Checkpoints with orbax-checkpoint: params, optimizer state, step and data-order key, plus a JSON record.

Orbax writes each step into a temporary directory and renames it when complete, so a checkpoint is either
whole or absent; a killed run leaves the previous one intact, and the next run writing there removes the
leftover temporary directory. Loading checks the arrays' shapes against the expected ones before reading
them, and refuses anything else with a one-line CheckpointError; a damaged newest checkpoint is refused
naming the newest intact one. orbax is imported inside the functions that use it, so the commands that
write no checkpoint (demo, check, explain) never load it.
"""

import logging
import shutil
import sys
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import jax

from bp_jax.cli._args import UsageError

if TYPE_CHECKING:  # for the annotations only: orbax loads when a checkpoint is read or written
    import orbax.checkpoint as ocp


class CheckpointError(UsageError):
    """A checkpoint that is missing, unreadable, unwritable, or does not match what is being resumed."""


@contextmanager
def _quiet_failures():
    """Orbax's reader and writer threads echo a failed read or write as 'Event loop is closed' errors,
    logged thread failures, never-retrieved exceptions and abandoned coroutines, some only at interpreter
    exit; the failure itself is raised as CheckpointError, so drop those echoes: during the operation, and
    for the rest of the process if it failed."""
    echo = lambda exc: (
        isinstance(exc, RuntimeError)
        and ("Event loop is closed" in str(exc) or "cannot schedule new futures" in str(exc))
    )
    abandoned = lambda unraisable: echo(unraisable.exc_value) or type(unraisable.object).__name__ == "coroutine"
    unraisablehook, excepthook, threadhook = sys.unraisablehook, sys.excepthook, threading.excepthook
    loggers = [logging.getLogger(name) for name in ("asyncio", "absl", "concurrent.futures")]
    quiet = lambda record: record.levelno < logging.ERROR and "never retrieved" not in record.getMessage()
    sys.unraisablehook = lambda unraisable: None if abandoned(unraisable) else unraisablehook(unraisable)
    sys.excepthook = lambda kind, exc, trace: None if echo(exc) else excepthook(kind, exc, trace)
    threading.excepthook = lambda failure: None if echo(failure.exc_value) else threadhook(failure)
    for logger in loggers:
        logger.addFilter(quiet)
    yield  # an exception leaves the filters in place
    sys.unraisablehook, sys.excepthook, threading.excepthook = unraisablehook, excepthook, threadhook
    for logger in loggers:
        logger.removeFilter(quiet)


def _first_line(err: BaseException, limit: int = 200) -> str:
    line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return line if len(line) <= limit else line[:limit] + "…"


def manager(directory: Path, *, write: bool = False, max_to_keep: int = 3) -> "ocp.CheckpointManager":
    """A manager used by this process alone, also in a multi-process run (whose state is replicated).
    Only a `write` manager creates `directory` (in a one-process run) and removes leftover temporary
    directories of interrupted saves: open one only on a folder this process has locked."""
    import orbax.checkpoint as ocp

    directory = Path(directory).absolute()
    if not write and not directory.is_dir():
        raise CheckpointError(f"no checkpoint in {directory}")
    multiprocess = jax.process_count() > 1
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep,
        enable_async_checkpointing=False,
        create=write and not multiprocess,
        cleanup_tmp_directories=write,
        **(
            {
                "multiprocessing_options": ocp.options.MultiprocessingOptions(
                    primary_host=jax.process_index(), active_processes={jax.process_index()}
                )
            }
            if multiprocess
            else {}
        ),
    )
    return ocp.CheckpointManager(
        directory,
        options=options,
        item_handlers={"state": ocp.StandardCheckpointHandler(), "record": ocp.JsonCheckpointHandler()},
    )


def save(checkpoints: "ocp.CheckpointManager", step: int, state, record: dict, *, overwrite: bool = False) -> None:
    """Write `state` (a pytree of arrays) and the JSON `record` as checkpoint `step`, unless that step is
    already saved (the same state: training is deterministic) and not to be written again (`overwrite`: its
    record changed). CheckpointError, leaving no partial directory behind, if the write fails (a full disk,
    say)."""
    import orbax.checkpoint as ocp

    if step in checkpoints.all_steps():
        if not overwrite:
            return
        checkpoints.delete(step)
    threads = set(threading.enumerate())
    try:
        with _quiet_failures():
            checkpoints.save(
                step,
                args=ocp.args.Composite(state=ocp.args.StandardSave(state), record=ocp.args.JsonSave(record)),
                force=True,
            )
            checkpoints.wait_until_finished()
    except Exception as err:  # orbax wraps the OSError in several layers
        deadline = time.monotonic() + 30
        for writer in set(threading.enumerate()) - threads:  # its other writers may still be at work
            _join(writer, deadline)
        for partial in Path(checkpoints.directory).glob(f"{step}.orbax-checkpoint-tmp*"):
            shutil.rmtree(partial, ignore_errors=True)
        raise CheckpointError(
            f"could not write checkpoint {step} in {checkpoints.directory}: {_first_line(_root_cause(err))}"
        ) from None


def _join(thread: threading.Thread, deadline: float) -> None:
    """Wait for `thread` to end until `deadline` (time.monotonic()), also one caught between its start() and
    running, which enumerate() lists and join() refuses ("cannot join thread before it is started")."""
    while True:
        try:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
            return
        except RuntimeError:  # started a moment ago: running in a moment
            if time.monotonic() >= deadline:
                return
            time.sleep(0.01)


def _root_cause(err: BaseException) -> BaseException:
    while (inner := err.__cause__ or err.__context__) is not None:
        err = inner
    return err


def _read_record(checkpoints, step: int) -> dict:
    import orbax.checkpoint as ocp

    with _quiet_failures():
        record = checkpoints.restore(step, args=ocp.args.Composite(record=ocp.args.JsonRestore()))["record"]
    if not isinstance(record, dict) or "config" not in record:
        raise ValueError("it has no training record")
    return record


def _shapes(tree) -> dict[str, tuple]:
    """{path: shape} of every array; paths as "opt_state/0/count", alike for a tuple and the list orbax
    stores it as, a NamedTuple and its dict."""
    name = lambda key: str(next(getattr(key, field) for field in ("key", "idx", "name") if hasattr(key, field)))
    return {
        "/".join(map(name, path)): tuple(leaf.shape) for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]
    }


def _read_state(checkpoints, step: int, like):
    """The arrays of checkpoint `step`; CheckpointError (not a failed read) if their shapes are not like's."""
    import orbax.checkpoint as ocp

    with _quiet_failures():
        stored = _shapes(checkpoints.item_metadata(step)["state"].tree)
    expected = _shapes(like)
    if stored != expected:
        differ = next(
            f"{path} is {stored.get(path)}, expected {expected.get(path)}"
            for path in sorted(set(stored) | set(expected))
            if stored.get(path) != expected.get(path)
        )
        raise CheckpointError(
            f"checkpoint {step} in {checkpoints.directory} holds arrays that do not match its "
            f"record (this model and optimizer): {differ}"
        )
    target = jax.eval_shape(lambda: like)
    with _quiet_failures():
        return checkpoints.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target)))["state"]


def _damaged(checkpoints, step: int, err: Exception, intact: Callable[[int], object]) -> CheckpointError:
    """The error for a damaged checkpoint `step`, naming the newest older one that `intact` reads."""
    directory = Path(checkpoints.directory)
    message = f"checkpoint {step} in {directory} is unreadable (corrupt or truncated): {_first_line(err)}"
    for older in sorted((s for s in checkpoints.all_steps() if s < step), reverse=True):
        try:
            intact(older)
        except Exception:
            continue
        return CheckpointError(
            f"{message}; the newest intact one is step {older}: to resume from it, move the "
            f"damaged one aside (mv {directory / str(step)} {directory.parent}/damaged-{step}) "
            f"and run again"
        )
    return CheckpointError(f"{message}; no intact checkpoint remains")


def latest_record(checkpoints: "ocp.CheckpointManager") -> tuple[int, dict]:
    """(step, record) of the newest checkpoint; CheckpointError if there is none or it is unreadable."""
    step = checkpoints.latest_step()
    if step is None:
        raise CheckpointError(f"no checkpoint in {checkpoints.directory}")
    read = lambda s: _read_record(checkpoints, s)
    try:
        return step, read(step)
    except Exception as err:  # orbax raises many types for a damaged directory
        raise _damaged(checkpoints, step, err, read) from None


def restore(checkpoints: "ocp.CheckpointManager", step: int, like):
    """The state of checkpoint `step`, which must have exactly the structure and shapes of `like`."""
    read = lambda s: _read_state(checkpoints, s, like)
    try:
        return read(step)
    except CheckpointError:
        raise
    except Exception as err:
        raise _damaged(checkpoints, step, err, read) from None

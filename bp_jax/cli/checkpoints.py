"""Checkpoints with orbax-checkpoint: params, optimizer state, step and data-order key, plus a JSON record.

Orbax writes each step into a temporary directory and renames it when complete, so a checkpoint is either
whole or absent; a killed run leaves the previous one intact. Loading checks the record's config against
the caller's and the arrays against the expected shapes, and refuses anything else with CheckpointError.
"""

import logging
import sys
from contextlib import contextmanager
from pathlib import Path

import jax

import orbax.checkpoint as ocp

from bp_jax.cli._args import UsageError


class CheckpointError(UsageError):
    """A checkpoint that is missing, unreadable, or does not match what is being resumed."""


@contextmanager
def _quiet_closed_event_loop():
    """Orbax's reader threads and tasks echo a failed read of a damaged checkpoint as 'Event loop is closed'
    errors and never-retrieved exceptions, some only at interpreter exit; the failure itself is raised as
    CheckpointError, so drop those echoes: during the read, and for the rest of the process if it failed."""
    echo = lambda exc: isinstance(exc, RuntimeError) and "Event loop is closed" in str(exc)
    unraisablehook, excepthook, asyncio_log = sys.unraisablehook, sys.excepthook, logging.getLogger("asyncio")
    never_retrieved = lambda record: "exception was never retrieved" not in record.getMessage()
    sys.unraisablehook = lambda unraisable: None if echo(unraisable.exc_value) else unraisablehook(unraisable)
    sys.excepthook = lambda kind, exc, trace: None if echo(exc) else excepthook(kind, exc, trace)
    asyncio_log.addFilter(never_retrieved)
    yield  # an exception leaves the filters in place
    sys.unraisablehook, sys.excepthook = unraisablehook, excepthook
    asyncio_log.removeFilter(never_retrieved)


def _first_line(err: Exception, limit: int = 300) -> str:
    line = str(err).splitlines()[0] if str(err) else type(err).__name__
    return line if len(line) <= limit else line[:limit] + "…"


def manager(directory: Path, max_to_keep: int = 3) -> "ocp.CheckpointManager":
    """A manager used by this process alone, also in a multi-process run (whose state is replicated);
    there it does not create `directory`."""
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, enable_async_checkpointing=False)
    if jax.process_count() > 1:
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, enable_async_checkpointing=False, create=False,
            multiprocessing_options=ocp.options.MultiprocessingOptions(
                primary_host=jax.process_index(), active_processes={jax.process_index()}))
    return ocp.CheckpointManager(Path(directory).absolute(), options=options)


def save(checkpoints: "ocp.CheckpointManager", step: int, state, record: dict) -> None:
    """Write `state` (a pytree of arrays) and the JSON `record` as checkpoint `step`."""
    checkpoints.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                   record=ocp.args.JsonSave(record)), force=True)
    checkpoints.wait_until_finished()


def latest_record(checkpoints: "ocp.CheckpointManager") -> tuple[int, dict]:
    """(step, record) of the newest checkpoint; CheckpointError if there is none or it is unreadable."""
    step = checkpoints.latest_step()
    if step is None:
        raise CheckpointError(f"no checkpoint in {checkpoints.directory}")
    try:
        with _quiet_closed_event_loop():
            record = checkpoints.restore(step, args=ocp.args.Composite(record=ocp.args.JsonRestore()))["record"]
    except Exception as err:  # orbax raises many types for a damaged directory
        raise CheckpointError(f"checkpoint {step} in {checkpoints.directory} is unreadable "
                              f"(corrupt or truncated): {_first_line(err)}") from None
    if not isinstance(record, dict) or "config" not in record:
        raise CheckpointError(f"checkpoint {step} in {checkpoints.directory} has no training record")
    return step, record


def restore(checkpoints: "ocp.CheckpointManager", step: int, like):
    """The state of checkpoint `step`, which must have exactly the structure and shapes of `like`."""
    target = jax.eval_shape(lambda: like)
    try:
        with _quiet_closed_event_loop():
            restored = checkpoints.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target)))
    except Exception as err:
        raise CheckpointError(f"checkpoint {step} in {checkpoints.directory} does not match this model "
                              f"and optimizer, or is corrupt: {_first_line(err)}") from None
    return restored["state"]

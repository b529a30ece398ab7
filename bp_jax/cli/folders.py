"""Run folders: unique default names, one live run per folder, no run written over another, and files
written atomically (strict JSON: NaN and infinities become null).

A live run holds an exclusive `fcntl.flock` on `<folder>/.bp-jax.lock` (the file names its pid). The kernel
drops the lock when the process ends, however it ends (SIGKILL included), so a lock is never stale and no
pid has to be checked for liveness, unlike an O_EXCL lock file. The lock file itself stays: deleting it
would let two runs lock two different files of the same name.
"""

import fcntl
import json
import math
import os
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

from bp_jax.cli._args import UsageError

LOCK = ".bp-jax.lock"
RESULT_FILES = ("metrics.json", "sweep.json")


def holds_run(folder: Path) -> bool:
    """Whether `folder` holds a run's results (checkpoints, metrics or a sweep's results)."""
    checkpoints = folder / "checkpoints"
    return any((folder / name).exists() for name in RESULT_FILES) or (checkpoints.is_dir()
                                                                       and any(checkpoints.iterdir()))


def create_unique(root: Path, name: str) -> Path:
    """A new folder `root/name-<time>`, or with a suffix -2, -3, … when that exists: created exclusively,
    so runs started together never share one."""
    base = f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    for attempt in range(1, 1000):
        folder = root / (base if attempt == 1 else f"{base}-{attempt}")
        try:
            folder.mkdir(parents=True)
            return folder
        except FileExistsError:
            continue
        except OSError as err:
            raise UsageError(f"cannot create a run folder in {root}: {err.strerror or err}") from None
    raise UsageError(f"{root} already has 999 runs named {base}; pass --out")


@contextmanager
def claimed(folder: Path, *, continuing: Path | None = None, resumable: bool = True):
    """Lock `folder` for this run (creating it) for the duration of the block. UsageError if it is not
    writable, another live run holds it, or it holds a run other than `continuing` (the resumed folder);
    the message suggests --resume when the command has it (`resumable`)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(folder / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:
        raise UsageError(f"--out {folder} is not writable: {err.strerror or err}") from None
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(descriptor, 32, 0).decode(errors="replace").strip() or "unknown"
            raise UsageError(f"{folder} is in use by a running bp-jax command (pid {holder}); wait for it to end "
                             f"or choose another --out") from None
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, f"{os.getpid()}\n".encode(), 0)
        same = continuing is not None and continuing.resolve() == folder.resolve()
        if holds_run(folder) and not same:
            hint = f"pass --resume {folder} to continue it, or another --out" if continuing is None and resumable \
                else "choose an empty --out"
            raise UsageError(f"{folder} already holds a run (checkpoints, metrics.json or sweep.json); {hint}")
        yield folder
    finally:
        os.close(descriptor)  # releases the lock


def finite(tree):
    """`tree` (dicts, lists, numbers) with every NaN or infinity replaced by None, so it is strict JSON."""
    if isinstance(tree, dict):
        return {key: finite(value) for key, value in tree.items()}
    if isinstance(tree, (list, tuple)):
        return [finite(value) for value in tree]
    return None if isinstance(tree, float) and not math.isfinite(tree) else tree


def write_atomically(path: Path, write: Callable[[Path], object]) -> None:
    """`write(temporary)` then rename over `path`: readers see the old file or the new one, never half."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(temporary)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def write_json(path: Path, value) -> None:
    write_atomically(path, lambda temporary: temporary.write_text(json.dumps(finite(value), indent=1,
                                                                             allow_nan=False)))

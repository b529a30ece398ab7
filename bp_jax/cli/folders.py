"""Output folders: unique default names, one live run per folder, nothing of the user's ever replaced, and
files written atomically (strict JSON: NaN and infinities become null).

Every command that writes (train, sweep, explain, predict) follows one rule: it never replaces or deletes a
file it did not create. A fresh run's folder is new or empty (`claimed`); only a resumed train run writes
into a folder that holds files, its own. A file is written into a temporary file beside it and then put in
place in one step: created with `os.link`, which fails rather than replace a file that appeared meanwhile,
or renamed over the run's own file when resuming. A failed write names the file.

A live run holds an exclusive `fcntl.flock` on `<folder>/.bp-jax.lock` (the file names its pid). The kernel
drops the lock when the process ends, however it ends (SIGKILL included), so a lock is never stale and no
pid has to be checked for liveness, unlike an O_EXCL lock file. The lock file itself stays: deleting it
would let two runs lock two different files of the same name.
"""

import errno
import fcntl
import json
import math
import os
import time
from collections.abc import Callable
from contextlib import contextmanager, suppress
from pathlib import Path

from bp_jax.cli._args import UsageError

LOCK = ".bp-jax.lock"


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
            raise UsageError(f"cannot create a folder in {root}: {err.strerror or err}") from None
    raise UsageError(f"{root} already has 999 folders named {base}; pass --out")


def live_holder(folder: Path) -> str | None:
    """The pid (as the lock file names it) of the live bp-jax command holding `folder`, or None."""
    try:
        descriptor = os.open(folder / LOCK, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(descriptor, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return None  # nobody holds it exclusively (a shared lock is dropped with the descriptor)
    except BlockingIOError:
        return os.pread(descriptor, 32, 0).decode(errors="replace").strip() or "unknown"
    finally:
        os.close(descriptor)


def in_use(folder: Path, holder: str, hint: str = "wait for it to end or choose another --out") -> UsageError:
    return UsageError(f"{folder} is in use by a running bp-jax command (pid {holder}); {hint}")


def _not_empty(folder: Path, resumable: bool) -> str | None:
    """Why a fresh run cannot write into `folder`, worded by what it holds; None when it holds nothing but
    what a run stopped before its first checkpoint leaves (the lock file and an empty checkpoints/)."""
    checkpoints = folder / "checkpoints"
    saved = checkpoints.is_dir() and any(checkpoints.iterdir())
    left = {LOCK} | ({"checkpoints"} if checkpoints.is_dir() and not saved else set())
    held = sorted(entry.name + "/" * entry.is_dir() for entry in folder.iterdir() if entry.name not in left)
    if not held:
        return None
    if saved:
        hint = f"pass --resume {folder} to continue it, or choose" if resumable else "choose"
        return f"{folder} already holds a run (checkpoints); {hint} a new or empty --out"
    if (folder / "sweep.json").exists():
        return f"{folder} already holds a run: a sweep (sweep.json); choose a new or empty --out"
    if (folder / "metrics.json").exists():
        return f"{folder} already holds a run (metrics.json); choose a new or empty --out"
    shown = ", ".join(held[:3]) + (f" and {len(held) - 3} more" if len(held) > 3 else "")
    return (
        f"{folder} is not empty (it holds {shown}); bp-jax writes only into a new or empty --out, so that "
        f"no file of yours is replaced"
    )


@contextmanager
def claimed(folder: Path, *, continuing: Path | None = None, resumable: bool = True):
    """Lock `folder` for this command (creating it) for the duration of the block. UsageError if it is not
    writable, another live command holds it, or it holds anything but the run it continues (`continuing`,
    the resumed folder); the message suggests --resume where it would work (`resumable`). A folder refused
    is left as it was (checked before the lock file is made, and again once locked)."""
    same = continuing is not None and continuing.resolve() == folder.resolve()
    resumable = continuing is None and resumable
    holder = live_holder(folder)
    refusal = None if same or not folder.is_dir() else _not_empty(folder, resumable)
    if holder is not None or refusal:
        raise in_use(folder, holder) if holder is not None else UsageError(refusal)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(folder / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:
        raise UsageError(f"--out {folder} is not writable: {err.strerror or err}") from None
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise in_use(folder, os.pread(descriptor, 32, 0).decode(errors="replace").strip() or "unknown") from None
        try:
            os.ftruncate(descriptor, 0)
            os.pwrite(descriptor, f"{os.getpid()}\n".encode(), 0)
        except OSError as err:
            raise UsageError(f"could not write {folder / LOCK}: {err.strerror or err}") from None
        refusal = None if same else _not_empty(folder, resumable)  # a command that started with this one
        if refusal:
            raise UsageError(refusal)
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


def write_atomically(path: Path, write: Callable[[Path], object], *, replace: bool = False) -> Path:
    """`write(temporary)`, then put the temporary file (named like `path`, suffix kept) in place in one step:
    readers see no file or the whole one. `path` must not exist, unless `replace` (the command's own file,
    written again). UsageError naming `path` if it exists or the write fails (a full disk, say); nothing
    is left behind then."""
    temporary = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    try:
        write(temporary)
        if replace:
            os.replace(temporary, path)
        else:
            _create(temporary, path)
    except FileExistsError:
        raise UsageError(f"{path} already exists (not written by this command); it was left as it is") from None
    except OSError as err:
        raise UsageError(f"could not write {path}: {err.strerror or err}") from None
    finally:
        with suppress(FileNotFoundError, NotADirectoryError):  # none was made (a folder of the path is missing)
            temporary.unlink()
    return path


def _create(temporary: Path, path: Path) -> None:
    """Give the complete `temporary` the name `path`, which must not exist (FileExistsError)."""
    try:
        os.link(temporary, path)  # atomic, and never replaces
    except OSError as err:
        if err.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK):
            raise
        if path.exists():  # a file system without hard links: as close as it allows
            raise FileExistsError(errno.EEXIST, "File exists", str(path)) from None
        os.rename(temporary, path)


def write_json(path: Path, value, *, replace: bool = False) -> Path:
    return write_atomically(
        path,
        lambda temporary: temporary.write_text(json.dumps(finite(value), indent=1, allow_nan=False)),
        replace=replace,
    )

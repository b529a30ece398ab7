"""SIGINT and SIGTERM over the command's whole life, from the entry point's first line to the process's exit:
each ends in exactly one of the complete result (exit status 0), one line `... interrupted` on stderr and exit
status 128 + the signal's number (130, 143) with what was done so far kept whole, or the command's own one-line
refusal (exit status 2). Never a traceback, never a death by the signal.

    with interrupts.handled("bp-jax train", until_exit=True) as signals:   # main's first act: "starting"
        ... imports, data, set-up, compile ...             # a signal ends the process at once
        watch = Watch(total, signals=signals)               # its first chunk done, the phase is "training":
        bp_jax.fit(..., on_chunk=watch.on_chunk)           #   the first signal stops fit at the chunk's end
        with signals.writing():                             # a signal waits for the writes to finish,
            write results                                   #   then ends the command (Interrupted)
        print the summary                                   # "done": the outcome is decided

Phases, and what a signal does in each:
- starting (the default): nothing to save yet, so the process ends at once.
- training (`training()`, which `Watch` enters after the first chunk): the first signal is kept in `received`
  for the loop to stop at the end of its chunk and save; a second ends the process at once.
- writing (`writing()`, the block that writes the command's results): kept; when the block ends, `Interrupted`
  is raised unless training already stopped on a signal (whose own exit path then ends the process with 128 +
  its number). A signal that came in training's last chunk, too late to stop it, counts as one that came while
  writing.
- done (`done()`, and after `writing()`): the outcome is decided, its results complete or its refusal or stop
  worded; a signal changes nothing, and the command prints its summary or its one line and ends with that
  status. A signal that comes after the results are whole thus leaves exit status 0: the user has them all.

Before `handled` and after it: `bp_jax/__main__.py` blocks both signals as its first act, so one that comes
while the command's modules load is held by the kernel, and `handled` unblocks them once its handler is in
place (none that came earlier is lost; signals blocked when the process started are unblocked too). With
`until_exit` (the process's own command) both are ignored from the block's end to the process's exit: its
status is decided, and exit's teardown (atexit handlers such as JAX's, threads finishing) cannot be interrupted.

A Python-level handler cannot run while the main thread sits in C++ (XLA compiling, a long device call), so
the handler only makes the interpreter write the signal's number to a pipe at C level (`signal.set_wakeup_fd`),
and a daemon thread reading the pipe acts on it at once. A signal the parent set to be ignored (a background
job of a non-interactive shell) stays ignored.
"""

import os
import signal
import threading
from contextlib import contextmanager

SIGNALS = (signal.SIGINT, signal.SIGTERM)
STARTING, TRAINING, WRITING, DONE = "starting", "training", "writing", "done"


class Interrupted(Exception):
    """A signal came while results were written: they are complete, and the process ends with 128 + `number`."""

    def __init__(self, number: int):
        super().__init__(f"interrupted by {signal.Signals(number).name}")
        self.number = number


class Signals:
    """What the signals that came mean for the phase the command is in (see the module's docstring).

    `received`: the first signal's number, for a training loop to see between chunks. `label` begins the line
    printed when a signal ends the process ("bp-jax train: interrupted").
    """

    def __init__(self, label: str = "bp-jax"):
        self.label = label
        self.phase = STARTING
        self.received: int | None = None
        self.stopped = False  # training stopped on a signal: its exit path reports it
        self._unanswered: int | None = None  # a signal that came while writing
        self._lock = threading.Lock()

    def arrived(self, number: int) -> None:
        """Act on signal `number` as the phase says: end the process now, or keep it for later."""
        with self._lock:
            if self.phase == DONE:
                return
            if self.phase == STARTING or (self.phase == TRAINING and self.received is not None):
                self.end(number)
            if self.received is None:
                self.received = number
            if self.phase == WRITING:
                self._unanswered = number

    def end(self, number: int) -> None:
        """One line on stderr, and the process ends with status 128 + `number`, whatever the main thread does."""
        line = f"{self.label}: interrupted\n"
        if os.isatty(2):  # over a progress bar's line, and the cursor it hid shown again
            line = f"\r\x1b[2K{line}\x1b[?25h"
        os.write(2, line.encode())
        os._exit(128 + number)

    def training(self) -> None:
        """From now on the first signal stops training at the end of a chunk (idempotent)."""
        with self._lock:
            if self.phase == STARTING:
                self.phase = TRAINING

    def done(self) -> None:
        """The command's outcome is decided: from now on a signal changes nothing (idempotent)."""
        with self._lock:
            self.phase = DONE

    @contextmanager
    def writing(self):
        """The block that writes the command's results, its last work: a signal lets it finish, then raises
        Interrupted, unless training already stopped on a signal. Afterwards the outcome is decided (`done`)."""
        with self._lock:  # a signal that came in training's last chunk, too late to stop it, is answered here
            self.phase, self._unanswered = WRITING, None if self.stopped else self.received
        try:
            yield
        finally:
            with self._lock:
                self.phase, unanswered = DONE, self._unanswered
        if unanswered is not None and not self.stopped:
            raise Interrupted(unanswered)


_current: Signals | None = None


def current() -> Signals:
    """The Signals of the running command (an inert one outside `handled`, e.g. when a test calls a command)."""
    return _current if _current is not None else Signals()


def _wait_for_signals(read_end: int, signals: Signals) -> None:
    """The daemon thread: each byte the interpreter writes to the pipe is a signal's number; end-of-file
    (the write end closed) ends the handling."""
    with open(read_end, "rb", buffering=0) as pipe:
        while numbers := pipe.read(64):
            for number in numbers:
                signals.arrived(number)


@contextmanager
def handled(label: str, *, until_exit: bool = False):
    """SIGINT and SIGTERM handled as `Signals(label)` says for the duration of the block (main thread only);
    the previous wakeup fd and signal mask are restored afterwards, and the previous handlers, or with
    `until_exit` (the process's own command, which ends next) SIG_IGN: the outcome is decided."""
    global _current
    signals = _current = Signals(label)
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    previous = {number: signal.getsignal(number) for number in SIGNALS}
    caught = [number for number in SIGNALS if previous[number] is not signal.SIG_IGN]
    for number in caught:
        signal.signal(number, lambda number, frame: None)  # the work is done by the thread reading the pipe
    previous_fd = signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)
    threading.Thread(target=_wait_for_signals, args=(read_end, signals), name="bp-jax signals", daemon=True).start()
    previous_mask = signal.pthread_sigmask(signal.SIG_UNBLOCK, caught)
    try:
        yield signals
    finally:
        if until_exit:
            signals.done()
        signal.pthread_sigmask(signal.SIG_SETMASK, previous_mask)
        signal.set_wakeup_fd(previous_fd)
        for number in caught:
            signal.signal(number, signal.SIG_IGN if until_exit else previous[number])
        os.close(write_end)  # the thread reads end-of-file and ends
        _current = None

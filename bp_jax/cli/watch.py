"""Watching training and stopping it, for every command that trains (`train`, `sweep`).

    with console.progress_bar("train") as progress:
        watch = Watch(total, progress=progress, signals=interrupts.current())
        result = bp_jax.fit(..., chunk_size=PROGRESS_EVERY, on_chunk=watch.on_chunk, keep_losses=False)
        watch.history, watch.stopped_by, watch.elapsed_s  # [[step, loss], …]; the signal that stopped it

Between `fit`'s chunks, `Watch.on_chunk` keeps the loss history (steps 0, k, 2k, …: at most about
MAX_HISTORY_POINTS of them, k = ⌈total / MAX_HISTORY_POINTS⌉, a resumed run's earlier history thinned alike;
`fit` runs with keep_losses=False, so no other loss stays on the host), shows progress, and returns True, which
stops `fit` there, once SIGINT or SIGTERM came (every process of a multi-process run agreeing on it, so
they all stop at the same step). Its first call puts `signals` in the training phase (`interrupts`): before
the first chunk is done (set-up, compile) there is nothing to save and a signal ends the process at once.
"""

import math
import time
from collections.abc import Callable, Sequence

import jax
import numpy as np

from bp_jax.cli import distributed, interrupts

#: fit's chunks end every PROGRESS_EVERY steps: the progress bar moves and a stop signal is seen there.
PROGRESS_EVERY = 1000
MAX_HISTORY_POINTS = 2000


def shown_loss(result, average: Callable = np.median) -> float:
    """The loss the progress bar shows: the chunk's last, for an ensemble its `average` (the median, or the
    mean) over the members still training: not diverged, not stopped by a stop rule (NaN losses; NaN when none is
    left)."""
    last = np.asarray(result.losses[-1])
    if last.ndim == 0:
        return float(last)
    live = last[(np.asarray(result.diverged) < 0) & ~np.isnan(last)]
    return float(average(live)) if len(live) else float("nan")


class Watch:
    """Training from step `start` to `total`, watched between chunks (see the module's docstring).

    `history` continues a resumed run's [step, loss] pairs (those on this run's stride); an ensemble's loss is a
    list, one per member.
    `progress(step, total, loss)` (process 0 only; an ensemble's loss its members' `average`, see `shown_loss`) and
    `signals` (an `interrupts.Signals`) are optional.
    """

    def __init__(
        self,
        total: int,
        *,
        start: int = 0,
        history: Sequence = (),
        progress: Callable | None = None,
        signals: interrupts.Signals | None = None,
        average: Callable = np.median,
    ):
        self.total, self.progress, self.signals, self.average = total, progress, signals, average
        self.stride = max(1, math.ceil(total / MAX_HISTORY_POINTS))
        self.history = [point for point in history if point[0] % self.stride == 0]  # a resumed run's, thinned alike
        self.step = start  # the losses of the steps before this one are in the history
        self.stopped_by: int | None = None
        self.started = time.perf_counter()

    @property
    def elapsed_s(self) -> float:
        """Seconds since the watch began."""
        return time.perf_counter() - self.started

    def add_losses(self, losses: np.ndarray, first: int) -> None:
        """Keep the losses of steps `first`, `first + 1`, … that fall on the history's stride."""
        self.history.extend([step, loss.tolist()] for step, loss in enumerate(losses, first) if step % self.stride == 0)
        self.step = first + len(losses)

    def add_rest(self, losses: np.ndarray, first: int) -> None:
        """From `losses` (those of steps `first`, `first + 1`, …), keep the ones not seen yet: after `fit`
        raised NonFiniteLoss, whose result holds the losses of the chunk it stopped in."""
        self.add_losses(losses[self.step - first :], self.step)

    def on_chunk(self, result) -> bool:
        """`fit`'s on_chunk: record, show progress; True (stop there) once a stop signal came."""
        if self.signals is not None:
            self.signals.training()
        losses = distributed.host_local(result.losses)
        self.add_losses(losses, result.step - len(losses))
        if self.progress is not None and jax.process_index() == 0:
            self.progress(result.step, self.total, shown_loss(result, self.average))
        received = self._agreed_signal()
        if received is not None and result.step < self.total:
            self.stopped_by = received
            if self.signals is not None:
                self.signals.stopped = True
        return self.stopped_by is not None

    def _agreed_signal(self) -> int | None:
        """The stop signal received, agreed on by all processes (so that they stop at the same step)."""
        received = None if self.signals is None else self.signals.received
        if jax.process_count() == 1:
            return received
        from jax.experimental import multihost_utils

        numbers = multihost_utils.process_allgather(np.asarray(received or 0))
        return int(numbers.max()) or None

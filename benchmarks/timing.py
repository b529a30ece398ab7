"""Timing: warm up, repeat, and summarise seconds per step by median and spread.

`time_interleaved` times several things in turns (one repeat of each per round), so that a change in the
machine's load falls on all of them alike and the ratios between them stay fair.
"""

import contextlib
import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np


class Timer:
    """Times `call`, which runs `steps_per_call` steps and returns what `sync` waits on.

    A repeat runs `calls_per_repeat` back-to-back calls, synchronised once at the end (device work is
    asynchronous), inside `around()` (e.g. a thread-count setting); None picks enough calls for a repeat
    to last `min_repeat_s`. `warm_up()` runs `warmup` calls first, so compilation stays out of the numbers.
    """

    def __init__(
        self,
        call: Callable[[], Any],
        *,
        calls_per_repeat: int | None = 1,
        steps_per_call: int = 1,
        warmup: int = 1,
        min_repeat_s: float = 0.02,
        sync: Callable[[Any], Any] = jax.block_until_ready,
        around: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    ):
        self.call, self.calls_per_repeat, self.steps_per_call = call, calls_per_repeat, steps_per_call
        self.warmup, self.min_repeat_s, self.sync, self.around = warmup, min_repeat_s, sync, around

    def warm_up(self) -> "Timer":
        with self.around():
            for _ in range(self.warmup):
                self.sync(self.call())
            if self.calls_per_repeat is None:
                start = time.perf_counter()
                self.sync(self.call())
                self.calls_per_repeat = max(1, min(1000, round(self.min_repeat_s / (time.perf_counter() - start))))
        return self

    def sample(self) -> float:
        """Seconds per step over one repeat."""
        with self.around():
            start = time.perf_counter()
            for _ in range(self.calls_per_repeat):
                out = self.call()
            self.sync(out)
            return (time.perf_counter() - start) / (self.calls_per_repeat * self.steps_per_call)

    def summary(self, samples: list[float]) -> dict:
        """Median, quartiles, min and max of the samples, with how many there were and steps per repeat."""
        q25, median, q75 = np.percentile(samples, [25, 50, 75])
        return {
            "median": float(median),
            "q25": float(q25),
            "q75": float(q75),
            "min": min(samples),
            "max": max(samples),
            "repeats": len(samples),
            "steps_per_repeat": self.calls_per_repeat * self.steps_per_call,
        }


def time_interleaved(timers: dict[str, Timer], *, repeats: int) -> dict[str, dict]:
    """Summaries of warmed-up timers sampled in turns: round r takes repeat r of each."""
    samples = {name: [] for name in timers}
    for _ in range(repeats):
        for name, timer in timers.items():
            samples[name].append(timer.sample())
    return {name: timers[name].summary(samples[name]) for name in timers}


def scaled(summary: dict, factor: float) -> dict:
    """`summary` with every time multiplied by `factor` (e.g. per model from per ensemble step)."""
    return summary | {key: summary[key] * factor for key in ("median", "q25", "q75", "min", "max")}

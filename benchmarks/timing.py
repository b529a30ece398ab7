"""One timing helper: warm up, repeat, and summarise seconds per step by median and spread."""

import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np


def time_per_step(call: Callable[[], Any], *, repeats: int, calls_per_repeat: int | None = 1,
                  steps_per_call: int = 1, warmup: int = 1, min_repeat_s: float = 0.02,
                  sync: Callable[[Any], Any] = jax.block_until_ready) -> dict:
    """Seconds per step of `call`, which runs `steps_per_call` steps and returns what `sync` waits on.

    Each repeat times `calls_per_repeat` back-to-back calls, synchronised once at the end (device work is
    asynchronous), and divides by the steps they ran; None picks enough calls for a repeat to last
    `min_repeat_s`. Returns the median, quartiles, min and max over repeats.
    """
    for _ in range(warmup):
        sync(call())
    if calls_per_repeat is None:
        start = time.perf_counter()
        sync(call())
        calls_per_repeat = max(1, min(1000, round(min_repeat_s / (time.perf_counter() - start))))
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls_per_repeat):
            out = call()
        sync(out)
        samples.append((time.perf_counter() - start) / (calls_per_repeat * steps_per_call))
    q25, median, q75 = np.percentile(samples, [25, 50, 75])
    return {"median": float(median), "q25": float(q25), "q75": float(q75), "min": min(samples),
            "max": max(samples), "repeats": repeats, "steps_per_repeat": calls_per_repeat * steps_per_call}

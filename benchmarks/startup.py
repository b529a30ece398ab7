"""Suite 9, start-up: a warm `bp-jax train --steps 1` against importing jax and running one op, in turns.

    python -m benchmarks --suite startup       # just this row (about a minute)

Each sample is the wall time of a new Python process: `python -c "import jax; jax.numpy.zeros(1)
.block_until_ready()"` (the least a JAX command can cost) and `python -m bp_jax train --steps 1` with a compile
cache that a first run filled (`BP_JAX_COMPILE_CACHE`), each writing into a new `--out`. The two alternate, one
of each per round, so the machine's load falls on both alike; the row's ratio is the medians' quotient.
"""

import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from benchmarks.records import SuiteRecord
from benchmarks.timing import Timer, time_interleaved

STARTUP = "startup"
JAX_CODE = "import jax; jax.numpy.zeros(1).block_until_ready()"
JAX_ONLY = f'python -c "{JAX_CODE}"'
TRAIN = "bp-jax train --steps 1 (warm compile cache)"


def process(argv: Sequence[str], *, cwd: Path, env: dict | None = None) -> None:
    """Run `python ARGV` in a new process (env added to this one's); RuntimeError with the last line of its
    stderr if it fails."""
    done = subprocess.run(
        [sys.executable, *argv], capture_output=True, text=True, cwd=cwd, env=os.environ | (env or {})
    )
    if done.returncode:
        last = (done.stderr.strip().splitlines() or ["no stderr"])[-1]
        raise RuntimeError(f"python {' '.join(argv)} exited with {done.returncode}: {last}")


def run(smoke: bool) -> dict:
    record = SuiteRecord()
    record.guarded(STARTUP, lambda: _row(record, repeats=1 if smoke else 9, jax_warmups=0 if smoke else 1))
    return record.as_dict(jax_only=JAX_ONLY, train=TRAIN)


def _row(record: SuiteRecord, repeats: int, jax_warmups: int) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        cache = {"BP_JAX_COMPILE_CACHE": str(scratch / "cache")}
        train = lambda: process(
            ("-m", "bp_jax", "train", "--steps", "1", "--out", tempfile.mkdtemp(dir=scratch)), cwd=scratch, env=cache
        )
        timers = {  # the train timer's warm-up fills the cache (a smoke run's jax-only process needs none)
            JAX_ONLY: Timer(lambda: process(("-c", JAX_CODE), cwd=scratch), sync=lambda _: None, warmup=jax_warmups),
            TRAIN: Timer(train, sync=lambda _: None),
        }
        for timer in timers.values():
            timer.warm_up()
        timings = time_interleaved(timers, repeats=repeats)
    record.rows.append(
        {
            "name": STARTUP,
            "seconds": timings,
            "ratio": timings[TRAIN]["median"] / timings[JAX_ONLY]["median"],
        }
    )

"""The process's entry point: `python -m bp_jax`, and the `bp-jax` console script (`bp_jax.__main__:main`).

Its first act blocks SIGINT and SIGTERM, before the command's modules load: one that comes meanwhile is held
by the kernel, and answered (`bp-jax …: interrupted`, 130 or 143) as soon as `bp_jax.cli.main` has its
handling in place (`bp_jax.cli.interrupts`), which then holds to the process's exit. So importing this
module is for the process that runs the command only.
"""

import signal

signal.pthread_sigmask(signal.SIG_BLOCK, (signal.SIGINT, signal.SIGTERM))

from bp_jax.cli import main  # noqa: E402  (after the signals are held)

if __name__ == "__main__":
    raise SystemExit(main())

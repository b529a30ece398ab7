"""What the command's tests share: running `bp-jax` in a subprocess as a user would, and reading what it wrote."""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np

ROOT = Path(__file__).parent.parent


def command(*args) -> list[str]:
    """The argv of `python -m bp_jax ARGS`, for subprocess.Popen."""
    return [sys.executable, "-m", "bp_jax", *map(str, args)]


def bp_jax_cli(*args, check: bool = True, env: dict | None = None, timeout: float = 300, **kwargs):
    """Run `bp-jax ARGS` to its end (`env`: variables set on top of this process's); with `check`, assert
    that it exited with status 0."""
    result = subprocess.run(
        command(*args),
        capture_output=True,
        text=True,
        timeout=timeout,
        env=None if env is None else os.environ | env,
        **kwargs,
    )
    if check:
        assert result.returncode == 0, result.stderr
    return result


def fake_devices(count: int) -> dict:
    """The variables that give a `bp-jax` subprocess `count` CPU devices (read when JAX starts)."""
    return {"JAX_NUM_CPU_DEVICES": str(count), "PYTHONPATH": str(ROOT)}


def strict_json(path: Path):
    """The JSON in `path`, refusing NaN and infinities, which strict JSON does not have."""

    def refuse(constant):
        raise ValueError(f"{path} holds {constant}, which is not JSON")

    return json.loads(path.read_text(), parse_constant=refuse)


def checkpoint_steps(run_dir: Path) -> list[int]:
    directory = run_dir / "checkpoints"
    return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit()) if directory.exists() else []


def final_state(run_dir: Path) -> tuple[int, list[np.ndarray]]:
    """The newest checkpoint's step and arrays, restored without a template, as a flat list of numpy arrays."""
    import orbax.checkpoint as ocp

    manager = ocp.CheckpointManager((run_dir / "checkpoints").absolute())
    step = manager.latest_step()
    state = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]
    return step, [np.asarray(leaf) for leaf in jax.tree.leaves(state)]


def assert_same_state(a: Path, b: Path):
    (step_a, leaves_a), (step_b, leaves_b) = final_state(a), final_state(b)
    assert step_a == step_b
    assert len(leaves_a) == len(leaves_b)
    for left, right in zip(leaves_a, leaves_b):
        np.testing.assert_array_equal(left, right)

"""Every compiled program of bp_jax lowers for cpu, cuda, rocm and tpu (`jax.export`, lowering only, on this
CPU): the steps, `fit`'s loop (minibatch, full batch, optax), `fit_ensemble`'s loop, the data-parallel loop on
8 fake devices and the exported predictor. One subprocess lowers them all (tests/lowering_worker.py); each
(program, platform) is its own test, so a failure's id names both."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest
from helpers import ROOT, fake_devices
from lowering_worker import PLATFORMS, PROGRAMS

import bp_jax


@pytest.fixture(scope="module")
def lowered() -> dict:
    result = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "lowering_worker.py")],
        capture_output=True,
        text=True,
        timeout=600,
        env=os.environ | fake_devices(8),
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.mark.slow  # one process lowers every program for 4 platforms on 8 devices
@pytest.mark.parametrize("platform", PLATFORMS)
@pytest.mark.parametrize("program", PROGRAMS)
def test_program_lowers_for(lowered, program, platform):
    error = lowered[program][platform]
    assert error is None, f"{program} does not lower for {platform}: {error}"


def test_lowering_checks_the_platform_it_names():
    """The same export fails for a platform without the operation (nonsymmetric eig runs on CPUs only): lowering
    for a platform is a real check, not a CPU lowering relabelled."""
    eig = jax.export.export(jax.jit(jnp.linalg.eig), platforms=("cpu",))
    eig(jax.ShapeDtypeStruct((3, 3), jnp.float32))
    with pytest.raises(NotImplementedError, match="tpu"):
        jax.export.export(jax.jit(jnp.linalg.eig), platforms=("tpu",))(jax.ShapeDtypeStruct((3, 3), jnp.float32))


def test_the_exported_predictor_carries_every_platform():
    model = bp_jax.mlp((3, 4, 1))
    exported = bp_jax.to_jax_export(model, model.init(jax.random.key(0)))
    assert exported.platforms == ("cpu", "cuda", "rocm", "tpu")
    assert str(exported.in_avals[0].shape) == "(rows_plus_one - 1, 3)"  # any number of rows, 0 included

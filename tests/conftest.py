"""Shared test setup: rank promotion raises (silent broadcasting is an error), and the two precisions.

Dtype promotion stays "standard": optax's adam mixes its int32 step count with floats.

Tolerances: float64 (`jax.enable_x64`) to 1e-10, float32 to 1e-5, relative and absolute.
"""

import jax
import pytest

from benchmarks.compiles import counting

jax.config.update("jax_numpy_rank_promotion", "raise")

TOLERANCE = {"float32": 1e-5, "float64": 1e-10}


@pytest.fixture
def count_compilations():
    """`with count_compilations() as compiled:` - compiled gains one entry per XLA compilation in the block
    (benchmarks.compiles.counting, the one helper every test and benchmark that counts compiles uses)."""
    return counting


@pytest.fixture(params=["float32", "float64"])
def precision(request):
    """Run the test in float32 and again under jax.enable_x64; yields the tolerance to use."""
    with jax.enable_x64(request.param == "float64"):
        yield TOLERANCE[request.param]

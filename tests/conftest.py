"""Shared test setup: rank promotion raises (silent broadcasting is an error), and the two precisions.

Dtype promotion stays "standard": optax's adam mixes its int32 step count with floats.

Tolerances: float64 (`jax.enable_x64`) to 1e-10, float32 to 1e-5, relative and absolute.
"""

import jax
import pytest

jax.config.update("jax_numpy_rank_promotion", "raise")

TOLERANCE = {"float32": 1e-5, "float64": 1e-10}


@pytest.fixture(params=["float32", "float64"])
def precision(request):
    """Run the test in float32 and again under jax.enable_x64; yields the tolerance to use."""
    with jax.enable_x64(request.param == "float64"):
        yield TOLERANCE[request.param]


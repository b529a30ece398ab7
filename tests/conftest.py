"""Shared test setup: rank promotion raises (silent broadcasting is an error), and the two precisions.

Dtype promotion stays "standard": optax's adam mixes its int32 step count with floats.

Tolerances: float64 (`jax.enable_x64`) to 1e-10, float32 to 1e-5, relative and absolute.
"""

import contextlib

import jax
import pytest

jax.config.update("jax_numpy_rank_promotion", "raise")

TOLERANCE = {"float32": 1e-5, "float64": 1e-10}
COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"


@contextlib.contextmanager
def _compilations():
    compiled = []
    listener = lambda event, duration, **kwargs: compiled.append(event) if event == COMPILE_EVENT else None
    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        yield compiled
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)


@pytest.fixture
def count_compilations():
    """`with count_compilations() as compiled:` - compiled gains one entry per XLA compilation in the block."""
    return _compilations


@pytest.fixture(params=["float32", "float64"])
def precision(request):
    """Run the test in float32 and again under jax.enable_x64; yields the tolerance to use."""
    with jax.enable_x64(request.param == "float64"):
        yield TOLERANCE[request.param]

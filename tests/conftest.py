"""Shared test setup: rank promotion raises (silent broadcasting is an error), the two precisions, and one
compile cache for the session.

Dtype promotion stays "standard": optax's adam mixes its int32 step count with floats.

Tolerances: float64 (`jax.enable_x64`) to 1e-10, float32 to 1e-5, relative and absolute.

Compile cache: every `bp-jax` command the tests run (in this process or in a subprocess, on any xdist worker)
shares one JAX persistent compilation cache, a fresh folder for the test session: $BP_JAX_COMPILE_CACHE,
set before the workers start, removed at the end. A program one command compiled, the next loads. Tests
that check the cache itself name their own folder or "off" with --compile-cache, which wins.

Cheap compiles: the session, its workers and the commands they start compile with JAX's
`jax_disable_most_optimizations` (JAX_DISABLE_MOST_OPTIMIZATIONS=1, unless already set: LLVM's cheaper
optimisation level, no expensive passes). The programs are the same HLO, compiled in about two thirds of the
time and run a little slower; the tests check values to stated tolerances and bits between runs under the same
settings, so none depends on the optimisation level. On jaxlib 0.10 the same switch also sets XLA:CPU's earlier
fusion code generator (XLA_FLAGS `--xla_cpu_use_fusion_emitters=false`, about half the compile time again). The
benchmarks run at the default.

Workers (pytest-xdist, `--dist loadgroup`): the tests that share a module- or session-scoped fixture of their
module (a trained run, a sweep, a benchmark smoke run) go to one worker together (an xdist_group named after
the module, checked to have reached xdist), so the fixture is built once; every other test goes wherever a
worker is free. Tests marked
`slow` are handed out first, so that none of them starts last.
"""

import os
import shutil
import tempfile
from importlib.metadata import version
from pathlib import Path

import jax
import pytest

from benchmarks.compiles import counting

jax.config.update("jax_numpy_rank_promotion", "raise")

TOLERANCE = {"float32": 1e-5, "float64": 1e-10}
CACHE_VARIABLE = "BP_JAX_COMPILE_CACHE"
CHEAP_COMPILES = "JAX_DISABLE_MOST_OPTIMIZATIONS"
#: XLA:CPU's earlier fusion code generator: the same HLO compiled in about half the CPU time (jaxlib 0.10.2, load
#: 12-17: test_fit.py 56.7 → 33.8 s, the sklearn estimator checks 133 → 52 s). Set only on the jaxlib releases it was
#: measured on: XLA stops at a flag it does not know.
CHEAP_FUSIONS, CHEAP_FUSIONS_JAXLIB = "--xla_cpu_use_fusion_emitters=false", "0.10."


def pytest_configure(config):
    if hasattr(config, "workerinput"):  # an xdist worker: the controller set the variable before starting it
        return
    config.bp_jax_compile_cache = tempfile.mkdtemp(prefix="bp-jax-test-compile-cache-")
    os.environ[CACHE_VARIABLE] = config.bp_jax_compile_cache
    os.environ.setdefault(CHEAP_COMPILES, "1")  # the workers and every command's subprocess compile cheaply too
    cheap = os.environ[CHEAP_COMPILES] not in ("0", "false")
    jax.config.update("jax_disable_most_optimizations", cheap)
    flags = os.environ.get("XLA_FLAGS", "")
    if cheap and version("jaxlib").startswith(CHEAP_FUSIONS_JAXLIB) and "fusion_emitters" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} {CHEAP_FUSIONS}".strip()  # read when JAX starts its backend, later


def pytest_unconfigure(config):
    if folder := getattr(config, "bp_jax_compile_cache", None):
        shutil.rmtree(folder, ignore_errors=True)


def pytest_itemcollected(item):
    """Group a test with its module's other tests when it uses a module- or session-scoped fixture defined there
    (xdist's own collection hook reads the groups into the node ids; marks added in a collection hook of ours
    could come after it)."""
    module = item.nodeid.split("::")[0]
    shares = any(
        definitions[-1].scope in ("module", "session") and definitions[-1].baseid == module
        for definitions in item._fixtureinfo.name2fixturedefs.values()
    )
    if shares and not item.get_closest_marker("xdist_group"):
        item.add_marker(pytest.mark.xdist_group(module))


def pytest_collection_modifyitems(config, items):
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)  # stable: slow tests first


def pytest_collection_finish(session):
    """On an xdist worker of `--dist loadgroup`: fail at once if xdist could not add a test's group to its node id
    (pytest 9.2 keeps node ids where pytest-xdist 3.8 cannot change them): the groups would be ignored, and each
    worker would build its own copy of every shared fixture."""
    if not getattr(session.config.option, "loadgroup", False):
        return
    for item in session.items:
        if item.get_closest_marker("xdist_group") and "@" not in item.nodeid:
            raise pytest.UsageError(f"xdist_group ignored by this pytest-xdist and pytest: {item.nodeid}")


@pytest.fixture(scope="session")
def compile_cache() -> Path:
    """The session's compile cache folder (the commands use it unless given --compile-cache)."""
    return Path(os.environ[CACHE_VARIABLE])


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

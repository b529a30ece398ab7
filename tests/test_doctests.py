"""Every `Examples:` section of the package runs as a doctest, one test per module.

Each module's examples run in-process with ELLIPSIS and NORMALIZE_WHITESPACE, in a fresh namespace: an
example imports what it uses, as a reader copying it would. The conftest's rank promotion ("raise") holds
for them too, and an example that leaves x64 switched on (instead of `with jax.enable_x64(True):`) fails.
"""

import doctest
import importlib
import pkgutil

import jax
import pytest

import bp_jax

OPTIONFLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
#: Modules that cannot be imported to read their docstrings: `python -m bp_jax` runs the command on import.
SKIPPED = {"bp_jax.__main__"}


def _module_names() -> list[str]:
    """bp_jax and every module under it, subpackages included (walk_packages imports each package)."""
    found = pkgutil.walk_packages(bp_jax.__path__, prefix="bp_jax.")
    return ["bp_jax", *sorted(info.name for info in found if info.name not in SKIPPED)]


MODULES = _module_names()


def _import(name: str):
    """The module; a skip where it needs an optional dependency that is not installed (torch_interop: torch)."""
    try:
        return importlib.import_module(name)
    except ImportError as err:
        missing = err if isinstance(err, ModuleNotFoundError) else err.__cause__
        if isinstance(missing, ModuleNotFoundError) and not (missing.name or "bp_jax").startswith("bp_jax"):
            pytest.skip(f"{name} needs {missing.name}, which is not installed")
        raise


def _tests(name: str) -> list[doctest.DocTest]:
    """The module's doctests, each with an empty namespace of its own (only `__name__`)."""
    module = _import(name)
    finder = doctest.DocTestFinder(exclude_empty=True)
    return finder.find(module, name, globs={"__name__": name})


def test_the_walk_finds_the_package_and_its_subpackages():
    assert {"bp_jax", "bp_jax._layers", "bp_jax.manual", "bp_jax.cli"} <= set(MODULES)


def test_the_package_has_examples():
    examples = 0
    for name in MODULES:
        try:
            examples += sum(len(test.examples) for test in _tests(name))
        except pytest.skip.Exception:  # an optional dependency missing: that module's examples are not counted
            continue
    assert examples > 0, "no doctest examples found in bp_jax: is the collection broken?"


@pytest.mark.parametrize("name", MODULES, ids=MODULES)
@pytest.mark.slow
def test_docstring_examples(name):
    tests = _tests(name)
    report: list[str] = []
    runner = doctest.DocTestRunner(optionflags=OPTIONFLAGS)
    x64 = jax.config.jax_enable_x64
    try:
        for test in tests:
            runner.run(test, out=report.append)
            if jax.config.jax_enable_x64 != x64:
                left = jax.config.jax_enable_x64
                report.append(f"{test.name} left jax_enable_x64 = {left}: use `with jax.enable_x64(...)` instead\n")
                jax.config.update("jax_enable_x64", x64)
    finally:
        jax.config.update("jax_enable_x64", x64)
    assert runner.failures == 0 and not report, "".join(report)

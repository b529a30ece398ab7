"""Counting XLA compilations: the one helper that every test and benchmark counting compiles uses.

    with counting() as compiled:        # compiled gains the function's name at each XLA compilation
        fit(...)
    assert compiled == []

    compilations(lambda: search.fit(x, y), "jit(run)")   # how many compilations of jit(run) a call makes

A program loaded from JAX's persistent compilation cache is not compiled, so it is not counted.
"""

import contextlib
from collections.abc import Callable, Iterator

import jax

#: the `jax.monitoring` event JAX records once per XLA (backend) compilation
COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"


@contextlib.contextmanager
def counting(name: str | None = None) -> Iterator[list[str]]:
    """A list that gains the compiled function's name (e.g. "jit(run)") at each XLA compilation made in the
    block, by any thread; with `name`, of the function `name` only."""
    compiled: list[str] = []

    def listener(event: str, duration: float, **kwargs) -> None:
        if event == COMPILE_EVENT and name in (None, kwargs.get("fun_name")):
            compiled.append(kwargs.get("fun_name", "?"))

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        yield compiled
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)


def compilations(run: Callable[[], object], name: str | None = None) -> int:
    """How many XLA compilations `run()` makes (of the function `name` only, when given)."""
    with counting(name) as compiled:
        run()
    return len(compiled)

"""Lowers every compiled program of bp_jax for every platform JAX serves, on this CPU: `jax.export.export(program,
platforms=(platform,))`, lowering only (nothing runs on the platform). Run with JAX_NUM_CPU_DEVICES=8, which the
data-parallel loop's mesh needs. Prints one JSON object {program: {platform: null, or the error's first line}};
with --markdown, the table of docs/backends.md instead.

    JAX_NUM_CPU_DEVICES=8 python tests/lowering_worker.py [--markdown]

`fit`'s and `fit_ensemble`'s loops are the programs they build (`bp_jax._fit_loop.compiled_loop`), captured with the
arguments of a one-step call, stopped before the loop runs (nothing is compiled for this CPU), and lowered with
those arguments' shapes, dtypes and shardings.
"""

import contextlib
import json
import sys
from collections.abc import Callable

import jax
import optax

import bp_jax
from bp_jax import _fit, documents

PLATFORMS = ("cpu", "cuda", "rocm", "tpu")
PROGRAMS = (
    "sgd_step",
    "optax_step",
    "fit loop, minibatch",
    "fit loop, full batch",
    "fit loop, optax, minibatch",
    "fit_ensemble loop",
    "fit loop, data parallel (8 devices)",
    "exported predictor",
)


class _Captured(Exception):
    """Stops `train()` at the loop's first call, once its arguments are recorded."""


def _captured_loop(train: Callable) -> tuple[Callable, tuple]:
    """The jitted loop `train()` runs, and the shapes, dtypes and shardings of its first call's arguments."""
    calls = []
    build = _fit.compiled_loop

    def recording(*args, **kwargs):
        loop = build(*args, **kwargs)

        def run(*arguments):
            calls.append((loop, jax.tree.map(_abstract, arguments)))
            raise _Captured

        return run

    _fit.compiled_loop = recording
    try:
        with contextlib.suppress(_Captured):
            train()
    finally:
        _fit.compiled_loop = build
    return calls[0]


def _abstract(leaf):
    sharding = getattr(leaf, "sharding", None)
    return jax.ShapeDtypeStruct(jax.numpy.shape(leaf), jax.numpy.result_type(leaf), sharding=sharding)


def programs() -> dict[str, Callable[[], tuple[Callable, tuple]]]:
    """Each program's name -> a function giving (the jitted program, its arguments)."""
    model, params, x, y = documents.seed_problem(jax.random.key(0), 64)
    loss, key, adam = bp_jax.loss_fn(model), jax.random.key(1), optax.adam(1e-3)
    fit = lambda **options: lambda: _captured_loop(lambda: bp_jax.fit(loss, params, x, y, steps=1, key=key, **options))
    members = jax.vmap(model.init)(jax.random.split(jax.random.key(2), 4))
    ensemble = lambda: bp_jax.fit_ensemble(loss, members, x, y, steps=1, lr=0.05, batch_size=16, key=key)
    return {
        "sgd_step": lambda: (bp_jax.sgd_step(loss, 0.05), (params, x, y)),
        "optax_step": lambda: (bp_jax.optax_step(loss, adam), (params, adam.init(params), x, y)),
        "fit loop, minibatch": fit(lr=0.05, batch_size=16),
        "fit loop, full batch": fit(lr=0.05),
        "fit loop, optax, minibatch": fit(optimizer=adam, batch_size=16),
        "fit_ensemble loop": lambda: _captured_loop(ensemble),
        "fit loop, data parallel (8 devices)": fit(lr=0.05, batch_size=16, mesh=bp_jax.data_parallel_mesh(8)),
        "exported predictor": lambda: (None, (model, params)),
    }


def lower(name: str, program: Callable, arguments: tuple, platform: str) -> None:
    """Lower `program` for `platform` alone; raises what lowering raises."""
    if name == "exported predictor":
        bp_jax.to_jax_export(*arguments, bp_jax.Scaling(x_mean=[0.0] * 10, x_std=[1.0] * 10), platforms=(platform,))
    else:
        jax.export.export(program, platforms=(platform,))(*arguments)


def lowering_table() -> dict[str, dict[str, str | None]]:
    table: dict[str, dict[str, str | None]] = {}
    for name, make in programs().items():
        program, arguments = make()
        table[name] = {}
        for platform in PLATFORMS:
            try:
                lower(name, program, arguments, platform)
                table[name][platform] = None
            except Exception as err:  # recorded, not raised: the test names the program and platform
                table[name][platform] = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
    return table


def markdown(table: dict[str, dict[str, str | None]]) -> str:
    rows = [
        f"| {name} | " + " | ".join("lowers" if error is None else f"fails: {error}" for error in row.values()) + " |"
        for name, row in table.items()
    ]
    return "\n".join([f"| program | {' | '.join(PLATFORMS)} |", "|---" * (len(PLATFORMS) + 1) + "|", *rows])


if __name__ == "__main__":
    assert jax.device_count() == 8, f"run with JAX_NUM_CPU_DEVICES=8; jax sees {jax.devices()}"
    table = lowering_table()
    print(markdown(table) if sys.argv[1:] == ["--markdown"] else json.dumps(table))

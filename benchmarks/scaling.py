"""Suite 2, scaling: a width → width → width MLP's jitted SGD step over widths × batches, f32 and bf16.

FLOPs per step follow the usual convention, 3 × the forward matmuls = 3 · 2 · (2·b·w²) = 12·b·w²; the
step really executes 10·b·w² (no gradient is taken for x, so the first layer's dx is never computed).
`pct_of_matmul` compares with a bare (b × w) @ (w × w) matmul timed in this run on the same dtype.
Memory: XLA's compiled memory analysis of the donating step beside the same step without donation, and
the device's `peak_bytes_in_use` (a process-wide high-water mark) where the backend reports it.
"""

import jax
import jax.numpy as jnp

import bp_jax
from bp_jax._steps import sgd_update  # the unjitted step, to compile it with and without donation
from benchmarks.problems import mlp_problem, param_bytes
from benchmarks.records import SuiteRecord, torch_baselines
from benchmarks.timing import time_per_step

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def sizes(smoke: bool, platform: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(widths, batches): seconds on CPU, up to 8192 × 8192 where an accelerator can hold it."""
    if smoke:
        return (16,), (8,)
    if platform == "cpu":
        return (64, 256, 1024), (32, 256, 1024)
    return (256, 1024, 4096, 8192), (32, 1024, 8192)


def _footprint(compiled) -> dict:
    """Bytes XLA allocates for one call: arguments + outputs − outputs aliased onto donated arguments + temps."""
    stats = compiled.memory_analysis()
    if stats is None:
        return {"bytes": None}
    footprint = (stats.argument_size_in_bytes + stats.output_size_in_bytes - stats.alias_size_in_bytes
                 + stats.temp_size_in_bytes)
    return {"bytes": footprint, "aliased_bytes": stats.alias_size_in_bytes, "temp_bytes": stats.temp_size_in_bytes}


def _peak_bytes_in_use() -> int | None:
    stats = jax.devices()[0].memory_stats()
    return stats.get("peak_bytes_in_use") if stats else None


def _chained_step(step, params, x, y):
    def call():
        nonlocal params
        params, loss = step(params, x, y)
        return loss

    return call


def _mlp_step_row(width: int, batch: int, dtype_name: str, repeats: int) -> dict:
    model, params, x, y = mlp_problem((width, width, width), batch, DTYPES[dtype_name])
    update = sgd_update(bp_jax.loss_fn(model), lr=0.01)
    memory = {"params_bytes": param_bytes(params)}
    for donate, label in ((0, "donating"), ((), "not_donating")):
        memory[label] = _footprint(jax.jit(update, donate_argnums=donate).lower(params, x, y).compile())
    step = bp_jax.sgd_step(bp_jax.loss_fn(model), lr=0.01)
    timing = time_per_step(_chained_step(step, params, x, y), repeats=repeats, calls_per_repeat=None)
    memory["device_peak_bytes_in_use"] = _peak_bytes_in_use()
    return {"per_step_s": timing, "tflops": _step_tflops(width, batch, timing), "memory": memory}


def _step_tflops(width: int, batch: int, timing: dict) -> float:
    return 12 * batch * width ** 2 / timing["median"] / 1e12


def _matmul_row(width: int, batch: int, dtype_name: str, repeats: int) -> dict:
    keys = jax.random.split(jax.random.key(1))
    a = jax.random.normal(keys[0], (batch, width), DTYPES[dtype_name])
    b = jax.random.normal(keys[1], (width, width), DTYPES[dtype_name])
    matmul = jax.jit(jnp.matmul)
    timing = time_per_step(lambda: matmul(a, b), repeats=repeats, calls_per_repeat=None)
    return {"per_call_s": timing, "tflops": 2 * batch * width ** 2 / timing["median"] / 1e12}


def _torch_rows(record: SuiteRecord, width: int, batch: int, dtype_name: str, repeats: int, smoke: bool):
    import torch  # only reached when torch_baselines imported, so torch is there

    problem = {"sizes": (width, width, width), "batch": batch, "dtype": getattr(torch, dtype_name)}
    shape = {"width": width, "batch": batch, "dtype": dtype_name, "framework": "torch"}
    builders = [("torch eager (no .item())", lambda: torch_baselines.eager_step(item=False, **problem))]
    if smoke:
        record.skip(f"torch.compile {width}x{batch} {dtype_name}", "not run in --smoke")
    else:
        builders.append(("torch.compile", lambda: torch_baselines.compiled_step(**problem)))
    for name, build in builders:
        def measure():
            timing = time_per_step(build(), repeats=repeats, calls_per_repeat=None, warmup=3,
                                   sync=torch_baselines.sync)
            return {"per_step_s": timing, "tflops": _step_tflops(width, batch, timing)}

        record.attempt(name, measure, **shape)


def run(smoke: bool) -> dict:
    platform = jax.devices()[0].platform
    repeats = 3 if smoke else 7
    widths, batches = sizes(smoke, platform)
    record, matmuls = SuiteRecord(), {}
    for dtype_name in DTYPES:
        for width in widths:
            for batch in batches:
                shape = {"width": width, "batch": batch, "dtype": dtype_name}
                matmuls[width, batch, dtype_name] = record.attempt(
                    "bare matmul", lambda: _matmul_row(width, batch, dtype_name, repeats), **shape)
                record.attempt("bp_jax sgd_step", lambda: _mlp_step_row(width, batch, dtype_name, repeats),
                               framework="bp_jax", **shape)
        if record.needs_torch(f"torch MLP step {dtype_name}"):
            _torch_rows(record, widths[-1], batches[-1], dtype_name, repeats, smoke)
    for row in record.rows:
        matmul = matmuls.get((row["width"], row["batch"], row["dtype"]))
        if row["name"] != "bare matmul" and matmul:
            row["pct_of_matmul"] = 100 * row["tflops"] / matmul["tflops"]
    return record.as_dict(flops_per_step="12·batch·width² (3 × forward)", platform=platform,
                          memory_stats="available" if _peak_bytes_in_use() is not None else "not available")

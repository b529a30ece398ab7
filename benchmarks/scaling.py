"""Suite 2, scaling: a width → width → width MLP's jitted SGD step over widths × batches, f32 and bf16.

FLOPs per step follow the usual convention, 3 × the forward matmuls = 3 · 2 · (2·b·w²) = 12·b·w²; the
step really executes 10·b·w² (no gradient is taken for x, so the first layer's dx is never computed).
`pct_of_matmul` compares with a bare (b × w) @ (w × w) matmul of the same dtype, timed in turns with the step.
Memory: XLA's compiled memory analysis of the donating step beside the same step without donation, and
the device's `peak_bytes_in_use` (a process-wide high-water mark) where the backend reports it.
"""

import functools

import jax
import jax.numpy as jnp

import bp_jax
from benchmarks.problems import chained, mlp_problem, param_bytes
from benchmarks.records import SuiteRecord, torch_baselines
from benchmarks.timing import Timer, time_interleaved
from bp_jax._steps import sgd_update  # the unjitted step, to compile it with and without donation

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
    footprint = (
        stats.argument_size_in_bytes + stats.output_size_in_bytes - stats.alias_size_in_bytes + stats.temp_size_in_bytes
    )
    return {"bytes": footprint, "aliased_bytes": stats.alias_size_in_bytes, "temp_bytes": stats.temp_size_in_bytes}


def _peak_bytes_in_use() -> int | None:
    stats = jax.devices()[0].memory_stats()
    return stats.get("peak_bytes_in_use") if stats else None


def _donation_memory(update, params, x, y) -> dict:
    memory = {"params_bytes": param_bytes(params)}
    for donate, label in ((0, "donating"), ((), "not_donating")):
        memory[label] = _footprint(jax.jit(update, donate_argnums=donate).lower(params, x, y).compile())
    return memory


def _measure_size(
    record: SuiteRecord, width: int, batch: int, dtype_name: str, repeats: int, torch_too: bool, smoke: bool
) -> None:
    """Rows for one size: bare matmul, bp_jax step (and PyTorch's steps if `torch_too`), timed in turns."""
    dtype = DTYPES[dtype_name]
    timers = {}  # name -> (framework, Timer)

    def add(name: str, framework: str, make_timer) -> None:
        timer = record.guarded(f"{name} {width}x{batch} {dtype_name}", lambda: make_timer().warm_up())
        if timer is not None:
            timers[name] = framework, timer

    a_key, b_key = jax.random.split(jax.random.key(1))
    a, b = jax.random.normal(a_key, (batch, width), dtype), jax.random.normal(b_key, (width, width), dtype)
    matmul = jax.jit(jnp.matmul)
    add("bare matmul", "xla", lambda: Timer(lambda: matmul(a, b), calls_per_repeat=None))

    model, params, x, y = mlp_problem((width, width, width), batch, dtype)
    memory = _donation_memory(functools.partial(sgd_update(bp_jax.loss_fn(model)), lr=0.01), params, x, y)
    step = bp_jax.sgd_step(bp_jax.loss_fn(model), lr=0.01)
    add("bp_jax sgd_step", "bp_jax", lambda: Timer(chained(step, [params], x, y), calls_per_repeat=None))

    if torch_too:
        import torch  # torch_baselines imported, so torch is there

        problem = {"sizes": (width, width, width), "batch": batch, "dtype": getattr(torch, dtype_name)}
        torch_steps = {"torch eager (no .item())": functools.partial(torch_baselines.eager_step, item=False)}
        if smoke:
            record.skip(f"torch.compile {width}x{batch} {dtype_name}", "not run in --smoke")
        else:
            torch_steps["torch.compile"] = torch_baselines.compiled_step
        for name, make_step in torch_steps.items():
            add(
                name,
                "torch",
                lambda make_step=make_step: Timer(
                    make_step(**problem), calls_per_repeat=None, warmup=3, sync=torch_baselines.sync
                ),
            )

    timings = time_interleaved({name: timer for name, (_, timer) in timers.items()}, repeats=repeats)
    matmul_tflops = 2 * batch * width**2 / timings["bare matmul"]["median"] / 1e12 if "bare matmul" in timings else None
    for name, (framework, _) in timers.items():
        row = {
            "name": name,
            "framework": framework,
            "width": width,
            "batch": batch,
            "dtype": dtype_name,
            "per_step_s": timings[name],
        }
        if name == "bare matmul":
            record.rows.append(row | {"tflops": matmul_tflops})
            continue
        row["tflops"] = 12 * batch * width**2 / timings[name]["median"] / 1e12
        row["pct_of_matmul"] = 100 * row["tflops"] / matmul_tflops if matmul_tflops else None
        if framework == "bp_jax":
            row["memory"] = memory | {"device_peak_bytes_in_use": _peak_bytes_in_use()}
        record.rows.append(row)


def run(smoke: bool) -> dict:
    platform = jax.devices()[0].platform
    repeats = 3 if smoke else 7
    widths, batches = sizes(smoke, platform)
    record = SuiteRecord()
    for dtype_name in DTYPES:
        torch_here = record.needs_torch(f"torch MLP step {dtype_name}")
        for width in widths:
            for batch in batches:
                largest = (width, batch) == (widths[-1], batches[-1])
                _measure_size(record, width, batch, dtype_name, repeats, torch_here and largest, smoke)
    return record.as_dict(
        flops_per_step="12·batch·width² (3 × forward)",
        platform=platform,
        memory_stats="available" if _peak_bytes_in_use() is not None else "not available",
        repeats="interleaved per size: one of each per round",
    )

"""Suite 3, the documents' key insight: one backward pass instead of one computation per parameter.

For MLPs w → w → 1 (tanh, batch 32, float32) of growing parameter count n, times the jitted forward
loss, reverse mode `jax.grad` (one backward pass), forward mode `jax.jacfwd` (n tangents, vmapped) and
central finite differences (2n forward evaluations, `lax.map` over the parameters in vmapped blocks of
FD_BLOCK). Theory: grad / forward stays a small constant; the other two grow with n.
"""

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

import bp_jax
from benchmarks.problems import param_count
from benchmarks.records import SuiteRecord
from benchmarks.timing import Timer, time_interleaved

BATCH = 32
FD_BLOCK = 256
FD_EPSILON = 1e-3
METHODS = ("forward", "reverse (jax.grad)", "forward mode (jax.jacfwd)", "central finite differences")


def widths(smoke: bool, platform: str) -> tuple[int, ...]:
    """Capped so that forward mode (an n × n tangent basis) and 2n forward passes finish in seconds."""
    if smoke:
        return (2, 4)
    return (2, 4, 8, 16, 32, 64) if platform == "cpu" else (2, 4, 8, 16, 32, 64, 128)


def central_differences(loss, flat: jax.Array) -> jax.Array:
    """dL/dθᵢ ≈ (L(θ + εeᵢ) − L(θ − εeᵢ)) / 2ε for every i."""

    def partial(i):
        step = FD_EPSILON * (jnp.arange(flat.size) == i).astype(flat.dtype)
        return (loss(flat + step) - loss(flat - step)) / (2 * FD_EPSILON)

    return jax.lax.map(partial, jnp.arange(flat.size), batch_size=FD_BLOCK)


def _methods(width: int):
    model = bp_jax.Sequential(bp_jax.Linear(width, width), bp_jax.Tanh(), bp_jax.Linear(width, 1))
    params_key, x_key, y_key = jax.random.split(jax.random.key(0), 3)
    params = model.init(params_key)
    x = jax.random.normal(x_key, (BATCH, width))
    y = jax.random.normal(y_key, (BATCH, 1))
    flat, unravel = ravel_pytree(params)
    loss = lambda flat: bp_jax.mse(model.apply(unravel(flat), x), y)
    functions = (loss, jax.grad(loss), jax.jacfwd(loss), lambda flat: central_differences(loss, flat))
    return param_count(params), flat, dict(zip(METHODS, map(jax.jit, functions)))


def run(smoke: bool) -> dict:
    repeats = 3 if smoke else 7
    record = SuiteRecord()
    for width in widths(smoke, jax.devices()[0].platform):
        n, flat, functions = _methods(width)
        timers = {
            method: Timer(lambda f=f, flat=flat: f(flat), calls_per_repeat=None).warm_up()
            for method, f in functions.items()
        }
        times = time_interleaved(timers, repeats=repeats)
        reverse, forward_mode = functions[METHODS[1]](flat), functions[METHODS[2]](flat)
        record.rows.append(
            {
                "name": f"MLP {width} → {width} → 1",
                "width": width,
                "params": n,
                "per_call_s": times,
                "ratio_to_forward": {method: t["median"] / times["forward"]["median"] for method, t in times.items()},
                "max_abs_diff_jacfwd_vs_grad": float(jnp.max(jnp.abs(reverse - forward_mode))),
            }
        )
    return record.as_dict(batch=BATCH, dtype="float32", finite_differences=f"lax.map, vmapped blocks of {FD_BLOCK}")

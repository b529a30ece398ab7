"""Suite 8, autodiff beyond one gradient: per-example gradients, and second derivatives.

Per-example gradients of the seed MLP (10 → 5 → 1, MSE, float32) at batch B: `bp_jax.manual.per_example_grads`
(hand-written, jitted), `jax.vmap(jax.grad)` on one-example batches (jitted), PyTorch's `torch.func`
`vmap(grad)` recipe, and a Python loop of `loss.backward()` per example (the documents' way; its cost grows
as B times one small step, so it is timed with the same few repeats at every B and at 4096 one call takes
about half a second), each beside the plain batch gradient `jax.grad` (jitted) of the same B rows.

Second order: for MLPs w → w → 1 (tanh, batch 32, float32) of growing parameter count n, the forward loss,
`jax.grad`, a Hessian-vector product (`jax.jvp` of `jax.grad`: forward over reverse, one more pass) and the full
Hessian `jax.hessian` (n such products, vmapped), all jitted. Theory: HVP / grad stays a small constant, the full
Hessian grows with n.
"""

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

import bp_jax
from benchmarks import records
from benchmarks.problems import SEED_SIZES, mlp_problem, param_count
from benchmarks.records import SuiteRecord
from benchmarks.timing import Timer, time_interleaved
from bp_jax import manual

MANUAL = "bp_jax manual.per_example_grads (jit)"
VMAP_GRAD = "jax.vmap(jax.grad) (jit)"
BATCH_GRAD = "plain batch gradient jax.grad (jit)"
TORCH_FUNC = "torch.func vmap(grad)"
TORCH_LOOP = "torch loop of loss.backward()"
HESSIAN_BATCH = 32
SECOND_ORDER = ("forward", "reverse (jax.grad)", "HVP (jax.jvp of jax.grad)", "full Hessian (jax.hessian)")


def batches(smoke: bool) -> tuple[int, ...]:
    return (4, 8) if smoke else (32, 256, 4096)


def widths(smoke: bool, platform: str) -> tuple[int, ...]:
    """Capped so that the n × n Hessian stays small (n = 4225 at width 64: 71 MB in float32)."""
    if smoke:
        return (2, 4)
    return (2, 4, 8, 16, 32, 64) if platform == "cpu" else (2, 4, 8, 16, 32, 64, 128)


def _max_abs_diff(a, b) -> float:
    return max(float(jnp.max(jnp.abs(x - y))) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def _per_example_rows(record: SuiteRecord, batch: int, repeats: int) -> None:
    model, params, x, y = mlp_problem(SEED_SIZES, batch)
    loss = bp_jax.loss_fn(model)
    by_hand = jax.jit(manual.per_example_grads(model))
    vmap_grad = jax.jit(jax.vmap(jax.grad(loss), (None, 0, 0)))
    batch_grad = jax.jit(jax.grad(loss))
    x_rows, y_rows = x[:, None], y[:, None]  # one-example batches
    calls = {
        MANUAL: lambda: by_hand(params, x, y),
        VMAP_GRAD: lambda: vmap_grad(params, x_rows, y_rows),
        BATCH_GRAD: lambda: batch_grad(params, x, y),
    }
    timers = {
        name: record.warmed(name, lambda call=call: Timer(call, calls_per_repeat=None)) for name, call in calls.items()
    }
    frameworks = dict.fromkeys(calls, "bp_jax")
    if record.needs_torch(f"{TORCH_FUNC} and {TORCH_LOOP}, batch {batch}"):
        torch = records.torch_baselines
        for name, build, calls_per_repeat in (
            (TORCH_FUNC, torch.per_example_grads_func, None),
            (TORCH_LOOP, torch.per_example_grads_loop, 1),  # one call at 4096 already takes ~0.5 s
        ):
            timers[name] = record.warmed(
                f"{name}, batch {batch}",
                lambda build=build, n=calls_per_repeat: Timer(build(batch=batch), calls_per_repeat=n, sync=torch.sync),
            )
            frameworks[name] = "torch"
    timers = {name: timer for name, timer in timers.items() if timer is not None}
    times = time_interleaved(timers, repeats=repeats)
    checks = {MANUAL: _max_abs_diff(by_hand(params, x, y), vmap_grad(params, x_rows, y_rows))}
    base = times.get(BATCH_GRAD, {}).get("median")
    for name, timing in times.items():
        record.rows.append(
            {
                "name": name,
                "group": "per-example",
                "framework": frameworks[name],
                "batch": batch,
                "per_call_s": timing,
                "per_example_s": timing["median"] / batch,
                "vs_batch_grad": timing["median"] / base if base else None,
                "max_abs_diff_vs_vmap_grad": checks.get(name),
            }
        )


def _second_order_row(record: SuiteRecord, width: int, repeats: int) -> None:
    model = bp_jax.Sequential(bp_jax.Linear(width, width), bp_jax.Tanh(), bp_jax.Linear(width, 1))
    params_key, x_key, y_key, v_key = jax.random.split(jax.random.key(0), 4)
    params = model.init(params_key)
    x = jax.random.normal(x_key, (HESSIAN_BATCH, width))
    y = jax.random.normal(y_key, (HESSIAN_BATCH, 1))
    flat, unravel = ravel_pytree(params)
    v = jax.random.normal(v_key, flat.shape)
    loss = lambda flat: bp_jax.mse(model.apply(unravel(flat), x), y)
    hvp = lambda flat: jax.jvp(jax.grad(loss), (flat,), (v,))[1]
    functions = dict(zip(SECOND_ORDER, map(jax.jit, (loss, jax.grad(loss), hvp, jax.hessian(loss)))))
    timers = {method: Timer(lambda f=f: f(flat), calls_per_repeat=None).warm_up() for method, f in functions.items()}
    times = time_interleaved(timers, repeats=repeats)
    full = functions[SECOND_ORDER[3]](flat)
    record.rows.append(
        {
            "name": f"MLP {width} → {width} → 1",
            "group": "second-order",
            "width": width,
            "params": param_count(params),
            "per_call_s": times,
            "ratio_to_grad": {method: t["median"] / times[SECOND_ORDER[1]]["median"] for method, t in times.items()},
            "max_abs_diff_hvp_vs_hessian_v": float(jnp.max(jnp.abs(functions[SECOND_ORDER[2]](flat) - full @ v))),
        }
    )


def run(smoke: bool) -> dict:
    repeats = 3 if smoke else 5
    record = SuiteRecord()
    for batch in batches(smoke):
        _per_example_rows(record, batch, repeats)
    for width in widths(smoke, jax.devices()[0].platform):
        _second_order_row(record, width, 3 if smoke else 7)
    return record.as_dict(
        per_example=f"seed MLP {' → '.join(map(str, SEED_SIZES))}, MSE, float32, x, y ~ N(0, 1)",
        second_order=f"MLP w → w → 1 (tanh), batch {HESSIAN_BATCH}, float32",
    )

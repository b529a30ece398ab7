"""Suite 1, the seed step (10 → 5 → 1, batch 32, float32): the documents' PyTorch against bp_jax.

Rows give seconds per training step; `speedup_vs_torch_eager` is the documents' train_step's median
over the row's median, both measured in this run.
"""

import functools

import jax
import jax.numpy as jnp
import optax

import bp_jax
from benchmarks.problems import SEED_BATCH, SEED_SIZES, mlp_problem
from benchmarks.records import SuiteRecord, torch_baselines
from benchmarks.timing import time_per_step

TORCH_EAGER = "torch eager: the documents' train_step (.item())"
CUDA_GRAPH = "torch CUDA-graph replay of the whole step"
FIT = "bp_jax fit, fused lax.scan (unroll=4, chunk 1000)"


def _chained(step, state, x, y):
    """A call that runs `step` on the state the previous call returned (the steps donate it)."""

    def call():
        nonlocal state
        *state, loss = step(*state, x, y)
        return loss

    return call


def run(smoke: bool) -> dict:
    repeats = 3 if smoke else 15
    calls = 20 if smoke else 500  # one Python call per step
    fit_steps = 200 if smoke else 20_000
    record = SuiteRecord()
    model, params, x, y = mlp_problem(SEED_SIZES, SEED_BATCH)
    loss = bp_jax.loss_fn(model)
    copy = lambda tree: jax.tree.map(jnp.copy, tree)

    if record.needs_torch("torch"):
        torch_rows = [(TORCH_EAGER, torch_baselines.eager_step, None),
                      ("torch eager, without .item()",
                       functools.partial(torch_baselines.eager_step, item=False), None)]
        if torch_baselines.device().type == "cpu":  # one thread: what a PyTorch expert sets for a tiny model on a CPU
            torch_rows.append(("torch eager, the documents' train_step, torch.set_num_threads(1)",
                               torch_baselines.eager_step, 1))
        if smoke:
            record.skip("torch.compile", "not run in --smoke (compiling takes tens of seconds)")
        else:
            torch_rows.append(("torch.compile", torch_baselines.compiled_step, None))
        if torch_baselines.device().type == "cuda":
            torch_rows.append((CUDA_GRAPH, torch_baselines.cuda_graph_step, None))
        else:
            record.skip(CUDA_GRAPH, "no CUDA device")
        for name, make_step, thread_count in torch_rows:
            with torch_baselines.threads(thread_count):
                record.attempt(name, lambda: {"per_step_s": time_per_step(
                    make_step(), repeats=repeats, calls_per_repeat=calls, warmup=calls,
                    sync=torch_baselines.sync)}, framework="torch")

    sgd = bp_jax.sgd_step(loss, lr=0.01)
    record.attempt("bp_jax sgd_step, one call per step", lambda: {"per_step_s": time_per_step(
        _chained(sgd, [copy(params)], x, y), repeats=repeats, calls_per_repeat=calls, warmup=calls)},
        framework="bp_jax")
    optimizer = optax.sgd(0.01)
    optax_sgd = bp_jax.optax_step(loss, optimizer)
    record.attempt("bp_jax optax_step (optax.sgd), one call per step", lambda: {"per_step_s": time_per_step(
        _chained(optax_sgd, [copy(params), optimizer.init(params)], x, y), repeats=repeats,
        calls_per_repeat=calls, warmup=calls)}, framework="bp_jax")
    for unroll in (4,) if smoke else (1, 4, 16):
        name = FIT if unroll == 4 else f"bp_jax fit, fused lax.scan (unroll={unroll}, chunk 1000)"
        fused = lambda unroll=unroll: bp_jax.fit(loss, params, x, y, steps=fit_steps, lr=0.01,
                                                 chunk_size=1000, unroll=unroll).losses
        record.attempt(name, lambda: {"per_step_s": time_per_step(
            fused, repeats=repeats, steps_per_call=fit_steps)}, framework="bp_jax")

    eager = next((row for row in record.rows if row["name"] == TORCH_EAGER), None)
    for row in record.rows:
        row["speedup_vs_torch_eager"] = eager and eager["per_step_s"]["median"] / row["per_step_s"]["median"]
    return record.as_dict(problem={"sizes": SEED_SIZES, "batch": SEED_BATCH, "dtype": "float32",
                                   "fit_steps_per_call": fit_steps})

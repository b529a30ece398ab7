"""Suite 1, the seed step (10 → 5 → 1, batch 32, float32): the documents' PyTorch against bp_jax.

Rows give seconds per training step; `speedup_vs_torch_eager` is the documents' train_step's median
over the row's median, both measured in this run, their repeats interleaved. The seed MLP is timed with
Linear's default contraction ("auto"), and with contraction="dot" and "sum" each; diagnostics show where the
sum stops paying: a hidden layer of 16, and 256 seed MLPs under vmap (`fit_ensemble`; per ensemble step); and,
on CPU, what the fused loop's
compiler options change: one scan of 256 members' updates compiled with XLA's default fusions and with them.
"""

import functools

import jax
import jax.numpy as jnp
import optax

import bp_jax
from benchmarks.problems import SEED_BATCH, SEED_ROWS, SEED_SIZES, chained, mlp_problem
from benchmarks.records import SuiteRecord, torch_baselines
from benchmarks.timing import Timer, time_interleaved
from bp_jax._fit_loop import loop_compiler_options  # the fused loop's XLA options, for the fusion diagnostic
from bp_jax._steps import sgd_update  # the unjitted update, for the bare-scan diagnostics

TORCH_EAGER = "torch eager: the documents' train_step (.item())"
CUDA_GRAPH = "torch CUDA-graph replay of the whole step"
FIT = f"bp_jax fit, fused (full batch {SEED_BATCH}, chunk 1000)"
MINIBATCH = f"bp_jax fit, minibatch {SEED_BATCH} of {SEED_ROWS} rows"
BARE_SCAN = "diagnostic: bare lax.scan of the SGD update (unroll 1; no finite guard, no chunks)"
FIT_SUM = "bp_jax fit, fused, contraction='sum' (full batch 32, chunk 1000)"
MINIBATCH_SUM = f"bp_jax fit, contraction='sum', minibatch {SEED_BATCH} of {SEED_ROWS} rows"
FIT_DOT = "bp_jax fit, fused, contraction='dot' (full batch 32, chunk 1000)"
MINIBATCH_DOT = f"bp_jax fit, contraction='dot', minibatch {SEED_BATCH} of {SEED_ROWS} rows"
#: Where the sum contraction stops paying: a hidden layer of 16 (160 weights), and the seed MLP under vmap.
WIDER = 16
WIDER_DOT = f"diagnostic: fit, 10 → {WIDER} → 1, matmul (minibatch {SEED_BATCH} of {SEED_ROWS} rows)"
WIDER_SUM = f"diagnostic: fit, 10 → {WIDER} → 1, contraction='sum' (minibatch {SEED_BATCH} of {SEED_ROWS} rows)"
ENSEMBLE_MEMBERS = 256
ENSEMBLE_DOT = f"diagnostic: fit_ensemble of {ENSEMBLE_MEMBERS}, matmul, per ensemble step (full batch 32)"
ENSEMBLE_SUM = f"diagnostic: fit_ensemble of {ENSEMBLE_MEMBERS}, contraction='sum', per ensemble step (full batch 32)"
#: What the fused loop's CPU compiler options (YNNPACK for dots only) change: one program compiled both ways.
ENSEMBLE_SCAN = f"diagnostic: bare lax.scan of {ENSEMBLE_MEMBERS} seed MLPs' SGD update under vmap, per ensemble step"
SCAN_OPTIONS = {
    f"{ENSEMBLE_SCAN}, XLA:CPU's default fusions": False,
    f"{ENSEMBLE_SCAN}, the fused loop's options (YNNPACK fuses dots only)": True,
}


def run(smoke: bool) -> dict:
    """Every step is warmed up first, then all are timed in turns (see `time_interleaved`)."""
    repeats = 3 if smoke else 15
    calls = 20 if smoke else 500  # one Python call per step
    fit_steps = 200 if smoke else 20_000
    record = SuiteRecord()
    model, params, x, y = mlp_problem(SEED_SIZES, SEED_BATCH)
    loss = bp_jax.loss_fn(model)
    copy = lambda tree: jax.tree.map(jnp.copy, tree)
    timers = {}  # name -> (framework, Timer)

    def add(name: str, framework: str, make_timer) -> None:
        timer = record.warmed(name, make_timer)
        if timer is not None:
            timers[name] = framework, timer

    if record.needs_torch("torch"):
        torch_rows = [
            (TORCH_EAGER, torch_baselines.eager_step, None),
            ("torch eager, without .item()", functools.partial(torch_baselines.eager_step, item=False), None),
        ]
        if torch_baselines.device().type == "cpu":  # one thread: what a PyTorch expert sets for a tiny model
            torch_rows.append(
                ("torch eager, the documents' train_step, torch.set_num_threads(1)", torch_baselines.eager_step, 1)
            )
        if smoke:
            record.skip("torch.compile", "not run in --smoke (compiling takes tens of seconds)")
        else:
            torch_rows.append(("torch.compile", torch_baselines.compiled_step, None))
        if torch_baselines.device().type == "cuda":
            torch_rows.append((CUDA_GRAPH, torch_baselines.cuda_graph_step, None))
        else:
            record.skip(CUDA_GRAPH, "no CUDA device")
        for name, make_step, thread_count in torch_rows:
            around = functools.partial(torch_baselines.threads, thread_count)
            add(
                name,
                "torch",
                lambda make_step=make_step, around=around: Timer(
                    make_step(), calls_per_repeat=calls, warmup=calls, sync=torch_baselines.sync, around=around
                ),
            )

    sgd = bp_jax.sgd_step(loss, lr=0.01)
    add(
        "bp_jax sgd_step, one call per step",
        "bp_jax",
        lambda: Timer(chained(sgd, [copy(params)], x, y), calls_per_repeat=calls, warmup=calls),
    )
    optimizer = optax.sgd(0.01)
    optax_sgd = bp_jax.optax_step(loss, optimizer)
    add(
        "bp_jax optax_step (optax.sgd), one call per step",
        "bp_jax",
        lambda: Timer(
            chained(optax_sgd, [copy(params), optimizer.init(params)], x, y), calls_per_repeat=calls, warmup=calls
        ),
    )
    _, _, rows_x, rows_y = mlp_problem(SEED_SIZES, SEED_ROWS)
    full, minibatch = dict(x=x, y=y), dict(x=rows_x, y=rows_y, batch_size=SEED_BATCH, key=jax.random.key(0))
    summed = bp_jax.loss_fn(bp_jax.mlp(SEED_SIZES, contraction="sum"))
    matmul = bp_jax.loss_fn(bp_jax.mlp(SEED_SIZES, contraction="dot"))
    wider = [bp_jax.mlp((SEED_SIZES[0], WIDER, SEED_SIZES[-1]), contraction=kind) for kind in ("dot", "sum")]
    wider_params = wider[0].init(jax.random.key(1))
    for name, loss_of, start, data in (
        (FIT, loss, params, full),
        (MINIBATCH, loss, params, minibatch),
        (FIT_SUM, summed, params, full),
        (MINIBATCH_SUM, summed, params, minibatch),
        (FIT_DOT, matmul, params, full),
        (MINIBATCH_DOT, matmul, params, minibatch),
        (WIDER_DOT, bp_jax.loss_fn(wider[0]), wider_params, minibatch),
        (WIDER_SUM, bp_jax.loss_fn(wider[1]), wider_params, minibatch),
    ):
        fused = functools.partial(bp_jax.fit, loss_of, start, **data, steps=fit_steps, lr=0.01, chunk_size=1000)
        add(name, "bp_jax", lambda fused=fused: Timer(lambda: fused().losses, steps_per_call=fit_steps))
    members = jax.vmap(model.init)(jax.random.split(jax.random.key(2), ENSEMBLE_MEMBERS))
    ensemble_steps = fit_steps // 10
    for name, loss_of in ((ENSEMBLE_DOT, matmul), (ENSEMBLE_SUM, summed)):
        fused = functools.partial(
            bp_jax.fit_ensemble, loss_of, members, x, y, steps=ensemble_steps, lr=0.01, chunk_size=1000
        )
        add(name, "bp_jax", lambda fused=fused: Timer(lambda: fused().losses, steps_per_call=ensemble_steps))

    update = sgd_update(loss)
    bare_scan = jax.jit(
        lambda params: jax.lax.scan(lambda params, _: update(params, x, y, 0.01), params, length=fit_steps)[1]
    )
    add(BARE_SCAN, "bp_jax", lambda: Timer(lambda: bare_scan(params), steps_per_call=fit_steps))

    options = loop_compiler_options(jax.default_backend())
    if options:
        members_scan = jax.jit(
            lambda members: jax.lax.scan(
                lambda members, _: jax.vmap(sgd_update(matmul), in_axes=(0, None, None, None))(members, x, y, 0.01),
                members,
                length=ensemble_steps,
            )[1]
        ).lower(members)
        for name, optioned in SCAN_OPTIONS.items():
            compiled = members_scan.compile(compiler_options=options if optioned else {})
            add(
                name,
                "bp_jax",
                lambda compiled=compiled: Timer(lambda: compiled(members), steps_per_call=ensemble_steps),
            )
    else:
        record.skip(ENSEMBLE_SCAN, f"the fused loop sets no compiler options on {jax.default_backend()}")

    timings = time_interleaved({name: timer for name, (_, timer) in timers.items()}, repeats=repeats)
    eager = timings.get(TORCH_EAGER)
    for name, (framework, _) in timers.items():
        record.rows.append(
            {
                "name": name,
                "framework": framework,
                "per_step_s": timings[name],
                "speedup_vs_torch_eager": eager and eager["median"] / timings[name]["median"],
            }
        )
    return record.as_dict(
        problem={"sizes": SEED_SIZES, "batch": SEED_BATCH, "dtype": "float32", "fit_steps_per_call": fit_steps},
        repeats="interleaved: one of each per round",
    )

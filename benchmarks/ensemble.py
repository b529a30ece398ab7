"""Suite 5, ensembles: E seed MLPs (10 → 5 → 1) trained at once by `fit_ensemble`, against training them
one after another and against PyTorch's own vectorised ensemble (torch.func).

Measured in turns: `fit_ensemble` with the hand-written SGD and one lr per member (geometrically spaced
0.001 … 0.05) on the full batch of 32 rows shared by all members, and on minibatches of 32 of 354 rows
(one key shared); one model's `fit` step; the documents' train_step; and the torch.func ensemble step
for the same E and lrs. Training the members one after another is not run: its rows are estimates,
E × one model's measured step. Rows give seconds per ensemble step and per model-step (÷ E).
"""

import functools

import jax
import numpy as np

import bp_jax
from benchmarks.problems import SEED_BATCH, SEED_ROWS, SEED_SIZES, mlp_problem
from benchmarks.records import SuiteRecord, torch_baselines
from benchmarks.timing import Timer, scaled, time_interleaved

MEMBERS = (1, 16, 256, 4096)
ONE_FIT = f"bp_jax fit, one model (full batch {SEED_BATCH})"
ONE_TORCH = "torch: the documents' train_step, one model"
ENSEMBLE = f"bp_jax fit_ensemble (full batch {SEED_BATCH} shared)"
ENSEMBLE_MINIBATCH = f"bp_jax fit_ensemble (minibatch {SEED_BATCH} of {SEED_ROWS} rows, one key shared)"
TORCH_FUNC = "torch.func ensemble: vmap(grad_and_value(functional_call)), params − lr·g"
SEQUENTIAL = {
    ONE_FIT: "bp_jax fit, members one after another (estimate: E × one model's step)",
    ONE_TORCH: "torch: the documents' train_step, members one after another (estimate: E × one step)",
}


def run(smoke: bool) -> dict:
    members, model_steps, repeats, torch_calls = ((1, 16), 1600, 3, 20) if smoke else (MEMBERS, 400_000, 9, 500)
    record = SuiteRecord()
    model, params, x, y = mlp_problem(SEED_SIZES, SEED_BATCH)
    _, _, rows_x, rows_y = mlp_problem(SEED_SIZES, SEED_ROWS)
    loss, key = bp_jax.loss_fn(model), jax.random.key(0)
    timers, frameworks = {}, {}  # (name, E) -> Timer, and the framework of each name

    def add(name: str, framework: str, count: int, make_timer) -> None:
        timer = record.warmed(f"{name}, E = {count}", make_timer)
        if timer is not None:
            timers[name, count], frameworks[name] = timer, framework

    fit_steps = min(20_000, model_steps)
    add(
        ONE_FIT,
        "bp_jax",
        1,
        lambda: Timer(
            lambda: bp_jax.fit(loss, params, x, y, steps=fit_steps, lr=0.01).losses, steps_per_call=fit_steps
        ),
    )
    torch_ready = record.needs_torch("torch")
    if torch_ready:
        add(
            ONE_TORCH,
            "torch",
            1,
            lambda: Timer(
                torch_baselines.eager_step(),
                calls_per_repeat=torch_calls,
                warmup=torch_calls,
                sync=torch_baselines.sync,
            ),
        )
    for count in members:
        lrs = np.geomspace(0.001, 0.05, count)
        steps = max(20, min(20_000, model_steps // count))
        ensemble = functools.partial(
            bp_jax.fit_ensemble,
            loss,
            jax.vmap(model.init)(jax.random.split(key, count)),
            steps=steps,
            lr=lrs,
            chunk_size=1000,
        )
        for name, call in (
            (ENSEMBLE, functools.partial(ensemble, x, y)),
            (ENSEMBLE_MINIBATCH, functools.partial(ensemble, rows_x, rows_y, batch_size=SEED_BATCH, key=key)),
        ):
            add(
                name, "bp_jax", count, lambda call=call, steps=steps: Timer(lambda: call().losses, steps_per_call=steps)
            )
        if torch_ready:
            add(
                TORCH_FUNC,
                "torch",
                count,
                lambda lrs=lrs: Timer(
                    torch_baselines.vmap_ensemble_step(lrs),
                    calls_per_repeat=None,
                    warmup=3,
                    min_repeat_s=0.05,
                    sync=torch_baselines.sync,
                ),
            )

    timings = time_interleaved(timers, repeats=repeats)
    one_fit = timings.get((ONE_FIT, 1))

    def row(name: str, framework: str, count: int, per_step: dict, measured: bool) -> dict:
        per_model_step = scaled(per_step, 1 / count)
        return {
            "name": name,
            "framework": framework,
            "members": count,
            "measured": measured,
            "per_step_s": per_step,
            "per_model_step_s": per_model_step,
            "vs_one_fit": one_fit and per_model_step["median"] / one_fit["median"],
        }

    record.rows += [row(name, frameworks[name], count, timing, True) for (name, count), timing in timings.items()]
    record.rows += [
        row(SEQUENTIAL[name], frameworks[name], count, scaled(timings[name, 1], count), False)
        for name in SEQUENTIAL
        if (name, 1) in timings
        for count in members
        if count > 1
    ]
    return record.as_dict(
        problem={
            "sizes": SEED_SIZES,
            "batch": SEED_BATCH,
            "dtype": "float32",
            "members": members,
            "model_steps_per_call": model_steps,
            "lr": "one per member, geomspace(0.001, 0.05, E)",
        },
        repeats="interleaved: one of each per round",
    )

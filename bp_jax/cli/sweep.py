"""The `bp-jax sweep` job: every (learning rate, seed) pair trained as one program (`fit_ensemble`).

    bp-jax sweep --lr 0.001,0.003,0.01,0.03,0.1 --seeds 8 [--data FILE --target COLUMN] [train's options]

Member (lr, s) is `bp-jax train --lr lr --seed s --split-seed S` with the same other options: all members
share the split chosen by --split-seed (default 0); seed s (--seed, --seed + 1, …) sets the member's init
and data order. Writes sweep.json (one entry per member: lr, seed, train and held-out MSE, or for a class
target train and held-out accuracy and log loss, the step it diverged at or null; with --early-stopping, each
member stopped by its own rule inside the one program, its scores its best params', and its curve, best epoch and
stop as train's metrics.json records them) and sweep.png into --out, and prints a table per learning rate.
Diverged members are frozen and shown, and do not fail the sweep. A sweep that cannot fit in memory (estimated
before anything is allocated: `runs.bytes_needed`) is refused in one line. Set-up is one compiled program
whatever the number of members (`runs.member_states`). SIGINT/SIGTERM end the process at once during set-up
and compile, stop at the end of the current chunk once training runs and write what was trained so far, and let
the results being written finish (exit 130/143; see `interrupts`).
"""

import dataclasses
import sys
import warnings
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

import bp_jax
from bp_jax.cli import console, folders, interrupts, options, plots, runs
from bp_jax.cli._args import UsageError
from bp_jax.cli.runs import Config
from bp_jax.cli.watch import PROGRESS_EVERY, Watch


def add_arguments(parser) -> None:
    parser.add_argument(
        "--lr",
        dest="lrs",
        type=options.learning_rates,
        required=True,
        metavar="LR,LR,…",
        help="the learning rates, e.g. 0.001,0.003,0.01,0.03,0.1",
    )
    parser.add_argument(
        "--seeds",
        type=options.positive_int,
        default=1,
        metavar="N",
        help="seeds per learning rate: --seed, --seed + 1, …, --seed + N − 1 (default 1)",
    )
    options.add_seed(parser, help="the first seed (default 0)")
    options.add_split_seed(parser, default=0)
    options.add_problem_options(parser)
    options.add_schedule_and_weights(parser)
    options.add_early_stopping(parser)
    options.add_out_folder(parser, holding="sweep.json and sweep.png", default="a new runs/sweep-DATASET-TIME")
    options.add_devices(parser, splits="the members")
    options.add_compile_cache(parser)


def run(args) -> int:
    given = options.given_config(args)
    runs.refuse_lone_stopping_flags(given, bool(given.get("early_stopping")))
    config = Config(**given)
    runs.check_warmup(config)
    repeated = sorted({lr for lr in args.lrs if args.lrs.count(lr) > 1})
    if repeated:
        raise UsageError(f"--lr lists {', '.join(f'{lr:g}' for lr in repeated)} more than once")
    if config.seed + args.seeds > 2**32:
        raise UsageError(f"--seed {config.seed} + --seeds {args.seeds} passes 2**32 − 1, the largest seed")
    config, split = runs.load_data(config, given)
    split, validation = runs.validation_split(config, split) if config.early_stopping else (split, None)
    n_train = len(split.x_train)
    members = len(args.lrs) * args.seeds
    epochs = 100 if args.epochs is args.steps is None else args.epochs
    per_epoch = runs.steps_per_epoch(n_train, config.batch_size)
    total = args.steps or epochs * per_epoch
    runs.check_total_steps(total)
    runs.check_schedule(config, total, per_epoch, None)
    runs.check_memory(config, split, members=members, steps=total, fewer="fewer learning rates or seeds")
    seeds = list(range(config.seed, config.seed + args.seeds))
    mesh = runs.member_mesh(args.devices, members, "learning rates × seeds")
    out = args.out or folders.create_unique(Path("runs"), f"sweep-{config.name}")
    signals = interrupts.current()
    with folders.claimed(out, resumable=False), console.progress_bar("sweep") as progress:
        watch = Watch(total, progress=progress, signals=signals)
        with jax.default_matmul_precision("highest"):
            result = _train(config, split, validation, args.lrs, seeds, mesh, watch)
            with signals.writing():
                report = _report(config, split, validation, args.lrs, seeds, result, watch)
                folders.write_json(out / "sweep.json", report)
                _plot(out / "sweep.png", report, watch.history)
    _print_tables(report, out)
    if watch.stopped_by is not None:
        print(
            f"bp-jax sweep: interrupted at step {result.step}; wrote what was trained so far to {out}", file=sys.stderr
        )
        return 128 + watch.stopped_by
    return 0


def _train(config, split, validation, lrs, seeds, mesh, watch: Watch) -> bp_jax.EnsembleResult:
    """The ensemble trained to `watch.total` steps, to where a stop signal ended it, or, with early stopping on the
    `validation` rows, until every member's rule stopped it. Members run lr-major: member i has lrs[i // len(seeds)]
    and seeds[i % len(seeds)], initialised and trained (schedule, weight decay, weights, dropout, early stopping) as
    `bp-jax train` would; a member's early stopping keeps its curve for the run's epochs."""
    model = runs.build_model(split.x_train.shape[1], config, split.scaling.outputs)
    per_epoch = runs.steps_per_epoch(len(split.x_train), config.batch_size)
    transform = None  # the hand-written update, lr as data
    if runs.optimizer(config) is not None:  # one learning rate per member, held in the optimizer state
        transform = optax.inject_hyperparams(
            lambda learning_rate: runs.optimizer(dataclasses.replace(config, lr=learning_rate), watch.total, per_epoch)
        )(learning_rate=lrs[0])
    state = runs.member_states(model, transform, np.asarray(seeds, np.uint32), len(lrs))
    member_lrs = np.repeat(np.asarray(lrs), len(seeds))
    if transform is not None:
        state["opt_state"].hyperparams["learning_rate"] = jnp.asarray(member_lrs, jnp.float32)
    y = runs.targets(config, split)
    rule = runs.stop_rule(
        config,
        model,
        split,
        validation,
        state["params"],
        per_epoch,
        members=len(member_lrs),
        epochs=min(watch.total // per_epoch, runs.VALIDATION_CURVE_EPOCHS),
    )
    result = bp_jax.fit_ensemble(
        runs.loss(model, split.scaling, weighted=isinstance(y, dict)),
        state["params"],
        jax.device_put(split.x_train),
        jax.device_put(y),
        steps=watch.total,
        lr=None if transform is not None else member_lrs,
        optimizer=transform,
        opt_state=state["opt_state"],
        batch_size=config.batch_size,
        key=jax.random.wrap_key_data(state["key"]),
        chunk_size=PROGRESS_EVERY,
        on_chunk=watch.on_chunk,
        mesh=mesh,
        stop_rule=rule,
        keep_losses=False,  # the watch keeps the history, bounded
    )
    if result.stopped_at is not None and np.all(result.stopped_at >= 0):  # on_chunk saw no part-chunk: its losses
        watch.add_rest(result.losses, result.step - len(result.losses))
    return result


def _report(config, split, validation, lrs, seeds, result, watch: Watch) -> dict:
    """sweep.json: the shared config, then one entry per member: its scores (`runs.scores`; with early stopping of
    its best params, and its "early_stopping" as `bp-jax train` records it, `runs.stopping_record`), and the step
    it diverged at or None."""
    model = runs.build_model(split.x_train.shape[1], config, split.scaling.outputs)
    rule = jax.device_get(runs.stopping_state(result)._asdict()) if config.early_stopping else None
    params = runs.best_params({"params": jax.device_get(result.params), "rule": rule})
    scores = runs.scores(model, split, ensemble=True)(params)
    stopping: dict | None = None
    each: list[dict] = [{}] * (len(lrs) * len(seeds))  # entries of each member's own beyond its scores
    if rule is not None:
        stopping = runs.stopping_record(config, runs.steps_per_epoch(len(split.x_train), config.batch_size), rule)
        each = [{"early_stopping": member} for member in stopping.pop("members")]
    shared = {name: value for name, value in config.to_record().items() if name not in ("lr", "seed", "ensemble")}
    return {
        "config": shared,
        "learning_rates": list(lrs),
        "seeds": seeds,
        "steps": result.step,
        "stopped": None if watch.stopped_by is None else {"step": result.step, "signal": watch.stopped_by},
        "runs": [
            {
                "lr": lrs[i // len(seeds)],
                "seed": seeds[i % len(seeds)],
                **{name: float(values[i]) for name, values in scores.items()},
                "diverged_at": None if result.diverged[i] < 0 else int(result.diverged[i]),
                **each[i],
            }
            for i in range(len(lrs) * len(seeds))
        ],
        **runs.baseline(split),
        "weights": runs.weights_record(config, split),
        "examples": {
            "train": len(split.x_train),
            "held_out": len(split.x_test),
            **({"validation": len(validation[1])} if validation is not None else {}),
        },
        **({"early_stopping": stopping} if stopping is not None else {}),
        "wall_time_s": watch.elapsed_s,
        "device": console.device_description(),
        "jax": jax.__version__,
    }


class Score(NamedTuple):
    """What ranks the members: a held-out score in sweep.json's runs, the baseline it is shown against, and
    `sign` (1: lower is better, −1: higher is)."""

    key: str
    label: str
    baseline_key: str
    baseline_label: str
    sign: int

    def best(self, items, value=lambda item: item):
        return min(items, key=lambda item: self.sign * value(item), default=None)


def score(report: dict) -> Score:
    """Held-out accuracy for a classification sweep, held-out MSE for regression."""
    if report["config"].get("task") == "classification":
        return Score("held_out_accuracy", "held-out accuracy", "baseline_held_out_accuracy", "majority class", -1)
    return Score("held_out_mse", "held-out MSE", "baseline_held_out_mse", "mean predictor", 1)


def summary(report: dict) -> list[dict]:
    """Per learning rate: the held-out score's (`score`) mean and std over the seeds that did not diverge, the
    best seed, how many diverged, and with early stopping how many its rule stopped."""
    rows, ranked = [], score(report)
    for lr in report["learning_rates"]:
        members = [run for run in report["runs"] if run["lr"] == lr]
        finished = [run for run in members if run["diverged_at"] is None]
        scores = np.asarray([run[ranked.key] for run in finished])
        best = ranked.best(finished, lambda run: run[ranked.key])
        rows.append(
            {
                "lr": lr,
                "mean": float(scores.mean()) if len(scores) else None,
                "std": float(scores.std()) if len(scores) else None,
                "best_seed": best and best["seed"],
                "best": best and best[ranked.key],
                "diverged": len(members) - len(finished),
                "stopped_early": sum(run.get("early_stopping", {}).get("stopped_early", False) for run in members),
                "seeds": len(members),
            }
        )
    return rows


def _print_tables(report: dict, out: Path) -> None:
    rows, ranked = summary(report), score(report)
    best = ranked.best([row for row in rows if row["best"] is not None], lambda row: row["best"])
    stopping = "early_stopping" in report
    console.print_table(
        f"bp-jax sweep: {len(report['runs'])} members, {report['steps']} steps, {ranked.label} "
        f"({ranked.baseline_label} {report[ranked.baseline_key]:.4f})",
        ("lr", f"{ranked.label}, mean ± std", "best seed", f"its {ranked.label}", "diverged")
        + ("stopped early",) * stopping,
        [
            (
                f"{row['lr']:g}" + (" ★" if row is best else ""),
                "—" if row["mean"] is None else f"{row['mean']:.4f} ± {row['std']:.4f}",
                "—" if row["best_seed"] is None else str(row["best_seed"]),
                "—" if row["best"] is None else f"{row['best']:.4f}",
                f"{row['diverged']} of {row['seeds']}",
            )
            + (f"{row['stopped_early']} of {row['seeds']}",) * stopping
            for row in rows
        ],
    )
    print(f"wrote {out}/sweep.json and {out}/sweep.png")


def _validation_medians(report: dict, lr: float) -> tuple[np.ndarray, np.ndarray]:
    """(steps, losses): the median over the seeds of learning rate `lr` of epoch e's validation loss, at the epoch's
    last step (e + 1) · steps per epoch, over the seeds that scored epoch e (those that stopped before did not)."""
    curves = [run["early_stopping"]["validation_loss"] for run in report["runs"] if run["lr"] == lr]
    epochs = max(map(len, curves))
    padded = np.asarray([curve + [np.nan] * (epochs - len(curve)) for curve in curves], np.float64)
    with warnings.catch_warnings():  # an epoch no seed scored (all diverged): left blank
        warnings.simplefilter("ignore", RuntimeWarning)
        medians = np.nanmedian(padded, axis=0) if epochs else np.zeros(0)
    return (np.arange(epochs) + 1) * report["early_stopping"]["steps_per_epoch"], medians


def _plot(path: Path, report: dict, history: list) -> None:
    """Left: the training loss by step per learning rate (median over seeds, 25–75 % band; dashed where a
    seed diverged), from the watch's [step, losses of every member] history; with early stopping, dotted, the
    validation loss at each epoch's end (median over the seeds that scored it). Right: the held-out score
    (`score`: MSE, or accuracy for classification) against learning rate, one dot per seed, the mean over finished
    seeds, the best marked, diverged members as red crosses along the top."""
    x = np.asarray([step for step, _ in history])
    losses = np.asarray([member_losses for _, member_losses in history], np.float32)
    seeds = len(report["seeds"])
    per_lr = losses.reshape(-1, len(report["learning_rates"]), seeds)
    rows, ranked = summary(report), score(report)
    with plots.panels(
        path, 2, title=f"bp-jax sweep: {len(report['runs'])} members ({len(rows)} learning rates × {seeds} seeds)"
    ) as (curves, scores):
        finished_medians = []
        for band, row in zip(per_lr.transpose(1, 0, 2), rows):
            with warnings.catch_warnings():  # steps after every seed diverged are all NaN: left blank
                warnings.simplefilter("ignore", RuntimeWarning)
                low, median, high = np.nanpercentile(band, [25, 50, 75], axis=1)
            note = f" ({row['diverged']} diverged)" if row["diverged"] else ""
            (line,) = curves.plot(
                x, median, lw=1.5, ls="--" if row["diverged"] else "-", label=f"lr {row['lr']:g}{note}"
            )
            curves.fill_between(x, low, high, alpha=0.2, color=line.get_color())
            if row["diverged"] < row["seeds"]:
                finished_medians.append(median)
            if "early_stopping" in report:
                steps, validation = _validation_medians(report, row["lr"])
                curves.plot(
                    steps, validation, ls=":", lw=1.5, color=line.get_color(), label=f"lr {row['lr']:g}, validation"
                )
        loss = "loss" if "early_stopping" in report else "training loss"
        curves.set(xlabel="step", ylabel=f"{loss} (median over seeds)", yscale="log")
        if finished_medians:  # diverging curves would stretch the axis over many decades
            curves.set_ylim(0.5 * np.nanmin(finished_medians), 3 * np.nanmax(finished_medians))

        finished = [run for run in report["runs"] if run["diverged_at"] is None]
        accuracy = ranked.sign < 0
        top = 1.05 if accuracy else 1.5 * max([run[ranked.key] for run in finished] + [report[ranked.baseline_key]])
        scores.scatter(
            [run["lr"] for run in finished],
            [run[ranked.key] for run in finished],
            s=12,
            alpha=0.5,
            color="tab:blue",
            label="a seed",
        )
        diverged = [run["lr"] for run in report["runs"] if run["diverged_at"] is not None]
        if diverged:
            scores.scatter(diverged, [top] * len(diverged), marker="x", color="tab:red", label="diverged")
        means = [row for row in rows if row["mean"] is not None]
        scores.plot(
            [row["lr"] for row in means],
            [row["mean"] for row in means],
            "o-",
            color="tab:blue",
            label="mean over seeds that finished",
        )
        best = ranked.best(means, lambda row: row["best"])
        if best is not None:
            scores.scatter(
                best["lr"],
                best["best"],
                marker="*",
                s=200,
                color="gold",
                edgecolor="black",
                zorder=3,
                label=f"best: lr {best['lr']:g}, seed {best['best_seed']}",
            )
        scores.axhline(report[ranked.baseline_key], color="tab:red", ls=":", label=ranked.baseline_label)
        scores.set(xlabel="learning rate", ylabel=ranked.label, xscale="log", yscale="linear" if accuracy else "log")
        if accuracy:
            scores.set_ylim(0, 1.1)

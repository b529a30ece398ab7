"""`bp-jax sweep` end to end (in this process, or in its own where it needs fake devices): every (lr, seed)
member is `bp-jax train` with that lr and seed and the sweep's split seed."""

import io
import os

import jax
import numpy as np
import pandas as pd
import pytest
from helpers import commands_in_a_process, fake_devices, run_cli, strict_json, weighted_table

import bp_jax
from benchmarks.compiles import counting
from bp_jax.cli import runs
from bp_jax.cli import sweep as sweep_command

STEPS = "150"
#: a member against `bp-jax train`: equal to float32 rounding, not bit for bit: the ensemble's vmapped
#: (batched) operations may round differently from one run's
MEMBER_TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep") / "run"
    done = run_cli(
        "sweep",
        "--lr",
        "0.003,0.03,5",
        "--seeds",
        3,
        "--seed",
        4,
        "--steps",
        STEPS,
        "--out",
        out,
        "--compile-cache",
        "off",
    )
    return out, done


@pytest.mark.slow
def test_every_member_is_reported_and_diverged_ones_do_not_fail_the_sweep(sweep):
    out, done = sweep
    report = strict_json(out / "sweep.json")
    assert [(run["lr"], run["seed"]) for run in report["runs"]] == [
        (lr, seed) for lr in (0.003, 0.03, 5.0) for seed in (4, 5, 6)
    ]
    assert report["steps"] == int(STEPS) and report["config"]["split_seed"] == 0
    finished = [run for run in report["runs"] if run["lr"] != 5.0]
    assert all(run["diverged_at"] is None and run["held_out_mse"] < report["baseline_held_out_mse"] for run in finished)
    assert all(isinstance(run["diverged_at"], int) for run in report["runs"] if run["lr"] == 5.0)
    table = done.stdout
    assert "3 of 3" in table and "0 of 3" in table and "held-out MSE, mean ± std" in table
    assert (out / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    "optimizer, lr, seed, more",
    [
        ("sgd", 0.03, 5, ()),
        ("momentum", 0.003, 6, ("--schedule", "plateau", "--weight-decay", 0.01)),  # the plateau rule per member
        ("sgd", 0.1, 5, ("--early-stopping", "--patience", 3, "--hidden", 32, "--schedule", "plateau")),  # stops early
    ],
)
@pytest.mark.slow
def test_a_member_equals_bp_jax_train_with_its_lr_seed_and_the_split_seed(tmp_path, sweep, optimizer, lr, seed, more):
    out, _ = sweep
    if more:  # a sweep of its own with those options
        out = tmp_path / "sweep"
        run_cli(
            "sweep",
            "--lr",
            f"{lr},0.01",
            "--seeds",
            3,
            "--seed",
            4,
            "--steps",
            STEPS,
            "--optimizer",
            optimizer,
            *more,
            "--out",
            out,
            "--compile-cache",
            "off",
        )
    member = next(run for run in strict_json(out / "sweep.json")["runs"] if run["lr"] == lr and run["seed"] == seed)
    run_cli(
        "train",
        "--lr",
        lr,
        "--seed",
        seed,
        "--split-seed",
        0,
        "--steps",
        STEPS,
        "--optimizer",
        optimizer,
        *more,
        "--out",
        tmp_path / "train",
    )
    metrics = strict_json(tmp_path / "train" / "metrics.json")
    for name in ("train_mse", "held_out_mse"):
        assert member[name] == pytest.approx(metrics[name], rel=MEMBER_TOLERANCE), name
    if "--early-stopping" in more:
        assert_same_stopping(member["early_stopping"], metrics["early_stopping"])
        assert member["early_stopping"]["stopped_early"] and metrics["final_step"] < int(STEPS)


def assert_same_stopping(member: dict, alone: dict) -> None:
    """A sweep member's early stopping record is the one `bp-jax train` wrote for its run: the same epochs, the curve
    to float32 rounding."""
    assert {name: member[name] for name in member if "loss" not in name} == {
        name: alone[name] for name in member if "loss" not in name
    }
    np.testing.assert_allclose(member["validation_loss"], alone["validation_loss"], rtol=MEMBER_TOLERANCE)
    assert member["best_validation_loss"] == pytest.approx(alone["best_validation_loss"], rel=MEMBER_TOLERANCE)


#: a class sweep with both weights and early stopping on `weighted_table(80)`: 64 training rows, 13 of them held back
#: for validation, 6 steps an epoch
WEIGHTED = (
    *("--target", "cls", "--features", "a,b", "--class-weight", "balanced", "--sample-weight", "w", "--hidden", 8),
    *("--early-stopping", "--validation-fraction", 0.2, "--patience", 2, "--batch-size", 8, "--epochs", 15),
)


@pytest.mark.slow  # a sweep, a train run, predict and export
def test_a_weighted_early_stopped_sweeps_best_member_is_its_train_run_and_exports(tmp_path):
    """The sweep records the weights and the stopping as train does; its best member, trained alone by `bp-jax train`
    with its lr, seed and the split seed (a sweep keeps no params), has its scores and stop, and exports: the jax
    program gives predict's probabilities."""
    weighted_table(80).to_csv(tmp_path / "t.csv", index=False)
    weighted_table(10, seed=1).drop(columns=["cls", "y", "w"]).to_csv(tmp_path / "new.csv", index=False)
    lrs = ("--lr", "0.1,0.3", "--seeds", 2)
    run_cli(
        "sweep", "--data", tmp_path / "t.csv", *WEIGHTED, *lrs, "--out", tmp_path / "sweep", "--compile-cache", "off"
    )
    report = strict_json(tmp_path / "sweep" / "sweep.json")
    assert report["config"] | {"dataset": None, "features": None} == report["config"] | {
        "dataset": None,
        "features": None,
        "class_weight": "balanced",
        "sample_weight": "w",
        "early_stopping": True,
        "validation_fraction": 0.2,
        "patience": 2,
    }
    assert report["examples"] == {"train": 51, "held_out": 16, "validation": 13} and report["weights"]["train_sum"] > 0
    assert report["early_stopping"]["steps_per_epoch"] == 6
    ranked = sweep_command.score(report)
    best = ranked.best(report["runs"], lambda run: run[ranked.key])  # the table's ★ and best seed
    assert best["early_stopping"]["stopped_early"]
    assert {run["early_stopping"]["stopped_early"] for run in report["runs"]} == {True, False}  # each on its own
    alone = tmp_path / "best"
    run_cli(
        "train",
        *("--data", tmp_path / "t.csv", *WEIGHTED, "--lr", best["lr"], "--seed", best["seed"], "--split-seed", 0),
        *("--out", alone),
    )
    metrics = strict_json(alone / "metrics.json")
    assert metrics["held_out_accuracy"] == best["held_out_accuracy"]
    for name in ("train_log_loss", "held_out_log_loss"):
        assert best[name] == pytest.approx(metrics[name], rel=MEMBER_TOLERANCE), name
    assert_same_stopping(best["early_stopping"], metrics["early_stopping"])
    assert metrics["weights"] == report["weights"]
    predicted = pd.read_csv(io.StringIO(run_cli("predict", alone, "--data", tmp_path / "new.csv").stdout))
    run_cli("export", alone, "--format", "jax", "--out", tmp_path / "best.jax")
    exported = jax.export.deserialize(bytearray((tmp_path / "best.jax").read_bytes()))
    x = pd.read_csv(tmp_path / "new.csv").to_numpy(np.float32)
    np.testing.assert_allclose(exported.call(x), predicted[["P(no)", "P(yes)"]], rtol=1e-5, atol=1e-6)


#: a sweep whose members do not split over the devices it asks for
UNEVEN = (["--lr", "0.1", "--seeds", "3", "--devices", "2"], "3 members (learning rates × seeds) do not split evenly")


@pytest.fixture(scope="module")
def on_4_devices(tmp_path_factory):
    """In one process of 4 devices (commands_in_a_process): the fixture's sweep with a fourth seed, its members
    split over the 4 devices ("split"), then UNEVEN ("uneven"); their results, and the folder holding them."""
    folder = tmp_path_factory.mktemp("four-devices")
    split = ["sweep", "--lr", "0.003,0.03,5", "--seeds", 4, "--seed", 4, "--steps", STEPS, "--devices", 4]
    commands = {
        "split": [*split, "--out", folder / "split", "--compile-cache", "off"],
        "uneven": ["sweep", *UNEVEN[0], "--steps", 5, "--out", folder / "uneven"],
    }
    results = commands_in_a_process(commands.values(), env=os.environ | fake_devices(4))
    return dict(zip(commands, results)), folder


@pytest.mark.slow  # a process of its own: 4 devices, which JAX makes when it starts
def test_members_split_over_4_devices_equal_one_device(on_4_devices, sweep):
    out, _ = sweep
    results, folder = on_4_devices
    assert results["split"].returncode == 0, results["split"].stderr
    one = {(run["lr"], run["seed"]): run for run in strict_json(out / "sweep.json")["runs"]}
    compared = 0
    for run in strict_json(folder / "split" / "sweep.json")["runs"]:
        if (run["lr"], run["seed"]) in one:
            reference = one[run["lr"], run["seed"]]
            assert run["diverged_at"] == reference["diverged_at"]
            if run["diverged_at"] is None:
                assert run["held_out_mse"] == pytest.approx(reference["held_out_mse"], rel=1e-5)
            compared += 1
    assert compared == len(one) == 9  # every member of the 3 × 3 sweep (seeds 4, 5, 6) is in the 3 × 4 one


@pytest.mark.parametrize(
    "args, message",
    [
        (["--lr", ""], "--lr: expected comma-separated numbers > 0"),
        (["--lr", "0.1,-1"], "--lr: expected comma-separated numbers > 0"),
        (["--lr", "0.1,fast"], "--lr: expected comma-separated numbers > 0"),
        (["--lr", "0.1", "--seeds", "0"], "--seeds: expected a positive integer"),
        (["--seeds", "2"], "the following arguments are required: --lr"),
        (["--lr", "0.1,0.01,0.1"], "--lr lists 0.1 more than once"),
        (
            ["--lr", "0.1", "--compile-cache", "/dev/null/cache"],
            "--compile-cache /dev/null/cache: cannot create the folder",
        ),
        (["--lr", "0.01", "--seeds", "99999999999"], "--seed 0 + --seeds 99999999999 passes 2**32 − 1, the largest"),
        (["--lr", "0.01", "--seeds", "4000000000"], "4,000,000,000 members × 5 steps need about"),
        (["--lr", "0.1", "--patience", "3"], "--patience set how --early-stopping stops; add --early-stopping"),
        (["--lr", "0.1", "--early-stopping", "--validation-fraction", "1"], "between 0 and 1 (both excluded), got '1'"),
        (["--lr", "0.1", "--early-stopping", "--validation-fraction", "0.95"], "0.95 leaves 18 training and 336"),
        (["--lr", "0.1", "--class-weight", "balanced"], "--class-weight balanced weighs classes; the target"),
        (["--lr", "0.1", "--sample-weight", "q"], "no column 'q' for --sample-weight"),
        (["--lr", "0.1", "--schedule", "warmup-cosine"], "needs --warmup-epochs E, a warm-up shorter than the run's"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, args, message):
    done = run_cli("sweep", *args, "--steps", 5, "--out", tmp_path / "bad", check=False)
    assert done.returncode == 2 and message in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert not (tmp_path / "bad" / "sweep.json").exists()


@pytest.mark.slow  # a process of its own: devices to split over
def test_members_that_do_not_split_over_the_devices_are_refused_in_one_line(on_4_devices):
    results, folder = on_4_devices
    done = results["uneven"]
    assert done.returncode == 2 and UNEVEN[1] in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert not (folder / "uneven" / "sweep.json").exists()


def test_a_folder_holding_a_sweep_is_not_written_over(sweep):
    out, _ = sweep
    before = (out / "sweep.json").read_bytes()
    done = run_cli("sweep", "--lr", "0.1", "--steps", 5, "--out", out, check=False)
    assert done.returncode == 2 and "already holds a run" in done.stderr and "--resume" not in done.stderr
    assert (out / "sweep.json").read_bytes() == before


def test_a_sweep_that_cannot_fit_in_memory_is_refused_before_anything_is_allocated(tmp_path):
    """10**7 members of about 50 kB each (their arrays, history and report entries), refused in one line; so is
    a run past fit's int32 step counter."""
    done = run_cli("sweep", "--lr", "0.01", "--seeds", 10**7, "--steps", 5, "--out", tmp_path / "big", check=False)
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "10,000,000 members × 5 steps need about" in done.stderr and "GiB (a 10 → 5 → 1 model" in done.stderr
    done = run_cli("sweep", "--lr", "0.01", "--steps", 10**10, "--out", tmp_path / "long", check=False)
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "ask for 10,000,000,000 steps; at most 2,147,483,647" in done.stderr
    assert not (tmp_path / "big").exists() and not (tmp_path / "long").exists()


def test_the_memory_estimate_grows_with_members_not_steps_past_the_history_and_the_readme_sweep_fits():
    config = runs.Config()
    needed = lambda members, steps: runs.bytes_needed(config, 10, 1, 442, members, steps)
    assert needed(2, 100) == 2 * needed(1, 100) and needed(1, 10**9) == needed(1, 10**4)  # fit keeps one chunk
    assert needed(48, 1100) < runs.memory_limit()[0]


@pytest.mark.slow
def test_member_states_are_train_runs_initial_states_by_one_program_of_fixed_size():
    """Member (lr, s) starts where `bp-jax train --seed s` starts; set-up of 10 or 1000 seeds compiles the
    same number of programs (one), each of the same size: set-up is O(members), not a program per member."""
    model, config = bp_jax.mlp((10, 5, 1), "relu"), runs.Config(optimizer="momentum")
    seeds = np.asarray([0, 5, 2**31, 2**32 - 1], np.uint32)
    states = runs.member_states(model, runs.optimizer(config), seeds, 2)
    for i, seed in enumerate(seeds):
        alone = runs.initial_state(model, runs.Config(optimizer="momentum", seed=int(seed)))
        for member in (i, i + len(seeds)):  # the seed's member at each of the 2 copies (learning rates)
            for leaf, reference in zip(jax.tree.leaves(states), jax.tree.leaves(alone), strict=True):
                np.testing.assert_array_equal(leaf[member], reference)

    counts, sizes = [], []
    for count in (10, 1000):
        seeds = np.arange(count, dtype=np.uint32)
        with counting() as compiled:
            jax.block_until_ready(runs.member_states(model, None, seeds, 3))
        counts.append(len(compiled))
        program = jax.make_jaxpr(lambda s: runs.member_states(model, None, s, 3))(seeds)
        sizes.append(len(str(program).splitlines()))
    assert counts[0] == counts[1] >= 1 and sizes[0] == sizes[1]


@pytest.mark.slow
def test_sweeps_of_20_or_20000_members_compile_the_same_number_of_programs_and_finish(tmp_path):
    """After a sweep of 2 lrs × 5 seeds has compiled what no member count changes, a sweep of 2 × 10 and one of
    2 × 10000 each compile the same programs again, for their own member count: none per member. (Set-up once
    stacked 20000 keys into one program that compiled for over 13 minutes.)"""
    sweep = lambda seeds: run_cli(
        "sweep",
        "--lr",
        "0.01,0.1",
        "--seeds",
        seeds,
        "--steps",
        5,
        "--out",
        tmp_path / str(seeds),
        "--compile-cache",
        "off",
    )
    sweep(5)
    counts = []
    for seeds in (10, 10_000):
        with counting() as compiled:
            sweep(seeds)
        # the first state's copy (one part), or its split and the parts' join (the members in parts on CPU, where
        # their work repays it: 20000 members are, 20 are not) are one set-up program or two, none per member
        counts.append(
            len([name for name in compiled if name not in ("jit(copy_tree)", "jit(_prepared)", "jit(_joined)")])
        )
    assert counts[0] == counts[1] >= 1
    assert len(strict_json(tmp_path / "10000" / "sweep.json")["runs"]) == 20_000

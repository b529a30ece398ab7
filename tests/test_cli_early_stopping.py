"""`bp-jax train --early-stopping`: validation rows carved from the training rows, scored inside the loop, the run
ending with the best params; with --ensemble each member on its own; with --schedule plateau the scale following
optax's reduce_on_plateau given the validation losses; resumed bit for bit; bad flags refused before anything is
written."""

import re
import shutil

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import assert_same_state, checkpoint_steps, run_cli, strict_json

import bp_jax
from bp_jax.cli import data, runs

#: diabetes: 354 training rows, 35 of them for validation, 319 left: 9 steps an epoch. A wide net at a high rate
#: over-fits within a few epochs, so the rule stops it long before 40 epochs.
ARGS = ("--early-stopping", "--patience", 3, "--hidden", 32, "--lr", 0.1)
EPOCHS, PER_EPOCH, PATIENCE = 40, 319 // 32, 3


@pytest.fixture(scope="module")
def stopped(tmp_path_factory):
    """A run the rule stopped: its folder and metrics."""
    out = tmp_path_factory.mktemp("early") / "run"
    summary = run_cli("train", "--out", out, "--epochs", EPOCHS, *ARGS).stdout
    rows = " ".join(summary.replace("│", " ").split())  # a wrapped cell read as one line
    assert "rows 319 train, 88 held out, 35 validation " in rows, summary  # the three add up to the table
    return out, strict_json(out / "metrics.json")


def test_the_run_stops_after_patience_epochs_without_improvement_and_records_its_curve(stopped):
    out, metrics = stopped
    stopping = metrics["early_stopping"]
    curve, best = stopping["validation_loss"], stopping["best_epoch"]
    assert metrics["examples"] | {"features": 0} == {"train": 319, "validation": 35, "held_out": 88, "features": 0}
    assert metrics["config"] | {"features": None} == metrics["config"] | {
        "features": None,
        "early_stopping": True,
        "validation_fraction": 0.1,
        "patience": PATIENCE,
    }
    assert stopping["stopped_early"] and stopping["epochs_without_improvement"] == PATIENCE
    assert metrics["final_step"] == (best + 1 + PATIENCE) * PER_EPOCH < EPOCHS * PER_EPOCH
    assert len(curve) == best + 1 + PATIENCE and best == int(np.argmin(curve))
    assert stopping["best_step"] == (best + 1) * PER_EPOCH and stopping["best_validation_loss"] == curve[best]
    assert metrics["stopped"]["reason"] == f"early stopping: {PATIENCE} epochs without improvement"
    assert checkpoint_steps(out)[-1] == metrics["final_step"]
    assert (out / "loss_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_run_ends_with_the_best_params_and_its_scores_are_theirs(stopped):
    """predict's params (`read_trained`) are the rule's best, not the last step's; the best validation loss is the
    MSE of those params on the validation rows, and the held-out MSE in metrics.json is theirs too."""
    out, metrics = stopped
    run, model, params = runs.read_trained(out)
    state = run.restore(runs.initial_state(model, run.config))
    chex.assert_trees_all_equal(params, state["rule"]["params"])
    assert not np.array_equal(params[-1]["weight"], state["params"][-1]["weight"])
    config, split = runs.load_data(run.config)
    split, (x_val, y_val) = runs.validation_split(config, split)
    validation_loss = float(runs.loss(model, split.scaling)(params, x_val, y_val))
    np.testing.assert_allclose(validation_loss, metrics["early_stopping"]["best_validation_loss"], rtol=1e-5)
    scores = runs.scores(model, split)(params)
    np.testing.assert_allclose(float(scores["held_out_mse"]), metrics["held_out_mse"], rtol=1e-5)


@pytest.mark.slow
def test_a_resumed_run_stops_where_an_uninterrupted_one_does_with_its_bits(stopped, tmp_path):
    whole, metrics = stopped
    out = tmp_path / "split"
    run_cli("train", "--out", out, "--epochs", 2, *ARGS)
    run_cli("train", "--resume", out, "--epochs", EPOCHS)
    assert_same_state(whole, out)
    resumed = strict_json(out / "metrics.json")
    assert resumed["early_stopping"] == metrics["early_stopping"] and resumed["resumed_from_step"] == 2 * PER_EPOCH
    steps = checkpoint_steps(out)
    run_cli("train", "--resume", out, "--epochs", EPOCHS)  # stopped already: nothing more to train
    assert checkpoint_steps(out) == steps and strict_json(out / "metrics.json")["final_step"] == metrics["final_step"]


#: three members from seeds 0, 1, 2 on a plateau schedule: they stop after epochs 7, 9 and 5 (steps 71, 89 and 53),
#: the last before the first checkpoint (step 60), the others after it.
MEMBERS = (*ARGS, "--ensemble", 3, "--schedule", "plateau", "--checkpoint-every", 60)


@pytest.fixture(scope="module")
def members(tmp_path_factory):
    """An ensemble run whose members the rule stopped, each on its own: its folder and metrics."""
    out = tmp_path_factory.mktemp("members") / "run"
    run_cli("train", "--out", out, "--epochs", EPOCHS, *MEMBERS)
    return out, strict_json(out / "metrics.json")


@pytest.mark.slow
def test_each_member_stops_on_its_own_curve_ends_with_its_best_params_and_its_plateau_reads_it(members):
    """Per member: the curve, best epoch and count as one model's; predict's params its best; the held-out MSE the
    ensemble's of those; the plateau state reduce_on_plateau's given the member's validation losses on the host."""
    out, metrics = members
    stopping = metrics["early_stopping"]
    assert [member["seed"] for member in stopping["members"]] == [0, 1, 2] and stopping["stopped_early"]
    ends = []
    for member in stopping["members"]:
        curve, best = member["validation_loss"], member["best_epoch"]
        assert member["stopped_early"] and member["epochs_without_improvement"] == PATIENCE
        assert len(curve) == best + 1 + PATIENCE and best == int(np.argmin(curve))
        assert member["best_step"] == (best + 1) * PER_EPOCH and member["best_validation_loss"] == curve[best]
        ends.append((best + 1 + PATIENCE) * PER_EPOCH)
    assert len(set(ends)) > 1 and metrics["final_step"] == max(ends) == checkpoint_steps(out)[-1]
    run, model, params = runs.read_trained(out)
    state = run.restore(runs.initial_state(model, run.config))
    chex.assert_trees_all_equal(params, state["rule"]["params"])
    config, split = runs.load_data(run.config)
    split, (x_val, y_val) = runs.validation_split(config, split)
    validation = jax.vmap(runs.loss(model, split.scaling), (0, None, None))(params, x_val, y_val)
    expected = [member["best_validation_loss"] for member in stopping["members"]]
    np.testing.assert_allclose(np.asarray(validation), expected, rtol=1e-5)
    held_out = runs.ensemble_scores(model, split)(params)["held_out_mse"]
    np.testing.assert_allclose(float(held_out), metrics["held_out_mse"], rtol=1e-5)
    is_plateau = lambda node: isinstance(node, optax.contrib.ReduceLROnPlateauState)
    (saved,) = [node for node in jax.tree.leaves(state["opt_state"], is_leaf=is_plateau) if is_plateau(node)]
    plateau = optax.contrib.reduce_on_plateau(**runs.PLATEAU, accumulation_size=1)
    update = jax.jit(lambda state, value: plateau.update(None, state, value=value)[1])
    for i, member in enumerate(stopping["members"]):
        host = plateau.init(None)
        for loss in member["validation_loss"]:
            host = update(host, jnp.float32(loss))
        chex.assert_trees_all_close(jax.tree.map(lambda leaf, i=i: leaf[i], saved), host, rtol=1e-6)


@pytest.mark.slow
def test_a_resumed_ensemble_stops_where_an_uninterrupted_one_does_with_its_bits(members, tmp_path):
    """Resumed from step 60, after one member stopped (it stays frozen: no step taken twice) and before the others,
    the members stop as they did, with the same bits; resumed again, all stopped, nothing more is trained."""
    whole, metrics = members
    out = tmp_path / "resumed"
    shutil.copytree(whole, out)
    for step in checkpoint_steps(out)[1:]:
        shutil.rmtree(out / "checkpoints" / str(step))
    assert checkpoint_steps(out) == [60]
    ends = [(member["best_epoch"] + 1 + PATIENCE) * PER_EPOCH for member in metrics["early_stopping"]["members"]]
    assert min(ends) < 60 < max(ends)
    run_cli("train", "--resume", out)
    assert_same_state(whole, out)
    assert strict_json(out / "metrics.json")["early_stopping"] == metrics["early_stopping"]
    steps = checkpoint_steps(out)
    run_cli("train", "--resume", out)
    assert checkpoint_steps(out) == steps and strict_json(out / "metrics.json")["final_step"] == metrics["final_step"]
    assert_same_state(whole, out)


def test_a_plateau_schedule_with_early_stopping_reads_the_validation_loss():
    """Combined by `bp_jax.stop_rules`: a validation set the training fits ever worse (its targets the opposite),
    while the training loss falls; at each epoch's end the scale is optax's reduce_on_plateau's fed the epochs'
    validation losses, and the run stops when early stopping says so."""
    x = jnp.linspace(-1, 1, 8).reshape(-1, 1)
    model, per_epoch, patience = bp_jax.mlp((1, 8, 1), "tanh"), 2, 12
    loss, params = bp_jax.loss_fn(model), model.init(jax.random.key(0))
    config = runs.Config(optimizer="momentum", lr=0.05, schedule="plateau")
    x_val, y_val = x[::2], -jnp.sin(3 * x[::2])
    stopping = bp_jax.early_stopping(
        loss, params, x_val, y_val, steps_per_epoch=per_epoch, patience=patience, epochs=30
    )
    rule = bp_jax.stop_rules(stopping, runs.plateau_rule(config, per_epoch, (loss, x_val, y_val)))
    scales: list[float] = []
    result = bp_jax.fit(
        loss,
        params,
        x,
        jnp.sin(3 * x),
        steps=60 * per_epoch,
        batch_size=4,
        key=jax.random.key(1),
        optimizer=runs.optimizer(config, 60 * per_epoch, per_epoch),
        stop_rule=rule,
        chunk_size=per_epoch,
        on_chunk=lambda chunk: scales.append(float(chunk.opt_state[1].scale)),
    )
    state = result.rule_state[0]
    epochs = int(state.best_epoch) + 1 + patience
    assert result.stopped_at == epochs * per_epoch - 1 and result.losses[-1] < result.losses[0]
    plateau = optax.contrib.reduce_on_plateau(**runs.PLATEAU, accumulation_size=1)
    update = jax.jit(lambda state, value: plateau.update(None, state, value=value)[1])
    host, expected = plateau.init(params), []
    for value in np.asarray(state.losses[:epochs]):
        host = update(host, value)
        expected.append(float(host.scale))
    assert expected[-1] < 1 and scales == pytest.approx(expected[: len(scales)], rel=1e-6)
    assert float(result.opt_state[1].scale) == pytest.approx(expected[-1], rel=1e-6)
    with pytest.raises(TypeError, match=re.escape("stop_rules takes one or more bp_jax.StopRule, got ['dict']")):
        bp_jax.stop_rules({})


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--early-stopping", "--validation-fraction", "0"], "between 0 and 1 (both excluded), got '0'"),
        (["--early-stopping", "--validation-fraction", "1"], "between 0 and 1 (both excluded), got '1'"),
        (["--early-stopping", "--patience", "0"], "--patience: expected a positive integer, got '0'"),
        (["--patience", "3"], "--patience set how --early-stopping stops; add --early-stopping"),
        (["--validation-fraction", "0.2"], "--validation-fraction set how --early-stopping stops"),
        (
            ["--early-stopping", "--validation-fraction", "0.95"],
            "--validation-fraction 0.95 leaves 18 training and 336 validation rows of 354; each needs at least a "
            "batch (32 rows)",
        ),
        (["--early-stopping", "--validation-fraction", "0.05"], "leaves 336 training and 18 validation rows"),
    ],
)
def test_bad_early_stopping_flags_are_one_line_exit_2_and_write_nothing(tmp_path, flags, message):
    out = tmp_path / "run"
    result = run_cli("train", "--out", out, "--epochs", 1, *flags, check=False)
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not out.exists()


def test_validation_rows_keep_the_class_proportions_by_largest_remainders():
    y = np.repeat([0, 1, 2], [7, 7, 6])[np.random.default_rng(0).permutation(20)]
    train_rows, held = data.validation_rows(y, 0.25, seed=4, classify=True)
    assert np.bincount(y[held]).tolist() == [2, 2, 1]  # shares 1.75, 1.75, 1.5 of 5 rows
    assert sorted([*train_rows, *held]) == list(range(20))
    other = data.validation_rows(y, 0.25, seed=5, classify=True)[1]
    assert not np.array_equal(held, other)
    train_rows, held = data.validation_rows(np.zeros(40), 0.1, seed=4, classify=False)
    assert len(held) == 4 and sorted([*train_rows, *held]) == list(range(40))

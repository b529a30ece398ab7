"""`bp-jax train --early-stopping`: validation rows carved from the training rows, scored inside the loop, the run
ending with the best params; resumed bit for bit; bad flags refused before anything is written."""

import chex
import numpy as np
import pytest
from helpers import assert_same_state, checkpoint_steps, run_cli, strict_json

from bp_jax.cli import data, runs, train

#: diabetes: 354 training rows, 35 of them for validation, 319 left: 9 steps an epoch. A wide net at a high rate
#: over-fits within a few epochs, so the rule stops it long before 40 epochs.
ARGS = ("--early-stopping", "--patience", 3, "--hidden", 32, "--lr", 0.1)
EPOCHS, PER_EPOCH, PATIENCE = 40, 319 // 32, 3


@pytest.fixture(scope="module")
def stopped(tmp_path_factory):
    """A run the rule stopped: its folder and metrics."""
    out = tmp_path_factory.mktemp("early") / "run"
    run_cli("train", "--out", out, "--epochs", EPOCHS, *ARGS)
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
    split, (x_val, y_val) = train._validation_split(config, split)
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
        (["--early-stopping", "--ensemble", "2"], "does not combine with --ensemble 2"),
        (["--early-stopping", "--schedule", "plateau"], "does not combine with --early-stopping"),
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

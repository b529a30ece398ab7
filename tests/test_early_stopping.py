"""`bp_jax.early_stopping`: the validation set scored inside `fit`'s compiled loop, against a Python loop of epochs
scored on the host."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import bp_jax

STEPS_PER_EPOCH, BATCH, EPOCHS = 4, 8, 30
MODEL = bp_jax.mlp((3, 16, 1), "tanh")
LOSS = bp_jax.loss_fn(MODEL)  # one function object: one compiled loop for every test


def problem(dtype=jnp.float32):
    """A net that over-fits noise (random targets, so the validation loss falls, then rises): (params, x, y, x_val,
    y_val)."""
    params_key, x_key, y_key = jax.random.split(jax.random.key(3), 3)
    x, y = jax.random.normal(x_key, (48, 3), dtype), jax.random.normal(y_key, (48, 1), dtype)
    params = jax.tree.map(lambda leaf: leaf.astype(dtype), MODEL.init(params_key))
    return params, x[:32], y[:32], x[32:], y[32:]


def rule_for(params, x_val, y_val, **settings):
    settings = {"steps_per_epoch": STEPS_PER_EPOCH, "patience": 2, "epochs": EPOCHS} | settings
    return bp_jax.early_stopping(LOSS, params, x_val, y_val, **settings)


def run(rule, params, x, y, steps=STEPS_PER_EPOCH * EPOCHS, **options):
    options = {"batch_size": BATCH, "key": jax.random.key(1), "lr": 0.3} | options
    return bp_jax.fit(LOSS, params, x, y, steps=steps, stop_rule=rule, **options)


def test_early_stopping_equals_a_python_loop_of_epochs_scored_on_the_host():
    with jax.enable_x64(True):
        params, x, y, x_val, y_val = problem(jnp.float64)
        patience = 3
        result = run(rule_for(params, x_val, y_val, patience=patience), params, x, y, chunk_size=7)
        looped, best, best_loss, best_epoch, count, curve = params, params, np.inf, -1, 0, []
        for epoch in range(EPOCHS):
            looped = run(None, looped, x, y, steps=STEPS_PER_EPOCH, start_step=epoch * STEPS_PER_EPOCH).params
            curve.append(float(LOSS(looped, x_val, y_val)))
            if curve[-1] < best_loss:
                best, best_loss, best_epoch, count = looped, curve[-1], epoch, 0
            else:
                count += 1
            if count >= patience:
                break
        state = result.rule_state
        assert 0 < best_epoch < epoch < EPOCHS - 1  # it improved, then stopped before the run's end
        assert (result.stopped_at, result.step) == ((epoch + 1) * STEPS_PER_EPOCH - 1, (epoch + 1) * STEPS_PER_EPOCH)
        assert (int(state.best_epoch), int(state.count)) == (best_epoch, patience)
        chex.assert_trees_all_close(state.params, best, rtol=1e-10, atol=1e-10)
        chex.assert_trees_all_close(result.params, looped, rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(state.losses[: epoch + 1], curve, rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose((state.best_loss, state.loss), (best_loss, curve[-1]), rtol=1e-10, atol=1e-10)
        assert np.all(np.isnan(state.losses[epoch + 1 :]))


def test_a_new_validation_set_or_patience_compiles_nothing_and_resuming_gives_the_same_bits(count_compilations):
    params, x, y, x_val, y_val = problem()
    whole = run(rule_for(params, x_val, y_val), params, x, y)
    other_rule = rule_for(params, jnp.flip(x_val, 0), y_val, patience=30)
    with count_compilations() as compiled:
        other = run(other_rule, params, x, y)
    assert compiled == []
    assert other.stopped_at == -1 and whole.stopped_at >= 0
    first = run(rule_for(params, x_val, y_val), params, x, y, steps=whole.step // 2 + 1)  # mid-epoch, still running
    resumed = rule_for(params, x_val, y_val)._replace(init=first.rule_state)
    rest = run(resumed, first.params, x, y, start_step=first.step, steps=STEPS_PER_EPOCH * EPOCHS - first.step)
    assert first.stopped_at == -1 and (rest.stopped_at, rest.step) == (whole.stopped_at, whole.step)
    chex.assert_trees_all_equal((rest.params, rest.rule_state), (whole.params, whole.rule_state))


@pytest.mark.slow
def test_each_ensemble_member_keeps_its_own_best_params_and_stops_on_its_own():
    _, x, y, x_val, y_val = problem()
    members = 3
    stacked = jax.vmap(MODEL.init)(jax.random.split(jax.random.key(4), members))
    keys = jax.random.split(jax.random.key(1), members)
    result = bp_jax.fit_ensemble(
        LOSS,
        stacked,
        x,
        y,
        steps=STEPS_PER_EPOCH * EPOCHS,
        lr=0.3,
        batch_size=BATCH,
        key=keys,
        stop_rule=rule_for(stacked, x_val, y_val, members=members),
    )
    for i in range(members):
        member = lambda tree, i=i: jax.tree.map(lambda leaf: leaf[i], tree)
        own = run(rule_for(member(stacked), x_val, y_val), member(stacked), x, y, key=keys[i])
        assert result.stopped_at[i] == own.stopped_at
        chex.assert_trees_all_close(member(result.rule_state), own.rule_state, rtol=1e-5, atol=1e-6)
    assert len(set(result.stopped_at.tolist())) > 1  # the members stop at their own epochs


def test_a_resumed_ensemble_keeps_the_members_its_rule_stopped_frozen_with_the_bits_of_one_run():
    """Resumed at step 16: member 0 stopped after step 11, before it, member 1 stops after step 31; then resumed
    again after both stopped, which runs nothing."""
    with jax.enable_x64(True):
        _, x, y, x_val, y_val = problem(jnp.float64)
        stacked = jax.tree.map(
            lambda leaf: leaf.astype(jnp.float64), jax.vmap(MODEL.init)(jax.random.split(jax.random.key(5), 2))
        )
        rule = rule_for(stacked, x_val, y_val, members=2)
        options = {"lr": 0.3, "batch_size": BATCH, "key": jax.random.split(jax.random.key(1), 2)}
        run_members = lambda params, rule, **more: bp_jax.fit_ensemble(
            LOSS, params, x, y, stop_rule=rule, **options | more
        )
        whole = run_members(stacked, rule, steps=STEPS_PER_EPOCH * EPOCHS)
        first = run_members(stacked, rule, steps=16)
        assert first.stopped_at.tolist() == [11, -1] and whole.stopped_at.tolist() == [11, 31]
        resumed = {"start_step": first.step, "stopped_at": first.stopped_at, "opt_state": first.opt_state}
        rest = run_members(
            first.params, rule._replace(init=first.rule_state), steps=STEPS_PER_EPOCH * EPOCHS - 16, **resumed
        )
        assert (rest.step, rest.stopped_at.tolist()) == (whole.step, whole.stopped_at.tolist())
        np.testing.assert_array_equal(np.concatenate([first.losses, rest.losses]), whole.losses)  # NaN once stopped
        chex.assert_trees_all_equal((rest.params, rest.rule_state), (whole.params, whole.rule_state))
        done = {"start_step": whole.step, "stopped_at": whole.stopped_at}
        after = run_members(whole.params, rule._replace(init=whole.rule_state), steps=10, **done)
        assert (after.step, after.losses.shape, after.stopped_at.tolist()) == (whole.step, (0, 2), [11, 31])
        chex.assert_trees_all_equal((after.params, after.rule_state), (whole.params, whole.rule_state))


def test_one_model_resumed_after_its_rule_stopped_it_runs_nothing():
    params, x, y, x_val, y_val = problem()
    whole = run(rule_for(params, x_val, y_val), params, x, y)
    rule = rule_for(params, x_val, y_val)._replace(init=whole.rule_state)
    after = run(rule, whole.params, x, y, steps=8, start_step=whole.step, stopped_at=whole.stopped_at)
    assert (after.step, after.losses.shape, after.stopped_at) == (whole.step, (0,), whole.stopped_at)
    chex.assert_trees_all_equal((after.params, after.rule_state), (whole.params, whole.rule_state))
    with pytest.raises(ValueError, match="stopped_at resumes a stop rule's run: pass the stop_rule too"):
        run(None, whole.params, x, y, steps=8, start_step=whole.step, stopped_at=whole.stopped_at)


@pytest.mark.parametrize(
    ("stopped_at", "message"),
    [
        (np.array([3]), r"stopped_at must be one step per member \(2\), −1 or before start_step \(8\), got \[3\]"),
        (
            np.array([-1, 8]),
            r"stopped_at must be one step per member \(2\), −1 or before start_step \(8\), got \[-1, 8\]",
        ),
        (np.array([1.0, 2.0]), "stopped_at must be integers"),
    ],
)
def test_stop_markers_that_do_not_fit_the_members_or_the_start_step_are_errors_naming_them(stopped_at, message):
    params, x, y, x_val, y_val = problem()
    stacked = jax.tree.map(lambda leaf: jnp.stack([leaf, leaf]), params)
    error = TypeError if stopped_at.dtype.kind == "f" else ValueError
    with pytest.raises(error, match=message):
        bp_jax.fit_ensemble(
            LOSS,
            stacked,
            x,
            y,
            steps=1,
            lr=0.3,
            start_step=8,
            stopped_at=stopped_at,
            stop_rule=rule_for(stacked, x_val, y_val, members=2),
        )


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ({"patience": 0}, "patience must be an integer ≥ 1, got 0"),
        ({"steps_per_epoch": 2.5}, "steps_per_epoch must be an integer ≥ 1, got 2.5"),
        ({"min_delta": -0.1}, "min_delta must be a finite number ≥ 0, got -0.1"),
        ({"epochs": -1}, "epochs must be an integer ≥ 0, got -1"),
    ],
)
def test_bad_settings_are_value_errors_naming_the_value(setting, message):
    params, _, _, x_val, y_val = problem()
    with pytest.raises(ValueError, match=message):
        rule_for(params, x_val, y_val, **setting)


def test_a_stop_rule_flag_that_is_not_a_bool_is_a_type_error():
    params, x, y, _, _ = problem()
    rule = bp_jax.StopRule(lambda state, step, loss, *, params: (state, False), 0, touches_params=1)
    with pytest.raises(TypeError, match=r"StopRule\.touches_params must be True or False, got 1"):
        run(rule, params, x, y, steps=1)

import chex
import jax
import jax.numpy as jnp
import optax
import pytest

import bp_jax
from bp_jax import documents, manual


def seed_problem(seed=0, batch=documents.SEED_BATCH):
    return documents.seed_problem(jax.random.key(seed), batch)


def copy(tree):
    return jax.tree.map(jnp.array, tree)


def test_sgd_step_is_w_minus_lr_times_the_manual_gradient(precision):
    model, params, x, y = seed_problem()
    loss, grads = manual.value_and_grad(model)(params, x, y)
    expected = jax.tree.map(lambda w, g: w - 0.05 * g, params, grads)
    new_params, step_loss = bp_jax.sgd_step(bp_jax.loss_fn(model), lr=0.05)(copy(params), x, y)
    chex.assert_trees_all_close((new_params, step_loss), (expected, loss), rtol=precision, atol=precision)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.slow
def test_hand_written_step_equals_optax_sgd_over_150_steps(seed, precision):
    model, params, x, y = seed_problem(seed)
    loss = bp_jax.loss_fn(model)
    optimizer = optax.sgd(0.01)
    hand_params, optax_params = copy(params), copy(params)
    opt_state = optimizer.init(optax_params)
    hand_step, optax_step = bp_jax.sgd_step(loss, 0.01), bp_jax.optax_step(loss, optimizer)
    hand_losses, optax_losses = [], []
    for _ in range(150):
        hand_params, hand_loss = hand_step(hand_params, x, y)
        optax_params, opt_state, optax_loss = optax_step(optax_params, opt_state, x, y)
        hand_losses.append(hand_loss)
        optax_losses.append(optax_loss)
    chex.assert_trees_all_close(hand_losses, optax_losses, rtol=precision, atol=precision)
    chex.assert_trees_all_close(hand_params, optax_params, rtol=precision, atol=precision)
    assert hand_losses[-1] < hand_losses[0]


def test_optax_step_takes_any_gradient_transformation():
    model, params, x, y = seed_problem()
    optimizer = optax.adam(1e-2)
    step = bp_jax.optax_step(bp_jax.loss_fn(model), optimizer)
    state = optimizer.init(params)
    first = None
    for _ in range(30):
        params, state, value = step(params, state, x, y)
        first = value if first is None else first
    assert value < first
    assert int(state[0].count) == 30


@pytest.mark.parametrize("lr", [0, -0.1, float("nan"), float("inf"), -float("inf")])
def test_bad_learning_rates_are_refused(lr):
    model, *_ = seed_problem()
    with pytest.raises(ValueError, match="lr must be finite and > 0"):
        bp_jax.sgd_step(bp_jax.loss_fn(model), lr)


@pytest.mark.parametrize("lr", ["0.1", None, True])
def test_non_numeric_learning_rates_are_refused(lr):
    model, *_ = seed_problem()
    with pytest.raises(TypeError, match="lr must be a real number"):
        bp_jax.sgd_step(bp_jax.loss_fn(model), lr)


def test_optax_step_refuses_non_optimizers():
    model, *_ = seed_problem()
    with pytest.raises(TypeError, match=r"optax\.GradientTransformation"):
        bp_jax.optax_step(bp_jax.loss_fn(model), 0.01)


def test_a_failed_step_leaves_params_intact():
    model, params, x, y = seed_problem()
    before = copy(params)
    optimizer = optax.sgd(0.01)
    state = optimizer.init(params)
    with pytest.raises(ValueError, match="expects x with 10 features"):
        bp_jax.sgd_step(bp_jax.loss_fn(model), 0.01)(params, x[:, :9], y)
    with pytest.raises(ValueError, match="pred has shape"):
        bp_jax.optax_step(bp_jax.loss_fn(model), optimizer)(params, state, x, y[:, 0])
    chex.assert_trees_all_equal(params, before)  # still readable: nothing was donated


def test_steps_donate_their_buffers():
    model, params, x, y = seed_problem()
    optimizer = optax.sgd(0.01, momentum=0.9)
    state = optimizer.init(params)
    new_params, _ = bp_jax.sgd_step(bp_jax.loss_fn(model), 0.01)(params, x, y)
    assert all(leaf.is_deleted() for leaf in jax.tree.leaves(params))
    _, new_state, _ = bp_jax.optax_step(bp_jax.loss_fn(model), optimizer)(new_params, state, x, y)
    assert all(leaf.is_deleted() for leaf in jax.tree.leaves((new_params, state)))
    assert not any(leaf.is_deleted() for leaf in jax.tree.leaves(new_state))

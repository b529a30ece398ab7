import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import bp_jax


def problem(seed=0, n=64, features=10):
    model = bp_jax.Sequential(bp_jax.Linear(features, 5), bp_jax.ReLU(), bp_jax.Linear(5, 1))
    params_key, x_key, y_key = jax.random.split(jax.random.key(seed), 3)
    x = jax.random.normal(x_key, (n, features))
    return model, model.init(params_key), x, jax.random.normal(y_key, (n, 1))


def copy(tree):
    return jax.tree.map(jnp.array, tree)


@pytest.mark.parametrize("batch_size", [None, 16, 1])
def test_fit_equals_sgd_step_in_a_python_loop(batch_size, precision):
    model, params, x, y = problem()
    loss, key = bp_jax.loss_fn(model), jax.random.key(42)
    result = bp_jax.fit(loss, params, x, y, steps=120, batch_size=batch_size, lr=0.05, key=key, chunk_size=50)
    step, looped, losses = bp_jax.sgd_step(loss, 0.05), copy(params), []
    for i in range(120):
        rows = slice(None) if batch_size is None else bp_jax.minibatch_indices(key, i, len(x), batch_size)
        looped, value = step(looped, x[rows], y[rows])
        losses.append(value)
    chex.assert_trees_all_close(result.losses, jnp.stack(losses), rtol=precision, atol=precision)
    chex.assert_trees_all_close(result.params, looped, rtol=precision, atol=precision)
    assert result.step == 120 and result.opt_state is None


@pytest.mark.parametrize("optimizer", [optax.sgd(0.05), optax.sgd(0.02, momentum=0.9, nesterov=True),
                                       optax.adam(1e-2)], ids=["sgd", "nesterov", "adam"])
def test_fit_equals_optax_step_in_a_python_loop(optimizer):
    model, params, x, y = problem(1)
    loss, key = bp_jax.loss_fn(model), jax.random.key(7)
    result = bp_jax.fit(loss, params, x, y, steps=100, batch_size=8, optimizer=optimizer, key=key, chunk_size=30)
    step, looped, state, losses = bp_jax.optax_step(loss, optimizer), copy(params), optimizer.init(params), []
    for i in range(100):
        rows = bp_jax.minibatch_indices(key, i, len(x), 8)
        looped, state, value = step(looped, state, x[rows], y[rows])
        losses.append(value)
    chex.assert_trees_all_close(result.losses, jnp.stack(losses), rtol=1e-5, atol=1e-6)
    chex.assert_trees_all_close((result.params, result.opt_state), (looped, state), rtol=1e-5, atol=1e-6)
    assert result.losses[-20:].mean() < result.losses[:20].mean()


def test_same_seed_is_bit_identical_and_chunking_does_not_change_anything():
    model, params, x, y = problem(2)
    loss = bp_jax.loss_fn(model)
    runs = [bp_jax.fit(loss, params, x, y, steps=300, batch_size=10, lr=0.05, key=jax.random.key(3),
                       chunk_size=chunk) for chunk in (300, 300, 64, 7)]
    for other in runs[1:]:
        chex.assert_trees_all_equal(other.params, runs[0].params)
        np.testing.assert_array_equal(other.losses, runs[0].losses)
    different = bp_jax.fit(loss, params, x, y, steps=300, batch_size=10, lr=0.05, key=jax.random.key(4))
    assert not np.array_equal(different.losses, runs[0].losses)


def test_resuming_from_a_result_equals_one_uninterrupted_run():
    model, params, x, y = problem(3)
    loss, key, optimizer = bp_jax.loss_fn(model), jax.random.key(0), optax.sgd(0.02, momentum=0.9)
    whole = bp_jax.fit(loss, params, x, y, steps=250, batch_size=16, optimizer=optimizer, key=key)
    first = bp_jax.fit(loss, params, x, y, steps=110, batch_size=16, optimizer=optimizer, key=key)
    rest = bp_jax.fit(loss, first.params, x, y, steps=140, batch_size=16, optimizer=optimizer, key=key,
                      opt_state=first.opt_state, start_step=first.step)
    chex.assert_trees_all_equal(rest.params, whole.params)
    np.testing.assert_array_equal(jnp.concatenate([first.losses, rest.losses]), whole.losses)
    assert rest.step == 250


def test_every_example_is_seen_once_per_epoch():
    key = jax.random.key(5)
    epoch = jnp.concatenate([bp_jax.minibatch_indices(key, i, 20, 6) for i in range(3)])
    assert len(set(epoch.tolist())) == 18  # 3 full batches of 6 from 20 rows, none repeated
    next_epoch = bp_jax.minibatch_indices(key, 3, 20, 6)
    assert not np.array_equal(next_epoch, epoch[:6])


def test_on_chunk_reports_progress_between_chunks():
    model, params, x, y = problem()
    seen = []
    bp_jax.fit(bp_jax.loss_fn(model), params, x, y, steps=25, lr=0.01, chunk_size=10,
               on_chunk=lambda r: seen.append((r.step, r.losses.shape[0])))
    assert seen == [(10, 10), (20, 10), (25, 5)]


def test_a_non_finite_loss_stops_with_the_last_finite_params():
    model, params, x, y = problem()
    loss = bp_jax.loss_fn(model)
    with pytest.raises(bp_jax.NonFiniteLoss, match=r"non-finite at step (\d+)") as info:
        bp_jax.fit(loss, params, x, y * 1e4, steps=500, lr=10.0, chunk_size=64)
    stopped = info.value
    assert 0 < stopped.step < 500 and stopped.result.step == stopped.step
    assert all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in jax.tree.leaves(stopped.result.params))
    assert bool(jnp.all(jnp.isfinite(stopped.result.losses[:-1])))
    # The returned params are exactly those a Python loop holds before the failing step.
    looped = bp_jax.fit(loss, params, x, y * 1e4, steps=stopped.step, lr=10.0).params
    chex.assert_trees_all_equal(stopped.result.params, looped)


def test_fit_does_not_donate_the_callers_params():
    model, params, x, y = problem()
    bp_jax.fit(bp_jax.loss_fn(model), params, x, y, steps=5, lr=0.01)
    assert not any(leaf.is_deleted() for leaf in jax.tree.leaves(params))


@pytest.mark.parametrize("kwargs, message", [
    ({}, "exactly one of lr"),
    ({"lr": 0.1, "optimizer": optax.sgd(0.1)}, "exactly one of lr"),
    ({"lr": -1.0}, "lr must be finite and > 0"),
    ({"lr": 0.1, "steps": -1}, "steps must be a non-negative int"),
    ({"lr": 0.1, "batch_size": 65, "key": jax.random.key(0)}, r"batch_size must be an int in \[1, 64\]"),
    ({"lr": 0.1, "batch_size": 0, "key": jax.random.key(0)}, r"batch_size must be an int in \[1, 64\]"),
    ({"lr": 0.1, "batch_size": 8}, "needs a PRNG key"),
    ({"lr": 0.1, "chunk_size": 0}, "chunk_size must be a positive int"),
])
def test_bad_arguments_are_refused(kwargs, message):
    model, params, x, y = problem()
    kwargs = {"steps": 10} | kwargs
    with pytest.raises(ValueError, match=message):
        bp_jax.fit(bp_jax.loss_fn(model), params, x, y, **kwargs)


def test_mismatched_example_counts_are_refused():
    model, params, x, y = problem()
    with pytest.raises(ValueError, match=r"share their leading.*\(64, 10\) and \(63, 1\)"):
        bp_jax.fit(bp_jax.loss_fn(model), params, x, y[:63], steps=1, lr=0.1)

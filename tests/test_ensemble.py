"""fit_ensemble: E models as one program, each member ending where its own `fit` ends."""

import json
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import bp_jax
from bp_jax._contraction import inputs_of, members

MEMBERS = 4


def problem(seed=0, n=48, features=6):
    model = bp_jax.Sequential(bp_jax.Linear(features, 8), bp_jax.Tanh(), bp_jax.Linear(8, 1))
    init_key, x_key, y_key = jax.random.split(jax.random.key(seed), 3)
    params = jax.vmap(model.init)(jax.random.split(init_key, MEMBERS))
    x = jax.random.normal(x_key, (n, features))
    return bp_jax.loss_fn(model), params, x, jnp.sin(x[:, :1]) + 0.1 * jax.random.normal(y_key, (n, 1))


def member(tree, i):
    """Member i's leaves, taken in numpy (eagerly, jax would compile a slice for every leaf's shape)."""
    return jax.tree.map(lambda leaf: np.asarray(leaf)[i], tree)


@pytest.mark.parametrize(
    "batch_size, per_member_keys",
    [(None, False), (12, False), (12, True)],
    ids=["full-batch", "minibatch-shared-key", "minibatch-key-per-member"],
)
@pytest.mark.slow
def test_each_member_equals_its_own_fit_with_the_hand_written_update(batch_size, per_member_keys, precision):
    loss, params, x, y = problem()
    lrs = jnp.asarray([0.003, 0.01, 0.03, 0.1])
    keys = jax.random.split(jax.random.key(7), MEMBERS) if per_member_keys else jax.random.key(7)
    result = bp_jax.fit_ensemble(loss, params, x, y, steps=90, lr=lrs, batch_size=batch_size, key=keys, chunk_size=40)
    assert result.losses.shape == (90, MEMBERS) and result.step == 90
    np.testing.assert_array_equal(result.diverged, [-1] * MEMBERS)
    for i in range(MEMBERS):
        single = bp_jax.fit(
            loss,
            member(params, i),
            x,
            y,
            steps=90,
            lr=float(lrs[i]),
            batch_size=batch_size,
            key=keys[i] if per_member_keys else keys,
        )
        chex.assert_trees_all_close(member(result.params, i), single.params, rtol=precision, atol=precision)
        np.testing.assert_allclose(result.losses[:, i], single.losses, rtol=precision, atol=precision)


@pytest.mark.slow
def test_each_member_equals_its_own_fit_with_an_optax_optimizer(precision):
    loss, params, x, y = problem(1)
    optimizer = optax.sgd(0.02, momentum=0.9)
    keys = jax.random.split(jax.random.key(3), MEMBERS)
    result = bp_jax.fit_ensemble(loss, params, x, y, steps=60, optimizer=optimizer, batch_size=8, key=keys)
    for i in range(MEMBERS):
        single = bp_jax.fit(loss, member(params, i), x, y, steps=60, optimizer=optimizer, batch_size=8, key=keys[i])
        chex.assert_trees_all_close(
            (member(result.params, i), member(result.opt_state, i)),
            (single.params, single.opt_state),
            rtol=precision,
            atol=precision,
        )


@pytest.mark.slow
def test_per_member_learning_rates_through_inject_hyperparams():
    loss, params, x, y = problem(2)
    lrs = jnp.asarray([0.001, 0.01, 0.02, 0.05])
    optimizer = optax.inject_hyperparams(optax.adam)(learning_rate=0.01)
    opt_state = jax.vmap(optimizer.init)(params)
    opt_state.hyperparams["learning_rate"] = lrs
    result = bp_jax.fit_ensemble(loss, params, x, y, steps=40, optimizer=optimizer, opt_state=opt_state)
    for i in range(MEMBERS):
        single = bp_jax.fit(loss, member(params, i), x, y, steps=40, optimizer=optax.adam(float(lrs[i])))
        chex.assert_trees_all_close(member(result.params, i), single.params, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("per_member_keys, inputs", [(False, "shared"), (True, "own")])
def test_the_members_step_is_traced_with_their_minibatch_shared_or_their_own(per_member_keys, inputs):
    """Inside fit_ensemble's step, a layer reading the minibatch every member reads is told it is shared (its
    "auto" contraction: one wide matmul), with a key per member it is the member's own; outside, one model's."""
    loss, params, x, y = problem()
    seen = []

    def recording(params, x, y):
        seen.append(inputs_of(x))
        return loss(params, x, y)

    keys = jax.random.split(jax.random.key(7), MEMBERS) if per_member_keys else jax.random.key(7)
    bp_jax.fit_ensemble(recording, params, x, y, steps=1, lr=0.01, batch_size=12, key=keys)
    assert set(seen) == {inputs} and inputs_of(x) == "model"


@pytest.mark.parametrize("shared, dots", [(True, 1), (False, 0)])
def test_members_take_one_wide_matmul_on_a_shared_input_and_the_sum_on_their_own(shared, dots):
    """mlp((4, 4, 1)) of 3 members on 32 rows: the first layer (16 weights) a matmul when its input is shared, the
    product and sum when it is the members' own; the second (4 weights) the sum either way."""
    model = bp_jax.mlp((4, 4, 1))
    params = jax.vmap(model.init)(jax.random.split(jax.random.key(0), 3))

    def program(params, x):
        with members(shared=x if shared else ()):
            return jax.vmap(model.apply, (0, None))(params, x)

    jaxpr = str(jax.make_jaxpr(program)(params, jnp.ones((32, 4))))
    assert jaxpr.count("dot_general") == (dots if jax.default_backend() == "cpu" else 2)


def test_a_diverging_member_is_frozen_and_reported_while_the_others_carry_on():
    loss, params, x, y = problem(3)
    lrs = jnp.asarray([0.01, 1e36, 0.05, 0.02])
    result = bp_jax.fit_ensemble(loss, params, x, y, steps=50, lr=lrs, batch_size=12, key=jax.random.key(0))
    with pytest.raises(bp_jax.NonFiniteLoss) as info:
        bp_jax.fit(loss, member(params, 1), x, y, steps=50, lr=1e36, batch_size=12, key=jax.random.key(0))
    np.testing.assert_array_equal(result.diverged, [-1, info.value.step, -1, -1])
    chex.assert_trees_all_close(member(result.params, 1), info.value.result.params, rtol=1e-5)
    assert np.isnan(result.losses[info.value.step + 1 :, 1]).all()
    for i in (0, 2, 3):
        single = bp_jax.fit(
            loss, member(params, i), x, y, steps=50, lr=float(lrs[i]), batch_size=12, key=jax.random.key(0)
        )
        chex.assert_trees_all_close(member(result.params, i), single.params, rtol=1e-5, atol=1e-5)


def test_new_learning_rates_do_not_compile_again(count_compilations):
    loss, params, x, y = problem(4)
    bp_jax.fit_ensemble(loss, params, x, y, steps=10, lr=jnp.full(MEMBERS, 0.01), batch_size=8, key=jax.random.key(0))
    new_lrs, key = jnp.asarray([0.1, 0.2, 0.3, 0.4]), jax.random.key(0)  # made outside: their own ops compile once
    with count_compilations() as compiled:
        bp_jax.fit_ensemble(loss, params, x, y, steps=33, lr=new_lrs, batch_size=8, key=key, chunk_size=7)
    assert compiled == []


def test_a_second_ensemble_with_an_optimizer_and_no_state_compiles_nothing(count_compilations):
    loss, params, x, y = problem(6)
    optimizer = optax.sgd(0.1)
    run = lambda: bp_jax.fit_ensemble(
        loss, params, x, y, steps=5, optimizer=optimizer, batch_size=8, key=jax.random.key(0)
    )
    run()
    with count_compilations() as compiled:
        run()
    assert compiled == []


def test_threads_asking_at_once_for_one_configurations_loop_share_one_jitted_function(monkeypatch):
    """GridSearchCV's n_jobs threads start one configuration's loop at once: they must get one jitted function, so
    one compilation (two lru_cache misses at once would build two). The build is slowed so that both ask during it."""
    options = bp_jax._fit_loop.loop_compiler_options
    monkeypatch.setattr(
        bp_jax._fit_loop, "loop_compiler_options", lambda platform: time.sleep(0.2) or options(platform)
    )
    loss = problem()[0]
    both_ready = threading.Barrier(2)

    def build(_):
        both_ready.wait()
        return bp_jax._fit_loop.compiled_loop(loss, None, 8, None, ensemble=True, key_axis=None, group_size=3)

    with ThreadPoolExecutor(2) as pool:
        first, second = pool.map(build, range(2))
    assert first is second


def test_resuming_an_ensemble_is_bit_identical():
    loss, params, x, y = problem(5)
    optimizer = optax.adam(0.01)
    keys = jax.random.split(jax.random.key(1), MEMBERS)
    whole = bp_jax.fit_ensemble(loss, params, x, y, steps=120, optimizer=optimizer, batch_size=8, key=keys)
    first = bp_jax.fit_ensemble(loss, params, x, y, steps=37, optimizer=optimizer, batch_size=8, key=keys)
    rest = bp_jax.fit_ensemble(
        loss,
        first.params,
        x,
        y,
        steps=83,
        optimizer=optimizer,
        batch_size=8,
        key=keys,
        opt_state=first.opt_state,
        start_step=first.step,
        chunk_size=10,
    )
    chex.assert_trees_all_equal((rest.params, rest.opt_state), (whole.params, whole.opt_state))
    np.testing.assert_array_equal(np.concatenate([first.losses, rest.losses]), whole.losses)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"lr": jnp.ones(3)}, r"one value or one per member \(4\)"),
        ({"lr": -0.1}, "lr must be finite and > 0"),
        (
            {"lr": 0.1, "batch_size": 8, "key": jax.random.split(jax.random.key(0), 3)},
            r"G stacked keys, G dividing the 4 members.*\(3,\)",
        ),
    ],
)
def test_bad_ensemble_arguments_are_refused(kwargs, message):
    loss, params, x, y = problem()
    with pytest.raises(ValueError, match=message):
        bp_jax.fit_ensemble(loss, params, x, y, steps=3, **kwargs)


@pytest.mark.parametrize(
    "method, opt_state, message",
    [
        ({"lr": 0.1}, lambda params: jax.vmap(optax.sgd(0.1).init)(params), "the hand-written SGD .* has none"),
        (
            {"optimizer": optax.adam(0.01)},
            lambda params: jax.vmap(optax.sgd(0.1, momentum=0.9).init)(params),
            "opt_state does not match the optimizer: optimizer.init.* gives .*ScaleByAdamState.*got .*TraceState",
        ),
        (
            {"optimizer": optax.adam(0.01)},
            lambda params: optax.adam(0.01).init(member(params, 0)),
            r"opt_state\[0\].count has shape \(\); optimizer.init\(params\) gives \(4,\)",
        ),
    ],
    ids=["with-lr", "another-optimizers-state", "one-members-state"],
)
def test_an_opt_state_that_is_not_the_optimizers_is_refused(method, opt_state, message):
    loss, params, x, y = problem()
    with pytest.raises(ValueError, match=message):
        bp_jax.fit_ensemble(loss, params, x, y, steps=3, opt_state=opt_state(params), **method)


def test_zero_steps_give_losses_of_shape_0_by_members():
    loss, params, x, y = problem()
    result = bp_jax.fit_ensemble(loss, params, x, y, steps=0, lr=0.1)
    assert result.losses.shape == (0, MEMBERS) and result.step == 0
    chex.assert_trees_all_equal(result.params, params)


def test_params_without_a_common_member_axis_are_refused():
    loss, params, x, y = problem()
    params = (params[0], {}, jax.tree.map(lambda leaf: leaf[:2], params[2]))
    with pytest.raises(ValueError, match="same leading member axis"):
        bp_jax.fit_ensemble(loss, params, x, y, steps=3, lr=0.1)


@pytest.mark.slow  # a process of its own, 8 devices
def test_members_split_over_8_devices_equal_one_device():
    env = dict(os.environ, JAX_NUM_CPU_DEVICES="8")
    worker = Path(__file__).with_name("ensemble_mesh_worker.py")
    done = subprocess.run([sys.executable, str(worker)], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout)
    assert report["devices_holding_params"] == 8
    assert report["max_abs_difference"] < 1e-6
    assert report["own_rows_max_abs_difference"] < 1e-6
    assert report["grouped_max_abs_difference"] < 1e-6
    assert report["stopped_at"] == report["stopped_at_one_device"]  # the stop rule ran with the own rows
    assert 0 < sum(step >= 0 for step in report["stopped_at"]) < 16  # some members stopped, not all
    np.testing.assert_array_equal(report["diverged"], report["diverged_one_device"])
    assert "do not split evenly" in report["indivisible"]


@pytest.mark.parametrize(
    "lr, error, message",
    [
        (True, TypeError, "lr must be real numbers"),
        ("0.1", TypeError, "lr must be real numbers"),
        (jnp.ones((MEMBERS, 1)), ValueError, r"got shape \(4, 1\)"),
        (1e40, ValueError, "lr must be finite and > 0 in float32"),
    ],
)
def test_ensemble_learning_rates_are_checked_like_fits(lr, error, message):
    loss, params, x, y = problem()
    with pytest.raises(error, match=message):
        bp_jax.fit_ensemble(loss, params, x, y, steps=3, lr=lr)


def test_an_ensemble_key_that_is_not_a_prng_key_is_a_type_error():
    loss, params, x, y = problem()
    with pytest.raises(TypeError, match="key must be a PRNG key"):
        bp_jax.fit_ensemble(loss, params, x, y, steps=3, lr=0.1, batch_size=8, key=0)


@pytest.mark.slow
def test_members_on_their_own_rows_end_where_fit_on_those_rows_ends(precision):
    loss, params, *data = problem()
    x, y = map(np.asarray, data)  # each member's rows taken in numpy: no program per row count
    counts = np.array([48, 30, 33, 17])
    rows = np.stack([np.random.default_rng(i).permutation(48) for i in range(MEMBERS)])
    keys = jax.random.split(jax.random.key(3), MEMBERS)
    lrs = jnp.asarray([0.003, 0.01, 0.03, 0.1])
    result = bp_jax.fit_ensemble(
        loss, params, x, y, steps=50, lr=lrs, batch_size=8, key=keys, rows=rows, row_counts=counts, chunk_size=20
    )
    for i in range(MEMBERS):
        mine = rows[i, : counts[i]]
        alone = bp_jax.fit(
            loss, member(params, i), x[mine], y[mine], steps=50, lr=float(lrs[i]), batch_size=8, key=keys[i]
        )
        chex.assert_trees_all_close(member(result.params, i), alone.params, rtol=precision, atol=precision)
        np.testing.assert_allclose(result.losses[:, i], alone.losses, rtol=precision, atol=precision)


@pytest.mark.parametrize("own_rows", [False, True])
@pytest.mark.slow
def test_members_in_groups_end_where_fit_on_their_groups_key_and_rows_ends(own_rows, precision):
    """Two groups of two: members 0, 1 read group 0's minibatches (key 0, rows 0), members 2, 3 group 1's."""
    loss, params, *data = problem()
    x, y = map(np.asarray, data)  # each group's rows taken in numpy: no program per row count
    keys = jax.random.split(jax.random.key(5), 2)
    rows = np.stack([np.random.default_rng(i).permutation(48) for i in range(2)])
    counts = np.array([41, 23])
    lrs = jnp.asarray([0.003, 0.1, 0.01, 0.03])
    by_group = {"rows": rows, "row_counts": counts} if own_rows else {}
    result = bp_jax.fit_ensemble(
        loss, params, x, y, steps=50, lr=lrs, batch_size=8, key=keys, chunk_size=20, **by_group
    )
    for i in range(MEMBERS):
        group = i // 2
        mine = rows[group, : counts[group]] if own_rows else np.arange(48)
        alone = bp_jax.fit(
            loss, member(params, i), x[mine], y[mine], steps=50, lr=float(lrs[i]), batch_size=8, key=keys[group]
        )
        chex.assert_trees_all_close(member(result.params, i), alone.params, rtol=precision, atol=precision)
        np.testing.assert_allclose(result.losses[:, i], alone.losses, rtol=precision, atol=precision)


def test_keys_and_rows_that_group_the_members_differently_are_refused():
    loss, params, x, y = problem()
    with pytest.raises(ValueError, match="group the 4 members alike: 2 stacked keys but 4 row sets"):
        bp_jax.fit_ensemble(
            loss,
            params,
            x,
            y,
            steps=3,
            lr=0.1,
            batch_size=8,
            key=jax.random.split(jax.random.key(0), 2),
            rows=np.zeros((MEMBERS, 48), int),
            row_counts=np.full(MEMBERS, 48),
        )


@pytest.mark.slow
def test_resuming_members_on_their_own_rows_is_bit_identical():
    loss, params, x, y = problem()
    rows, counts = np.tile(np.arange(48), (MEMBERS, 1)), np.array([40, 48, 20, 9])
    run = lambda p, steps, start: bp_jax.fit_ensemble(
        loss,
        p,
        x,
        y,
        steps=steps,
        start_step=start,
        lr=0.05,
        batch_size=9,
        key=jax.random.key(0),
        rows=rows,
        row_counts=counts,
    )
    whole, first = run(params, 40, 0), run(params, 17, 0)
    chex.assert_trees_all_equal(run(first.params, 23, 17).params, whole.params)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"rows": np.zeros((MEMBERS, 48), int)}, "come together"),
        ({"rows": np.zeros((MEMBERS, 48), int), "row_counts": np.full(MEMBERS, 48), "batch_size": None}, "batch_size"),
        ({"rows": np.zeros((3, 48), int), "row_counts": np.full(3, 48)}, "shape"),
        ({"rows": np.zeros((MEMBERS, 48)), "row_counts": np.full(MEMBERS, 48)}, "integers"),
        ({"rows": np.zeros((MEMBERS, 48), int), "row_counts": np.full(MEMBERS, 4)}, r"\[8, 48\]"),
        ({"rows": np.full((MEMBERS, 48), 48), "row_counts": np.full(MEMBERS, 48)}, "index x's 48"),
        (
            {"rows": np.zeros((MEMBERS, 48), int), "row_counts": np.full(MEMBERS, 48), "padding": 48},
            r"padding must lie in \[0, row count\)",
        ),
    ],
)
def test_bad_member_rows_are_refused(kwargs, message):
    loss, params, x, y = problem()
    arguments = {"batch_size": 8, "key": jax.random.key(0)} | kwargs
    with pytest.raises((ValueError, TypeError), match=message):
        bp_jax.fit_ensemble(loss, params, x, y, steps=3, lr=0.1, **arguments)

"""fit_ensemble in parts: on CPU the members are split into equal parts, each part's call of the one compiled loop made
from its own thread; every member ends where it ends in one call."""

import functools
import os
import subprocess
import sys
from pathlib import Path

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import bp_jax
from bp_jax import _fit, _fit_loop
from bp_jax._fit_loop import InParts, member_parts

MEMBERS = 4


@pytest.fixture
def parts_used(monkeypatch):
    """Every ensemble split into as many parts as divide it, up to 4 (a 4-core machine, no least work); yields the
    part counts `fit_ensemble` chose, one a call."""
    chosen: list[int] = []
    monkeypatch.setattr(_fit, "core_count", lambda: 4)
    monkeypatch.setattr(_fit_loop, "MIN_PART_STEP_WORK", 0)
    monkeypatch.setattr(_fit_loop, "MIN_PART_CALL_WORK", 0)
    monkeypatch.setattr(_fit, "member_parts", lambda *args: chosen.append(member_parts(*args)) or chosen[-1])
    return chosen


def in_one_call(monkeypatch, fit):
    """`fit()` with the members in one part."""
    with monkeypatch.context() as patch:
        patch.setattr(_fit, "member_parts", lambda *args: 1)
        return fit()


def problem(dropout=0.0, n=48, features=6):
    layers = [bp_jax.Linear(features, 8), bp_jax.Tanh()] + ([bp_jax.Dropout(dropout)] if dropout else [])
    model = bp_jax.Sequential(*layers, bp_jax.Linear(8, 1))
    init_key, x_key, y_key = jax.random.split(jax.random.key(0), 3)
    params = jax.vmap(model.init)(jax.random.split(init_key, MEMBERS))
    x = jax.random.normal(x_key, (n, features))
    return model, params, x, jnp.sin(x[:, :1]) + 0.1 * jax.random.normal(y_key, (n, 1))


def test_the_rule_splits_evenly_into_at_most_the_cores_and_only_where_the_work_repays_it():
    seed = 32 * 55  # a seed MLP member's multiply-adds a step: 32 rows, 55 weights
    assert member_parts(256, seed, 1000, "cpu", 2) == 2
    assert member_parts(256, seed, 1000, "cpu", 16) == 16
    assert member_parts(256, seed, 1000, "gpu", 2) == 1
    assert member_parts(6, 8 * seed, 1000, "cpu", 4) == 3  # 2 units a part, as with 4 parts (padded): the fewer
    assert member_parts(7, 8 * seed, 1000, "cpu", 2) == 2  # 4 and 3 units, the last part padded with a copy
    assert member_parts(255, seed, 1000, "cpu", 2) == 2
    assert member_parts(32, seed, 1000, "cpu", 2) == 2  # 16 members a part
    assert member_parts(16, seed, 1000, "cpu", 2) == 1  # 8 sharing a minibatch: too little work a step
    assert member_parts(16, 2 * seed, 1000, "cpu", 2) == 2  # 8 drawing their own minibatches (twice the work)
    assert member_parts(256, seed, 10, "cpu", 2) == 1  # 10 steps a call: too little to repay the parts
    assert member_parts(256, seed, 20, "cpu", 2) == 2
    assert member_parts(1, seed, 1000, "cpu", 2) == 1


@pytest.mark.parametrize(
    "setting",
    ["full batch, SGD", "own keys and rows, adam", "groups of two keys", "dropout, early stopping"],
)
def test_members_in_parts_end_where_they_end_in_one_call(setting, parts_used, monkeypatch):
    with jax.enable_x64(True):
        model, params, x, y = problem(dropout=0.2 if "dropout" in setting else 0.0)
        loss = bp_jax.loss_fn(model)
        kwargs = {"steps": 60, "chunk_size": 25}
        if setting == "full batch, SGD":
            kwargs |= {"lr": jnp.asarray([0.003, 0.01, 0.03, 0.1])}
        elif setting == "own keys and rows, adam":
            rows = np.stack([np.random.default_rng(i).permutation(48) for i in range(MEMBERS)])
            kwargs |= {"optimizer": optax.adam(0.01), "batch_size": 8, "rows": rows}
            kwargs |= {"row_counts": np.array([48, 30, 33, 17]), "key": jax.random.split(jax.random.key(3), MEMBERS)}
        elif setting == "groups of two keys":
            kwargs |= {"lr": 0.05, "batch_size": 8, "key": jax.random.split(jax.random.key(5), 2)}
        else:
            rule = bp_jax.early_stopping(loss, params, x[:16], y[:16], steps_per_epoch=6, patience=2, members=MEMBERS)
            kwargs |= {"lr": jnp.asarray([0.3, 0.01, 0.03, 0.1]), "batch_size": 8, "key": jax.random.key(9)}
            kwargs |= {"stop_rule": rule}
        fit = lambda: bp_jax.fit_ensemble(loss, params, x, y, **kwargs)
        whole = in_one_call(monkeypatch, fit)
        parted = fit()
    assert parts_used == [2 if setting == "groups of two keys" else 4]
    assert parted.step == whole.step
    chex.assert_trees_all_close(
        (parted.params, parted.opt_state, parted.rule_state),
        (whole.params, whole.opt_state, whole.rule_state),
        rtol=1e-10,
        atol=1e-10,
    )
    np.testing.assert_allclose(parted.losses, whole.losses, rtol=1e-10, atol=1e-10)
    np.testing.assert_array_equal(parted.diverged, whole.diverged)
    if "early stopping" in setting:
        assert (whole.stopped_at >= 0).any()  # the rule stopped some member: that path was taken
        np.testing.assert_array_equal(parted.stopped_at, whole.stopped_at)


@pytest.mark.parametrize("own_rows", [False, True], ids=["full batch", "own keys and rows, early stopping"])
def test_a_count_the_cores_do_not_divide_pads_the_last_part_with_copies(own_rows, parts_used, monkeypatch):
    """5 members on 2 cores: parts of 3, the second holding members 3 and 4 and a copy of member 4 whose results
    are dropped; every member ends where it ends in one call."""
    monkeypatch.setattr(_fit, "core_count", lambda: 2)
    with jax.enable_x64(True):
        model, params, x, y = problem()
        params = jax.tree.map(lambda leaf: jnp.concatenate([leaf, leaf[:1] * 0.5]), params)  # a fifth member
        loss, lrs = bp_jax.loss_fn(model), jnp.asarray([0.003, 0.01, 0.03, 0.1, 0.3])
        kwargs = {"steps": 60, "chunk_size": 25, "lr": lrs}
        if own_rows:
            rows = np.stack([np.random.default_rng(i).permutation(48) for i in range(5)])
            rule = bp_jax.early_stopping(loss, params, x[:16], y[:16], steps_per_epoch=6, patience=2, members=5)
            kwargs |= {"batch_size": 8, "key": jax.random.split(jax.random.key(3), 5), "stop_rule": rule}
            kwargs |= {"rows": rows, "row_counts": np.array([48, 30, 33, 17, 40])}
        fit = lambda: bp_jax.fit_ensemble(loss, params, x, y, **kwargs)
        whole = in_one_call(monkeypatch, fit)
        parted = fit()
    assert parts_used == [2]
    assert parted.losses.shape == whole.losses.shape == (60, 5) and parted.step == whole.step
    chex.assert_trees_all_close(
        (parted.params, parted.rule_state), (whole.params, whole.rule_state), rtol=1e-10, atol=1e-10
    )
    np.testing.assert_allclose(parted.losses, whole.losses, rtol=1e-10, atol=1e-10)
    if own_rows:
        np.testing.assert_array_equal(parted.stopped_at, whole.stopped_at)


def test_resuming_members_in_parts_is_bit_identical(parts_used):
    model, params, x, y = problem()
    loss, keys = bp_jax.loss_fn(model), jax.random.split(jax.random.key(1), MEMBERS)
    fit = lambda params, steps, **kwargs: bp_jax.fit_ensemble(
        loss, params, x, y, steps=steps, optimizer=optax.adam(0.01), batch_size=8, key=keys, **kwargs
    )
    whole = fit(params, 90)
    first = fit(params, 31, chunk_size=7)
    rest = fit(first.params, 59, opt_state=first.opt_state, start_step=first.step, chunk_size=10)
    assert set(parts_used) == {4}
    chex.assert_trees_all_equal((rest.params, rest.opt_state), (whole.params, whole.opt_state))
    np.testing.assert_array_equal(np.concatenate([first.losses, rest.losses]), whole.losses)


def test_resuming_members_in_parts_is_bit_identical_under_avx2():
    """The same under XLA_FLAGS=--xla_cpu_max_isa=AVX2, in a process of its own (5 members: 2 parts, one padded)."""
    env = dict(os.environ, XLA_FLAGS=(os.environ.get("XLA_FLAGS", "") + " --xla_cpu_max_isa=AVX2").strip())
    worker = Path(__file__).with_name("parts_resume_worker.py")
    done = subprocess.run([sys.executable, str(worker)], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "bit-identical to one run" in done.stdout


def test_an_ensemble_in_parts_compiles_its_loop_once_and_a_new_length_nothing(parts_used, count_compilations):
    model, params, x, y = problem(n=40)
    fit = functools.partial(bp_jax.fit_ensemble, bp_jax.loss_fn(model), params, x, y, lr=jnp.full(MEMBERS, 0.01))
    key = jax.random.key(2)
    with count_compilations("jit(run)") as compiled:
        fit(steps=12, batch_size=5, key=key)
    with count_compilations() as compiled_again:
        fit(steps=31, batch_size=5, key=key, chunk_size=7, start_step=3)
    assert parts_used == [4, 4] and compiled == ["jit(run)"] and compiled_again == []


def test_a_part_that_fails_raises_in_the_caller_and_leaves_no_parts_behind():
    """Part 1's call (made on another thread) raises: the caller gets its error, and the next call splits the state it
    is given instead of stepping parts the failed call was given; a call given the state the last one returned
    steps the very parts that call made."""
    given, made, failing = [], [], [True]

    def loop(state, lr, key, x, y, rows, rule_data, first_step, length, noise):
        given.append(state)
        if failing and float(lr[0]) > 1:
            raise ValueError("part 1 failed")
        made.append(state + 1)
        return made[-1], jnp.zeros((length, state.shape[0]))

    lrs = jnp.asarray([0.1, 0.1, 2.0, 2.0])
    parted = InParts(loop, 2, 4, None, False, jnp.arange(4.0), (lrs, None, None, None, None, None), None)
    with pytest.raises(ValueError, match="part 1 failed"):
        parted(parted.state, lrs, None, None, None, None, None, 0, 3)
    failing.clear()
    joined, losses = parted(parted.state, lrs, None, None, None, None, None, 0, 3)
    np.testing.assert_array_equal(joined, [1, 2, 3, 4])
    assert losses.shape == (3, 4)
    again, _ = parted(joined, lrs, None, None, None, None, None, 3, 3)
    np.testing.assert_array_equal(again, [2, 3, 4, 5])
    assert sorted(map(id, given[-2:])) == sorted(map(id, made[-4:-2]))

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


def problem(seed=0, n=64, features=10):
    model = bp_jax.Sequential(bp_jax.Linear(features, 5), bp_jax.ReLU(), bp_jax.Linear(5, 1))
    params_key, x_key, y_key = jax.random.split(jax.random.key(seed), 3)
    x = jax.random.normal(x_key, (n, features))
    return model, model.init(params_key), x, jax.random.normal(y_key, (n, 1))


def copy(tree):
    return jax.tree.map(jnp.array, tree)


@pytest.mark.parametrize("batch_size", [None, 16, 1])
@pytest.mark.slow
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


@pytest.mark.parametrize(
    "optimizer",
    [optax.sgd(0.05), optax.sgd(0.02, momentum=0.9, nesterov=True), optax.adam(1e-2)],
    ids=["sgd", "nesterov", "adam"],
)
@pytest.mark.slow
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
    runs = [
        bp_jax.fit(loss, params, x, y, steps=300, batch_size=10, lr=0.05, key=jax.random.key(3), chunk_size=chunk)
        for chunk in (300, 300, 64, 7)
    ]
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
    rest = bp_jax.fit(
        loss,
        first.params,
        x,
        y,
        steps=140,
        batch_size=16,
        optimizer=optimizer,
        key=key,
        opt_state=first.opt_state,
        start_step=first.step,
    )
    chex.assert_trees_all_equal(rest.params, whole.params)
    np.testing.assert_array_equal(jnp.concatenate([first.losses, rest.losses]), whole.losses)
    assert rest.step == 250


def test_on_chunk_reports_progress_between_chunks():
    model, params, x, y = problem()
    seen = []
    bp_jax.fit(
        bp_jax.loss_fn(model),
        params,
        x,
        y,
        steps=25,
        lr=0.01,
        chunk_size=10,
        on_chunk=lambda r: seen.append((r.step, r.losses.shape[0])),
    )
    assert seen == [(10, 10), (20, 10), (25, 5)]


@pytest.mark.parametrize("ensemble", [False, True])
def test_on_chunk_returning_true_stops_training_there_and_keep_losses_false_keeps_the_last_chunk(ensemble):
    model, params, x, y = problem()
    train = bp_jax.fit_ensemble if ensemble else bp_jax.fit
    params = jax.tree.map(lambda leaf: jnp.stack([leaf, leaf]), params) if ensemble else params
    whole = train(bp_jax.loss_fn(model), params, x, y, steps=20, lr=0.01, chunk_size=10)
    stopped = train(
        bp_jax.loss_fn(model), params, x, y, steps=25, lr=0.01, chunk_size=10, on_chunk=lambda r: r.step >= 20
    )
    assert stopped.step == 20 and stopped.losses.shape[0] == 20
    chex.assert_trees_all_equal(stopped.params, whole.params)
    seen = []  # keep_losses=False: on_chunk sees every loss, the result holds the last chunk's
    lean = train(
        bp_jax.loss_fn(model), params, x, y, steps=25, lr=0.01, chunk_size=10, keep_losses=False,
        on_chunk=lambda r: seen.append(r.losses) or r.step >= 20,
    )  # fmt: skip
    np.testing.assert_array_equal(np.concatenate(seen), stopped.losses)
    np.testing.assert_array_equal(lean.losses, stopped.losses[10:])
    chex.assert_trees_all_equal(lean.params, whole.params)


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
    with pytest.raises(bp_jax.NonFiniteLoss) as lean:  # keep_losses=False: the losses of the chunk it stopped in
        bp_jax.fit(loss, params, x, y * 1e4, steps=500, lr=10.0, chunk_size=1, keep_losses=False)
    assert lean.value.step == lean.value.result.step == stopped.step
    np.testing.assert_array_equal(lean.value.result.losses, stopped.result.losses[-1:])


def test_fit_does_not_donate_the_callers_params():
    model, params, x, y = problem()
    bp_jax.fit(bp_jax.loss_fn(model), params, x, y, steps=5, lr=0.01)
    assert not any(leaf.is_deleted() for leaf in jax.tree.leaves(params))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({}, "exactly one of lr"),
        ({"lr": 0.1, "optimizer": optax.sgd(0.1)}, "exactly one of lr"),
        ({"lr": -1.0}, "lr must be finite and > 0"),
        ({"lr": 0.1, "steps": -1}, "steps must be an integer ≥ 0, got -1"),
        ({"lr": 0.1, "steps": 2.5}, "steps must be an integer ≥ 0, got 2.5"),
        ({"lr": 0.1, "steps": True}, "steps must be an integer ≥ 0, got True"),
        (
            {"lr": 0.1, "batch_size": 65, "key": jax.random.key(0)},
            r"batch_size must be at most 64 \(the number of examples\), got 65",
        ),
        ({"lr": 0.1, "batch_size": 0, "key": jax.random.key(0)}, "batch_size must be an integer ≥ 1, got 0"),
        ({"lr": 0.1, "batch_size": 8}, "needs a PRNG key"),
        ({"lr": 0.1, "chunk_size": 0}, "chunk_size must be an integer ≥ 1, got 0"),
        ({"lr": 0.1, "start_step": -3}, "start_step must be an integer ≥ 0, got -3"),
        ({"lr": 0.1, "padding": 64}, "padding must be fewer than the 64 examples, got 64"),
    ],
)
def test_bad_arguments_are_refused(kwargs, message):
    model, params, x, y = problem()
    kwargs = {"steps": 10} | kwargs
    with pytest.raises(ValueError, match=message):
        bp_jax.fit(bp_jax.loss_fn(model), params, x, y, **kwargs)


def test_an_opt_state_with_lr_is_refused_not_ignored():
    model, params, x, y = problem()
    with pytest.raises(
        ValueError, match=r"opt_state is an optimizer's state: the hand-written SGD \(lr=...\) has none"
    ):
        bp_jax.fit(bp_jax.loss_fn(model), params, x, y, steps=3, lr=0.1, opt_state=optax.sgd(0.1).init(params))


def test_an_opt_state_of_another_optimizer_is_one_value_error():
    model, params, x, y = problem()
    momentum = optax.sgd(0.1, momentum=0.9).init(params)
    with pytest.raises(
        ValueError,
        match=r"opt_state does not match the optimizer: optimizer.init.* gives .*ScaleByAdamState.*got .*TraceState",
    ) as refused:
        bp_jax.fit(bp_jax.loss_fn(model), params, x, y, steps=3, optimizer=optax.adam(0.01), opt_state=momentum)
    assert "\n" not in str(refused.value)
    wrong_shape = optax.sgd(0.1, momentum=0.9).init(jax.tree.map(lambda leaf: leaf[:1], params))
    with pytest.raises(
        ValueError,
        match=r"opt_state\[0\].trace\[0\]\['bias'\] has shape \(1,\); "
        r"optimizer.init\(params\) gives \(5,\)",
    ):
        bp_jax.fit(
            bp_jax.loss_fn(model), params, x, y, steps=3, optimizer=optax.sgd(0.1, momentum=0.9), opt_state=wrong_shape
        )


def test_mismatched_example_counts_are_refused():
    model, params, x, y = problem()
    with pytest.raises(ValueError, match=r"share their leading.*\(64, 10\) and \(63, 1\)"):
        bp_jax.fit(bp_jax.loss_fn(model), params, x, y[:63], steps=1, lr=0.1)


def test_numpy_integers_are_accepted_where_ints_are():
    model, params, x, y = problem()
    result = bp_jax.fit(
        bp_jax.loss_fn(model),
        params,
        x,
        y,
        steps=np.int64(12),
        batch_size=np.int32(8),
        lr=np.float32(0.05),
        key=jax.random.key(0),
        chunk_size=np.int64(5),
        start_step=np.int64(3),
    )
    assert result.step == 15 and result.losses.shape == (12,)


def test_data_without_rows_is_a_value_error_not_a_non_finite_loss():
    model, params, x, y = problem()
    with pytest.raises(ValueError, match=r"hold no examples \(shapes \(0, 10\) and \(0, 1\)\)"):
        bp_jax.fit(bp_jax.loss_fn(model), params, x[:0], y[:0], steps=3, lr=0.1)


def test_non_finite_loss_names_the_update_when_only_the_update_was_non_finite():
    model, params, x, y = problem()
    loss = bp_jax.loss_fn(model)
    with pytest.raises(bp_jax.NonFiniteLoss, match="the update made the params non-finite") as info:
        bp_jax.fit(loss, params, x, y * 1e4, steps=5, lr=1e36)
    assert info.value.cause == "update" and info.value.step == 0
    assert np.isfinite(info.value.result.losses).all()  # the loss of the refused step was finite
    with pytest.raises(bp_jax.NonFiniteLoss, match="loss became non-finite") as info:
        bp_jax.fit(loss, params, x, y.at[3].set(jnp.nan), steps=5, lr=0.1)
    assert info.value.cause == "loss" and info.value.step == 0


@pytest.mark.parametrize("optimizer", [None, optax.sgd(0.02, momentum=0.9)], ids=["hand-sgd", "momentum"])
@pytest.mark.slow
def test_another_length_chunking_resume_point_or_lr_does_not_compile_again(optimizer, count_compilations):
    model, params, x, y = problem(4)
    loss, key = bp_jax.loss_fn(model), jax.random.key(1)
    method = {"lr": 0.05} if optimizer is None else {"optimizer": optimizer}
    first = bp_jax.fit(loss, params, x, y, steps=30, batch_size=8, key=key, **method)
    with count_compilations() as compiled:
        bp_jax.fit(loss, params, x, y, steps=1, batch_size=8, key=key, **method)
        bp_jax.fit(loss, params, x, y, steps=2500, batch_size=8, key=key, chunk_size=97, **method)
        bp_jax.fit(
            loss,
            first.params,
            x,
            y,
            steps=7,
            batch_size=8,
            key=key,
            opt_state=first.opt_state,
            start_step=first.step,
            chunk_size=3,
            **method,
        )
        if optimizer is None:
            bp_jax.fit(loss, params, x, y, steps=40, batch_size=8, key=key, lr=0.003)
    assert compiled == []
    bp_jax.fit(loss, params, x, y, steps=5, batch_size=4, key=key, **method)  # a new configuration compiles


@pytest.mark.slow  # 60 runs, in a process of its own
@pytest.mark.parametrize("isa", ["default", "AVX2"])
def test_resuming_anywhere_with_any_chunking_is_bit_identical_on_this_isa(isa):
    env = dict(os.environ)
    if isa == "AVX2":
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_cpu_max_isa=AVX2").strip()
    worker = Path(__file__).with_name("resume_worker.py")
    done = subprocess.run([sys.executable, str(worker)], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("20 stopped-and-resumed runs bit-identical to one run") == 4, done.stdout


def test_what_on_chunk_receives_stays_usable_after_later_chunks():
    model, params, x, y = problem()
    kept = []
    bp_jax.fit(
        bp_jax.loss_fn(model), params, x, y, steps=6, optimizer=optax.adam(0.01), chunk_size=2, on_chunk=kept.append
    )
    assert [result.step for result in kept] == [2, 4, 6]
    for result in kept:  # none of them donated by the next chunk
        assert all(np.isfinite(np.asarray(leaf)).all() for leaf in jax.tree.leaves((result.params, result.opt_state)))


def test_zero_steps_returns_the_params_unchanged():
    model, params, x, y = problem()
    result = bp_jax.fit(bp_jax.loss_fn(model), params, x, y, steps=0, lr=0.1, start_step=5)
    assert result.step == 5 and result.losses.shape == (0,)
    chex.assert_trees_all_equal(result.params, params)


@pytest.mark.parametrize(
    "key, error, message",
    [
        (0, TypeError, "key must be a PRNG key such as jax.random.key"),
        (jnp.array([0.5, 0.2]), TypeError, "got ArrayImpl of dtype float32 and shape \\(2,\\)"),
        (jax.random.split(jax.random.key(0), 2), ValueError, r"fit takes one key, got keys of shape \(2,\)"),
    ],
)
def test_keys_that_are_not_one_prng_key_are_refused(key, error, message):
    model, params, x, y = problem()
    with pytest.raises(error, match=message):
        bp_jax.fit(bp_jax.loss_fn(model), params, x, y, steps=3, lr=0.1, batch_size=4, key=key)


def test_a_raw_uint32_key_gives_the_same_run_as_the_typed_key():
    model, params, x, y = problem()
    loss = bp_jax.loss_fn(model)
    typed = bp_jax.fit(loss, params, x, y, steps=20, lr=0.1, batch_size=4, key=jax.random.key(3))
    raw = bp_jax.fit(loss, params, x, y, steps=20, lr=0.1, batch_size=4, key=jax.random.PRNGKey(3))
    np.testing.assert_array_equal(typed.losses, raw.losses)


def test_steps_past_the_int32_step_counter_are_refused():
    model, params, x, y = problem()
    with pytest.raises(ValueError, match=r"start_step \+ steps must be at most 2147483647"):
        bp_jax.fit(bp_jax.loss_fn(model), params, x, y, steps=5, lr=0.1, start_step=2**31 - 3)


def test_an_empty_chunk_size_sequence_is_refused_by_name():
    model, params, x, y = problem()
    with pytest.raises(ValueError, match=r"non-empty sequence of them, got \(\)"):
        bp_jax.fit(bp_jax.loss_fn(model), params, x, y, steps=5, lr=0.1, chunk_size=())


def test_nested_lists_are_data_and_a_mesh_must_be_a_mesh():
    model, params, x, y = problem()
    from_lists = bp_jax.fit(bp_jax.loss_fn(model), params, x.tolist(), y.tolist(), steps=5, lr=0.05)
    from_arrays = bp_jax.fit(bp_jax.loss_fn(model), params, x, y, steps=5, lr=0.05)
    np.testing.assert_allclose(from_lists.losses, from_arrays.losses, rtol=1e-6)
    with pytest.raises(TypeError, match=r"mesh must be a jax\.sharding\.Mesh .*got 'data'"):
        bp_jax.fit(bp_jax.loss_fn(model), params, x, y, steps=5, lr=0.05, mesh="data")


@pytest.mark.parametrize("make_mesh", [bp_jax.data_parallel_mesh, bp_jax.ensemble_mesh])
def test_a_mesh_of_true_devices_is_a_type_error_naming_what_it_takes(make_mesh):
    with pytest.raises(TypeError, match="devices must be a number of devices, a sequence of devices or None, got True"):
        make_mesh(True)


def _below(state, step, loss):
    """A StopRule update: stop once the loss is below the state's threshold."""
    return state, loss < state


BELOW = bp_jax.StopRule(_below, np.float32(0.0))


def test_a_stop_rule_ends_fit_after_the_step_it_names_with_the_bits_of_a_shorter_run():
    model, params, x, y = problem(3)
    loss, key = bp_jax.loss_fn(model), jax.random.key(5)
    run = lambda **kw: bp_jax.fit(loss, params, x, y, batch_size=16, lr=0.05, key=key, chunk_size=7, **kw)
    free = run(steps=300)
    threshold = float(np.median(free.losses))  # the loss falls below it somewhere inside the run
    crossing = int(np.argmax(free.losses < threshold))
    assert 0 < crossing < 299
    stopped = run(steps=300, stop_rule=BELOW._replace(init=np.float32(threshold)))
    assert (stopped.stopped_at, stopped.step, len(stopped.losses)) == (crossing, crossing + 1, crossing + 1)
    shorter = run(steps=crossing + 1)
    chex.assert_trees_all_equal(stopped.params, shorter.params)
    np.testing.assert_array_equal(stopped.losses, shorter.losses)
    assert free.stopped_at == -1 and run(steps=10, stop_rule=BELOW).stopped_at == -1


@pytest.mark.slow
def test_each_member_stops_where_its_own_rule_says_and_its_state_is_data(count_compilations):
    model, _, x, y = problem(4)
    members, loss = 4, bp_jax.loss_fn(model)
    params = jax.vmap(model.init)(jax.random.split(jax.random.key(2), members))
    key = jax.random.split(jax.random.key(1), members)
    ensemble = lambda thresholds: bp_jax.fit_ensemble(
        loss,
        params,
        x,
        y,
        steps=200,
        lr=0.05,
        batch_size=8,
        key=key,
        stop_rule=BELOW._replace(init=np.asarray(thresholds, np.float32)),
    )
    free = ensemble([0.0] * members)
    thresholds = np.median(free.losses, axis=0)
    with count_compilations() as compiled:
        result = ensemble(thresholds)
    assert compiled == []  # the thresholds are data: the same program
    for i in range(members):
        own = bp_jax.fit(
            loss,
            jax.tree.map(lambda leaf, i=i: leaf[i], params),
            x,
            y,
            steps=200,
            lr=0.05,
            batch_size=8,
            key=key[i],
            stop_rule=BELOW._replace(init=np.float32(thresholds[i])),
        )
        assert result.stopped_at[i] == own.stopped_at >= 0
        assert np.all(np.isnan(result.losses[own.step :, i]))
        chex.assert_trees_all_close(
            jax.tree.map(lambda leaf, i=i: leaf[i], result.params), own.params, rtol=1e-5, atol=1e-6
        )
    assert free.stopped_at.tolist() == [-1] * members


def test_a_stop_rule_that_is_not_a_stop_rule_is_a_type_error():
    model, params, x, y = problem()
    with pytest.raises(TypeError, match="StopRule"):
        bp_jax.fit(bp_jax.loss_fn(model), params, x, y, steps=1, lr=0.1, stop_rule=_below)


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the option is XLA:CPU's")
@pytest.mark.slow
def test_the_fused_loop_keeps_ynnpack_to_dots_on_cpu(tmp_path):
    """The fused loop's one private XLA option (`loop_compiler_options`): this jaxlib takes it, it moves the
    element-wise and reduction fusions of a vmapped sum contraction out of YNNPACK, and `fit_ensemble`'s loop is
    compiled with it (its optimized HLO, dumped in a subprocess, holds no YNNPACK fusion). Fails loudly when XLA
    renames, drops or changes the option."""
    from bp_jax._fit_loop import CPU_FUSION_OPTION, loop_compiler_options

    assert loop_compiler_options("cpu") == dict([CPU_FUSION_OPTION]) and loop_compiler_options("gpu") == {}
    contraction = lambda w, x: jnp.tanh((x[:, :, None] * w[None]).sum(1)).sum()
    program = jax.jit(jax.vmap(contraction, in_axes=(0, None))).lower(jnp.ones((16, 10, 5)), jnp.ones((32, 10)))
    assert "__ynn_fusion" in program.compile().as_text()
    assert "__ynn_fusion" not in program.compile(compiler_options=loop_compiler_options("cpu")).as_text()
    script = (
        "import jax, numpy as np, bp_jax\n"
        "model = bp_jax.mlp((10, 5, 1), contraction='sum')\n"
        "members = jax.vmap(model.init)(jax.random.split(jax.random.key(0), 16))\n"
        "x, y = np.ones((64, 10), np.float32), np.ones((64, 1), np.float32)\n"
        "bp_jax.fit_ensemble(bp_jax.loss_fn(model), members, x, y, steps=3, lr=0.01, batch_size=8,"
        " key=jax.random.key(1))\n"
    )
    flags = f"--xla_dump_to={tmp_path} --xla_dump_hlo_as_text --xla_dump_hlo_module_re=.*run.*"
    env = dict(os.environ, XLA_FLAGS=f"{os.environ.get('XLA_FLAGS', '')} {flags}".strip())
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    loops = list(tmp_path.glob("*jit_run.cpu_after_optimizations.txt"))
    assert len(loops) == 1 and "multiply" in loops[0].read_text()
    assert "__ynn_fusion" not in loops[0].read_text()


# -- pytree data, rules that set the optimizer state, minibatches in order (issue #30, WP1) ------------------------


def _weighted_loss(model):
    """Σw·(ŷ − t)²/Σw on x = {"a", "b"} (the features split in two) and y = {"target", "weight"}."""

    def loss(params, x, y):
        pred = model.apply(params, jnp.concatenate([x["a"], x["b"]], axis=1))
        return jnp.sum(y["weight"] * (pred - y["target"]) ** 2) / jnp.sum(y["weight"])

    return loss


def _packed_loss(model):
    """`_weighted_loss` on the same data packed into arrays: y's last column the weights."""

    def loss(params, x, y):
        weight = y[:, 1:]
        return jnp.sum(weight * (model.apply(params, x) - y[:, :1]) ** 2) / jnp.sum(weight)

    return loss


def test_pytree_data_gathers_the_same_rows_of_every_leaf():
    model, params, x, y = problem(6)
    weight = jnp.linspace(0.5, 2.0, len(x)).reshape(-1, 1)
    trees = {"a": x[:, :4], "b": x[:, 4:]}, {"target": y, "weight": weight}
    packed = x, jnp.concatenate([y, weight], axis=1)
    members = jax.vmap(model.init)(jax.random.split(jax.random.key(1), 2))
    rows = np.stack([np.arange(64), np.arange(64)[::-1]]).astype(np.int32)
    trained = lambda data_x, data_y, loss: (
        bp_jax.fit_ensemble(
            loss, members, data_x, data_y, steps=12, batch_size=8, lr=0.05, key=key, rows=rows, row_counts=counts
        ).params
    )  # fit's step is the same, unvmapped
    key, counts = jax.random.key(2), np.array([40, 64])
    chex.assert_trees_all_close(
        trained(*trees, _weighted_loss(model)), trained(*packed, _packed_loss(model)), rtol=1e-6, atol=1e-6
    )
    with pytest.raises(ValueError, match=r"share their leading.*\{'a': \(64, 4\), 'b': \(63, 6\)\}"):
        bp_jax.fit(_weighted_loss(model), params, {"a": x[:, :4], "b": x[:63, 4:]}, trees[1], steps=1, lr=0.1)


def test_a_plain_tuple_is_still_one_array_and_leaves_without_rows_are_refused():
    model, params, x, y = problem()
    as_tuple = bp_jax.fit(bp_jax.loss_fn(model), params, tuple(map(tuple, x.tolist())), y, steps=2, lr=0.05)
    np.testing.assert_allclose(
        as_tuple.losses, bp_jax.fit(bp_jax.loss_fn(model), params, x, y, steps=2, lr=0.05).losses
    )
    with pytest.raises(ValueError, match=r"share their leading.*\{'target': \(64, 1\), 'weight': \(\)\}"):
        bp_jax.fit(bp_jax.loss_fn(model), params, x, {"target": y, "weight": jnp.float32(1)}, steps=1, lr=0.1)


def _adaptive(steps_per_epoch, tol, patience):
    """sklearn's "adaptive" learning rate as a StopRule that touches the optimizer state: at each epoch's end, with
    m its mean loss, count ← count + 1 if m > best − tol else 0, best ← min(best, m); once count > patience,
    η ← η / 5 and count ← 0, stopping instead when η ≤ 1e-6 already."""

    def update(state, step, loss, opt_state):
        total = state["total"] + loss
        end = (step + 1) % steps_per_epoch == 0
        mean = total / steps_per_epoch
        count = jnp.where(mean > state["best"] - tol, state["count"] + 1, 0)
        lr = opt_state.hyperparams["learning_rate"]
        patience_over = end & (count > patience)
        state = {
            "total": jnp.where(end, 0.0, total),
            "best": jnp.where(end, jnp.minimum(state["best"], mean), state["best"]),
            "count": jnp.where(end, jnp.where(patience_over, 0, count), state["count"]),
        }
        rates = opt_state.hyperparams | {"learning_rate": jnp.where(patience_over, lr / 5, lr)}
        return state, patience_over & (lr <= 1e-6), opt_state._replace(hyperparams=rates)

    return update


def test_a_rule_that_sets_the_learning_rate_at_epoch_ends_equals_a_python_loop_of_steps():
    model, params, x, y = problem(7)
    loss, key = bp_jax.loss_fn(model), jax.random.key(3)
    optimizer = optax.inject_hyperparams(optax.sgd)(learning_rate=0.05, momentum=0.5)
    update = _adaptive(4, 10.0, 1)  # tol 10: no epoch after the first improves, so η ÷ 5 after epochs 3 and 5
    init = {"total": np.float32(0), "best": np.float32(np.inf), "count": np.int32(0)}
    rule = bp_jax.StopRule(update, init, touches_opt_state=True)
    result = bp_jax.fit(loss, params, x, y, steps=24, batch_size=16, optimizer=optimizer, key=key, stop_rule=rule)
    step, looped, opt_state, state = bp_jax.optax_step(loss, optimizer), copy(params), optimizer.init(params), init
    for i in range(24):
        rows = bp_jax.minibatch_indices(key, i, len(x), 16)
        looped, opt_state, value = step(looped, opt_state, x[rows], y[rows])
        state, _, opt_state = jax.jit(update)(state, i, value, opt_state)
    assert np.isclose(result.opt_state.hyperparams["learning_rate"], 0.05 / 25)
    chex.assert_trees_all_close((result.params, result.opt_state), (looped, opt_state), rtol=1e-5, atol=1e-6)
    members = jax.vmap(model.init)(jax.random.split(jax.random.key(4), 2))
    states = jax.vmap(optimizer.init)(members)
    states.hyperparams["learning_rate"] = np.array([0.05, 0.02], np.float32)
    ensemble = bp_jax.fit_ensemble(
        loss,
        members,
        x,
        y,
        steps=24,
        batch_size=16,
        optimizer=optimizer,
        key=key,
        opt_state=states,
        stop_rule=rule._replace(init=jax.tree.map(lambda leaf: np.stack([leaf, leaf]), init)),
    )
    np.testing.assert_allclose(ensemble.opt_state.hyperparams["learning_rate"], [0.05 / 25, 0.02 / 25], rtol=1e-6)
    own = bp_jax.fit(
        loss,
        jax.tree.map(lambda leaf: leaf[1], members),
        x,
        y,
        steps=24,
        batch_size=16,
        optimizer=optimizer,
        key=key,
        opt_state=jax.tree.map(lambda leaf: leaf[1], states),
        stop_rule=rule,
    )
    chex.assert_trees_all_close(jax.tree.map(lambda leaf: leaf[1], ensemble.params), own.params, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="touches_opt_state=True updates an optax optimizer's state"):
        bp_jax.fit(loss, params, x, y, steps=1, lr=0.1, stop_rule=rule)


def test_shuffle_false_reads_the_rows_in_order_as_a_python_loop_does(count_compilations):
    model, params, x, y = problem(8, n=70)  # 4 batches of 16 an epoch; rows 64 … 69 are never read
    loss = bp_jax.loss_fn(model)
    with count_compilations("jit(run)") as compiled:
        result = bp_jax.fit(loss, params, x, y, steps=10, batch_size=16, lr=0.05, shuffle=False)
        keyed = bp_jax.fit(loss, params, x, y, steps=10, batch_size=16, lr=0.05, shuffle=False, key=jax.random.key(1))
    assert compiled == ["jit(run)"]  # one program; a key changes nothing
    step, looped, losses = bp_jax.sgd_step(loss, 0.05), copy(params), []
    for i in range(10):
        rows = slice(i % 4 * 16, i % 4 * 16 + 16)
        looped, value = step(looped, x[rows], y[rows])
        losses.append(value)
    chex.assert_trees_all_close(result.losses, jnp.stack(losses), rtol=1e-5, atol=1e-6)
    chex.assert_trees_all_close(result.params, looped, rtol=1e-5, atol=1e-6)
    chex.assert_trees_all_equal(keyed.params, result.params)
    members = jax.tree.map(lambda leaf: jnp.stack([leaf, leaf]), params)
    rows = np.stack([np.arange(70)[::-1], np.arange(70)]).astype(np.int32)  # member 0 reads the rows backwards
    ensemble = bp_jax.fit_ensemble(
        loss, members, x, y, steps=10, batch_size=16, lr=0.05, rows=rows, row_counts=np.array([70, 70]), shuffle=False
    )
    chex.assert_trees_all_close(jax.tree.map(lambda leaf: leaf[1], ensemble.params), looped, rtol=1e-5, atol=1e-6)
    backwards = bp_jax.fit(loss, params, x[::-1], y[::-1], steps=10, batch_size=16, lr=0.05, shuffle=False)
    chex.assert_trees_all_close(
        jax.tree.map(lambda leaf: leaf[0], ensemble.params), backwards.params, rtol=1e-5, atol=1e-6
    )


def test_the_new_keywords_at_their_defaults_compile_nothing_new(count_compilations):
    model, params, x, y = problem(9)
    loss, key = bp_jax.loss_fn(model), jax.random.key(5)
    run = lambda **kwargs: bp_jax.fit(loss, params, x, y, steps=3, lr=0.05, key=key, **kwargs)
    minibatches, full = run(batch_size=16), run()  # the programs fit compiled before these keywords
    with count_compilations() as compiled:
        chex.assert_trees_all_equal(run(batch_size=16, shuffle=True).params, minibatches.params)
        chex.assert_trees_all_equal(run(shuffle=False).params, full.params)  # the full batch has no order
    assert compiled == []


@pytest.mark.slow  # a float64 loop of its own: ~3 s here
def test_shard_rows_draw_each_devices_minibatch_from_its_own_rows():
    """fit(shard_rows=) on a one-device mesh equals sgd_step on minibatch_indices(fold_in(key, 0), step, n_0, b) of the
    block's real rows; the block's padding (NaN) is never read. The multi-device case: tests/test_shards.py."""
    with jax.enable_x64(True):
        model, params, x, y = problem(3, n=12, features=3)
        x, y = np.array(x), np.array(y)
        x[9:], y[9:] = np.nan, np.nan  # 9 real rows, 3 of padding
        loss, key = bp_jax.loss_fn(model), jax.random.key(5)
        mesh = bp_jax.data_parallel_mesh(1)
        result = bp_jax.fit(loss, params, x, y, steps=6, batch_size=4, lr=0.1, key=key, mesh=mesh, shard_rows=[9])
        step, looped = bp_jax.sgd_step(loss, 0.1), copy(params)
        for i in range(6):
            rows = np.asarray(bp_jax.minibatch_indices(jax.random.fold_in(key, 0), i, 9, 4))
            looped, _ = step(looped, x[rows], y[rows])
        chex.assert_trees_all_close(result.params, looped, rtol=1e-10, atol=1e-10)
        assert np.all(np.isfinite(result.losses))
        for counts, message in [([13], r"\[4, 12\]"), ([9, 9], "one per 'data' device")]:
            with pytest.raises(ValueError, match=message):
                bp_jax.fit(loss, params, x, y, steps=1, batch_size=4, lr=0.1, key=key, mesh=mesh, shard_rows=counts)
        with pytest.raises(ValueError, match="data_parallel_mesh"):
            bp_jax.fit(loss, params, x, y, steps=1, batch_size=4, lr=0.1, key=key, shard_rows=[9])

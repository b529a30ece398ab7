import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import normal

import bp_jax


def test_mse_is_the_mean_over_all_elements():
    pred = np.array([[1.0, 2.0], [3.0, 5.0]], np.float32)
    target = np.array([[0.0, 2.0], [1.0, 1.0]], np.float32)
    assert bp_jax.mse(pred, target) == pytest.approx((1 + 0 + 4 + 16) / 4)


def test_squared_error_is_elementwise():
    np.testing.assert_array_equal(bp_jax.squared_error(jnp.array([1.5, -1.0]), jnp.array([3.0, 1.0])), [2.25, 4.0])


@pytest.mark.parametrize("loss", [bp_jax.mse, bp_jax.squared_error])
def test_mismatched_shapes_never_broadcast(loss):
    with pytest.raises(ValueError, match=r"pred has shape \(32, 1\) but target has shape \(32,\)"):
        loss(jnp.zeros((32, 1)), jnp.zeros(32))


def test_loss_fn_composes_model_and_loss():
    model = bp_jax.neuron("identity")
    f = bp_jax.loss_fn(model, bp_jax.squared_error)
    assert f({"w": 2.0}, 3.0, 1.0) == 25.0
    assert bp_jax.loss_fn(model)({"w": 2.0}, jnp.array([1.0, 2.0]), jnp.array([2.0, 2.0])) == 2.0


def test_equal_arguments_give_equal_hashable_loss_functions():
    model = bp_jax.mlp((3, 2, 1))
    assert bp_jax.loss_fn(model) == bp_jax.loss_fn(model)
    assert hash(bp_jax.loss_fn(model)) == hash(bp_jax.loss_fn(model))
    assert bp_jax.loss_fn(model) != bp_jax.loss_fn(model, bp_jax.squared_error)
    assert bp_jax.loss_fn(model) != bp_jax.loss_fn(bp_jax.mlp((3, 2, 1)))


def test_a_fresh_loss_fn_of_the_same_model_compiles_nothing_in_fit(count_compilations):
    model = bp_jax.mlp((3, 4, 1))
    params, x, y = model.init(jax.random.key(0)), jnp.ones((8, 3)), jnp.zeros((8, 1))
    first = bp_jax.fit(bp_jax.loss_fn(model), params, x, y, steps=3, lr=0.1)
    with count_compilations() as compiled:
        again = bp_jax.fit(bp_jax.loss_fn(model), params, x, y, steps=3, lr=0.1)
    assert compiled == []
    np.testing.assert_array_equal(again.losses, first.losses)


@pytest.mark.slow
def test_loss_fn_works_under_grad_jit_vmap_and_beside_manual():
    model = bp_jax.mlp((3, 4, 1), "tanh")
    params, f = model.init(jax.random.key(1)), bp_jax.loss_fn(model)
    x, y = normal(2, 8, 3), normal(3, 8, 1)
    value, grads = jax.jit(jax.value_and_grad(f))(params, x, y)
    hand_value, hand_grads = bp_jax.manual.value_and_grad(model)(params, x, y)
    np.testing.assert_allclose(value, hand_value, rtol=1e-5, atol=1e-6)
    for auto, hand in zip(jax.tree.leaves(grads), jax.tree.leaves(hand_grads), strict=True):
        np.testing.assert_allclose(auto, hand, rtol=1e-5, atol=1e-6)
    per_row = jax.vmap(f, in_axes=(None, 0, 0))(params, x[:, None], y[:, None])
    np.testing.assert_allclose(per_row.mean(), value, rtol=1e-5, atol=1e-6)


def three_blobs(rows=(60, 40, 20), seed=0):
    """x (N, 2) around three centres, integer labels (N,): class 0 is the majority, half the rows."""
    rng = np.random.default_rng(seed)
    centres = np.array([[0.0, 2.0], [2.0, -1.0], [-2.0, -1.0]])
    labels = np.repeat(np.arange(3), rows)
    return (centres[labels] + 0.7 * rng.normal(size=(len(labels), 2))).astype(np.float32), labels


def test_softmax_cross_entropy_is_the_mean_of_logsumexp_minus_the_labels_logit():
    logits = np.array([[1.0, 2.0, 3.0], [0.5, -1.0, 0.0]])
    labels = np.array([2, 0])
    by_hand = np.mean([np.log(np.exp(row).sum()) - row[label] for row, label in zip(logits, labels)])
    with jax.enable_x64(True):
        assert float(bp_jax.softmax_cross_entropy(logits, labels)) == pytest.approx(by_hand, rel=1e-12)
    assert float(bp_jax.softmax_cross_entropy(np.zeros((4, 2), np.float32), np.zeros(4, int))) == pytest.approx(
        np.log(2), rel=1e-6
    )


@pytest.mark.parametrize("size", [1e4, 1e30])
def test_softmax_cross_entropy_is_finite_at_huge_logits(size):
    logits = jnp.array([[size, -size, 0.0], [size, size, -size]], jnp.float32)
    labels = jnp.array([1, 0])
    model = bp_jax.Sequential(bp_jax.Linear(3, 3))
    params = ({"weight": jnp.eye(3), "bias": jnp.zeros(3)},)
    value = bp_jax.softmax_cross_entropy(logits, labels)
    assert float(value) == pytest.approx((2 * size + np.log(2)) / 2, rel=1e-6)  # row 0: 2·size, row 1: log 2
    grad = jax.grad(bp_jax.softmax_cross_entropy)(logits, labels)
    np.testing.assert_allclose(grad, [[0.5, -0.5, 0.0], [-0.25, 0.25, 0.0]], atol=1e-7)
    np.testing.assert_allclose(bp_jax.manual.LOSS_GRADS[bp_jax.softmax_cross_entropy](logits, labels), grad, atol=1e-7)
    hand_value, hand_grads = bp_jax.manual.value_and_grad(model, bp_jax.softmax_cross_entropy)(params, logits, labels)
    assert hand_value == value
    assert all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in jax.tree.leaves(hand_grads))


@pytest.mark.parametrize(("logits_shape", "labels_shape"), [((5, 3), (4,)), ((5, 3), (5, 1)), ((3,), (3,))])
def test_softmax_cross_entropy_names_both_shapes(logits_shape, labels_shape):
    message = (
        rf"logits of shape {re.escape(str(logits_shape))} and labels of shape "
        rf"{re.escape(str(labels_shape))}"
    )
    with pytest.raises(ValueError, match=message):
        bp_jax.softmax_cross_entropy(jnp.zeros(logits_shape), jnp.zeros(labels_shape, int))


@pytest.mark.parametrize(("label", "row"), [(3, 2), (-1, 1)])
def test_softmax_cross_entropy_names_the_label_out_of_range(label, row):
    labels = np.zeros(4, int)
    labels[row] = label
    with pytest.raises(
        ValueError,
        match=rf"labels must lie in \[0, 3\) for logits of shape \(4, 3\), "
        rf"got label {label} at row {row}$",
    ):
        bp_jax.softmax_cross_entropy(jnp.zeros((4, 3)), labels)


@pytest.mark.parametrize("labels", [np.array([0.0, 1.0]), np.array([True, False]), [0.5, 1.0]])
def test_softmax_cross_entropy_refuses_labels_that_are_not_integers(labels):
    with pytest.raises(TypeError, match=r"labels must be integer class indices, got dtype (float64|bool)"):
        bp_jax.softmax_cross_entropy(jnp.zeros((2, 3)), labels)


def test_out_of_range_labels_under_jit_give_nan_and_fit_reports_it():
    logits, labels = jnp.zeros((3, 2)), jnp.array([0, 1, 2])
    assert np.isnan(jax.jit(bp_jax.softmax_cross_entropy)(logits, labels))
    assert np.isfinite(jax.jit(bp_jax.softmax_cross_entropy)(logits, labels.at[2].set(1)))
    model = bp_jax.mlp((2, 2), "tanh")
    x, _ = three_blobs((1, 1, 1))
    with pytest.raises(bp_jax.NonFiniteLoss) as stopped:
        bp_jax.fit(
            bp_jax.loss_fn(model, bp_jax.softmax_cross_entropy),
            model.init(jax.random.key(0)),
            x,
            labels,
            steps=5,
            lr=0.1,
        )
    assert (stopped.value.step, stopped.value.cause) == (0, "loss")


@pytest.mark.slow
def test_cross_entropy_steps_are_the_hand_written_update():
    model = bp_jax.mlp((2, 8, 3), "tanh")
    params, (x, labels) = model.init(jax.random.key(0)), three_blobs()
    loss = bp_jax.loss_fn(model, bp_jax.softmax_cross_entropy)
    value, grads = jax.jit(bp_jax.manual.value_and_grad(model, bp_jax.softmax_cross_entropy))(params, x, labels)
    expected = jax.tree.map(lambda w, g: w - 0.1 * g, params, grads)
    new_params, sgd_loss = bp_jax.sgd_step(loss, lr=0.1)(jax.tree.map(jnp.array, params), x, labels)
    optimizer = optax.sgd(0.1)
    optax_params, _, optax_loss = bp_jax.optax_step(loss, optimizer)(
        jax.tree.map(jnp.array, params), optimizer.init(params), x, labels
    )
    for got, got_loss in ((new_params, sgd_loss), (optax_params, optax_loss)):
        np.testing.assert_allclose(got_loss, value, rtol=1e-5, atol=1e-6)
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(expected), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def accuracy(model, params, x, labels) -> float:
    return float(np.mean(np.argmax(model.apply(params, x), axis=1) == labels))


@pytest.mark.parametrize("batch_size", [None, 16])
@pytest.mark.slow
def test_fit_learns_three_classes_with_cross_entropy(batch_size):
    model = bp_jax.mlp((2, 16, 3), "tanh")
    params, (x, labels) = model.init(jax.random.key(1)), three_blobs()
    majority = np.bincount(labels).max() / len(labels)
    result = bp_jax.fit(
        bp_jax.loss_fn(model, bp_jax.softmax_cross_entropy),
        params,
        x,
        labels,
        steps=300,
        lr=0.3,
        batch_size=batch_size,
        key=jax.random.key(2),
    )
    assert majority == 0.5
    assert accuracy(model, params, x, labels) < 0.6
    assert accuracy(model, result.params, x, labels) > 0.9
    assert result.losses[-10:].mean() < 0.3 < result.losses[0]


@pytest.mark.slow
def test_fit_ensemble_trains_every_member_on_class_labels():
    model = bp_jax.mlp((2, 16, 3), "tanh")
    x, labels = three_blobs()
    params = jax.vmap(model.init)(jax.random.split(jax.random.key(3), 3))
    result = bp_jax.fit_ensemble(
        bp_jax.loss_fn(model, bp_jax.softmax_cross_entropy),
        params,
        x,
        labels,
        steps=300,
        lr=np.array([0.1, 0.3, 1.0]),
        batch_size=16,
        key=jax.random.key(4),
    )
    assert list(result.diverged) == [-1, -1, -1]
    members = [jax.tree.map(lambda leaf, i=i: leaf[i], result.params) for i in range(3)]
    assert all(accuracy(model, params, x, labels) > 0.9 for params in members)

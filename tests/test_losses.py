import jax
import jax.numpy as jnp
import numpy as np
import pytest

import bp_jax


def test_mse_is_the_mean_over_all_elements():
    pred = np.array([[1.0, 2.0], [3.0, 5.0]], np.float32)
    target = np.array([[0.0, 2.0], [1.0, 1.0]], np.float32)
    assert bp_jax.mse(pred, target) == pytest.approx((1 + 0 + 4 + 16) / 4)


def test_squared_error_is_elementwise():
    np.testing.assert_array_equal(bp_jax.squared_error(jnp.array([1.5, -1.0]), jnp.array([3.0, 1.0])),
                                  [2.25, 4.0])


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


def test_loss_fn_works_under_grad_jit_vmap_and_beside_manual():
    model = bp_jax.mlp((3, 4, 1), "tanh")
    params, f = model.init(jax.random.key(1)), bp_jax.loss_fn(model)
    x, y = jax.random.normal(jax.random.key(2), (8, 3)), jax.random.normal(jax.random.key(3), (8, 1))
    value, grads = jax.jit(jax.value_and_grad(f))(params, x, y)
    hand_value, hand_grads = bp_jax.manual.value_and_grad(model)(params, x, y)
    np.testing.assert_allclose(value, hand_value, rtol=1e-5, atol=1e-6)
    for auto, hand in zip(jax.tree.leaves(grads), jax.tree.leaves(hand_grads), strict=True):
        np.testing.assert_allclose(auto, hand, rtol=1e-5, atol=1e-6)
    per_row = jax.vmap(f, in_axes=(None, 0, 0))(params, x[:, None], y[:, None])
    np.testing.assert_allclose(per_row.mean(), value, rtol=1e-5, atol=1e-6)

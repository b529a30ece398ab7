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

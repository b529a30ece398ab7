"""Losses: pure functions of (pred, target) that refuse to broadcast mismatched shapes."""

from collections.abc import Callable

import jax.numpy as jnp

from bp_jax._layers import Model


def _check_same_shape(loss: str, pred, target) -> None:
    if jnp.shape(pred) != jnp.shape(target):
        raise ValueError(f"{loss}: pred has shape {jnp.shape(pred)} but target has shape "
                         f"{jnp.shape(target)}; they must match (no silent broadcasting)")


def squared_error(pred, target):
    """(y − t)², elementwise: the documents' single-example loss L = (y − t)²."""
    _check_same_shape("squared_error", pred, target)
    return (jnp.asarray(pred) - jnp.asarray(target)) ** 2


def mse(pred, target):
    """mean((y − t)²) over all elements, as torch.nn.MSELoss() with its default reduction."""
    _check_same_shape("mse", pred, target)
    return jnp.mean(squared_error(pred, target))


def loss_fn(model: Model, loss: Callable = mse) -> Callable:
    """`f(params, x, y) = loss(model.apply(params, x), y)`, the function that gets differentiated."""

    def f(params, x, y):
        return loss(model.apply(params, x), y)

    return f

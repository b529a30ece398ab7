"""Losses: pure functions of (pred, target) that refuse to broadcast mismatched shapes."""

from collections.abc import Callable
from dataclasses import dataclass

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


@dataclass(frozen=True)
class LossFn:
    """`f(params, x, y) = loss(model.apply(params, x), y)`: equal (and equally hashed) for the same model and
    loss, so the compiled programs cached on it are reused by a fresh `loss_fn(model)`."""

    model: Model
    loss: Callable = mse

    def __call__(self, params, x, y):
        return self.loss(self.model.apply(params, x), y)


def loss_fn(model: Model, loss: Callable = mse) -> LossFn:
    """`f(params, x, y) = loss(model.apply(params, x), y)`, the function that gets differentiated; equal
    arguments give equal functions (one compilation for `fit` however often it is called)."""
    return LossFn(model, loss)

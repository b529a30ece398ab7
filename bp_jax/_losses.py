"""Losses: pure functions of (pred, target) that refuse to broadcast mismatched shapes."""

from collections.abc import Callable
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from bp_jax._layers import Model


def _check_same_shape(loss: str, pred, target) -> None:
    if jnp.shape(pred) != jnp.shape(target):
        raise ValueError(
            f"{loss}: pred has shape {jnp.shape(pred)} but target has shape "
            f"{jnp.shape(target)}; they must match (no silent broadcasting)"
        )


def squared_error(pred, target):
    """(y − t)², elementwise: the documents' single-example loss L = (y − t)²."""
    _check_same_shape("squared_error", pred, target)
    return (jnp.asarray(pred) - jnp.asarray(target)) ** 2


def mse(pred, target):
    """mean((y − t)²) over all elements, as torch.nn.MSELoss() with its default reduction."""
    _check_same_shape("mse", pred, target)
    return jnp.mean(squared_error(pred, target))


def _check_logits_and_labels(logits, labels) -> None:
    """logits (B, C) and integer labels (B,), each label in [0, C) where labels are concrete (not traced)."""
    logits_shape, labels_shape = np.shape(logits), np.shape(labels)
    if len(logits_shape) != 2 or len(labels_shape) != 1 or logits_shape[0] != labels_shape[0]:
        raise ValueError(
            f"softmax_cross_entropy: logits must have shape (B, C) and labels shape (B,), got "
            f"logits of shape {logits_shape} and labels of shape {labels_shape}"
        )
    dtype = labels.dtype if hasattr(labels, "dtype") else np.asarray(labels).dtype
    if not jnp.issubdtype(dtype, jnp.integer):
        raise TypeError(f"softmax_cross_entropy: labels must be integer class indices, got dtype {dtype}")
    if isinstance(labels, jax.core.Tracer):
        return  # a compiled program cannot raise: an out-of-range label gives a NaN loss instead
    labels, classes = np.asarray(labels), logits_shape[1]
    bad = np.flatnonzero((labels < 0) | (labels >= classes))
    if bad.size:
        raise ValueError(
            f"softmax_cross_entropy: labels must lie in [0, {classes}) for logits of shape "
            f"{logits_shape}, got label {labels[bad[0]]} at row {bad[0]}"
        )


def softmax_cross_entropy(logits, labels):
    """mean over the batch of logsumexp(z) − z[label] = −log softmax(z)[label], as torch.nn.CrossEntropyLoss()
    with its default reduction: logits z (B, C), integer labels (B,) in [0, C).

    Computed as log_softmax of z − max(z), so finite at any logit size. Out-of-range labels raise ValueError
    on concrete arrays; under jit (traced labels) they make the loss NaN, which `fit` reports as NonFiniteLoss.
    """
    _check_logits_and_labels(logits, labels)
    logits, labels = jnp.asarray(logits), jnp.asarray(labels)
    classes = logits.shape[1]
    picked = jnp.clip(labels, 0, classes - 1)[:, None]  # a valid index for every row; bad rows become NaN below
    losses = -jnp.take_along_axis(jax.nn.log_softmax(logits), picked, axis=1)[:, 0]
    return jnp.mean(jnp.where((labels >= 0) & (labels < classes), losses, jnp.nan))


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

"""Losses: pure functions of (pred, target) that refuse to broadcast mismatched shapes."""

from collections.abc import Callable
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from bp_jax._layers import Model, call


def _check_same_shape(loss: str, pred, target) -> None:
    if jnp.shape(pred) != jnp.shape(target):
        raise ValueError(
            f"{loss}: pred has shape {jnp.shape(pred)} but target has shape "
            f"{jnp.shape(target)}; they must match (no silent broadcasting)"
        )


def squared_error(pred, target):
    """(y − t)², elementwise: the documents' single-example loss L = (y − t)².

    Args:
      pred (jax.typing.ArrayLike): the prediction y.
      target (jax.typing.ArrayLike): the target t, of pred's shape.

    Returns:
      (jax.Array): (y − t)² of pred's shape.

    Raises:
      ValueError: pred and target of different shapes (no silent broadcasting).

    Examples:
      >>> from bp_jax import squared_error
      >>> float(squared_error(1.5, 3.0))   # the tiny network's L at y = 1.5, t = 3
      2.25
    """
    _check_same_shape("squared_error", pred, target)
    return (jnp.asarray(pred) - jnp.asarray(target)) ** 2


def mse(pred, target):
    """mean((y − t)²) over all elements, as torch.nn.MSELoss() with its default reduction.

    Args:
      pred (jax.typing.ArrayLike): the predictions y.
      target (jax.typing.ArrayLike): the targets t, of pred's shape.

    Returns:
      (jax.Array): the scalar (1/N)·Σ(y − t)² over all N elements.

    Raises:
      ValueError: pred and target of different shapes (no silent broadcasting).

    Examples:
      >>> import jax.numpy as jnp
      >>> from bp_jax import mse
      >>> float(mse(jnp.array([1.0, 2.0]), jnp.array([0.0, 0.0])))   # (1 + 4) / 2
      2.5
    """
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
    """mean over the batch of logsumexp(z) − z[label] = −log softmax(z)[label], as torch.nn.CrossEntropyLoss().

    Computed as log_softmax of z − max(z), so finite at any logit size; torch's default (mean) reduction.

    Args:
      logits (jax.typing.ArrayLike): the logits z, shape (B, C).
      labels (jax.typing.ArrayLike): integer class indices, shape (B,), each in [0, C). Under jit (traced
        labels) an out-of-range label cannot raise: it makes the loss NaN, which `fit` reports as
        NonFiniteLoss.

    Returns:
      (jax.Array): the scalar (1/B)·Σ_b [logsumexp(z_b) − z_b[label_b]].

    Raises:
      ValueError: shapes other than (B, C) and (B,), or (on concrete arrays) a label outside [0, C).
      TypeError: labels that are not integers.

    Examples:
      >>> import jax.numpy as jnp
      >>> from bp_jax import softmax_cross_entropy
      >>> round(float(softmax_cross_entropy(jnp.array([[0.0, 0.0]]), jnp.array([0]))), 4)   # log 2
      0.6931
    """
    _check_logits_and_labels(logits, labels)
    logits, labels = jnp.asarray(logits), jnp.asarray(labels)
    classes = logits.shape[1]
    picked = jnp.clip(labels, 0, classes - 1)[:, None]  # a valid index for every row; bad rows become NaN below
    losses = -jnp.take_along_axis(jax.nn.log_softmax(logits), picked, axis=1)[:, 0]
    return jnp.mean(jnp.where((labels >= 0) & (labels < classes), losses, jnp.nan))


@dataclass(frozen=True)
class LossFn:
    """`f(params, x, y, *, key=None) = loss(model.apply(params, x, key=key), y)`: equal (and equally hashed) for
    the same model and loss, so the compiled programs cached on it are reused by a fresh `loss_fn(model)`."""

    model: Model
    loss: Callable = mse

    @property
    def stochastic(self) -> bool:
        """Whether the loss takes a key (its model is stochastic): `fit` then draws one per step."""
        return self.model.stochastic

    def __call__(self, params, x, y, *, key=None):
        return self.loss(call(self.model.apply, self.model, params, x, key), y)


def loss_fn(model: Model, loss: Callable = mse) -> LossFn:
    """`f(params, x, y, *, key=None) = loss(model.apply(params, x, key=key), y)`, the function that gets
    differentiated.

    Equal arguments give equal (and equally hashed) functions: one compilation for `fit` however often it
    is called. A stochastic model (with dropout) makes the loss `stochastic`: `key` draws its masks, no key is
    inference; a deterministic model's loss ignores the key.

    Args:
      model: the Model whose `apply` makes the predictions.
      loss: `loss(pred, target) -> scalar`, e.g. `mse` or `softmax_cross_entropy`.

    Returns:
      The callable `f(params, x, y, *, key=None)`, a LossFn.

    Examples:
      >>> from bp_jax import loss_fn, tiny_net
      >>> f = loss_fn(tiny_net())
      >>> float(f({"w1": 0.5, "w2": 1.5}, 2.0, 3.0))   # (1.5 − 3)²
      2.25
    """
    return LossFn(model, loss)

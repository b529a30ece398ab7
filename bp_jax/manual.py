"""The documents' derivatives written out by hand: an independent reference for `jax.grad`.

Nothing here calls jax autodiff. `neuron_grad`, `tiny_net_backward` and `tiny_net_grads` are the
documents' formulas; `value_and_grad` is the four-step algorithm for any Sequential of Linear, ReLU,
Sigmoid and Tanh: a forward pass that keeps what each layer needs, the loss, then each layer's
hand-written backward (`Model.vjp`) applied in reverse order.
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp

from bp_jax._layers import Model, activation
from bp_jax._losses import mse, softmax_cross_entropy


def mse_grad(pred, target):
    """dL/dy = 2(y − t)/N for L = (1/N)·Σ(y − t)² over all N elements."""
    return 2 * (pred - target) / pred.size


def softmax_cross_entropy_grad(logits, labels):
    """dL/dz = (softmax(z) − onehot(label))/B for L = (1/B)·Σ_b [logsumexp(z_b) − z_b[label_b]].

    Per row, ∂logsumexp(z)/∂z_j = exp(z_j)/Σ_k exp(z_k) = softmax(z)_j and ∂z[label]/∂z_j = [j = label];
    the mean over B rows divides by B.
    """
    onehot = jax.nn.one_hot(labels, logits.shape[1], dtype=logits.dtype)
    return (jax.nn.softmax(logits) - onehot) / logits.shape[0]


#: loss -> dL/dpred, written by hand.
LOSS_GRADS: dict[Callable, Callable] = {
    mse: mse_grad,
    softmax_cross_entropy: softmax_cross_entropy_grad,
}


def neuron_grad(w, x, t, activation_name: str = "identity"):
    """dL/dw = 2(y − t)·a'(w·x)·x for y = a(w·x), L = (y − t)²."""
    a, a_prime = activation(activation_name)
    w, x, t = (jnp.asarray(v) for v in (w, x, t))
    z = w * x
    return 2 * (a(z) - t) * a_prime(z) * x


def tiny_net_backward(w1, w2, x, t) -> dict:
    """The document's derivation step by step: `{name: (value, dL/dname)}` for L = (y − t)².

    Forward z1 = w1·x, a1 = relu(z1), y = w2·a1, L = (y − t)². Backward, last to first: dL/dL = 1,
    dL/dy = 2(y − t), dL/dw2 = dL/dy·a1, dL/da1 = dL/dy·w2, dL/dz1 = dL/da1·relu'(z1),
    dL/dw1 = dL/dz1·x, dL/dx = dL/dz1·w1, dL/dt = −2(y − t). Names: w1, w2, x, t, z1, a1, y, "y − t", L.
    """
    relu, relu_prime = activation("relu")
    w1, w2, x, t = (jnp.asarray(v) for v in (w1, w2, x, t))
    z1 = w1 * x
    a1 = relu(z1)
    y = w2 * a1
    dL_dy = 2 * (y - t)
    dL_da1 = dL_dy * w2
    dL_dz1 = dL_da1 * relu_prime(z1)
    return {
        "w1": (w1, dL_dz1 * x),
        "w2": (w2, dL_dy * a1),
        "x": (x, dL_dz1 * w1),
        "t": (t, -dL_dy),
        "z1": (z1, dL_dz1),
        "a1": (a1, dL_da1),
        "y": (y, dL_dy),
        "y − t": (y - t, dL_dy),
        "L": ((y - t) ** 2, jnp.ones_like(y)),
    }


def tiny_net_grads(w1, w2, x, t) -> dict:
    """Gradients of L = (y − t)² for y = w2·relu(w1·x), by the chain rule.

    dL/dw2 = 2(y − t)·a1;  dL/dw1 = 2(y − t)·w2·relu'(z1)·x;  dL/dx = 2(y − t)·w2·relu'(z1)·w1.
    """
    steps = tiny_net_backward(w1, w2, x, t)
    return {name: steps[name][1] for name in ("w1", "w2", "x")}


def value_and_grad(model: Model, loss: Callable = mse) -> Callable:
    """`f(params, x, y) -> (loss, grads)` by a hand-written forward and backward pass.

    Same contract as `jax.value_and_grad(loss_fn(model, loss))`; `loss` is one of LOSS_GRADS.
    """
    forward = model.vjp
    if forward is None:
        raise TypeError(
            "manual.value_and_grad needs a model built from layers with hand-written "
            "derivatives (Sequential of Linear, ReLU, Sigmoid, Tanh)"
        )
    if loss not in LOSS_GRADS:
        raise ValueError(
            f"manual.value_and_grad knows the derivatives of {[f.__name__ for f in LOSS_GRADS]}, got {loss!r}"
        )
    loss_grad = LOSS_GRADS[loss]

    def f(params, x, y):
        pred, backward = forward(params, x)  # steps 1–2: forward, keeping each layer's input
        value = loss(pred, y)  # step 3: loss
        grads, _ = backward(loss_grad(pred, jnp.asarray(y)))  # step 4: chain rule, last layer first
        return value, grads

    return f

"""The documents' derivatives written out by hand: an independent reference for `jax.grad`.

Nothing here calls jax autodiff. `neuron_grad`, `tiny_net_backward` and `tiny_net_grads` are the
documents' formulas; `value_and_grad` is the four-step algorithm for any Sequential of Linear, ReLU,
Sigmoid, Tanh and Dropout: a forward pass that keeps what each layer needs (a Dropout layer its mask), the
loss, then each layer's hand-written backward (`Model.vjp`) applied in reverse order. `per_example_grads` is
that backward pass once per example (`jax.vmap`, which vectorises and does not differentiate);
`tiny_net_hessian` the tiny network's second derivatives.
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp

from bp_jax._layers import Model, activation, call
from bp_jax._losses import mse, softmax_cross_entropy


def mse_grad(pred, target):
    """dL/dy = 2(y − t)/N for L = (1/N)·Σ(y − t)² over all N elements.

    Args:
      pred (jax.Array): the predictions y.
      target (jax.Array): the targets t, of pred's shape.

    Returns:
      (jax.Array): dL/dy, of pred's shape.

    Examples:
      >>> import jax.numpy as jnp
      >>> from bp_jax import manual
      >>> manual.mse_grad(jnp.array([1.0, 2.0]), jnp.array([0.0, 0.0])).tolist()   # 2·(1, 2)/2
      [1.0, 2.0]
    """
    return 2 * (pred - target) / pred.size


def softmax_cross_entropy_grad(logits, labels):
    """dL/dz = (softmax(z) − onehot(label))/B for L = (1/B)·Σ_b [logsumexp(z_b) − z_b[label_b]].

    Per row, ∂logsumexp(z)/∂z_j = exp(z_j)/Σ_k exp(z_k) = softmax(z)_j and ∂z[label]/∂z_j = [j = label];
    the mean over B rows divides by B.

    Args:
      logits (jax.Array): the logits z, shape (B, C).
      labels (jax.Array): integer class indices, shape (B,), each in [0, C); a row whose label is outside
        it is NaN, as `softmax_cross_entropy` is then NaN (it cannot raise on traced labels).

    Returns:
      (jax.Array): dL/dz, shape (B, C).

    Examples:
      >>> import jax.numpy as jnp
      >>> from bp_jax import manual
      >>> manual.softmax_cross_entropy_grad(jnp.array([[0.0, 0.0]]), jnp.array([0])).tolist()
      [[-0.5, 0.5]]
    """
    classes = logits.shape[1]
    onehot = jax.nn.one_hot(labels, classes, dtype=logits.dtype)
    known = ((labels >= 0) & (labels < classes))[:, None]
    return jnp.where(known, jax.nn.softmax(logits) - onehot, jnp.nan) / logits.shape[0]


LOSS_GRADS: dict[Callable, Callable] = {
    mse: mse_grad,
    softmax_cross_entropy: softmax_cross_entropy_grad,
}
"""loss -> dL/dpred, written by hand: the losses `value_and_grad` knows."""


def neuron_grad(w, x, t, activation_name: str = "identity"):
    """dL/dw = 2(y − t)·a'(w·x)·x for the single neuron y = a(w·x), L = (y − t)².

    Args:
      w (jax.typing.ArrayLike): the weight.
      x (jax.typing.ArrayLike): the input.
      t (jax.typing.ArrayLike): the target.
      activation_name: a key of `bp_jax.ACTIVATIONS`: "identity", "relu", "sigmoid" or "tanh".

    Returns:
      (jax.Array): dL/dw.

    Raises:
      ValueError: an unknown activation.

    Examples:
      >>> from bp_jax import manual
      >>> round(float(manual.neuron_grad(0.8, 1.5, 0.5)), 4)   # 2·(1.2 − 0.5)·1·1.5
      2.1
      >>> round(float(manual.neuron_grad(0.8, 1.5, 0.5, "sigmoid")), 4)
      0.1433
    """
    a, a_prime = activation(activation_name)
    w, x, t = (jnp.asarray(v) for v in (w, x, t))
    z = w * x
    return 2 * (a(z) - t) * a_prime(z) * x


def tiny_net_backward(w1, w2, x, t) -> dict:
    """The document's derivation step by step: `{name: (value, dL/dname)}` for L = (y − t)².

    Forward z1 = w1·x, a1 = relu(z1), y = w2·a1, L = (y − t)². Backward, last to first: dL/dL = 1,
    dL/dy = 2(y − t), dL/dw2 = dL/dy·a1, dL/da1 = dL/dy·w2, dL/dz1 = dL/da1·relu'(z1),
    dL/dw1 = dL/dz1·x, dL/dx = dL/dz1·w1, dL/dt = −2(y − t).

    Args:
      w1 (jax.typing.ArrayLike): the first weight.
      w2 (jax.typing.ArrayLike): the second weight.
      x (jax.typing.ArrayLike): the input.
      t (jax.typing.ArrayLike): the target.

    Returns:
      (value, dL/dvalue) for each of w1, w2, x, t, z1, a1, y, "y − t" and L, in that order.

    Examples:
      >>> from bp_jax import manual
      >>> steps = manual.tiny_net_backward(w1=0.5, w2=1.5, x=2.0, t=3.0)
      >>> for name, (value, grad) in steps.items():   # name, value, dL/dname
      ...     print(f"{name:5}  {float(value):5g}  {float(grad):5g}")
      w1       0.5     -9
      w2       1.5     -3
      x          2  -2.25
      t          3      3
      z1         1   -4.5
      a1         1   -4.5
      y        1.5     -3
      y − t   -1.5     -3
      L       2.25      1
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

    Args:
      w1 (jax.typing.ArrayLike): the first weight.
      w2 (jax.typing.ArrayLike): the second weight.
      x (jax.typing.ArrayLike): the input.
      t (jax.typing.ArrayLike): the target.

    Returns:
      `{"w1": dL/dw1, "w2": dL/dw2, "x": dL/dx}`.

    Examples:
      >>> from bp_jax import manual
      >>> grads = manual.tiny_net_grads(w1=0.5, w2=1.5, x=2.0, t=3.0)
      >>> {name: float(grad) for name, grad in grads.items()}   # the document's numbers
      {'w1': -9.0, 'w2': -3.0, 'x': -2.25}
    """
    steps = tiny_net_backward(w1, w2, x, t)
    return {name: steps[name][1] for name in ("w1", "w2", "x")}


def value_and_grad(model: Model, loss: Callable = mse) -> Callable:
    """`f(params, x, y, *, key=None) -> (loss, grads)` by a hand-written forward and backward pass.

    Same contract as `jax.value_and_grad(loss_fn(model, loss))`, the key included: forward through
    `model.vjp`, keeping each layer's input (a Dropout layer its mask m, drawn from the key as `apply` draws
    it); the loss; then dL/dpred (LOSS_GRADS) through each layer's backward, last layer first (Dropout's:
    dL/dx = dL/dy·m/(1 − rate)).

    Args:
      model: a model with a hand-written `vjp`: a Sequential of Linear, ReLU, Sigmoid, Tanh and Dropout (e.g.
        `mlp`).
      loss: one of LOSS_GRADS: `bp_jax.mse` or `bp_jax.softmax_cross_entropy`.

    Returns:
      The function `f(params, x, y, *, key=None) -> (loss, grads)`, grads in the structure of params.

    Raises:
      TypeError: a model without a hand-written `vjp`.
      ValueError: a loss whose derivative is not in LOSS_GRADS.

    Examples:
      >>> import jax
      >>> import jax.numpy as jnp
      >>> from bp_jax import loss_fn, manual, mlp
      >>> model = mlp((3, 2, 1))
      >>> params, x, y = model.init(jax.random.key(0)), jnp.ones((4, 3)), jnp.zeros((4, 1))
      >>> loss, grads = manual.value_and_grad(model)(params, x, y)
      >>> expected = jax.grad(loss_fn(model))(params, x, y)
      >>> all(jax.tree.leaves(jax.tree.map(lambda a, b: bool(jnp.allclose(a, b, atol=1e-6)), grads, expected)))
      True
    """
    forward = model.vjp
    if forward is None:
        raise TypeError(
            "manual.value_and_grad needs a model built from layers with hand-written "
            "derivatives (Sequential of Linear, ReLU, Sigmoid, Tanh, Dropout)"
        )
    if loss not in LOSS_GRADS:
        raise ValueError(
            f"manual.value_and_grad knows the derivatives of {[f.__name__ for f in LOSS_GRADS]}, got {loss!r}"
        )
    loss_grad = LOSS_GRADS[loss]

    def f(params, x, y, *, key=None):
        pred, backward = call(forward, model, params, x, key)  # steps 1–2: forward, keeping each layer's input
        value = loss(pred, y)  # step 3: loss
        grads, _ = backward(loss_grad(pred, jnp.asarray(y)))  # step 4: chain rule, last layer first
        return value, grads

    return f


def per_example_grads(model: Model, loss: Callable = mse) -> Callable:
    """`f(params, x, y)` -> each example's own gradient, by the hand-written backward pass.

    Example i's own loss is the loss on a batch of that one example,
    `loss(model.apply(params, x[i:i+1]), y[i:i+1])`, so no 1/B factor: for `mse` its dL/dpred is
    2(y_i − t_i)/C over the example's C outputs, for `softmax_cross_entropy` softmax(z_i) − onehot(label_i).
    Through a Linear layer the backward signal δ_i (dL/d its output) gives dW_i = δ_i ⊗ x_i, the outer
    product with the example's input, and db_i = δ_i; the batch gradient of the mean loss is the mean of
    the rows. Computed as `value_and_grad(model, loss)` on one-example batches under `jax.vmap`, which
    batches the same hand-written formulas (no autodiff).

    Args:
      model: a model with a hand-written `vjp`, as for `value_and_grad`.
      loss: one of LOSS_GRADS: `bp_jax.mse` or `bp_jax.softmax_cross_entropy`.

    Returns:
      The function `f(params, x, y)` -> the params pytree with a leading batch axis: row i is example
        i's gradient. It raises ValueError unless x and y share their leading (batch) axis, and where the
        loss does on the whole batch (concrete labels outside the model's classes, say; traced ones give NaN
        rows, as the loss gives NaN).

    Raises:
      TypeError: a model without a hand-written `vjp`.
      ValueError: a loss whose derivative is not in LOSS_GRADS.

    Examples:
      >>> import jax
      >>> import jax.numpy as jnp
      >>> from bp_jax import manual, mlp
      >>> model = mlp((3, 2, 1))
      >>> params, x, y = model.init(jax.random.key(0)), jnp.ones((4, 3)), jnp.zeros((4, 1))
      >>> rows = manual.per_example_grads(model)(params, x, y)
      >>> jax.tree.map(jnp.shape, rows)
      ({'bias': (4, 2), 'weight': (4, 2, 3)}, {}, {'bias': (4, 1), 'weight': (4, 1, 2)})
    """
    value_and_grad_one = value_and_grad(model, loss)

    def f(params, x, y):
        x, y = jnp.asarray(x), jnp.asarray(y)
        if x.ndim < 1 or y.ndim < 1 or x.shape[0] != y.shape[0]:
            raise ValueError(
                "per_example_grads expects x and y with the same leading batch axis, "
                f"got shapes {x.shape} and {y.shape}"
            )
        jax.eval_shape(lambda params, x: loss(model.apply(params, x), y), params, x)  # the loss's checks, on y
        one = lambda x_i, y_i: value_and_grad_one(params, x_i[None], y_i[None])[1]
        return jax.vmap(one)(x, y)

    return f


def tiny_net_hessian(w1, w2, x, t):
    """The 2×2 Hessian of L = (w2·relu(w1·x) − t)² in (w1, w2), by hand.

    With z = w1·x, s = relu'(z) ∈ {0, 1}, a = relu(z), y = w2·a, r = y − t, the gradient is
    ∂L/∂w1 = 2r·w2·s·x and ∂L/∂w2 = 2r·a. Differentiating again, with ∂r/∂w1 = w2·s·x, ∂r/∂w2 = a,
    ∂a/∂w1 = s·x, ∂a/∂w2 = 0 and relu'' = 0 (away from the kink; jax.nn.relu's rule gives 0 there too):

        ∂²L/∂w1² = 2(w2·s·x)²,   ∂²L/∂w2² = 2a²,   ∂²L/∂w1∂w2 = 2s·x·(a·w2 + r) = 2s·x·(2y − t).

    At the document's x = 2, w1 = 0.5, w2 = 1.5, t = 3: [[18, 0], [0, 2]] (the cross term vanishes as
    2y = t there).

    Args:
      w1 (jax.typing.ArrayLike): the first weight (a scalar).
      w2 (jax.typing.ArrayLike): the second weight (a scalar).
      x (jax.typing.ArrayLike): the input (a scalar).
      t (jax.typing.ArrayLike): the target (a scalar).

    Returns:
      (jax.Array): [[∂²L/∂w1², ∂²L/∂w1∂w2], [∂²L/∂w1∂w2, ∂²L/∂w2²]], shape (2, 2).

    Examples:
      >>> from bp_jax import manual
      >>> manual.tiny_net_hessian(w1=0.5, w2=1.5, x=2.0, t=3.0).tolist()
      [[18.0, 0.0], [0.0, 2.0]]
    """
    relu, relu_prime = activation("relu")
    w1, w2, x, t = (jnp.asarray(v) for v in (w1, w2, x, t))
    z = w1 * x
    s, a = relu_prime(z), relu(z)
    y = w2 * a
    cross = 2 * s * x * (2 * y - t)
    return jnp.stack([jnp.stack([2 * (w2 * s * x) ** 2, cross]), jnp.stack([cross, 2 * a**2])])

"""Training steps: the update written by hand, and the same step for any optax optimizer.

Both are jitted and donate their params (and optimizer state) buffers; shape errors surface at trace
time, before anything is donated, so a failed call leaves the caller's params intact.
"""

import math
import numbers
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax


def check_lr(lr) -> float:
    """lr as a float; ValueError unless it is finite and > 0."""
    is_scalar_array = isinstance(lr, (np.ndarray, jax.Array)) and lr.shape == ()
    if isinstance(lr, bool) or not (isinstance(lr, numbers.Real) or is_scalar_array):
        raise TypeError(f"lr must be a real number, got {lr!r}")
    value = float(lr)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"lr must be finite and > 0, got {lr!r}")
    return value


def check_optimizer(optimizer) -> optax.GradientTransformation:
    """The optimizer; TypeError unless it is an optax.GradientTransformation."""
    if not isinstance(optimizer, optax.GradientTransformation):
        raise TypeError(
            f"optimizer must be an optax.GradientTransformation (e.g. optax.sgd(0.01)), got {type(optimizer).__name__}"
        )
    return optimizer


def _keyed(key) -> dict:
    """The keyword arguments handing a stochastic loss its `key`: none without one."""
    return {} if key is None else {"key": key}


def sgd_update(loss_fn: Callable) -> Callable:
    """Unjitted `(params, x, y, lr, key=None) -> (params, loss)` with w ← w − lr·dL/dw; lr may be traced, and is
    taken in each weight's dtype (as a Python float would be); a key goes to a stochastic loss_fn."""
    value_and_grad = jax.value_and_grad(loss_fn)

    def update(params, x, y, lr, key=None):
        loss, grads = value_and_grad(params, x, y, **_keyed(key))
        return jax.tree.map(lambda w, g: w - jnp.asarray(lr, g.dtype) * g, params, grads), loss

    return update


def optax_update(loss_fn: Callable, optimizer: optax.GradientTransformation) -> Callable:
    """Unjitted `(params, opt_state, x, y, key=None) -> (params, opt_state, loss)` for an optax optimizer; a key
    goes to a stochastic loss_fn."""
    optimizer = check_optimizer(optimizer)
    value_and_grad = jax.value_and_grad(loss_fn)

    def update(params, opt_state, x, y, key=None):
        loss, grads = value_and_grad(params, x, y, **_keyed(key))
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return update


def sgd_step(loss_fn: Callable, lr: float) -> Callable:
    """Jitted `step(params, x, y) -> (new_params, loss)`: w ← w − lr·dL/dw, written by hand.

    The step donates its params' buffers; the loss is the one at the params before the update.

    Args:
      loss_fn: `f(params, x, y) -> scalar`, e.g. `bp_jax.loss_fn(model)`.
      lr (float): the learning rate, finite and > 0; taken in each weight's dtype.

    Returns:
      The jitted step function.

    Raises:
      TypeError: an lr that is not a real number.
      ValueError: an lr that is not finite and > 0.

    Examples:
      >>> import jax.numpy as jnp
      >>> from bp_jax import loss_fn, sgd_step, tiny_net
      >>> step = sgd_step(loss_fn(tiny_net()), lr=0.01)
      >>> params = {"w1": jnp.array(0.5), "w2": jnp.array(1.5)}
      >>> params, loss = step(params, 2.0, 3.0)   # dL/dw1 = −9, dL/dw2 = −3 at the document's point
      >>> float(loss), round(float(params["w1"]), 4), round(float(params["w2"]), 4)
      (2.25, 0.59, 1.53)
    """
    lr, update = check_lr(lr), sgd_update(loss_fn)
    return jax.jit(lambda params, x, y: update(params, x, y, lr), donate_argnums=0)


def optax_step(loss_fn: Callable, optimizer: optax.GradientTransformation) -> Callable:
    """Jitted `step(params, opt_state, x, y) -> (params, opt_state, loss)` for any optax optimizer.

    updates, opt_state ← optimizer.update(dL/dparams, opt_state, params); params ← params + updates. The
    step donates its params' and optimizer state's buffers.

    Args:
      loss_fn: `f(params, x, y) -> scalar`, e.g. `bp_jax.loss_fn(model)`.
      optimizer: an optax.GradientTransformation, e.g. `optax.adam(1e-3)`.

    Returns:
      The jitted step function.

    Raises:
      TypeError: an optimizer that is not an optax.GradientTransformation.

    Examples:
      >>> import jax.numpy as jnp
      >>> import optax
      >>> from bp_jax import loss_fn, optax_step, tiny_net
      >>> optimizer = optax.sgd(0.01)   # the documents' torch.optim.SGD(lr=0.01)
      >>> step = optax_step(loss_fn(tiny_net()), optimizer)
      >>> params = {"w1": jnp.array(0.5), "w2": jnp.array(1.5)}
      >>> params, opt_state, loss = step(params, optimizer.init(params), 2.0, 3.0)
      >>> float(loss), round(float(params["w1"]), 4), round(float(params["w2"]), 4)
      (2.25, 0.59, 1.53)
    """
    return jax.jit(optax_update(loss_fn, optimizer), donate_argnums=(0, 1))

"""The fused training loop: many steps compiled into one XLA program with `lax.scan`.

Steps run in chunks of `chunk_size`; between chunks the host may report progress or checkpoint, with no
per-step round trip. Minibatch order is a pure function of (key, step), so a run can stop anywhere and
resume to the same params as an uninterrupted one.
"""

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from bp_jax._mesh import batch_sharded, data_devices, place, replicated
from bp_jax._steps import check_lr, check_optimizer, optax_update, sgd_update


class FitResult(NamedTuple):
    """Final `params` and `opt_state` (None for the hand-written SGD), the loss before each step
    (`losses[i]` belongs to step `start_step + i`), and the number of steps taken in all."""

    params: Any
    opt_state: Any
    losses: jax.Array
    step: int


class NonFiniteLoss(FloatingPointError):
    """Training produced a NaN or inf; `result` holds the last params whose loss and values were finite."""

    def __init__(self, step: int, result: FitResult):
        super().__init__(f"loss became non-finite at step {step}; stopped with the last finite params")
        self.step = step
        self.result = result


def _epoch_order(key: jax.Array, epoch, num_examples: int) -> jax.Array:
    return jax.random.permutation(jax.random.fold_in(key, epoch), num_examples)


def minibatch_indices(key: jax.Array, step, num_examples: int, batch_size: int) -> jax.Array:
    """Rows of minibatch `step`: epoch e = step // (n // b) reads a fresh permutation drawn from
    fold_in(key, e), slice (step mod n // b)·b, taking n // b full batches per epoch."""
    epoch, position = jnp.divmod(step, num_examples // batch_size)
    return jax.lax.dynamic_slice_in_dim(_epoch_order(key, epoch, num_examples), position * batch_size,
                                        batch_size)


def _check_fit_args(x, y, steps, batch_size, lr, optimizer, key, chunk_size, mesh):
    if (lr is None) == (optimizer is None):
        raise ValueError("fit takes exactly one of lr (hand-written SGD) or optimizer (optax), "
                         f"got lr={lr!r}, optimizer={optimizer!r}")
    for name, value in (("steps", steps), ("chunk_size", chunk_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < (name == "chunk_size"):
            raise ValueError(f"{name} must be a {'positive' if name == 'chunk_size' else 'non-negative'} "
                             f"int, got {value!r}")
    if jnp.ndim(x) < 1 or jnp.ndim(y) < 1 or jnp.shape(x)[0] != jnp.shape(y)[0]:
        raise ValueError(f"x and y must share their leading (example) axis, got shapes "
                         f"{jnp.shape(x)} and {jnp.shape(y)}")
    if batch_size is not None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or not 1 <= batch_size <= len(x):
            raise ValueError(f"batch_size must be an int in [1, {len(x)}] (the number of examples), "
                             f"got {batch_size!r}")
        if key is None:
            raise ValueError("fit needs a PRNG key to shuffle minibatches when batch_size is set")
    if mesh is not None:
        devices, batch = data_devices(mesh), len(x) if batch_size is None else batch_size
        if batch % devices:
            raise ValueError(f"the global batch of {batch} examples does not split evenly over the mesh's "
                             f"{devices} 'data' devices; use a batch size that is a multiple of {devices}")


def fit(loss_fn: Callable, params, x, y, *, steps: int, batch_size: int | None = None, lr=None,
        optimizer: optax.GradientTransformation | None = None, key: jax.Array | None = None,
        opt_state=None, start_step: int = 0, chunk_size: int = 1000, unroll: int = 4,
        on_chunk: Callable[[FitResult], None] | None = None, mesh: jax.sharding.Mesh | None = None) -> FitResult:
    """Train for `steps` steps from `start_step`; returns a FitResult.

    Exactly one of `lr` (w ← w − lr·g, as `sgd_step`) or `optimizer` (any optax GradientTransformation,
    as `optax_step`; state from `optimizer.init` unless `opt_state` is given). Full batch when
    `batch_size` is None, else the rows `minibatch_indices(key, step, len(x), batch_size)`.
    Chunk boundaries fall on multiples of `chunk_size`; after each, `on_chunk(FitResult)` gets the state
    so far with that chunk's losses.
    A step whose loss or new params are not finite is not applied: fit raises NonFiniteLoss naming it,
    carrying the last finite params. The caller's params are never donated.

    With a `mesh` (`data_parallel_mesh`), each batch (full or minibatch) is split over its "data" axis,
    which must divide it; params, optimizer state and the returned arrays are replicated, and the
    compiler reduces the gradients. A mesh spanning processes takes the same x and y in every process.
    """
    _check_fit_args(x, y, steps, batch_size, lr, optimizer, key, chunk_size, mesh)
    if optimizer is None:
        lr, opt_state = check_lr(lr), None
    else:
        opt_state = check_optimizer(optimizer).init(params) if opt_state is None else opt_state
    run_chunk = _chunk_runner(loss_fn, lr, optimizer, batch_size, unroll, mesh)
    if mesh is not None:
        params, opt_state, key = jax.tree.map(lambda leaf: place(leaf, replicated(mesh)), (params, opt_state, key))
        data_layout = batch_sharded(mesh) if batch_size is None else replicated(mesh)
        x, y = place(x, data_layout), place(y, data_layout)
    state = jax.tree.map(jnp.copy, (params, opt_state))
    step, end, losses = start_step, start_step + steps, []
    while step < end:
        length = min(end, (step // chunk_size + 1) * chunk_size) - step
        state, chunk_losses, bad = run_chunk(state, x, y, key, jnp.asarray(step), length)
        if int(bad) >= 0:
            losses.append(chunk_losses[: int(bad) + 1])
            raise NonFiniteLoss(step + int(bad), FitResult(*state, jnp.concatenate(losses), step + int(bad)))
        losses.append(chunk_losses)
        step += length
        if on_chunk is not None:
            on_chunk(FitResult(*state, chunk_losses, step))
    return FitResult(*state, jnp.concatenate(losses) if losses else jnp.zeros(0), step)


def _all_finite(tree) -> jax.Array:
    return jnp.all(jnp.asarray([jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree.leaves(tree)]))


@functools.lru_cache(maxsize=32)  # so that repeated fits of the same problem reuse their compilation
def _chunk_runner(loss_fn, lr, optimizer, batch_size, unroll, mesh):
    """jit of `length` steps under lax.scan; returns the new state, the losses, and the index of the
    first non-finite step in the chunk (−1 if none), after which the state stays frozen.
    With a mesh every minibatch is split over "data" and every output is replicated."""
    if optimizer is None:
        update = sgd_update(loss_fn, lr)

        def step_fn(params, opt_state, x, y):
            params, loss = update(params, x, y)
            return params, opt_state, loss
    else:
        step_fn = optax_update(loss_fn, optimizer)

    @functools.partial(jax.jit, static_argnums=5, donate_argnums=0,
                       out_shardings=None if mesh is None else replicated(mesh))
    def run(state, x, y, key, first_step, length):
        num_examples = x.shape[0]
        if batch_size is not None:  # the permutations of every epoch this chunk touches, drawn once
            batches_per_epoch = num_examples // batch_size
            first_epoch = first_step // batches_per_epoch
            epochs = first_epoch + jnp.arange((length - 1) // batches_per_epoch + 2)
            orders = jax.vmap(lambda epoch: _epoch_order(key, epoch, num_examples))(epochs)

        def body(carry, step):
            state, bad = carry
            if batch_size is None:
                xb, yb = x, y
            else:  # the rows of minibatch_indices(key, step, num_examples, batch_size)
                epoch, position = jnp.divmod(step, batches_per_epoch)
                rows = jax.lax.dynamic_slice(orders, (epoch - first_epoch, position * batch_size),
                                             (1, batch_size))[0]
                xb, yb = x[rows], y[rows]
                if mesh is not None:  # each device gathers only its own rows of the minibatch
                    xb, yb = jax.lax.with_sharding_constraint((xb, yb), batch_sharded(mesh))
            params, opt_state, loss = step_fn(*state, xb, yb)
            finite = jnp.isfinite(loss) & _all_finite(params) & (bad < 0)
            state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), (params, opt_state), state)
            bad = jnp.where((bad < 0) & ~finite, step - first_step, bad)
            return (state, bad), loss

        steps = first_step + jnp.arange(length)
        (state, bad), losses = jax.lax.scan(body, (state, jnp.asarray(-1)), steps, unroll=unroll)
        return state, losses, bad

    return run

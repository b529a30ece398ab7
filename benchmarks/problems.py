"""The bp_jax problems the suites time: an MLP of Linear layers with ReLU between, and its data."""

import jax
import jax.numpy as jnp

import bp_jax

SEED_SIZES = (10, 5, 1)  # the documents' nn.Sequential(nn.Linear(10, 5), nn.ReLU(), nn.Linear(5, 1))
SEED_BATCH = 32
SEED_ROWS = 354  # the training split of the diabetes data `bp-jax train` reads by default (442 × 0.8)


def mlp(sizes: tuple[int, ...], dtype=jnp.float32) -> bp_jax.Model:
    layers = [bp_jax.Linear(sizes[0], sizes[1], dtype=dtype)]
    for fan_in, fan_out in zip(sizes[1:], sizes[2:]):
        layers += [bp_jax.ReLU(), bp_jax.Linear(fan_in, fan_out, dtype=dtype)]
    return bp_jax.Sequential(*layers)


def mlp_problem(sizes: tuple[int, ...], batch: int, dtype=jnp.float32, seed: int = 0):
    """(model, params, x, y) with x, y ~ N(0, 1) of shapes (batch, sizes[0]) and (batch, sizes[-1])."""
    model = mlp(sizes, dtype)
    params_key, x_key, y_key = jax.random.split(jax.random.key(seed), 3)
    x = jax.random.normal(x_key, (batch, sizes[0]), dtype)
    y = jax.random.normal(y_key, (batch, sizes[-1]), dtype)
    return model, model.init(params_key), x, y


def param_count(params) -> int:
    return sum(leaf.size for leaf in jax.tree.leaves(params))


def param_bytes(params) -> int:
    return sum(leaf.nbytes for leaf in jax.tree.leaves(params))


def chained(step, state: list, x, y):
    """A call running `step(*state, x, y) -> (*state, loss)` on the state the previous call returned
    (bp_jax's steps donate it); returns the loss, left on the device."""

    def call():
        nonlocal state
        *state, loss = step(*state, x, y)
        return loss

    return call

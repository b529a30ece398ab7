"""The bp_jax problems the suites time: an MLP of Linear layers with ReLU between, and its data
(the documents' seed MLP and its data from `bp_jax.documents`, at any sizes)."""

import jax
import jax.numpy as jnp

from bp_jax import documents

SEED_SIZES = documents.SEED_SIZES  # the documents' nn.Sequential(nn.Linear(10, 5), nn.ReLU(), nn.Linear(5, 1))
SEED_BATCH = documents.SEED_BATCH
SEED_ROWS = 354  # the training split of the diabetes data `bp-jax train` reads by default (442 × 0.8)


def mlp_problem(sizes: tuple[int, ...], batch: int, dtype=jnp.float32, seed: int = 0):
    """(model, params, x, y) with x, y ~ N(0, 1) of shapes (batch, sizes[0]) and (batch, sizes[-1])."""
    return documents.seed_problem(jax.random.key(seed), batch, sizes=sizes, dtype=dtype)


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

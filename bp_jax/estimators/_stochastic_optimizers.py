"""sklearn's solvers as optax transformations, as scikit-learn's `neural_network/_stochastic_optimizers.py` holds its
SGDOptimizer and AdamOptimizer: the same updates, every hyperparameter (η, μ, Nesterov, β₁, β₂, ε) in
`opt_state.hyperparams` (data, not program), so a grid over them, or a schedule changing η, compiles nothing new."""

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax


class SGDState(NamedTuple):
    """sklearn's SGD state: the velocity v, in update units."""

    velocity: Any


def sklearn_sgd(learning_rate, momentum, nesterov) -> optax.GradientTransformation:
    """sklearn's SGDOptimizer: v ← μ·v − η·g, and the update v, or with Nesterov μ·v − η·g (v the new velocity).

    Unlike `optax.sgd` (v ← g + μ·v, update −η·v), the velocity holds past rates, so a new η applies to new
    gradients only, as sklearn's schedules expect.

    Args:
        learning_rate: η.
        momentum: μ.
        nesterov: 1 for Nesterov's momentum, 0 for plain (a number: data).

    Returns:
        The transformation.
    """

    def update(grads, state, params=None):
        step = lambda v, g: momentum * v - learning_rate * g
        velocity = jax.tree.map(step, state.velocity, grads)
        updates = jax.tree.map(lambda v, g: jnp.where(nesterov > 0, step(v, g), v), velocity, grads)
        return updates, SGDState(velocity)

    return optax.GradientTransformation(lambda params: SGDState(jax.tree.map(jnp.zeros_like, params)), update)


class AdamState(NamedTuple):
    """sklearn's Adam state: the step count t and the moments m, v."""

    t: jax.Array
    mu: Any
    nu: Any


def sklearn_adam(learning_rate, beta_1, beta_2, epsilon) -> optax.GradientTransformation:
    """sklearn's AdamOptimizer: t ← t + 1, m ← β₁·m + (1 − β₁)·g, v ← β₂·v + (1 − β₂)·g², and the update
    −η·√(1 − β₂ᵗ)/(1 − β₁ᵗ) · m/(√v + ε) (ε added to the uncorrected √v; `optax.adam` adds it to √v̂).

    Args:
        learning_rate: η.
        beta_1: β₁.
        beta_2: β₂.
        epsilon: ε.

    Returns:
        The transformation.
    """

    def init(params):
        zeros = jax.tree.map(jnp.zeros_like, params)
        return AdamState(jnp.zeros((), jnp.int32), zeros, zeros)

    def update(grads, state, params=None):
        t = state.t + 1
        mu = jax.tree.map(lambda m, g: beta_1 * m + (1 - beta_1) * g, state.mu, grads)
        nu = jax.tree.map(lambda v, g: beta_2 * v + (1 - beta_2) * g**2, state.nu, grads)
        rate = learning_rate * jnp.sqrt(1 - beta_2**t) / (1 - beta_1**t)
        updates = jax.tree.map(lambda m, v: -rate * m / (jnp.sqrt(v) + epsilon), mu, nu)
        return updates, AdamState(t, mu, nu)

    return optax.GradientTransformation(init, update)


#: Each solver's factory and its hyperparameters, as `sklearn_sgd` and `sklearn_adam` name them.
SOLVERS = {
    "sgd": (sklearn_sgd, ("learning_rate", "momentum", "nesterov")),
    "adam": (sklearn_adam, ("learning_rate", "beta_1", "beta_2", "epsilon")),
}


@functools.lru_cache(maxsize=8)  # one transformation per solver: every configuration of it shares one program
def solver_transform(solver: str) -> optax.GradientTransformation:
    """sklearn's solver with its hyperparameters held in `opt_state.hyperparams` (set them with `initial_state`).

    Args:
        solver: "sgd" (`sklearn_sgd`) or "adam" (`sklearn_adam`).

    Returns:
        An `optax.inject_hyperparams` transformation.
    """
    factory, names = SOLVERS[solver]
    return optax.inject_hyperparams(factory)(**dict.fromkeys(names, 0.0))


def hyperparams(estimator) -> dict[str, float]:
    """An estimator's solver hyperparameters, as `solver_transform` names them (η is `learning_rate_init`)."""
    values = {
        "learning_rate": estimator.learning_rate_init,
        "momentum": estimator.momentum,
        "nesterov": float(bool(estimator.nesterovs_momentum)),
        "beta_1": estimator.beta_1,
        "beta_2": estimator.beta_2,
        "epsilon": estimator.epsilon,
    }
    return {name: values[name] for name in SOLVERS[estimator.solver][1]}


@functools.lru_cache(maxsize=64)
def _jitted_init(transform: optax.GradientTransformation, members: bool):
    return jax.jit(jax.vmap(transform.init) if members else transform.init)


def initial_state(transform, params, hyper: dict, *, members: bool = False):
    """A `solver_transform`'s first state with its hyperparameters set.

    Args:
        transform: a `solver_transform`.
        params: the params to train (a leading member axis on every leaf when `members`).
        hyper: each hyperparameter (`hyperparams`), one value or one per member.
        members: vmap the init over the members.

    Returns:
        `transform.init(params)` with `hyperparams` holding `hyper` as arrays.
    """
    state = _jitted_init(transform, members)(params)
    dtype = state.hyperparams["learning_rate"].dtype
    return state._replace(hyperparams={name: np.asarray(value, dtype) for name, value in hyper.items()})

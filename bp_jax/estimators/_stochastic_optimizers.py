"""sklearn's solvers as optax transformations, their learning rate and momentum as state (data, not program), as
scikit-learn's `neural_network/_stochastic_optimizers.py` holds its SGD and Adam."""

import functools

import jax
import numpy as np
import optax


@functools.lru_cache(maxsize=64)  # one transformation per configuration: equal configurations share one program
def solver_transform(
    solver: str, nesterov: bool, beta_1: float, beta_2: float, epsilon: float
) -> optax.GradientTransformation:
    """sklearn's solver, its learning rate η and momentum μ held in `opt_state.hyperparams`.

    sgd: v ← μ·v − η·g, w ← w + v (Nesterov: w ← w + μ·v − η·g); adam: `optax.adam` (ε added to √v̂).

    Args:
        solver: "sgd" or "adam".
        nesterov: Nesterov momentum for sgd.
        beta_1: adam's β₁.
        beta_2: adam's β₂.
        epsilon: adam's ε.

    Returns:
        An `optax.inject_hyperparams` transformation; set its rates with `initial_state`.
    """

    def rule(learning_rate, momentum):
        if solver == "sgd":
            return optax.sgd(learning_rate, momentum=momentum, nesterov=nesterov)
        return optax.adam(learning_rate, b1=beta_1, b2=beta_2, eps=epsilon)

    return optax.inject_hyperparams(rule)(learning_rate=0.0, momentum=0.0)


@functools.lru_cache(maxsize=64)
def _jitted_init(transform: optax.GradientTransformation, members: bool):
    return jax.jit(jax.vmap(transform.init) if members else transform.init)


def initial_state(transform, params, learning_rate, momentum, *, members: bool = False):
    """A `solver_transform`'s first state with its hyperparameters set.

    Args:
        transform: a `solver_transform`.
        params: the params to train (a leading member axis on every leaf when `members`).
        learning_rate: η, one value or one per member.
        momentum: μ, one value or one per member.
        members: vmap the init over the members.

    Returns:
        `transform.init(params)` with `hyperparams` holding η and μ as arrays.
    """
    state = _jitted_init(transform, members)(params)
    dtype = state.hyperparams["learning_rate"].dtype
    hyper = {"learning_rate": np.asarray(learning_rate, dtype), "momentum": np.asarray(momentum, dtype)}
    return state._replace(hyperparams=hyper)

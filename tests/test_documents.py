"""The seed documents' numbers, reproduced exactly: the tiny network at x = 2, w1 = 0.5, w2 = 1.5, target 3
(z1 = 1, a1 = 1, y = 1.5, L = 2.25; gradients w1 −9, w2 −3, x −2.25), the single neuron's formula and the seed MLP."""

import itertools

import jax
import jax.numpy as jnp
import optax
import pytest

import bp_jax
from bp_jax import documents, manual

X, W1, W2, TARGET = documents.TINY_NET.x, documents.TINY_NET.w1, documents.TINY_NET.w2, documents.TINY_NET.t


def test_the_catalogue_holds_the_documents_constants():
    assert (X, W1, W2, TARGET) == (2.0, 0.5, 1.5, 3.0)
    assert tuple(documents.NEURON) == (0.8, 1.5, 0.5)
    assert documents.TINY_NET_VALUES == {"z1": 1.0, "a1": 1.0, "y": 1.5, "L": 2.25}
    assert documents.TINY_NET_GRADS == {"w1": -9.0, "w2": -3.0, "x": -2.25}
    assert (documents.SEED_SIZES, documents.SEED_LR, documents.SEED_BATCH) == ((10, 5, 1), 0.01, 32)


def test_the_catalogues_tiny_net_equations_are_the_hand_derivation():
    steps = manual.tiny_net_backward(W1, W2, X, TARGET)
    values = {name: float(value) for name, (value, _) in steps.items()}
    assert {name: values[name] for name in documents.TINY_NET_VALUES} == documents.TINY_NET_VALUES
    assert set(documents.TINY_NET_EQUATIONS) | {"w1", "w2", "x", "t"} == set(steps)
    assert documents.tiny_net_loss(documents.TINY_NET.params, X, TARGET) == documents.TINY_NET_VALUES["L"]


def test_tiny_network_forward_values_and_loss():
    params = documents.TINY_NET.params
    z1 = W1 * X
    assert z1 == 1.0
    assert jax.nn.relu(z1) == 1.0
    assert bp_jax.tiny_net().apply(params, X) == 1.5
    assert bp_jax.loss_fn(bp_jax.tiny_net(), bp_jax.squared_error)(params, X, TARGET) == 2.25


def test_tiny_network_gradients_from_jax_grad_and_by_hand():
    loss = bp_jax.loss_fn(bp_jax.tiny_net(), bp_jax.squared_error)
    grads, grad_x = jax.grad(loss, argnums=(0, 1))({"w1": W1, "w2": W2}, X, TARGET)
    by_hand = manual.tiny_net_grads(W1, W2, X, TARGET)
    assert (grads["w1"], grads["w2"], grad_x) == (-9.0, -3.0, -2.25)
    assert (by_hand["w1"], by_hand["w2"], by_hand["x"]) == (-9.0, -3.0, -2.25)


def test_tiny_network_derivation_step_by_step():
    steps = manual.tiny_net_backward(W1, W2, X, TARGET)
    numbers = {name: (float(value), float(grad)) for name, (value, grad) in steps.items()}
    assert numbers == {
        "w1": (0.5, -9.0),
        "w2": (1.5, -3.0),
        "x": (2.0, -2.25),
        "t": (3.0, 3.0),
        "z1": (1.0, -4.5),
        "a1": (1.0, -4.5),
        "y": (1.5, -3.0),
        "y − t": (-1.5, -3.0),
        "L": (2.25, 1.0),
    }


@pytest.mark.parametrize("name", ["identity", "relu", "sigmoid", "tanh"])
def test_single_neuron_formula_is_the_documents(name):
    w, x, t = 0.7, -1.3, 0.4
    a = {
        "identity": lambda z: z,
        "relu": lambda z: max(z, 0.0),
        "sigmoid": lambda z: 1 / (1 + jnp.exp(-z)),
        "tanh": jnp.tanh,
    }[name]
    # a'(z) by central difference: an independent check of the table's hand-written derivative.
    z, h = w * x, 1e-3
    a_prime = (a(z + h) - a(z - h)) / (2 * h)
    expected = 2 * (a(z) - t) * a_prime * x
    assert manual.neuron_grad(w, x, t, name) == pytest.approx(float(expected), rel=1e-3, abs=1e-6)


def test_seed_mlp_layout_matches_nn_sequential():
    model, params, x, y = documents.seed_problem(jax.random.key(0))
    assert model.name == "Sequential(Linear(10, 5), ReLU(), Linear(5, 1))"
    shapes = jax.tree.map(jnp.shape, params)
    assert shapes == ({"weight": (5, 10), "bias": (5,)}, {}, {"weight": (1, 5), "bias": (1,)})
    assert (x.shape, y.shape) == ((32, 10), (32, 1))
    assert model.apply(params, x).shape == (32, 1)


def test_seed_training_step_lowers_the_loss():
    model, params, x, y = documents.seed_problem(jax.random.key(3))
    loss = bp_jax.loss_fn(model)
    optimizer = optax.sgd(documents.SEED_LR)
    step = bp_jax.optax_step(loss, optimizer)
    state = optimizer.init(params)
    losses = []
    for _ in range(50):
        params, state, value = step(params, state, x, y)
        losses.append(float(value))
    assert losses[-1] < losses[0]
    assert all(later <= earlier + 1e-6 for earlier, later in itertools.pairwise(losses))

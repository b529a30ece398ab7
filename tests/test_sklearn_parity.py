"""bp_jax's losses and gradients against scikit-learn's own MLP backprop (`_backprop`), on the same weights.

scikit-learn writes its backward pass by hand too: delta = activation(z) − y at the output (softmax with
log-loss, logistic with binary log-loss, identity with half squared error), then coef_grad = aᵀ·delta / n layer
by layer. Its MLPs carry no L2 penalty here (alpha=0). float64 throughout, to 1e-10.
"""

import inspect
import warnings

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import together

import bp_jax
from bp_jax import manual

neural_network = pytest.importorskip("sklearn.neural_network", reason="needs scikit-learn (the cli extra)")
from sklearn.exceptions import ConvergenceWarning  # noqa: E402

#: scikit-learn's hidden activation -> the bp_jax layer computing it.
LAYERS = {"relu": bp_jax.ReLU, "tanh": bp_jax.Tanh, "logistic": bp_jax.Sigmoid}


@pytest.fixture(autouse=True)
def float64():
    with jax.enable_x64(True), jax.default_matmul_precision("highest"):
        yield


def sklearn_network(estimator, activation, hidden, x, y):
    """An initialised scikit-learn MLP (one SGD epoch on x, y sets up its layers and weights), alpha = 0."""
    network = estimator(
        hidden_layer_sizes=hidden, activation=activation, alpha=0.0, solver="sgd", max_iter=1, random_state=0
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return network.fit(x, y)


def twin(network, activation):
    """(bp_jax Sequential, params) computing the network's pre-output-activation values z with its weights."""
    layers, params = [], []
    for coef, intercept in zip(network.coefs_, network.intercepts_, strict=True):
        layers += [bp_jax.Linear(*coef.shape), LAYERS[activation]()]
        params += [{"weight": jnp.asarray(coef.T), "bias": jnp.asarray(intercept)}, {}]
    return bp_jax.Sequential(*layers[:-1]), tuple(params[:-1])


def sklearn_backprop(network, x, y_encoded):
    """scikit-learn's (loss, grads) in bp_jax's layout (weights (out, in)) for encoded targets."""
    layers = network.n_layers_
    arguments = {
        "X": x,
        "y": y_encoded,
        "activations": [x] + [None] * (layers - 1),
        "deltas": [None] * (layers - 1),
        "coef_grads": [np.empty_like(c) for c in network.coefs_],
        "intercept_grads": [np.empty_like(b) for b in network.intercepts_],
    }
    if "sample_weight" in inspect.signature(network._backprop).parameters:
        arguments["sample_weight"] = None
    loss, coef_grads, intercept_grads = network._backprop(**arguments)
    grads = [({"weight": cg.T, "bias": ig}, {}) for cg, ig in zip(coef_grads, intercept_grads, strict=True)]
    return loss, tuple(layer for pair in grads for layer in pair)[:-1]


def problem(seed, rows, features, classes):
    rng = np.random.default_rng(seed)
    return 2 * rng.normal(size=(rows, features)), rng.permutation(np.arange(rows) % classes)


@pytest.mark.parametrize("activation", LAYERS)
@pytest.mark.parametrize("hidden", [(8,), (10, 7)])
@pytest.mark.slow
def test_cross_entropy_equals_mlpclassifier_multiclass_backprop(activation, hidden):
    x, labels = problem(0, 60, 6, 4)
    network = sklearn_network(neural_network.MLPClassifier, activation, hidden, x, labels)
    assert network.out_activation_ == "softmax"
    model, params = twin(network, activation)
    expected = sklearn_backprop(network, x, network._label_binarizer.transform(labels))
    both = together(
        jax.value_and_grad(bp_jax.loss_fn(model, bp_jax.softmax_cross_entropy)),
        manual.value_and_grad(model, bp_jax.softmax_cross_entropy),
    )
    for got in both(params, jnp.asarray(x), jnp.asarray(labels)):  # by jax.grad, by hand
        chex.assert_trees_all_close(got, expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("activation", LAYERS)
@pytest.mark.slow
def test_a_binary_target_is_the_two_class_softmax(activation):
    """scikit-learn gives a binary target one logistic output σ(z); the 2-class softmax of logits (0, z) is
    (1 − σ(z), σ(z)): the same probabilities, loss and hidden gradients, and the logit-0 row's gradient is
    minus the other's (each row of softmax − onehot sums to 0)."""
    x, labels = problem(1, 60, 6, 2)
    network = sklearn_network(neural_network.MLPClassifier, activation, (8,), x, labels)
    assert network.out_activation_ == "logistic"
    _, params = twin(network, activation)
    last = params[-1]
    two_class = {
        "weight": jnp.concatenate([jnp.zeros_like(last["weight"]), last["weight"]]),
        "bias": jnp.concatenate([jnp.zeros_like(last["bias"]), last["bias"]]),
    }
    model = bp_jax.Sequential(bp_jax.Linear(6, 8), LAYERS[activation](), bp_jax.Linear(8, 2))
    params = (*params[:-1], two_class)
    chex.assert_trees_all_close(
        jax.nn.softmax(model.apply(params, jnp.asarray(x))), network.predict_proba(x), rtol=1e-10, atol=1e-10
    )

    loss, grads = sklearn_backprop(network, x, network._label_binarizer.transform(labels))
    last_grad = grads[-1]
    expected = (
        loss,
        (
            *grads[:-1],
            {
                "weight": jnp.concatenate([-last_grad["weight"], last_grad["weight"]]),
                "bias": jnp.concatenate([-last_grad["bias"], last_grad["bias"]]),
            },
        ),
    )
    both = together(
        jax.value_and_grad(bp_jax.loss_fn(model, bp_jax.softmax_cross_entropy)),
        manual.value_and_grad(model, bp_jax.softmax_cross_entropy),
    )
    for got in both(params, jnp.asarray(x), jnp.asarray(labels)):  # by jax.grad, by hand
        chex.assert_trees_all_close(got, expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("activation", LAYERS)
def test_mse_equals_mlpregressor_backprop(activation):
    """scikit-learn's squared error is half the mean over rows, averaged over the k outputs: L_sk = mse / 2,
    and its gradients are mse's times k / 2."""
    x, _ = problem(2, 60, 6, 1)
    y = np.random.default_rng(3).normal(size=(60, 3))
    network = sklearn_network(neural_network.MLPRegressor, activation, (8, 5), x, y)
    model, params = twin(network, activation)
    loss, grads = sklearn_backprop(network, x, y)
    expected = (2 * loss, jax.tree.map(lambda g: 2 * g / y.shape[1], grads))
    both = together(jax.value_and_grad(bp_jax.loss_fn(model)), manual.value_and_grad(model))
    for got in both(params, jnp.asarray(x), jnp.asarray(y)):  # by jax.grad, by hand
        chex.assert_trees_all_close(got, expected, rtol=1e-10, atol=1e-10)

"""bp_jax's losses and gradients against scikit-learn's own MLP backprop (`_backprop`), on the same weights, and
its lbfgs solver against scikit-learn's (scipy's L-BFGS-B).

scikit-learn writes its backward pass by hand too: delta = activation(z) − y at the output (softmax with
log-loss, logistic with binary log-loss, identity with half squared error), then coef_grad = aᵀ·delta / n layer
by layer. Its MLPs carry no L2 penalty here (alpha=0). float64 throughout, to 1e-10.
"""

import functools
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
from sklearn.datasets import make_classification, make_regression  # noqa: E402
from sklearn.exceptions import ConvergenceWarning  # noqa: E402

from bp_jax import estimators  # noqa: E402
from bp_jax.estimators import _lbfgs  # noqa: E402

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
def test_binary_log_loss_equals_mlpclassifier_binary_backprop(activation):
    """scikit-learn gives a binary target one logistic output σ(z) and the binary log-loss; so does
    bp_jax.estimators' objective ("binary_log_loss", its gradient at z sklearn's delta (σ(z) − y)/n): the same
    loss and gradients."""
    x, labels = problem(1, 60, 6, 2)
    network = sklearn_network(neural_network.MLPClassifier, activation, (8,), x, labels)
    assert network.out_activation_ == "logistic"
    _, params = twin(network, activation)
    y = network._label_binarizer.transform(labels)
    expected = sklearn_backprop(network, x, y)
    objective = estimators.objective((6, 8, 1), activation, "binary_log_loss")
    loss, grads = jax.value_and_grad(objective)({"layers": params, "l2": 0.0}, jnp.asarray(x), jnp.asarray(y, float))
    chex.assert_trees_all_close((loss, grads["layers"]), expected, rtol=1e-10, atol=1e-10)


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


def _regression(rows=120):
    x, y = make_regression(rows, 6, noise=5.0, random_state=0)
    return x, y / y.std()


def _three_classes(rows=120):
    return make_classification(rows, 6, n_informative=4, n_classes=3, random_state=0)


LBFGS_PROBLEMS = {"MLPRegressor": _regression, "MLPClassifier": _three_classes}


def _lbfgs_fit(make, x, y, **config):
    """(the lbfgs fit of make(**config) on x, y; the ConvergenceWarnings it gave, as text)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = make(solver="lbfgs", **config).fit(x, y)
    return model, [str(warning.message) for warning in caught if warning.category is ConvergenceWarning]


@pytest.mark.parametrize("name", LBFGS_PROBLEMS)
@pytest.mark.slow
def test_lbfgs_ends_at_sklearns_loss_on_a_convex_problem(name):
    """No hidden layer and α > 0: ridge regression, or multinomial logistic regression (3 classes, so that
    sklearn's output is the same softmax): convex. From each its own initialisation (bp_jax draws its own), with
    tol 1e-8, both end at the minimum: the same loss to 1e-6 relative, no ConvergenceWarning."""
    x, y = LBFGS_PROBLEMS[name]()
    config = {"hidden_layer_sizes": (), "activation": "identity", "alpha": 1e-2, "tol": 1e-8, "random_state": 0}
    ours, ours_warned = _lbfgs_fit(getattr(estimators, name), x, y, **config)
    theirs, theirs_warned = _lbfgs_fit(getattr(neural_network, name), x, y, **config)
    assert ours_warned == theirs_warned == []
    np.testing.assert_allclose(ours.loss_, theirs.loss_, rtol=1e-6)


@pytest.mark.parametrize("name", LBFGS_PROBLEMS)
@pytest.mark.parametrize("hidden, activation", [((), "identity"), ((5,), "tanh")])
@pytest.mark.parametrize(
    "budget", [{"tol": 1e-3}, {"max_iter": 3}, {"max_fun": 4}], ids=["converged", "max_iter", "max_fun"]
)
@pytest.mark.slow
def test_lbfgs_from_the_same_weights_takes_sklearns_iterations(name, hidden, activation, budget):
    """scikit-learn's lbfgs (scipy's L-BFGS-B), started (warm_start) from bp_jax's initialisation: the same
    n_iter_, loss_ and weights to 1e-10 (a converged run's loss to 1e-9), and the same ConvergenceWarning, word for
    word, whether the fit converged (tol), ran out of iterations (max_iter) or of loss evaluations (max_fun; counted
    as scipy counts them)."""
    x, y = LBFGS_PROBLEMS[name]()
    config = {"hidden_layer_sizes": hidden, "activation": activation, "alpha": 1e-3, "random_state": 0} | budget
    ours, ours_warned = _lbfgs_fit(getattr(estimators, name), x, y, **config)
    theirs = getattr(neural_network, name)(solver="lbfgs", warm_start=True, **(config | {"max_iter": 1}))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        theirs.fit(x, y)  # sets up its layers
    sizes = (x.shape[1], *hidden, theirs.coefs_[-1].shape[1])
    theirs.coefs_, theirs.intercepts_ = estimators.to_sklearn(estimators.glorot(0, sizes, activation, np.float64))
    theirs, theirs_warned = _lbfgs_fit(theirs.set_params, x, y, max_iter=budget.get("max_iter", 200))
    assert ours.n_iter_ == theirs.n_iter_ and ours_warned == theirs_warned
    assert len(ours_warned) == ("tol" not in budget)
    # a converged run's ~100 iterations amplify the order of float64 sums (its curvature pairs): 1.5e-10 measured
    np.testing.assert_allclose(ours.loss_, theirs.loss_, rtol=1e-9 if "tol" in budget else 1e-10)
    chex.assert_trees_all_close((ours.coefs_, ours.intercepts_), (theirs.coefs_, theirs.intercepts_), atol=1e-10)


def _rosenbrock(params, x, y):
    v = params["layers"]
    return jnp.sum(100.0 * (v[1:] - v[:-1] ** 2) ** 2 + (1 - v[:-1]) ** 2)


#: bp_jax's L-BFGS of the Rosenbrock function, compiled once for every case (tol and the budgets are data).
_minimize_rosenbrock = jax.jit(functools.partial(_lbfgs.minimize, _rosenbrock, x=None, y=None))


@pytest.mark.parametrize(
    "tol, max_iter, max_fun", [(1e-5, 15000, 15000), (1e-8, 30, 15000), (1e-8, 15000, 25), (0.0, 15000, 15000)]
)
@pytest.mark.slow
def test_lbfgs_minimize_takes_scipys_l_bfgs_b_steps_on_rosenbrock(tol, max_iter, max_fun):
    """bp_jax's compiled L-BFGS against scipy.optimize.minimize(method="L-BFGS-B") on the 5-d Rosenbrock function
    from one start: the same iterations, evaluations and stopping message, and f to 1e-8 relative."""
    from scipy.optimize import minimize

    start = np.random.default_rng(0).normal(size=5) * 1.5
    value_and_grad = jax.jit(jax.value_and_grad(lambda v: _rosenbrock({"layers": v}, None, None)))
    theirs = minimize(
        lambda v: tuple(np.asarray(out) for out in value_and_grad(v)),
        start,
        jac=True,
        method="L-BFGS-B",
        options={"gtol": tol, "maxiter": max_iter, "maxfun": max_fun},
    )
    ours = _minimize_rosenbrock(jnp.asarray(start), 0.0, tol=tol, max_iter=max_iter, max_fun=max_fun)
    assert (int(ours.iterations), int(ours.evaluations)) == (theirs.nit, theirs.nfev)
    assert _lbfgs.MESSAGES[int(ours.reason)] == theirs.message
    np.testing.assert_allclose(float(ours.loss), theirs.fun, rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("activation", ["relu", "logistic"])
def test_the_same_random_state_gives_sklearns_initial_weights(activation):
    # one epoch at η = 1e-12 leaves each network within ~1e-12 of its initial weights
    x = np.random.default_rng(0).normal(size=(20, 4))
    settings = dict(
        hidden_layer_sizes=(5, 3), activation=activation, solver="sgd", learning_rate_init=1e-12, momentum=0.0
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        theirs = neural_network.MLPRegressor(**settings, max_iter=1, random_state=7).fit(x, x[:, 0])
        ours = estimators.MLPRegressor(**settings, max_iter=1, random_state=7).fit(x, x[:, 0])
    for mine, sklearns in zip(ours.coefs_ + ours.intercepts_, theirs.coefs_ + theirs.intercepts_, strict=True):
        np.testing.assert_allclose(mine, sklearns, rtol=0, atol=1e-10)
    other = estimators.MLPRegressor(**settings, max_iter=1, random_state=8).fit(x, x[:, 0])
    assert not np.allclose(other.coefs_[0], theirs.coefs_[0])

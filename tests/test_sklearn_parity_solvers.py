"""bp_jax's sgd (with each `learning_rate` schedule, plain and Nesterov momentum) and adam against scikit-learn's
own MLPRegressor/MLPClassifier, from the same initial weights in float64: the same `loss_curve_` to 1e-8, `n_iter_`,
`t_`, final learning rate and weights.

Every sgd case is one compiled program: the schedule, η, μ and the Nesterov flag are data.
"""

import warnings

import chex
import jax
import numpy as np
import pytest

neural_network = pytest.importorskip("sklearn.neural_network", reason="needs scikit-learn (the sklearn extra)")
from sklearn.exceptions import ConvergenceWarning  # noqa: E402

from benchmarks.compiles import compilations  # noqa: E402
from bp_jax import estimators  # noqa: E402

#: 30 rows, 3 features: a quadratic target (the net keeps improving slowly, so the schedules act).
_RNG = np.random.default_rng(0)
X = _RNG.normal(size=(30, 3))
Y = X @ np.array([1.0, -2.0, 0.5]) + 0.5 * X[:, 0] ** 2
COMMON = {"hidden_layer_sizes": (3,), "activation": "tanh", "batch_size": 30, "max_iter": 25, "random_state": 0}


@pytest.fixture(autouse=True)
def float64():
    with jax.enable_x64(True), jax.default_matmul_precision("highest"), warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        yield


def sklearn_twin(name: str, x, y, **config):
    """scikit-learn's estimator set up (one warm-start epoch) and given bp_jax's initial weights, its carried state
    reset as a first fit leaves it: ready to `fit` (warm_start) or `partial_fit` from those weights."""
    theirs = getattr(neural_network, name)(**(config | {"max_iter": 1, "warm_start": True})).fit(x, y)
    sizes = (x.shape[1], *config["hidden_layer_sizes"], theirs.coefs_[-1].shape[1])
    layers = estimators.glorot(config["random_state"], sizes, config["activation"], np.float64)
    theirs.coefs_, theirs.intercepts_ = estimators.to_sklearn(layers)
    theirs.t_, theirs.n_iter_, theirs.loss_curve_, theirs._no_improvement_count = 0, 0, [], 0
    if config.get("early_stopping"):  # as sklearn's `_initialize`
        theirs.validation_scores_, theirs.best_validation_score_ = [], -np.inf
    else:
        theirs.best_loss_ = np.inf
    del theirs._optimizer  # partial_fit: a fresh optimizer, as on a first call
    return theirs.set_params(max_iter=config["max_iter"])


def assert_same_run(ours, theirs, *, n_iter: bool = True):
    """The same loss curve, t_, no-improvement count, learning rate, weights and (`n_iter`) n_iter_."""
    assert ours.t_ == theirs.t_ and (not n_iter or ours.n_iter_ == theirs.n_iter_)
    np.testing.assert_allclose(ours.loss_curve_, theirs.loss_curve_, rtol=1e-8, atol=0)
    np.testing.assert_allclose(ours.validation_scores_ or [], theirs.validation_scores_ or [], rtol=1e-8)
    np.testing.assert_allclose(ours._no_improvement_count, theirs._no_improvement_count)
    if ours.solver == "sgd":
        rate = float(ours._opt_state.hyperparams["learning_rate"])
        np.testing.assert_allclose(rate, theirs._optimizer.learning_rate, rtol=1e-12)
    chex.assert_trees_all_close((ours.coefs_, ours.intercepts_), (theirs.coefs_, theirs.intercepts_), rtol=1e-7)


MOMENTA = {"plain": (0.0, False), "momentum": (0.9, False), "nesterov": (0.9, True)}
SCHEDULES = {
    "constant": {"learning_rate": "constant", "learning_rate_init": 0.05},
    "invscaling": {"learning_rate": "invscaling", "learning_rate_init": 0.2, "power_t": 0.25},
    # the loss must fall by tol: the count passes n_iter_no_change and η is divided by 5, repeatedly
    "adaptive": {"learning_rate": "adaptive", "learning_rate_init": 0.05, "tol": 0.05, "n_iter_no_change": 1},
}


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("momenta", MOMENTA)
def test_sgd_takes_sklearns_steps(schedule, momenta):
    momentum, nesterov = MOMENTA[momenta]
    config = COMMON | SCHEDULES[schedule] | {"solver": "sgd", "momentum": momentum, "nesterovs_momentum": nesterov}
    ours = estimators.MLPRegressor(**config).fit(X, Y)
    theirs = sklearn_twin("MLPRegressor", X, Y, **config).fit(X, Y)
    assert_same_run(ours, theirs)
    if schedule == "adaptive":
        assert float(ours._opt_state.hyperparams["learning_rate"]) < config["learning_rate_init"] / 5


def test_adaptive_stops_once_the_learning_rate_is_too_small():
    """η₀ = 1e-5 and no epoch improving by tol: the count (0 after the first epoch, which improves on best = ∞)
    passes the patience of 1 at epochs 3, 5 and 7: η ÷ 5 to 2e-6, to 4e-7 ≤ 1e-6, then a stop."""
    config = COMMON | {"solver": "sgd", "learning_rate": "adaptive", "learning_rate_init": 1e-5}
    config |= {"tol": 1.0, "n_iter_no_change": 1}
    ours = estimators.MLPRegressor(**config).fit(X, Y)
    theirs = sklearn_twin("MLPRegressor", X, Y, **config).fit(X, Y)
    assert ours.n_iter_ == 7 < config["max_iter"]
    assert_same_run(ours, theirs)


def test_adam_takes_sklearns_steps():
    """sklearn's Adam, ε added to the uncorrected √v (optax's adam adds it to √v̂; a large ε shows it), ignoring
    `learning_rate`, as sklearn's does."""
    config = COMMON | {"solver": "adam", "learning_rate_init": 0.05, "epsilon": 1e-3, "learning_rate": "adaptive"}
    ours = estimators.MLPRegressor(**config).fit(X, Y)
    theirs = sklearn_twin("MLPRegressor", X, Y, **config).fit(X, Y)
    assert_same_run(ours, theirs)


def test_partial_fit_counts_and_divides_as_sklearns():
    """partial_fit continues t_, the count and η: adaptive divides η by 5 within a run of partial_fit calls. (Not
    n_iter_: sklearn's counts the last call's epoch alone, bp_jax's every epoch.)"""
    config = COMMON | SCHEDULES["adaptive"] | {"solver": "sgd", "momentum": 0.9}
    ours, theirs = estimators.MLPRegressor(**config), sklearn_twin("MLPRegressor", X, Y, **config)
    for _ in range(16):  # from sklearn's initial weights for random_state=0, η is divided within 16 epochs
        ours.partial_fit(X, Y)
        theirs.partial_fit(X, Y)
    assert_same_run(ours, theirs, n_iter=False)
    assert theirs._optimizer.learning_rate < config["learning_rate_init"]


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_early_stopping_counts_and_divides_on_the_validation_score_as_sklearns(schedule):
    """With early stopping the count is on the validation score, on the host, which sets η between epochs. Both
    first fits: the same initial weights, and the validation rows drawn by the RandomState that drew them,
    continued (a fresh one splits otherwise)."""
    x, y = np.concatenate([X, X[:10] + 0.1]), np.concatenate([Y, Y[:10]])  # 30 rows to train on, 10 to validate
    config = COMMON | SCHEDULES[schedule] | {"solver": "sgd", "shuffle": False}
    config |= {"early_stopping": True, "validation_fraction": 0.25, "tol": 0.01, "n_iter_no_change": 1}
    ours = estimators.MLPRegressor(**config).fit(x, y)
    theirs = neural_network.MLPRegressor(**config).fit(x, y)
    assert_same_run(ours, theirs)


def test_shuffle_false_minibatches_take_sklearns_steps():
    """n % b = 0: sklearn's batches and bp_jax's, rows in order, are the same."""
    config = COMMON | SCHEDULES["invscaling"] | {"solver": "sgd", "batch_size": 10, "shuffle": False}
    ours = estimators.MLPRegressor(**config).fit(X, Y)
    theirs = sklearn_twin("MLPRegressor", X, Y, **config).fit(X, Y)
    assert_same_run(ours, theirs)


@pytest.mark.parametrize("solver", ["sgd", "adam"])
def test_a_short_last_batch_takes_sklearns_steps(solver):
    """n = 10, b = 4: an epoch is sklearn's ⌈10 / 4⌉ = 3 batches, the last of rows 8 and 9 (its loss their mean plus
    α/(2·2)·Σ‖W‖²), its loss Σ (batch loss · rows) / 10; adam's step count 3 an epoch, as sklearn's."""
    config = COMMON | {"solver": solver, "batch_size": 4, "shuffle": False, "alpha": 0.5, "max_iter": 5}
    ours = estimators.MLPRegressor(**config).fit(X[:10], Y[:10])
    theirs = neural_network.MLPRegressor(**config).fit(X[:10], Y[:10])
    assert_same_run(ours, theirs)
    if solver == "adam":
        assert int(ours._opt_state.inner_state.t) == theirs._optimizer.t == 15


@pytest.mark.slow
def test_a_grid_over_the_schedule_and_the_solvers_hyperparameters_is_one_program():
    """learning_rate, power_t and nesterovs_momentum are data: 8 candidates × 2 folds, one compiled loop, each
    member's scores those of its own fit."""
    from sklearn.model_selection import GridSearchCV as SklearnGridSearchCV

    estimator = estimators.MLPRegressor(**COMMON | {"solver": "sgd", "batch_size": 4, "max_iter": 6})  # 15 = 3·4 + 3
    grid = {"learning_rate": ["constant", "invscaling"], "power_t": [0.3, 0.6], "nesterovs_momentum": [True, False]}
    search = estimators.GridSearchCV(estimator, grid, cv=2, refit=False)
    assert compilations(lambda: search.fit(X, Y), "jit(run)") == 1
    one_by_one = SklearnGridSearchCV(estimator, grid, cv=2, refit=False).fit(X, Y)
    np.testing.assert_allclose(
        search.cv_results_["mean_test_score"], one_by_one.cv_results_["mean_test_score"], rtol=1e-9
    )

"""Data against scikit-learn's own estimators: float64 X trained and returned in float64 (x64 scoped to the fit),
sample_weight (sklearn ≥ 1.7: Σwℓ/Σw + ½·α/Σw·Σ‖W‖² a minibatch, a weighted validation score) from the same
initial weights, integer weights as repeated rows, and sparse X as dense."""

import warnings

import chex
import jax
import numpy as np
import pytest

neural_network = pytest.importorskip("sklearn.neural_network", reason="needs scikit-learn (the sklearn extra)")
from scipy import sparse  # noqa: E402
from sklearn.exceptions import ConvergenceWarning  # noqa: E402

from bp_jax import estimators  # noqa: E402

#: 40 rows, 3 features, positive weights; three classes.
_RNG = np.random.default_rng(0)
X = _RNG.normal(size=(40, 3))
Y = X @ np.array([1.0, -2.0, 0.5]) + 0.5 * X[:, 0] ** 2
LABELS = (X[:, 0] > 0).astype(int) + (X[:, 1] > 0)
W = _RNG.uniform(0.2, 2.0, 40)
COMMON = {"hidden_layer_sizes": (3,), "activation": "tanh", "random_state": 0, "alpha": 0.01, "max_iter": 6}
COMMON |= {"batch_size": 12, "shuffle": False, "learning_rate_init": 0.05, "n_iter_no_change": 100}


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        yield


def twin(name: str, config: dict, x, y):
    """scikit-learn's estimator from bp_jax's initial weights (a one-epoch warm-start fit, then its state reset as a
    first fit leaves it): ready to `fit`."""
    theirs = getattr(neural_network, name)(**config | {"max_iter": 1, "warm_start": True}).fit(x, y)
    sizes = (x.shape[1], *config["hidden_layer_sizes"], theirs.coefs_[-1].shape[1])
    layers = estimators.glorot(config["random_state"], sizes, config["activation"], np.float64)
    theirs.coefs_, theirs.intercepts_ = estimators.to_sklearn(layers)
    theirs.t_, theirs.n_iter_, theirs.loss_curve_, theirs._no_improvement_count = 0, 0, [], 0
    theirs.validation_scores_, theirs.best_validation_score_, theirs.best_loss_ = [], -np.inf, np.inf
    if hasattr(theirs, "_optimizer"):
        del theirs._optimizer
    return theirs.set_params(max_iter=config["max_iter"])


CASES = {  # (estimator, solver's parameters): one compiled program each
    "sgd, early stopping": ("MLPRegressor", {"solver": "sgd", "early_stopping": True, "validation_fraction": 0.25}),
    "adam": ("MLPClassifier", {"solver": "adam"}),
    "lbfgs": ("MLPRegressor", {"solver": "lbfgs"}),
}


@pytest.mark.parametrize("case", CASES)
def test_weighted_fits_take_sklearns_steps(case):
    name, solver = CASES[case]
    config, y = COMMON | solver, LABELS if name == "MLPClassifier" else Y
    ours = getattr(estimators, name)(**config).fit(X, y, sample_weight=W)
    theirs = getattr(neural_network, name)(**config).fit(X, y, sample_weight=W)  # a first fit: the same weights
    if config["solver"] == "lbfgs":
        np.testing.assert_allclose(ours.loss_, theirs.loss_, rtol=1e-8)
    else:
        np.testing.assert_allclose(ours.loss_curve_, theirs.loss_curve_, rtol=1e-8, atol=0)
        np.testing.assert_allclose(ours.validation_scores_ or [], theirs.validation_scores_ or [], rtol=1e-8)
    chex.assert_trees_all_close((ours.coefs_, ours.intercepts_), (theirs.coefs_, theirs.intercepts_), rtol=1e-7)


def test_partial_fit_takes_weights():
    config = COMMON | CASES["adam"][1]
    ours = estimators.MLPClassifier(**config).fit(X, LABELS).partial_fit(X, LABELS, sample_weight=W)
    theirs = twin("MLPClassifier", config, X, LABELS).fit(X, LABELS).partial_fit(X, LABELS, sample_weight=W)
    np.testing.assert_allclose(ours.loss_curve_, theirs.loss_curve_, rtol=1e-8, atol=0)


def test_integer_weights_repeat_rows():
    """Full batch: weight k is the row k times (0: left out)."""
    counts = np.arange(40) % 3
    config = COMMON | {"solver": "adam", "batch_size": "auto"}
    weighted = estimators.MLPRegressor(**config).fit(X, Y, sample_weight=counts)
    repeated = estimators.MLPRegressor(**config).fit(np.repeat(X, counts, axis=0), np.repeat(Y, counts))
    np.testing.assert_allclose(weighted.loss_curve_, repeated.loss_curve_, rtol=1e-12)
    chex.assert_trees_all_close(weighted.coefs_, repeated.coefs_, rtol=1e-10)


def test_sample_weight_errors_are_sklearns():
    model = estimators.MLPRegressor(**COMMON)
    with pytest.raises(ValueError, match=r"sample_weight.shape == \(3,\), expected \(40,\)!"):
        model.fit(X, Y, sample_weight=W[:3])
    assert hasattr(model, "set_fit_request") and hasattr(model, "set_partial_fit_request")


def test_float64_in_float64_out_and_x64_off_after():
    x64 = jax.config.jax_enable_x64
    config = COMMON | {"solver": "lbfgs", "max_iter": 2}
    for dtype in (np.float64, np.float32, np.int64):
        model = estimators.MLPRegressor(**config).fit(X.astype(dtype), Y)
        expected = np.float32 if dtype == np.float32 else np.float64
        assert {array.dtype for array in (*model.coefs_, *model.intercepts_, model.predict(X.astype(dtype)))} == {
            np.dtype(expected)
        }
        assert jax.config.jax_enable_x64 == x64


def test_sparse_x_is_dense_x():
    config = COMMON | {"solver": "lbfgs", "max_iter": 2}
    dense = estimators.MLPRegressor(**config).fit(X, Y)
    for container in (sparse.csr_matrix, sparse.csc_array):
        model = estimators.MLPRegressor(**config).fit(container(X), Y)
        chex.assert_trees_all_close(model.coefs_, dense.coefs_, rtol=1e-12)
        np.testing.assert_allclose(model.predict(container(X)), dense.predict(X), rtol=1e-12)


def test_a_grid_with_sample_weight_trains_as_one_program_as_its_weighted_fits_one_by_one(
    monkeypatch, count_compilations
):
    """The weights are data (a targets leaf): a weighted grid is one call of one program, compiled once (a
    configuration no other test uses), each member's weighted test score that of its own weighted fit (1e-10)."""
    from sklearn.model_selection import KFold

    from bp_jax.estimators import GridSearchCV, _members

    calls, fit_ensemble = [], _members.fit_ensemble
    monkeypatch.setattr(
        _members, "fit_ensemble", lambda *args, **kwargs: calls.append(1) or fit_ensemble(*args, **kwargs)
    )
    config = COMMON | {"hidden_layer_sizes": (2, 3), "batch_size": 9, "max_iter": 4}
    grid = {"alpha": [1e-4, 1e-1], "learning_rate_init": [0.01, 0.05]}
    with jax.enable_x64(True):
        with count_compilations("jit(run)") as compiled:
            search = GridSearchCV(estimators.MLPRegressor(**config), grid, cv=2, refit=False).fit(X, Y, sample_weight=W)
        assert len(calls) == 1 and len(compiled) == 1
        for index, candidate in enumerate(search.cv_results_["params"]):
            for fold, (train, test) in enumerate(KFold(2).split(X)):
                alone = estimators.MLPRegressor(**config | candidate).fit(X[train], Y[train], sample_weight=W[train])
                score = alone.score(X[test], Y[test], sample_weight=W[test])
                np.testing.assert_allclose(search.cv_results_[f"split{fold}_test_score"][index], score, rtol=1e-10)


def test_a_sparse_x_too_large_to_densify_is_refused_in_one_line_naming_sizes(monkeypatch):
    from bp_jax.estimators import _base

    monkeypatch.setattr(_base, "DENSE_BYTES", 900)  # X dense: 40·3·8 = 960 bytes
    with pytest.raises(MemoryError) as refused:
        estimators.MLPRegressor(**COMMON).fit(sparse.csr_matrix(X), Y)
    message = str(refused.value)
    assert "\n" not in message and "(40, 3)" in message
    assert f"{960 / 2**30:.3g} GiB dense, more than {900 / 2**30:.3g} GiB" in message

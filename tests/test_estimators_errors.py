"""bp_jax.estimators' errors in scikit-learn's types and words: each expected error is the one scikit-learn's own
estimator raises on the same input, in the test itself. Tiny data and networks; most fail before training."""

import re
import warnings

import numpy as np
import pytest

pytest.importorskip("sklearn")
from sklearn import neural_network
from sklearn.metrics import r2_score
from sklearn.model_selection import GridSearchCV as SklearnGridSearchCV

from bp_jax.estimators import GridSearchCV, MLPClassifier, MLPRegressor, r2

#: one worker runs them all, so the tests of one configuration share its compiled program
pytestmark = [
    pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning"),
    pytest.mark.xdist_group("test_estimators_errors"),
]
#: full-batch sgd on 20 rows: every test here that trains, trains this one program (a grid's folds too: trained
#: one by one, as sklearn's search trains them)
SGD = dict(hidden_layer_sizes=(3,), solver="sgd", batch_size=20, shuffle=False, max_iter=5, random_state=0)


def _rows(rows: int):
    x = np.random.default_rng(0).normal(size=(rows, 2))
    return x, x[:, 0] - x[:, 1]


def _sklearns_error(estimator, method: str, *args, **kwargs) -> Exception:
    """The exception scikit-learn's `estimator.method(*args, **kwargs)` raises."""
    with pytest.raises(Exception) as raised, warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # overflow on the way to non-finite weights
        getattr(estimator, method)(*args, **kwargs)
    return raised.value


def _raises_as(expected: Exception):
    """pytest.raises for an exception of `expected`'s type and exactly its words (pytest matches the notes too,
    after a newline)."""
    return pytest.raises(type(expected), match=f"^{re.escape(str(expected))}(\n|$)")


@pytest.mark.parametrize(
    "name, labels, fraction",
    [
        ("MLPRegressor", None, 0.05),
        ("MLPClassifier", [0] * 19 + [1], 0.1),
        ("MLPClassifier", [0, 1] * 10, 0.05),
        ("MLPClassifier", [0] * 10 + [1] * 9 + [2], 0.05),
    ],
    ids=[
        "one validation row",
        "a class of one member",
        "fewer validation rows than classes",
        "three classes, not stratified, one validation row",  # sklearn stratifies on one binarized column only
    ],
)
def test_an_early_stopping_split_that_cannot_be_made_raises_sklearns_error_before_training(name, labels, fraction):
    x, y = _rows(20)
    y = y if labels is None else labels
    options = dict(hidden_layer_sizes=(3,), early_stopping=True, validation_fraction=fraction, random_state=0)
    ours = {"MLPRegressor": MLPRegressor, "MLPClassifier": MLPClassifier}[name](**options)
    with _raises_as(_sklearns_error(getattr(neural_network, name)(**options), "fit", x, y)):
        ours.fit(x, y)
    assert not hasattr(ours, "coefs_")


def test_a_diverging_fit_raises_sklearns_error_and_leaves_the_estimator_as_it_was():
    x, y = _rows(20)
    expected = _sklearns_error(neural_network.MLPRegressor(**SGD, learning_rate_init=1e10), "fit", x, y)
    ours = MLPRegressor(**SGD).fit(x, y).set_params(learning_rate_init=1e10)
    before = dict(vars(ours))
    with _raises_as(expected) as raised:
        ours.fit(x, y)
    (note,) = raised.value.__notes__
    assert re.fullmatch(r"bp_jax stopped training at step \d+, whose (loss|update) was not finite\.", note)
    assert vars(ours).keys() == before.keys() and all(vars(ours)[name] is value for name, value in before.items())


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_a_non_finite_loss_ends_the_fit_where_sklearn_trains_on():
    """The pinned difference (bp_jax.estimators): y² overflows, so the loss is inf from the first step, while steps
    of η = 1e-300 keep the weights finite; sklearn's fit succeeds with an inf loss curve, bp_jax's raises
    sklearn's error."""
    x, y = _rows(20)
    options = SGD | {"learning_rate_init": 1e-300}
    theirs = neural_network.MLPRegressor(**options).fit(x, 1e200 * y)
    assert np.all(np.isinf(theirs.loss_curve_)) and all(np.all(np.isfinite(w)) for w in theirs.coefs_)
    diverging = neural_network.MLPRegressor(**SGD, learning_rate_init=1e10)
    ours = MLPRegressor(**options)
    with _raises_as(_sklearns_error(diverging, "fit", x, y)) as raised:
        ours.fit(x, 1e200 * y)
    assert raised.value.__notes__ == ["bp_jax stopped training at step 0, whose loss was not finite."]
    assert not hasattr(ours, "coefs_")


@pytest.mark.parametrize("solver", ["sgd", "adam"])
@pytest.mark.parametrize("name, extra", [("MLPRegressor", {}), ("MLPClassifier", {"classes": [0, 1]})])
def test_partial_fit_with_early_stopping_raises_sklearns_error(name, extra, solver):
    x, y = _rows(20)
    y = (y > 0).astype(int) if extra else y
    options = dict(hidden_layer_sizes=(3,), solver=solver, early_stopping=True, random_state=0)
    expected = _sklearns_error(getattr(neural_network, name)(**options), "partial_fit", x, y, **extra)
    ours = {"MLPRegressor": MLPRegressor, "MLPClassifier": MLPClassifier}[name](**options)
    with _raises_as(expected):
        ours.partial_fit(x, y, **extra)
    assert not hasattr(ours, "coefs_")


def test_partial_fit_keeps_sklearns_rules_on_classes():
    """Labels outside `classes`, and a later, different `classes=`, raise sklearn's errors; sklearn keeps the
    first call's classes_ even when that call raises, and so does bp_jax (no training needed to test the rules)."""
    x, y = _rows(20)
    labels = (y > 0).astype(int)
    options = dict(hidden_layer_sizes=(3,), solver="sgd", random_state=0)
    ours, theirs = MLPClassifier(**options), neural_network.MLPClassifier(**options)
    for targets, classes in [
        (labels, {}),
        (labels + 1, {"classes": [0, 1]}),
        (labels, {"classes": [0, 1, 2]}),
        (labels + 1, {}),
    ]:
        with _raises_as(_sklearns_error(theirs, "partial_fit", x, targets, **classes)):
            ours.partial_fit(x, targets, **classes)
    assert ours.classes_.tolist() == theirs.classes_.tolist() == [0, 1] and not hasattr(ours, "coefs_")


def test_r2_reads_a_column_y_as_one_output():
    y = np.arange(6.0)
    predictions = np.stack([y + 1, y**2, -y])
    expected = [r2_score(y, p) for p in predictions]
    np.testing.assert_allclose(r2(y[:, None], predictions), expected)
    np.testing.assert_allclose(r2(y[:, None], predictions[..., None]), expected)
    assert r2(y[:, None], predictions[0]) == pytest.approx(expected[0])


def test_grid_search_with_a_column_y_equals_sklearns():
    """The folds' fits scored together (one r2 of their stacked predictions) with y as a column, as sklearn's."""
    x, y = _rows(40)
    estimator, grid = MLPRegressor(**SGD), {"alpha": [1e-4, 1.0]}
    ours = GridSearchCV(estimator, grid, cv=2, refit=False).fit(x, y[:, None])
    theirs = SklearnGridSearchCV(estimator, grid, cv=2, refit=False).fit(x, y[:, None])
    for key in ("split0_test_score", "split1_test_score", "mean_test_score"):
        np.testing.assert_allclose(ours.cv_results_[key], theirs.cv_results_[key], rtol=1e-5, err_msg=key)
    assert ours.best_params_ == theirs.best_params_

"""bp_jax.estimators: scikit-learn's own estimator checks, the fitted attributes, compiling once, pickling,
bad input, and GridSearchCV against scikit-learn's."""

import collections
import inspect
import pickle
import re
import warnings

import jax
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("sklearn")
from sklearn.base import clone
from sklearn.datasets import make_classification, make_regression
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils.estimator_checks import parametrize_with_checks

from benchmarks.compiles import compilations as _compilations
from bp_jax.estimators import MLPClassifier, MLPRegressor

#: Small networks keep each estimator's suite under a minute. lbfgs through the classifier only: its suite takes the
#: most time (each check's shapes compile the whole L-BFGS program), and the regressor's lbfgs differs from the
#: classifier's only in its targets and in partial_fit (tested on its own, against sklearn's, below).
CHECKED = [
    MLPRegressor(hidden_layer_sizes=(5,), learning_rate_init=0.01, max_iter=200, random_state=0),
    MLPClassifier(hidden_layer_sizes=(5,), learning_rate_init=0.01, max_iter=200, random_state=0),
    MLPClassifier(hidden_layer_sizes=(5,), solver="lbfgs", max_iter=200, random_state=0),
]


def _expected_failures(estimator):
    return {}


@pytest.fixture(autouse=True)
def _quiet_convergence():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        yield


@parametrize_with_checks(CHECKED, expected_failed_checks=_expected_failures)
@pytest.mark.slow
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


def _regression(rows=200):
    x, y = make_regression(rows, 10, noise=5.0, random_state=0)
    return x, y / y.std()


def _classification(rows=200, classes=3):
    return make_classification(rows, 10, n_informative=5, n_classes=classes, random_state=0)


@pytest.mark.parametrize(
    "estimator, data, solver",
    [
        (MLPRegressor, _regression, "sgd"),
        (MLPClassifier, _classification, "adam"),
        (MLPRegressor, _regression, "lbfgs"),
    ],
)
def test_a_second_fit_of_the_same_configuration_compiles_nothing(estimator, data, solver):
    """Learning rate, schedule, α, momentum (Nesterov or not), adam's β₁, β₂, ε, seed, epochs: all data."""
    x, y = data()
    make = lambda seed, lr: estimator(
        hidden_layer_sizes=(7,),
        solver=solver,
        batch_size=16,
        learning_rate=("constant", "invscaling", "adaptive")[seed],
        learning_rate_init=lr,
        power_t=0.5 - 0.1 * seed,
        alpha=1e-3 * seed,
        momentum=0.5,
        nesterovs_momentum=seed != 1,
        beta_1=0.9 - 0.1 * seed,
        beta_2=0.999 - 0.001 * seed,
        epsilon=10.0**-8 * (seed + 1),
        max_iter=30 + seed,
        tol=1e-4 * (seed + 1),
        max_fun=100 + seed,
        random_state=seed,
    )
    make(0, 0.01).fit(x, y)
    assert _compilations(lambda: make(1, 0.02).fit(x, y)) == 0
    assert _compilations(lambda: clone(make(2, 0.03)).fit(x, y).predict(x)) == 0


def test_fitted_attributes_have_sklearns_layout():
    x, y = _classification(classes=3)
    model = MLPClassifier(hidden_layer_sizes=(6, 4), max_iter=15, random_state=0, tol=0.0).fit(
        x, np.array(["a", "b", "c"])[y]
    )
    assert [w.shape for w in model.coefs_] == [(10, 6), (6, 4), (4, 3)]
    assert [b.shape for b in model.intercepts_] == [(6,), (4,), (3,)]
    assert all(isinstance(w, np.ndarray) for w in model.coefs_ + model.intercepts_)
    assert model.n_iter_ == len(model.loss_curve_) == 15 and model.loss_ == model.loss_curve_[-1]
    assert model.classes_.tolist() == ["a", "b", "c"] and model.n_features_in_ == 10 and model.n_layers_ == 4
    proba = model.predict_proba(x)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-6)
    assert set(model.predict(x)) <= {"a", "b", "c"}
    np.testing.assert_array_equal(model.predict(x), model.classes_[proba.argmax(axis=1)])


def test_the_stopping_rule_stops_where_sklearns_rule_says():
    x, y = _regression()
    model = MLPRegressor(
        hidden_layer_sizes=(5,),
        solver="sgd",
        batch_size=20,
        learning_rate_init=0.01,
        max_iter=500,
        tol=1e-3,
        n_iter_no_change=5,
        random_state=0,
    ).fit(x, y)
    curve, best, count = model.loss_curve_, np.inf, 0
    stop = None
    for epoch, loss in enumerate(curve, 1):  # sklearn's _update_no_improvement_count, replayed
        count = count + 1 if loss > best - 1e-3 else 0
        best = min(best, loss)
        if count > 5:
            stop = epoch
            break
    assert stop == model.n_iter_ < 500 and model.n_iter_ % 10  # stopped inside a chunk of 10 epochs
    # the stop fell inside a chunk: the resumed run ends on the bits of an uninterrupted one of that length
    again = MLPRegressor(
        hidden_layer_sizes=(5,),
        solver="sgd",
        batch_size=20,
        learning_rate_init=0.01,
        max_iter=model.n_iter_,
        tol=0.0,
        random_state=0,
    ).fit(x, y)
    for mine, theirs in zip(model.coefs_, again.coefs_):
        np.testing.assert_array_equal(mine, theirs)


@pytest.mark.parametrize("patience", [6, 7, 8, np.inf])
def test_a_rule_stopping_at_the_last_epoch_or_never_warns_as_sklearns(patience):
    """With tol huge, sklearn's count after epoch e is e − 1 (the first epoch only sets the best): over 8 epochs a
    patience of 6 stops at the last epoch (no ConvergenceWarning), 7, 8 and np.inf never stop (the rule is left out
    of the program when it cannot fire); n_iter_ and the warning as sklearn's."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPRegressor as SklearnMLPRegressor

    x, y = _regression()
    config = {"solver": "sgd", "batch_size": 20, "max_iter": 8, "tol": 1e9, "n_iter_no_change": patience}
    runs = []
    for make in (MLPRegressor, SklearnMLPRegressor):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model = make(hidden_layer_sizes=(5,), random_state=0, **config).fit(x, y)
        runs.append((model.n_iter_, any(issubclass(w.category, ConvergenceWarning) for w in caught)))
    assert runs[0] == runs[1] == (8, patience >= 7)


def test_an_endless_patience_is_int32s_largest_in_the_rule_of_a_grid():
    from bp_jax.estimators import epoch_rule, rule_state

    rule = epoch_rule(3, 10, rule_state([1e-4, 1e-4], [1, np.inf]), np.float32)
    assert rule.init["patience"].tolist() == [1, np.iinfo(np.int32).max]


def test_early_stopping_keeps_the_best_validation_params():
    x, y = _classification(rows=300)
    model = MLPClassifier(
        hidden_layer_sizes=(5,),
        solver="sgd",
        learning_rate_init=0.05,
        batch_size=16,
        early_stopping=True,
        n_iter_no_change=3,
        max_iter=200,
        random_state=0,
    ).fit(x, y)
    assert len(model.validation_scores_) == model.n_iter_
    assert model.best_validation_score_ == max(model.validation_scores_)
    assert model.best_loss_ is None


def _objective_value(model, x, y) -> float:
    """sklearn's lbfgs objective at the fitted weights: the mean loss (½·mean squared error, or the 3-class
    cross-entropy) + α/(2n)·Σ‖W‖²."""
    from sklearn.metrics import log_loss

    if isinstance(model, MLPClassifier):
        loss = log_loss(y, model.predict_proba(x), labels=model.classes_)
    else:
        loss = np.mean((model.predict(x) - y) ** 2) / 2
    return loss + model.alpha / (2 * len(x)) * sum(np.sum(w.astype(np.float64) ** 2) for w in model.coefs_)


@pytest.mark.parametrize("estimator, data", [(MLPRegressor, _regression), (MLPClassifier, _classification)])
@pytest.mark.parametrize(
    "budget, message",
    [
        ({"max_iter": 4}, r"after 4 iteration\(s\) \(status=1\):\nSTOP: TOTAL NO. OF ITERATIONS REACHED LIMIT"),
        ({"max_fun": 5}, r"after \d iteration\(s\) \(status=1\):\nSTOP: TOTAL NO. OF F,G EVALUATIONS EXCEEDS LIMIT"),
        ({"tol": 0.05}, None),
    ],
    ids=["max_iter", "max_fun", "converged"],
)
@pytest.mark.slow
def test_lbfgs_sets_sklearns_lbfgs_attributes_and_warns_as_it_does(estimator, data, budget, message):
    """n_iter_ counts iterations (at most max_iter; fewer when max_fun evaluations or tol end the fit), loss_ is
    the objective at the fitted weights, t_ is 0 and there is no loss_curve_ or best_loss_, as sklearn's lbfgs;
    its ConvergenceWarning when the budget ends first (tests/test_sklearn_parity.py checks the words against
    sklearn's own)."""
    x, y = data()
    model = estimator(
        hidden_layer_sizes=(7,), solver="lbfgs", alpha=0.1, random_state=0, **({"max_iter": 200} | budget)
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.fit(x, y)
    warned = [str(warning.message) for warning in caught if warning.category is ConvergenceWarning]
    if message is None:
        assert warned == [] and 1 <= model.n_iter_ < 200
    else:
        assert len(warned) == 1 and re.search("^lbfgs failed to converge " + message, warned[0])
        assert model.n_iter_ == 4 if "max_iter" in budget else 1 <= model.n_iter_ <= 5  # one evaluation or more each
    np.testing.assert_allclose(model.loss_, _objective_value(model, x, y), rtol=1e-5)
    assert model.t_ == 0 and not hasattr(model, "loss_curve_") and not hasattr(model, "best_loss_")


def test_lbfgs_classifier_has_no_partial_fit_and_the_regressors_refits_from_its_weights_as_sklearns():
    """sklearn's MLPClassifier hides partial_fit under lbfgs (available_if); its MLPRegressor keeps it, and there it
    runs a whole lbfgs fit from the current weights (n_iter_ that fit's own)."""
    from sklearn import neural_network

    errors = []
    for make in (MLPClassifier, neural_network.MLPClassifier):
        assert not hasattr(make(solver="lbfgs"), "partial_fit") and hasattr(make(solver="sgd"), "partial_fit")
        with pytest.raises(AttributeError) as error:
            make(solver="lbfgs").partial_fit  # noqa: B018
        errors.append((str(error.value), str(error.value.__cause__)))
    assert errors[0] == errors[1]
    assert hasattr(neural_network.MLPRegressor(solver="lbfgs"), "partial_fit")
    x, y = _regression()
    # the compile test's configuration
    model = MLPRegressor(hidden_layer_sizes=(7,), solver="lbfgs", max_iter=3, random_state=0).fit(x, y)
    first = model.loss_
    assert model.partial_fit(x, y).n_iter_ == 3 and model.loss_ < first


@pytest.mark.parametrize("estimator, data", [(MLPRegressor, _regression), (MLPClassifier, _classification)])
@pytest.mark.slow
def test_lbfgs_held_out_scores_are_as_good_as_sklearns(estimator, data):
    """A nonlinear net (10 relu units, α = 1) on 70 % of the rows, five seeds: bp_jax's mean held-out R² or
    accuracy (float32) is at least sklearn's (float64, its own lbfgs) minus 0.02."""
    from sklearn import neural_network
    from sklearn.model_selection import train_test_split

    x, y = data(rows=300)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.3, random_state=0)
    theirs = getattr(neural_network, estimator.__name__)
    means = [
        np.mean(
            [
                make(hidden_layer_sizes=(10,), solver="lbfgs", alpha=1.0, random_state=seed)
                .fit(x_train, y_train)
                .score(x_test, y_test)
                for seed in range(5)
            ]
        )
        for make in (estimator, theirs)
    ]
    assert means[0] >= means[1] - 0.02, means


def test_pickle_and_clone_round_trip():
    x, y = _regression()
    model = MLPRegressor(hidden_layer_sizes=(5,), max_iter=10, random_state=0).fit(x, y)
    copy = pickle.loads(pickle.dumps(model))
    np.testing.assert_array_equal(copy.predict(x), model.predict(x))
    assert all(type(leaf) is np.ndarray for leaf in jax.tree.leaves(copy.__dict__) if hasattr(leaf, "shape"))
    copy.partial_fit(x, y)
    assert copy.n_iter_ == 1 and len(copy.loss_curve_) == len(model.loss_curve_) + 1  # sklearn's: this call's epochs
    assert clone(model).get_params() == model.get_params()


@pytest.mark.parametrize(
    "x, y, error, words",
    [
        (np.ones((10, 3)), np.ones(9), ValueError, "inconsistent numbers of samples"),
        (np.full((10, 3), np.nan), np.ones(10), ValueError, "NaN"),
        (np.array([["a", "b"]] * 10, dtype=object), np.ones(10), ValueError, "could not convert"),
        (np.ones((10, 3)), np.full(10, np.inf), ValueError, "infinity"),
    ],
)
def test_bad_input_gives_sklearn_style_errors(x, y, error, words):
    with pytest.raises(error, match=words):
        MLPRegressor(max_iter=2).fit(x, y)


def test_a_features_mismatch_is_named():
    x, y = _regression()
    model = MLPRegressor(hidden_layer_sizes=(3,), max_iter=2).fit(x, y)
    with pytest.raises(ValueError, match="features"):
        model.predict(x[:, :5])


def test_the_signatures_parameters_and_constraints_are_sklearns():
    """The constructors' parameters (names, order, kinds, defaults), partial_fit's arguments, the classifier's `loss`
    attribute and the parameter constraints equal scikit-learn's (fit takes no sample_weight yet)."""
    from sklearn import neural_network

    for ours in (MLPRegressor, MLPClassifier):
        theirs = getattr(neural_network, ours.__name__)
        assert inspect.signature(ours) == inspect.signature(theirs)
        assert ours().get_params().keys() == theirs().get_params().keys()
        stochastic = {"solver": "sgd"}
        assert inspect.signature(ours(**stochastic).partial_fit) == inspect.signature(theirs(**stochastic).partial_fit)
        described = lambda constraints: {name: [str(one) for one in kinds] for name, kinds in constraints.items()}
        assert described(ours._parameter_constraints) == described(theirs._parameter_constraints)
    assert MLPClassifier().loss == neural_network.MLPClassifier().loss == "log_loss"


def test_sklearns_private_validation_is_imported_in_one_module():
    """bp_jax/estimators/_constraints.py alone imports scikit-learn's private parameter validation, so a release that
    moves it breaks that one module (and with it every test of the estimators)."""
    import pathlib

    from bp_jax.estimators import _constraints

    package = pathlib.Path(_constraints.__file__).parent
    importing = [
        path.name
        for path in sorted(package.glob("*.py"))
        if re.search(r"sklearn\.utils\._param_validation|\b_fit_context\b", path.read_text())
    ]
    assert importing == ["_constraints.py"]


#: One invalid value per constraint, the last rows checked by scikit-learn's `_fit` after its constraints.
INVALID = [
    {"hidden_layer_sizes": 0},
    {"hidden_layer_sizes": "5"},
    {"hidden_layer_sizes": (0,)},
    {"hidden_layer_sizes": (4, -1)},
    {"activation": "softplus"},
    {"solver": "newton"},
    {"alpha": -1.0},
    {"batch_size": 0},
    {"learning_rate": "cyclic"},
    {"learning_rate_init": 0.0},
    {"power_t": -0.5},
    {"max_iter": 0},
    {"shuffle": "yes"},
    {"random_state": 2**40},
    {"random_state": -1},
    {"tol": -1e-4},
    {"verbose": -1},
    {"warm_start": 1},
    {"momentum": 1.5},
    {"nesterovs_momentum": None},
    {"early_stopping": "no"},
    {"validation_fraction": 1.0},
    {"beta_1": 1.0},
    {"beta_2": -0.1},
    {"epsilon": 0.0},
    {"n_iter_no_change": 0},
    {"n_iter_no_change": -np.inf},
    {"max_fun": 0},
    {"loss": "absolute_error"},
]


@pytest.mark.parametrize("params", INVALID, ids=lambda params: "-".join(f"{k}={v!r}" for k, v in params.items()))
def test_invalid_parameters_raise_sklearns_error_word_for_word(params):
    """fit refuses each before touching the data, with the type and words of scikit-learn's own estimator."""
    from sklearn import neural_network

    x, y = np.zeros((4, 2)), np.array([0, 1, 0, 1])
    for ours in (MLPRegressor, MLPClassifier) if "loss" not in params else (MLPRegressor,):
        errors = []
        for make in (ours, getattr(neural_network, ours.__name__)):
            with pytest.raises(ValueError) as error:
                make(**params).fit(x, y)
            errors.append((type(error.value), str(error.value)))
        assert errors[0] == errors[1]


def test_parameters_that_passed_are_not_checked_again_and_a_failure_is_raised_every_time(monkeypatch):
    """`validate_params` (scikit-learn's `_validate_params`) checks a set of parameters once, then remembers it (a
    value's type included: tol=1 and tol=1.0 are two sets); unhashable ones (a list of sizes) and failures each
    time."""
    from bp_jax.estimators import _constraints

    checked = []
    check = _constraints.validate_parameter_constraints
    monkeypatch.setattr(
        _constraints,
        "validate_parameter_constraints",
        lambda *args, **kwargs: checked.append(1) or check(*args, **kwargs),
    )
    for tol in (1e-4, 1e-4, 1, 1.0):
        _constraints.validate_params(MLPRegressor(alpha=0.123, tol=tol))
    for _ in range(2):
        _constraints.validate_params(MLPRegressor(hidden_layer_sizes=[4]))
        with pytest.raises(ValueError, match="The 'alpha' parameter of MLPRegressor must be a float in the range"):
            _constraints.validate_params(MLPRegressor(alpha=-0.123))
    assert len(checked) == 3 + 2 + 2


def test_partial_fit_checks_the_parameters_as_sklearns():
    from sklearn import neural_network

    x, y = np.zeros((4, 2)), np.array([0, 1, 0, 1])
    errors = []
    for make in (MLPClassifier, neural_network.MLPClassifier):
        with pytest.raises(ValueError) as error:
            make(solver="sgd", alpha=-1.0).partial_fit(x, y, classes=[0, 1])
        errors.append((type(error.value).__name__, str(error.value)))
    assert errors[0] == errors[1] and errors[0][0] == "InvalidParameterError"


@pytest.mark.parametrize(
    "params",
    [
        {"solver": "adam", "learning_rate": "adaptive", "power_t": 2.0},  # adam ignores the schedule
        {"solver": "lbfgs", "learning_rate": "invscaling", "verbose": 2},  # lbfgs prints nothing (scipy ≥ 1.15)
        {"warm_start": True},  # a first fit is a fresh one
        {"n_iter_no_change": np.inf},
    ],
)
def test_sklearns_values_that_change_nothing_here_are_accepted(params):
    for estimator in (MLPRegressor, MLPClassifier):
        estimator(**params)._check_params()


GRID = {"learning_rate_init": [0.01, 0.05], "alpha": [1e-4, 1e-2], "momentum": [0.5, 0.9], "random_state": [0, 1]}


def _assert_same_search(ours, theirs, *, tolerance=1e-4):
    """Our search's results equal sklearn's: every cv_results_ key (times only in shape), the parameter arrays'
    dtypes and masks, the ranks and the best candidate; scores to float32 rounding."""
    assert sorted(ours.cv_results_) == sorted(theirs.cv_results_)
    for key, expected in theirs.cv_results_.items():
        got = ours.cv_results_[key]
        if key == "params":
            assert got == expected
        elif key.startswith("param_"):
            assert got.dtype == expected.dtype and np.array_equal(np.ma.getmaskarray(got), np.ma.getmaskarray(expected))
            assert got.compressed().tolist() == expected.compressed().tolist()
        elif key.endswith("_time"):
            assert got.shape == expected.shape and np.all(got >= 0)
        elif key.startswith("rank_"):
            assert got.dtype == expected.dtype
            np.testing.assert_array_equal(got, expected, err_msg=key)
        else:
            np.testing.assert_allclose(got, expected, rtol=tolerance, atol=tolerance / 10, err_msg=key)
    for attribute in ("best_index_", "best_params_", "multimetric_", "n_splits_", "best_estimator_", "refit_time_"):
        assert hasattr(ours, attribute) == hasattr(theirs, attribute), attribute
    for attribute in ("best_index_", "best_params_", "multimetric_", "n_splits_"):
        assert getattr(ours, attribute, None) == getattr(theirs, attribute, None), attribute
    if hasattr(theirs, "best_score_"):
        np.testing.assert_allclose(ours.best_score_, theirs.best_score_, rtol=tolerance)
    assert type(ours.scorer_) is type(theirs.scorer_)


def _searches(estimator, grid, x, y, monkeypatch, n_jobs=None, **options):
    """(ours, sklearn's) GridSearchCV fitted on x, y with the same options, `n_jobs` ours only (sklearn's would start
    processes that each import and compile, and changes no result); ours must train only the refit on its own
    (every (point × fold) fit a member of one program)."""
    from sklearn.model_selection import GridSearchCV as SklearnGridSearchCV

    from bp_jax import estimators
    from bp_jax.estimators import GridSearchCV

    ours, alone = GridSearchCV(estimator, grid, n_jobs=n_jobs, **options), []
    with monkeypatch.context() as patch:
        _count_own_training(patch, estimators, alone)
        ours.fit(x, y)
    assert len(alone) == (1 if options.get("refit", True) else 0)
    return ours, SklearnGridSearchCV(estimator, grid, **options).fit(x, y)


def _count_own_training(patch, estimators, counter):
    module = estimators._multilayer_perceptron  # where the estimators look up their one-model training runs
    patch.setattr(module, "fit_epochs", lambda *a, train=module.fit_epochs, **k: counter.append(1) or train(*a, **k))
    patch.setattr(module, "compiled", lambda *a, build=module.compiled, **k: counter.append(1) or build(*a, **k))


@pytest.mark.parametrize(
    "estimator, data, options",
    [
        (
            MLPRegressor(
                hidden_layer_sizes=(6,), solver="sgd", batch_size=16, max_iter=40, tol=1e-3, n_iter_no_change=4
            ),
            _regression,
            {"return_train_score": True},
        ),
        (
            MLPClassifier(hidden_layer_sizes=(6,), solver="sgd", batch_size=16, max_iter=30),
            _classification,
            {"scoring": ["accuracy", "neg_log_loss"], "refit": "neg_log_loss"},
        ),
        (
            MLPClassifier(hidden_layer_sizes=(6,), solver="sgd", batch_size=16, max_iter=30),
            _classification,
            {"scoring": {"acc": "accuracy", "nll": "neg_log_loss"}, "refit": False, "return_train_score": True},
        ),
        (
            MLPClassifier(hidden_layer_sizes=(6,), solver="sgd", batch_size=16, max_iter=30),
            _classification,
            {"scoring": "accuracy", "return_train_score": True},
        ),
    ],
    ids=[
        "regressor-train-scores",
        "classifier-two-metrics",
        "classifier-named-metrics-no-refit",
        "classifier-accuracy-by-name-train-scores",
    ],
)
@pytest.mark.slow
def test_grid_search_results_equal_sklearns_grid_search_over_the_same_estimator(estimator, data, options, monkeypatch):
    x, y = data()
    ours, theirs = _searches(estimator, GRID, x, y, monkeypatch, cv=3, **options)
    _assert_same_search(ours, theirs)
    if options.get("refit", True):
        np.testing.assert_allclose(ours.predict(x[:5]), theirs.predict(x[:5]), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(ours.score(x, y), theirs.score(x, y), rtol=1e-4)


@pytest.mark.slow
def test_a_grid_of_several_dicts_masks_the_parameters_a_candidate_lacks(monkeypatch):
    x, y = _regression()
    grid = [{"alpha": [1e-4, 1e-2]}, {"learning_rate_init": [0.005, 0.02], "random_state": [3]}]
    estimator = MLPRegressor(hidden_layer_sizes=(5,), solver="sgd", batch_size=16, max_iter=20, random_state=0)
    ours, theirs = _searches(estimator, grid, x, y, monkeypatch, cv=3)
    _assert_same_search(ours, theirs)
    assert np.ma.getmaskarray(ours.cv_results_["param_alpha"]).tolist() == [False, False, True, True]


@pytest.mark.slow
def test_a_callable_refit_picks_the_candidate_it_returns(monkeypatch):
    x, y = _regression()
    fewest = lambda results: int(np.argmin(results["param_learning_rate_init"]))
    estimator = MLPRegressor(hidden_layer_sizes=(5,), solver="sgd", batch_size=16, max_iter=20, random_state=0)
    grid = {"learning_rate_init": [0.02, 0.005, 0.01]}
    ours, theirs = _searches(estimator, grid, x, y, monkeypatch, cv=3, refit=fewest)
    _assert_same_search(ours, theirs)
    assert ours.best_index_ == 1 and not hasattr(ours, "best_score_")


@pytest.mark.slow
def test_fits_that_fail_score_error_score_with_a_warning_as_in_sklearn(monkeypatch):
    from sklearn.exceptions import FitFailedWarning

    from bp_jax.estimators import GridSearchCV

    x, y = _regression()
    grid = {"learning_rate_init": [0.01, 1e4]}  # the second diverges on every fold
    estimator = MLPRegressor(
        hidden_layer_sizes=(5,), solver="sgd", batch_size=16, max_iter=20, momentum=0.0, random_state=0
    )
    with pytest.warns(FitFailedWarning, match="3 fits failed out of a total of 6"):
        ours, theirs = _searches(estimator, grid, x, y, monkeypatch, cv=3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        GridSearchCV(estimator, grid, cv=3).fit(x, y)
    failed = [str(warning.message) for warning in caught if warning.category is FitFailedWarning]
    assert len(failed) == 1 and "\n" not in failed[0] and "non-finite parameter weights" in failed[0]
    _assert_same_search(ours, theirs)
    assert np.isnan(ours.cv_results_["mean_test_score"][1]) and ours.cv_results_["rank_test_score"][1] == 2


def test_a_grid_whose_every_fit_fails_raises_one_line():
    from bp_jax.estimators import GridSearchCV

    x, y = _regression()
    x[:, 2] = np.nan
    with pytest.raises(ValueError, match=r"All the 6 fits failed.*NaN") as error:
        GridSearchCV(MLPRegressor(hidden_layer_sizes=(5,), max_iter=5), {"alpha": [0.1, 0.2]}, cv=3).fit(x, y)
    assert "\n" not in str(error.value)
    with pytest.raises(ValueError, match="NaN"):
        GridSearchCV(
            MLPRegressor(hidden_layer_sizes=(5,), max_iter=5), {"alpha": [0.1]}, cv=3, error_score="raise"
        ).fit(x, y)


@pytest.mark.slow
def test_members_trained_on_their_own_early_stopping_and_full_batch_equal_sklearns(monkeypatch):
    from sklearn.model_selection import GridSearchCV as SklearnGridSearchCV

    from bp_jax.estimators import GridSearchCV

    x, y = _classification()
    for estimator in (
        MLPClassifier(
            hidden_layer_sizes=(5,),
            solver="sgd",
            batch_size=16,
            max_iter=30,
            early_stopping=True,
            n_iter_no_change=3,
            random_state=0,
        ),
        MLPClassifier(hidden_layer_sizes=(5,), solver="sgd", batch_size=500, max_iter=30, random_state=0),
    ):
        grid = {"learning_rate_init": [0.01, 0.05]}
        ours = GridSearchCV(estimator, grid, cv=3).fit(x, y)
        _assert_same_search(ours, SklearnGridSearchCV(estimator, grid, cv=3).fit(x, y), tolerance=1e-6)


@pytest.mark.slow
def test_lbfgs_members_of_a_fold_are_one_program_and_stop_as_their_own_fits(monkeypatch):
    """lbfgs is full batch: the grid's members of one fold are one call of the vmapped lbfgs program, each stopping
    on its own (max_iter 3 or 60, tol, α, seed): cv_results_ equal scikit-learn's GridSearchCV over the same
    estimator, which fits them one by one (float64, to 1e-8), and only the refit trains alone."""
    from bp_jax import estimators

    x, y = _regression(rows=150)
    estimator = MLPRegressor(hidden_layer_sizes=(4,), activation="tanh", solver="lbfgs", random_state=0)
    grid = {"max_iter": [3, 60], "tol": [1e-4, 1e-2], "alpha": [1e-4, 1e-1], "random_state": [0, 1]}
    calls = []
    with monkeypatch.context() as patch, jax.enable_x64(True):
        counted = lambda loss_fn, members, block, train=estimators._search.train_lbfgs: (
            calls.append(len(members)) or train(loss_fn, members, block)
        )
        patch.setattr(estimators._search, "train_lbfgs", counted)
        ours, theirs = _searches(estimator, grid, x, y, monkeypatch, cv=3)
    assert calls == [16, 16, 16]
    _assert_same_search(ours, theirs, tolerance=1e-8)


def test_a_grid_checks_each_candidates_parameters_once_in_sklearns_words(monkeypatch):
    from sklearn import neural_network

    from bp_jax.estimators import GridSearchCV
    from bp_jax.estimators._multilayer_perceptron import BaseMLP

    x, y = _regression(rows=30)
    checked = []
    validate = BaseMLP._validate_params
    monkeypatch.setattr(BaseMLP, "_validate_params", lambda self: checked.append(self.alpha) or validate(self))
    with pytest.raises(ValueError, match=r"^All the 6 fits failed .*: 3 × InvalidParameterError: The 'alpha' "):
        GridSearchCV(MLPRegressor(), {"alpha": [-1.0, -2.0]}, cv=3).fit(x, y)
    assert checked == [-1.0, -2.0]  # once per candidate, not per fold
    with pytest.raises(ValueError) as ours:
        GridSearchCV(MLPRegressor(), {"alpha": [-1.0]}, cv=3, error_score="raise").fit(x, y)
    with pytest.raises(ValueError) as theirs:
        neural_network.MLPRegressor(alpha=-1.0).fit(x, y)
    assert (type(ours.value), str(ours.value)) == (type(theirs.value), str(theirs.value))


def test_a_grid_over_a_parameter_that_changes_the_program_is_refused_in_one_line():
    from bp_jax.estimators import GridSearchCV

    x, y = _regression()
    with pytest.raises(ValueError, match="'hidden_layer_sizes'") as error:
        GridSearchCV(MLPRegressor(), {"hidden_layer_sizes": [(3,), (4,)], "alpha": [0.1]}).fit(x, y)
    assert "\n" not in str(error.value)


@pytest.mark.slow
def test_a_pipeline_grid_over_its_scaler_and_the_estimator_equals_sklearns_with_n_jobs(monkeypatch):
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import MinMaxScaler, StandardScaler

    x, y = _regression()
    x = x * np.arange(1, 11) + 3.0  # columns on other scales: the scaler fitted per fold matters
    pipeline = Pipeline(
        [
            ("scale", StandardScaler()),
            ("mlp", MLPRegressor(hidden_layer_sizes=(6,), solver="sgd", batch_size=16, max_iter=30, random_state=0)),
        ]
    )
    grid = [
        {"scale__with_mean": [True, False], "mlp__learning_rate_init": [0.01, 0.03], "mlp__random_state": [0, 1]},
        {"scale": [MinMaxScaler()], "mlp__alpha": [1e-3]},
    ]
    ours, theirs = _searches(pipeline, grid, x, y, monkeypatch, cv=3, n_jobs=2)
    _assert_same_search(ours, theirs)
    np.testing.assert_allclose(ours.predict(x[:5]), theirs.predict(x[:5]), rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_n_jobs_splits_the_members_over_concurrent_programs_and_changes_no_result(monkeypatch):
    from bp_jax import estimators
    from bp_jax.estimators import GridSearchCV

    x, y = _regression()
    estimator = MLPRegressor(hidden_layer_sizes=(5,), solver="sgd", batch_size=16, max_iter=20, random_state=0)
    grid = {"learning_rate_init": [0.003, 0.01, 0.03], "alpha": [1e-4, 1e-2]}
    calls: dict = {}
    searches = {}
    for jobs in (None, 2, 4):
        with monkeypatch.context() as patch:
            counted = lambda *a, fit_ensemble=estimators._members.fit_ensemble, jobs=jobs, **k: (
                calls.setdefault(jobs, []).append(len(a[1]["l2"])) or fit_ensemble(*a, **k)
            )  # a[1]: the members' stacked params
            patch.setattr(estimators._members, "fit_ensemble", counted)
            searches[jobs] = GridSearchCV(estimator, grid, cv=3, n_jobs=jobs).fit(x, y)
    # 3 folds × 6 members: halves of each fold's group over 2 calls; whole groups over 3 calls when 4 are allowed
    assert calls == {None: [18], 2: [9, 9], 4: [6, 6, 6]}
    for jobs in (2, 4):
        _assert_same_search(searches[jobs], searches[None], tolerance=1e-6)
        np.testing.assert_allclose(searches[jobs].predict(x[:5]), searches[None].predict(x[:5]), rtol=1e-6)


@pytest.mark.parametrize(
    "hidden, grid, n_jobs",
    [
        # 18 members in parts of 9 on 133 and 134 rows (folds of 66, 67 and 67): padded alike
        ((4,), {"learning_rate_init": [0.001, 0.002, 0.003, 0.004, 0.005, 0.006]}, 2),
        # 6 parts of one member, half of whose stopping rules can fire within 3 epochs: all carry one
        ((3,), {"n_iter_no_change": [1, 10]}, 6),
    ],
)
@pytest.mark.slow
def test_n_jobs_parts_of_one_size_share_one_compiled_program(hidden, grid, n_jobs):
    """A cold search (a configuration no other test uses: nothing is cached) compiles the members' loop once, not
    once a part, on 3 folds of 100 rows (66 and 67: ⌈n / 12⌉ = 6 batches an epoch, the last of 6 or 7 rows)."""
    from bp_jax.estimators import GridSearchCV

    x, y = make_regression(100, 7, noise=5.0, random_state=1)
    estimator = MLPRegressor(hidden_layer_sizes=hidden, solver="sgd", batch_size=12, max_iter=3, random_state=0)
    search = lambda: GridSearchCV(estimator, grid, cv=3, n_jobs=n_jobs, refit=False).fit(x, y / y.std())
    assert _compilations(search, "jit(run)") == 1


@pytest.mark.slow
def test_n_jobs_threads_train_under_the_callers_jax_settings():
    """JAX's `with` settings hold per thread: the worker threads take the caller's, so under enable_x64 every member
    trains in float64 whatever n_jobs is (float32 members would differ from n_jobs=None's by ~1e-6)."""
    from bp_jax.estimators import GridSearchCV

    x, y = _regression()
    estimator = MLPRegressor(hidden_layer_sizes=(5,), solver="sgd", batch_size=16, max_iter=20, random_state=0)
    grid = {"learning_rate_init": [0.003, 0.01], "alpha": [1e-4, 1e-2]}
    with jax.enable_x64(True):
        one, two = (GridSearchCV(estimator, grid, cv=3, n_jobs=jobs).fit(x, y) for jobs in (None, 2))
    _assert_same_search(two, one, tolerance=1e-9)


def _candidate_major(candidates: int, folds: int, seed_of_candidate) -> list:
    """Members as `_fit_candidates` makes them: candidate-major, each on its fold's block."""
    from bp_jax.estimators._members import Member

    return [
        Member(candidate * folds + fold, None, None, (fold,), seed_of_candidate(candidate))
        for candidate in range(candidates)
        for fold in range(folds)
    ]


@pytest.mark.parametrize(
    "candidates, folds, seeds, jobs, sizes",
    [
        (16, 5, 1, 2, [40, 40]),  # 5 groups of 16: units of 8
        (16, 5, 1, 3, [32, 32, 16]),  # units of 16 leave a largest part no bigger than units of 8
        (3, 2, 2, 2, [3, 3]),  # groups of 2 and 1 member: units of 1
        (3, 2, 1, 4, [3, 3]),  # 2 groups of 3 (odd: not halved) for 4 jobs: 2 parts
        (1, 1, 1, 8, [1]),
    ],
)
def test_n_jobs_parts_keep_the_minibatch_sharing_groups_whole_where_they_can(candidates, folds, seeds, jobs, sizes):
    from bp_jax.estimators._members import split_members

    members = _candidate_major(candidates, folds, lambda candidate: candidate % seeds)
    split = split_members(members, jobs)
    assert [len(part) for part in split] == sizes
    assert sorted(member.position for part in split for member in part) == list(range(len(members)))
    if (candidates, folds, jobs) == (16, 5, 2):  # each fold's group whole or halved
        for part in split:
            assert sorted(collections.Counter(member.block for member in part).values()) == [8, 16, 16]


@pytest.mark.parametrize("n_jobs", [0, "2", True, 1.5])
def test_a_bad_n_jobs_is_refused_in_one_line(n_jobs):
    from bp_jax.estimators import GridSearchCV

    x, y = _regression()
    with pytest.raises(ValueError, match="n_jobs must be None or a nonzero integer") as error:
        GridSearchCV(MLPRegressor(hidden_layer_sizes=(5,), max_iter=2), {"alpha": [0.1]}, cv=2, n_jobs=n_jobs).fit(x, y)
    assert "\n" not in str(error.value)


@pytest.mark.slow
def test_a_grid_with_random_state_none_is_still_one_program(monkeypatch):
    from bp_jax import estimators
    from bp_jax.estimators import GridSearchCV

    x, y = _regression()
    estimator = MLPRegressor(hidden_layer_sizes=(4,), batch_size=16, max_iter=20)
    search, one_by_one = GridSearchCV(estimator, {"alpha": [1e-4, 1e-2]}, cv=3), []
    with monkeypatch.context() as patch:
        _count_own_training(patch, estimators, one_by_one)
        search.fit(x, y)
    assert len(one_by_one) == 1 and np.all(np.isfinite(search.cv_results_["mean_test_score"]))


@pytest.mark.slow
def test_a_grid_of_random_states_seeds_every_fold_alike_as_sklearn_does(monkeypatch):
    """sklearn gives each fit its own copy of the grid's values: every fold of a RandomState candidate draws the same
    seed from a fresh copy, and the grid's object is left as it was."""
    x, y = _regression()
    states = [np.random.RandomState(3), np.random.RandomState(4)]
    before = [state.get_state()[1].copy() for state in states]
    estimator = MLPRegressor(hidden_layer_sizes=(5,), solver="sgd", batch_size=16, max_iter=20)
    ours, theirs = _searches(estimator, {"random_state": states}, x, y, monkeypatch, cv=3)
    _assert_same_search(ours, theirs)
    assert all(np.array_equal(state.get_state()[1], kept) for state, kept in zip(states, before))


@pytest.mark.parametrize("parameter", ["mlp__hidden_layer_sizes", "mlp", "memory"])
def test_a_pipeline_grid_over_the_estimators_program_is_refused_in_one_line(parameter):
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    from bp_jax.estimators import GridSearchCV

    x, y = _regression()
    pipeline = Pipeline([("scale", StandardScaler()), ("mlp", MLPRegressor())])
    with pytest.raises(ValueError, match=f"'{parameter}'") as error:
        GridSearchCV(pipeline, {parameter: [None, None]}).fit(x, y)
    assert "\n" not in str(error.value)


@pytest.mark.slow
def test_a_fold_that_lacks_a_class_is_searched_as_sklearn_searches_it(monkeypatch):
    """KFold over rows sorted by class: each training fold lacks the class its test fold holds, so each fold's
    members know two classes of their own (and score 0); cv_results_ still equals scikit-learn's."""
    from sklearn.model_selection import KFold

    x, y = _classification(rows=180)
    order = np.argsort(y, kind="stable")
    x, y = x[order], y[order]
    estimator = MLPClassifier(hidden_layer_sizes=(5,), solver="sgd", batch_size=16, max_iter=20, random_state=0)
    ours, theirs = _searches(estimator, {"alpha": [1e-4, 1e-2]}, x, y, monkeypatch, cv=KFold(3))
    _assert_same_search(ours, theirs)


@settings(max_examples=60, deadline=None)
@given(
    rows=st.integers(2, 12),
    outputs=st.integers(1, 3),
    dtypes=st.sampled_from([(np.float64, np.float32), (np.float32, np.float32), (np.int64, np.float64)]),
    constant=st.booleans(),
    perfect=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_r2_and_accuracy_equal_sklearns_metrics(rows, outputs, dtypes, constant, perfect, seed):
    """The grid's default scorer computes R² and accuracy itself: equal to sklearn's, constant targets and perfect
    fits included, in the dtype sklearn picks (float32 both: 1e-6, else 1e-12); for several models' predictions
    stacked on a leading axis, one score each, equal to sklearn's score of each."""
    from sklearn.metrics import accuracy_score, r2_score

    from bp_jax.estimators import accuracy, r2

    rng = np.random.default_rng(seed)
    y_true = rng.integers(-3, 4, (rows, outputs)).astype(dtypes[0])
    if constant:
        y_true[:, 0] = y_true[0, 0]
    y_preds = np.stack([y_true.astype(dtypes[1]), rng.normal(size=(rows, outputs)).astype(dtypes[1])])
    if outputs == 1:
        y_true, y_preds = y_true.ravel(), y_preds[..., 0]
    tolerance = 1e-6 if dtypes == (np.float32, np.float32) else 1e-12
    y_pred = y_preds[0 if perfect else 1]
    np.testing.assert_allclose(r2(y_true, y_pred), r2_score(y_true, y_pred), rtol=tolerance, atol=tolerance)
    each = [r2_score(y_true, one) for one in y_preds]
    np.testing.assert_allclose(r2(y_true, y_preds), each, rtol=tolerance, atol=tolerance)
    labels_true, labels_pred = rng.integers(0, 3, rows), rng.integers(0, 3, (2, rows))
    assert accuracy(labels_true, labels_pred[0]) == accuracy_score(labels_true, labels_pred[0])
    assert accuracy(labels_true, labels_pred).tolist() == [accuracy_score(labels_true, one) for one in labels_pred]
    assert accuracy(np.array(list("abc"))[labels_true], np.array(list("abc"))[labels_pred[0]]) == accuracy_score(
        labels_true, labels_pred[0]
    )


def test_r2_of_one_row_is_nan_with_sklearns_warning():
    from sklearn.exceptions import UndefinedMetricWarning

    from bp_jax.estimators import r2

    with pytest.warns(UndefinedMetricWarning, match="less than two samples"):
        assert np.isnan(r2(np.array([1.0]), np.array([2.0])))
    with pytest.warns(UndefinedMetricWarning, match="less than two samples"):
        assert np.isnan(r2(np.array([1.0]), np.array([[2.0], [3.0]]))).tolist() == [True, True]


@pytest.mark.slow
def test_a_test_fold_the_default_scorer_cannot_take_is_scored_by_the_scorer_as_in_sklearn(monkeypatch):
    """y[5] is NaN in the first split's test rows only: its fits go through the scorer, whose r2_score refuses
    NaN (error_score and a warning), the second split's through the default scorer's own path, as in sklearn."""
    x, y = _regression(rows=90)
    y[5] = np.nan
    rows = np.arange(90)
    splits = [(rows[30:], rows[:30]), (np.r_[rows[10:30], rows[60:]], rows[30:60])]
    estimator = MLPRegressor(hidden_layer_sizes=(5,), solver="sgd", batch_size=16, max_iter=10, random_state=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ours, theirs = _searches(estimator, {"alpha": [1e-4, 1e-2]}, x, y, monkeypatch, cv=splits, refit=False)
    assert any("Scoring failed" in str(warning.message) for warning in caught)
    _assert_same_search(ours, theirs)
    assert np.all(np.isnan(ours.cv_results_["split0_test_score"]))
    assert np.all(np.isfinite(ours.cv_results_["split1_test_score"]))


def test_a_regressors_text_targets_are_read_as_numbers_or_refused_in_one_line():
    x, y = _regression(40)
    as_text = MLPRegressor(hidden_layer_sizes=(3,), max_iter=3, random_state=0).fit(x, y.astype(str))
    as_numbers = MLPRegressor(hidden_layer_sizes=(3,), max_iter=3, random_state=0).fit(x, y)
    np.testing.assert_array_equal(as_text.predict(x), as_numbers.predict(x))
    with pytest.raises(ValueError, match=r"^MLPRegressor needs numeric targets, got y of dtype <U\d+$"):
        MLPRegressor(hidden_layer_sizes=(3,), max_iter=3).fit(x, np.where(y > 0, "high", "low"))

"""State and continuation against scikit-learn's own estimators, from the same weights in float64: warm_start
(sgd, adam and lbfgs), partial_fit after fit, weights set by hand, the verbose lines and the warm_start classes check.

Two compiled programs in all: the sgd regressor's (every schedule is data) and the adam classifier's.
"""

import warnings

import chex
import jax
import numpy as np
import pytest

neural_network = pytest.importorskip("sklearn.neural_network", reason="needs scikit-learn (the sklearn extra)")
from sklearn.exceptions import ConvergenceWarning  # noqa: E402

from bp_jax import estimators  # noqa: E402

#: 30 rows, 3 features: a quadratic target; full-batch epochs, so the data order plays no part.
_RNG = np.random.default_rng(0)
X = _RNG.normal(size=(30, 3))
Y = X @ np.array([1.0, -2.0, 0.5]) + 0.5 * X[:, 0] ** 2
LABELS = (X[:, 0] > 0).astype(int) + (X[:, 1] > 0)  # three classes
COMMON = {"hidden_layer_sizes": (3,), "activation": "tanh", "batch_size": 30, "random_state": 0}
#: sgd's adaptive schedule with a short patience: the rule counts, divides η by 5 and stops within a few epochs
SGD = COMMON | {"solver": "sgd", "learning_rate": "adaptive", "learning_rate_init": 0.05, "tol": 0.05}
SGD |= {"n_iter_no_change": 1}
ADAM = COMMON | {"solver": "adam", "learning_rate_init": 0.05, "tol": 0.02, "n_iter_no_change": 2}


@pytest.fixture(autouse=True)
def float64():
    with jax.enable_x64(True), jax.default_matmul_precision("highest"), warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        yield


def twin(ours, name: str, x, y):
    """scikit-learn's estimator with ours's parameters, fitted as ours is (one epoch), then given ours's weights and
    the state of a first fit that ended there: ready to continue as ours continues."""
    theirs = getattr(neural_network, name)(**ours.get_params()).set_params(warm_start=True, max_iter=1).fit(x, y)
    theirs.set_params(**ours.get_params())
    theirs.coefs_, theirs.intercepts_ = [c.copy() for c in ours.coefs_], [b.copy() for b in ours.intercepts_]
    if ours.solver != "lbfgs":
        theirs.loss_curve_, theirs.t_, theirs.best_loss_ = list(ours.loss_curve_), ours.t_, ours.best_loss_
        theirs._no_improvement_count = ours._no_improvement_count
        if ours.early_stopping:
            theirs.validation_scores_, theirs.best_validation_score_ = (
                [*ours.validation_scores_],
                ours.best_validation_score_,
            )
            theirs._best_coefs, theirs._best_intercepts = [
                [a.copy() for a in part] for part in (ours._best_coefs, ours._best_intercepts)
            ]
        del theirs._optimizer  # partial_fit: a fresh optimizer would continue from ours's state otherwise
    return theirs


def assert_same_state(ours, theirs):
    """The same loss curve, t_, n_iter_, best loss, no-improvement count and weights."""
    assert (ours.n_iter_, getattr(ours, "t_", 0)) == (theirs.n_iter_, getattr(theirs, "t_", 0))
    if ours.solver != "lbfgs":
        np.testing.assert_allclose(ours.loss_curve_, theirs.loss_curve_, rtol=1e-8, atol=0)
        np.testing.assert_allclose(ours.best_loss_ or 0, theirs.best_loss_ or 0, rtol=1e-8)
        np.testing.assert_allclose(ours.validation_scores_ or [], theirs.validation_scores_ or [], rtol=1e-8)
        assert ours.best_validation_score_ == theirs.best_validation_score_
        assert ours._no_improvement_count == theirs._no_improvement_count
    chex.assert_trees_all_close((ours.coefs_, ours.intercepts_), (theirs.coefs_, theirs.intercepts_), rtol=1e-7)


def fresh_twin(config: dict, name: str, x, y):
    """(ours after a one-epoch fit, scikit-learn's twin of it)."""
    ours = getattr(estimators, name)(**config | {"max_iter": 1}).fit(x, y)
    return ours.set_params(**config), twin(ours, name, x, y)


#: early stopping: a warm-start fit's split is sklearn's (a fresh RandomState(random_state) in both)
#: random_state 1: from its (sklearn's) initial weights the validation score stops improving within 40 epochs
EARLY = ADAM | {"early_stopping": True, "validation_fraction": 0.2, "batch_size": 24, "n_iter_no_change": 3, "tol": 0.0}
EARLY |= {"random_state": 1}


@pytest.mark.parametrize(
    ("config", "name", "y"),
    [(SGD, "MLPRegressor", Y), (ADAM, "MLPClassifier", LABELS), (EARLY, "MLPClassifier", LABELS)],
)
def test_warm_start_continues_as_sklearns(config, name, y):
    """fit → set_params(max_iter=…) → fit: a fresh optimizer from the fitted weights; loss curve, t_, best loss (or
    validation scores and best weights) and count carried on, n_iter_ this fit's. (With early stopping, one
    continuation: sklearn's restored best weights then alias the weights it trains on in the next fit.)"""
    ours, theirs = fresh_twin(config | {"warm_start": True}, name, X, y)
    for max_iter in (6,) if config.get("early_stopping") else (4, 3, 6):
        ours.set_params(max_iter=max_iter).fit(X, y)
        theirs.set_params(max_iter=max_iter).fit(X, y)
        assert_same_state(ours, theirs)
    assert len(ours.loss_curve_) > ours.n_iter_


def test_early_stopping_then_warm_start_as_sklearns_own_first_fit():
    """Both first fits from random_state (the same weights and validation rows) stop early and restore their best
    weights; a warm-start fit continues from them with the count, best score and histories carried, and keeps its
    new best. A warm-start fit that never beats the best keeps it here, where sklearn ends with its last weights
    (its restored best arrays are the ones it trains in place): the one difference."""
    config = EARLY | {"random_state": 0, "learning_rate_init": 0.2, "max_iter": 40}
    ours = estimators.MLPClassifier(**config).fit(X, LABELS)
    theirs = neural_network.MLPClassifier(**config).fit(X, LABELS)
    assert_same_state(ours, theirs)
    assert ours.n_iter_ < config["max_iter"]
    ours.set_params(warm_start=True, max_iter=8).fit(X, LABELS)
    theirs.set_params(warm_start=True, max_iter=8).fit(X, LABELS)
    assert_same_state(ours, theirs)
    best = [*ours.coefs_]
    ours.fit(X, LABELS)
    theirs.fit(X, LABELS)
    assert ours.n_iter_ == theirs.n_iter_ < 8 and ours.best_validation_score_ == theirs.best_validation_score_
    chex.assert_trees_all_equal(ours.coefs_, best)
    assert not np.allclose(theirs.coefs_[0], best[0])


@pytest.mark.parametrize("how", ["verbose", "early", "plain"])
def test_an_interrupt_keeps_the_epochs_done_warns_and_predicts(monkeypatch, how):
    """A KeyboardInterrupt in fit, taken as sklearn's `_fit_stochastic` takes it: the warning "Training interrupted
    by user." and the estimator fitted with the epochs done, as a fit of that many epochs: verbose's line of epoch
    3 interrupted keeps 3; early stopping's score of epoch 3 interrupted keeps 2, and their best weights; a plain
    fit (chunks of 3 epochs here) interrupted after its first chunk keeps 3."""
    from bp_jax.estimators import _multilayer_perceptron, _training

    early = how == "early"
    name, config, y = ("MLPClassifier", EARLY, LABELS) if early else ("MLPRegressor", SGD, Y)
    config = config | {"n_iter_no_change": 100, "verbose": how == "verbose"}
    kept = 2 if early else 3
    if early:
        scored, score = [], getattr(estimators, name)._score_params

        def interrupting(self, *args, **kwargs):
            scored.append(None)
            if len(scored) == 3:
                raise KeyboardInterrupt
            return score(self, *args, **kwargs)

        monkeypatch.setattr(getattr(estimators, name), "_score_params", interrupting)
    elif how == "verbose":

        class Interrupting(_multilayer_perceptron.Progress):
            def __call__(self, *args):
                super().__call__(*args)
                if self.iteration == 3:
                    raise KeyboardInterrupt

        monkeypatch.setattr(_multilayer_perceptron, "Progress", Interrupting)
    else:
        record = _training._Record.__call__

        def interrupting_record(self, result):
            record(self, result)
            raise KeyboardInterrupt

        monkeypatch.setattr(_training, "CHUNK_STEPS", 3)  # batch_size = rows: an epoch a step
        monkeypatch.setattr(_training._Record, "__call__", interrupting_record)
    with pytest.warns(UserWarning, match=r"^Training interrupted by user\.$"):
        ours = getattr(estimators, name)(**config | {"max_iter": 10}).fit(X, y)
    monkeypatch.undo()
    epochs = getattr(estimators, name)(**config | {"max_iter": kept, "verbose": False}).fit(X, y)
    assert ours.n_iter_ == len(ours.loss_curve_) == kept and ours.t_ == epochs.t_
    np.testing.assert_allclose(ours.loss_curve_, epochs.loss_curve_, rtol=1e-12)
    np.testing.assert_allclose(ours.validation_scores_ or [], epochs.validation_scores_ or [], rtol=1e-12)
    chex.assert_trees_all_close((ours.coefs_, ours.intercepts_), (epochs.coefs_, epochs.intercepts_), rtol=1e-12)
    np.testing.assert_allclose(ours.predict(X), epochs.predict(X), rtol=1e-12)


def test_lbfgs_warm_start_starts_from_the_fitted_weights_as_sklearns():
    config = COMMON | {"solver": "lbfgs", "max_iter": 3, "warm_start": True}
    ours = estimators.MLPRegressor(**config).fit(X, Y)
    theirs = twin(ours, "MLPRegressor", X, Y)
    ours.fit(X, Y), theirs.fit(X, Y)
    assert_same_state(ours, theirs)
    np.testing.assert_allclose(ours.loss_, theirs.loss_, rtol=1e-8)


def test_partial_fit_after_fit_and_hand_set_weights_continue_as_sklearns():
    """n_iter_ is 1 after each partial_fit; weights set by hand (float32 here) are continued from, in X's dtype."""
    ours, theirs = fresh_twin(SGD | {"max_iter": 3, "warm_start": True}, "MLPRegressor", X, Y)
    ours.fit(X, Y), theirs.fit(X, Y)  # partial_fit continues this fit's optimizer
    for _ in range(2):
        ours.partial_fit(X, Y), theirs.partial_fit(X, Y)
        assert_same_state(ours, theirs)
    assert ours.n_iter_ == 1
    by_hand = [np.full_like(c, 0.1, np.float32) for c in ours.coefs_], [np.zeros_like(b) for b in ours.intercepts_]
    ours.coefs_, ours.intercepts_ = by_hand
    theirs.coefs_, theirs.intercepts_ = ([a.astype(np.float64) for a in part] for part in by_hand)
    ours.partial_fit(X, Y), theirs.partial_fit(X, Y)
    assert_same_state(ours, theirs)
    assert ours.coefs_[0].dtype == np.float64


@pytest.mark.parametrize(
    ("config", "name", "y"),
    [(SGD, "MLPRegressor", Y), (ADAM, "MLPClassifier", LABELS), (EARLY, "MLPClassifier", LABELS)],
)
def test_verbose_prints_sklearns_lines(capsys, config, name, y):
    """Each epoch's loss, validation score and the rule's messages (sgd adaptive: η ÷ 5, then too small; adam:
    stopping)."""
    ours, theirs = fresh_twin(config | {"max_iter": 40, "verbose": True, "warm_start": True}, name, X, y)
    capsys.readouterr()
    ours.fit(X, y)
    printed = capsys.readouterr().out
    theirs.fit(X, y)
    assert printed == capsys.readouterr().out
    assert "Stopping." in printed and "Iteration 2, loss = " in printed
    if config["solver"] == "sgd":
        assert "Setting learning rate to 0.010000" in printed
        ours.partial_fit(X, y), theirs.partial_fit(X, y)
        assert capsys.readouterr().out.count("Iteration 1, loss") == 2


def test_warm_start_with_other_classes_raises_sklearns_error():
    config = COMMON | {"solver": "adam", "max_iter": 1, "warm_start": True}
    errors = []
    for make in (estimators.MLPClassifier, neural_network.MLPClassifier):
        model = make(**config).fit(X, LABELS)
        with pytest.raises(ValueError) as error:
            model.fit(X, np.minimum(LABELS, 1))
        errors.append(str(error.value))
    assert errors[0] == errors[1] and errors[0].startswith("warm_start can only be used where `y` has the same")


@pytest.mark.parametrize("fit", ["warm_start", "partial_fit"])
def test_a_random_state_instance_is_drawn_from_at_every_fit_as_sklearns_check_random_state(fit):
    """sklearn's `_fit` calls `check_random_state` at every call: a RandomState `random_state` gives each fit a
    fresh seed (advancing it), here the minibatch order's: the same bits as int seeds of its successive draws (an
    int changed between fits taken too), not those of its first draw kept."""
    draws = np.random.RandomState(5).randint(np.iinfo(np.int32).max, size=2)
    config = SGD | {"batch_size": 7, "warm_start": fit == "warm_start", "n_iter_no_change": 100, "max_iter": 2}
    ours = estimators.MLPRegressor(**config | {"random_state": np.random.RandomState(5)})
    seeded, kept = (estimators.MLPRegressor(**config | {"random_state": int(draws[0])}) for _ in range(2))
    for model in (ours, seeded, kept):
        model.fit(X, Y)
    seeded.set_params(random_state=int(draws[1]))
    for model in (ours, seeded, kept):
        model.fit(X, Y) if fit == "warm_start" else model.partial_fit(X, Y)
    chex.assert_trees_all_equal((ours.coefs_, ours.intercepts_), (seeded.coefs_, seeded.intercepts_))
    assert not np.allclose(ours.coefs_[0], kept.coefs_[0])

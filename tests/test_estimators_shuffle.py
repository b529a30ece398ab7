"""bp_jax.estimators with shuffle=False and minibatches: each epoch reads rows 0 … b − 1, b … 2b − 1, … in order,
the last batch short (n mod b rows), as scikit-learn's does."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip("sklearn")
from sklearn.datasets import make_classification, make_regression
from sklearn.exceptions import ConvergenceWarning

import bp_jax
from bp_jax.estimators import MLPClassifier, MLPRegressor


def _half_mse(params, x, y):
    """The regressor's objective at α = 0 on sklearn-layout weights: ½·mean((relu(x·W₀ + b₀)·W₁ + b₁ − y)²)."""
    (w0, w1), (b0, b1) = params
    return jnp.mean((jnp.maximum(x @ w0 + b0[None], 0) @ w1 + b1[None] - y) ** 2) / 2


def test_shuffle_false_trains_each_epoch_on_the_rows_in_order_as_sgd_step_in_a_python_loop():
    x, y = make_regression(36, 4, random_state=0)  # 4 batches of 8 an epoch, then one of the last 4 rows
    x, y = x.astype(np.float32), (y / y.std()).astype(np.float32).reshape(-1, 1)
    model = MLPRegressor(
        hidden_layer_sizes=(3,),
        solver="sgd",
        learning_rate_init=0.05,
        batch_size=8,
        shuffle=False,
        momentum=0.0,
        alpha=0.0,
        random_state=0,
    )
    model.partial_fit(x[:8], y[:8, 0])  # one full-batch step: the loop's step count is 1
    params = jax.tree.map(jnp.asarray, (model.coefs_, model.intercepts_))
    model.partial_fit(x, y[:, 0])  # one epoch from those weights, from step 5 (position 0): rows 0 … 7 first
    step = bp_jax.sgd_step(_half_mse, 0.05)
    for start in range(0, 36, 8):
        params, _ = step(params, x[start : start + 8], y[start : start + 8])
    for fitted, looped in zip((*model.coefs_, *model.intercepts_), (*params[0], *params[1])):
        np.testing.assert_allclose(fitted, looped, rtol=1e-5, atol=1e-6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        xc, yc = make_classification(40, 4, random_state=0)
        classifier = MLPClassifier(hidden_layer_sizes=(3,), batch_size=8, shuffle=False, max_iter=2).fit(xc, yc)
    assert classifier.n_iter_ == 2 and classifier.t_ == 80


def test_shuffle_true_reads_every_row_once_an_epoch_in_its_own_order_not_sklearns():
    """shuffle=True: an epoch is `minibatch_indices`' order of the 10 rows (padded to 12, b = 4), drawn from the
    seed's JAX key inside the loop: every row once, the short batch of 2 last; sklearn's RandomState order differs
    deliberately, so its weights differ (with shuffle=False they are equal: test_sklearn_parity_solvers.py)."""
    from sklearn.neural_network import MLPRegressor as SklearnMLPRegressor

    x, y = make_regression(10, 4, random_state=0)
    x, y = x.astype(np.float32), (y / y.std()).astype(np.float32).reshape(-1, 1)
    config = dict(hidden_layer_sizes=(3,), solver="sgd", learning_rate_init=0.05, batch_size=4, momentum=0.0)
    config |= dict(alpha=0.0, random_state=0)
    model = MLPRegressor(**config).partial_fit(x, y[:, 0])
    initial = bp_jax.estimators.glorot(0, (4, 3, 1), "relu", np.float32)
    params = jax.tree.map(jnp.asarray, bp_jax.estimators.to_sklearn(initial))
    step, batches = bp_jax.sgd_step(_half_mse, 0.05), []
    for position in range(3):
        rows = np.asarray(bp_jax.minibatch_indices(jax.random.key(0), position, 12, 4, padding=2))
        batches.append(rows[rows < 10])  # the padding rows 10, 11 weigh 0
        params, _ = step(params, x[batches[-1]], y[batches[-1]])
    assert sorted(np.concatenate(batches).tolist()) == list(range(10)) and list(map(len, batches)) == [4, 4, 2]
    for fitted, looped in zip((*model.coefs_, *model.intercepts_), (*params[0], *params[1])):
        np.testing.assert_allclose(fitted, looped, rtol=1e-5, atol=1e-6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        theirs = SklearnMLPRegressor(**config).partial_fit(x, y[:, 0])
    assert not np.allclose(model.coefs_[0], theirs.coefs_[0], atol=1e-3)


def test_a_grid_with_shuffle_false_trains_as_one_program_as_its_fits_one_by_one(monkeypatch, count_compilations):
    """Candidates sharing shuffle=False (static in `fit_ensemble`) are members of one call of one compiled program,
    compiled once (a configuration no other test uses), each member's test score that of its own fit on its fold
    (float64, to 1e-10)."""
    from sklearn.model_selection import KFold

    from bp_jax.estimators import GridSearchCV, _members

    x, y = make_regression(40, 3, noise=5.0, random_state=2)  # 2 folds of 20 rows: 3 batches of 7 an epoch, the last 6
    y = y / y.std()
    estimator = MLPRegressor(hidden_layer_sizes=(4,), solver="sgd", batch_size=7, max_iter=5, shuffle=False)
    grid = {"learning_rate_init": [0.01, 0.03], "alpha": [1e-4, 1e-1], "random_state": [0, 1]}
    calls, fit_ensemble = [], _members.fit_ensemble
    monkeypatch.setattr(
        _members, "fit_ensemble", lambda *args, **kwargs: calls.append(1) or fit_ensemble(*args, **kwargs)
    )
    with jax.enable_x64(True), warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        with count_compilations("jit(run)") as compiled:
            search = GridSearchCV(estimator, grid, cv=2, refit=False).fit(x, y)
        assert len(calls) == 1 and len(compiled) == 1
        for index, candidate in enumerate(search.cv_results_["params"]):
            for fold, (train, test) in enumerate(KFold(2).split(x)):
                alone = MLPRegressor(**estimator.get_params() | candidate).fit(x[train], y[train])
                score = search.cv_results_[f"split{fold}_test_score"][index]
                np.testing.assert_allclose(score, alone.score(x[test], y[test]), rtol=1e-10)

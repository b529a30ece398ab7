"""Suite 6, scikit-learn: bp_jax's estimators against scikit-learn's own, same configuration.

Fits: MLPRegressor on diabetes (10 → 5 → 1, y standardised) and MLPClassifier on a 3-class
make_classification (10 → 5 → 3), SGD (lr 0.01, momentum 0.9), batch 32, 200 epochs, n_iter_no_change=201 (no
stopping, no early stopping), 80 % of the rows; and MLPRegressor with solver="lbfgs" on the same data (full batch, up
to 200 iterations, tol 0: it stops at max_iter or scipy's relative-reduction rule, so each row gives its n_iter_);
second fits (bp_jax's first fit compiles, outside the timing), timed in turns with sklearn's, with the held-out R² /
accuracy of both. Grid search: 16 points (learning_rate_init ×
alpha, 4 × 4) × 5 folds of the regressor: bp_jax.estimators.GridSearchCV (one fit_ensemble program), sklearn's
GridSearchCV over the same bp_jax estimator (80 fits one by one), and sklearn's GridSearchCV over sklearn's
MLPRegressor; then both searches over bp_jax's estimator again with n_jobs=-1 (every CPU; 2 in a smoke run:
bp_jax's members split over that many concurrent programs, sklearn's fits over joblib's worker processes), each
divided by the other.
skorch (PyTorch's sklearn wrapper, the `bench` extra) on the same task: NeuralNetRegressor over
nn.Sequential(Linear(10, 5), ReLU(), Linear(5, 1)), torch.optim.SGD (lr 0.01, momentum 0.9), MSE, batch 32,
200 epochs, no validation split, one torch thread; its fit is timed in turns with the others, its grid search
(16 points of lr × weight_decay, 5 folds) once, for it takes minutes.
"""

import importlib.util
import time
import warnings

import numpy as np
from joblib import effective_n_jobs
from sklearn import neural_network
from sklearn.datasets import load_diabetes, make_classification
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import GridSearchCV as SklearnGridSearchCV
from sklearn.model_selection import train_test_split

from benchmarks.records import SuiteRecord
from benchmarks.timing import Timer, time_interleaved
from bp_jax import estimators

CONFIG = {
    "hidden_layer_sizes": (5,),
    "solver": "sgd",
    "learning_rate_init": 0.01,
    "momentum": 0.9,
    "batch_size": 32,
    "max_iter": 200,
    "tol": 0.0,
    "n_iter_no_change": 201,
    "random_state": 0,
}
GRID = {"learning_rate_init": [0.001, 0.003, 0.01, 0.03], "alpha": [1e-4, 1e-3, 1e-2, 1e-1]}
FOLDS = 5
FIT = {
    "regressor": ("bp_jax MLPRegressor.fit", "sklearn MLPRegressor.fit"),
    "classifier": ("bp_jax MLPClassifier.fit", "sklearn MLPClassifier.fit"),
    "lbfgs": ("bp_jax MLPRegressor.fit, lbfgs", "sklearn MLPRegressor.fit, lbfgs"),
}
#: Each fit row's estimator, data (a key of `_problems`) and change to CONFIG.
FIT_SETUP = {
    "regressor": ("MLPRegressor", "regressor", {}),
    "classifier": ("MLPClassifier", "classifier", {}),
    "lbfgs": ("MLPRegressor", "regressor", {"solver": "lbfgs"}),
}
#: The issue's goals: bp_jax's fit at least this many times faster than sklearn's.
FIT_GOALS = {"regressor": 20, "classifier": 20, "lbfgs": 5}
GRID_OURS = "bp_jax GridSearchCV (one fit_ensemble program)"
GRID_SKLEARN_OURS = "sklearn GridSearchCV over bp_jax's MLPRegressor"
GRID_SKLEARN = "sklearn GridSearchCV over sklearn's MLPRegressor"
GRID_OURS_JOBS = "bp_jax GridSearchCV, n_jobs > 1 (concurrent programs on threads)"
GRID_SKLEARN_OURS_JOBS = "sklearn GridSearchCV over bp_jax's MLPRegressor, n_jobs > 1 (joblib's processes)"
#: The grid rows run with n_jobs > 1: their time is divided by the bp_jax search's with the same n_jobs.
GRID_JOBS = (GRID_OURS_JOBS, GRID_SKLEARN_OURS_JOBS)
SKORCH_FIT = "skorch NeuralNetRegressor.fit (PyTorch)"
GRID_SKORCH = "sklearn GridSearchCV over skorch's NeuralNetRegressor (timed once)"


def _skorch(epochs: int):
    """skorch's NeuralNetRegressor of the seed MLP, configured as CONFIG (float32 data: x, and y as (n, 1))."""
    import torch
    from skorch import NeuralNetRegressor

    torch.set_num_threads(1)
    torch.manual_seed(0)
    return NeuralNetRegressor(
        torch.nn.Sequential(torch.nn.Linear(10, 5), torch.nn.ReLU(), torch.nn.Linear(5, 1)),
        max_epochs=epochs,
        lr=CONFIG["learning_rate_init"],
        optimizer=torch.optim.SGD,
        optimizer__momentum=CONFIG["momentum"],
        batch_size=CONFIG["batch_size"],
        iterator_train__shuffle=True,
        train_split=None,
        verbose=0,
    )


def _as_torch(x, y):
    return np.asarray(x, np.float32), np.asarray(y, np.float32).reshape(-1, 1)


def _problems() -> dict:
    x, y = load_diabetes(return_X_y=True)
    x_c, y_c = make_classification(442, 10, n_informative=5, n_classes=3, random_state=0)
    return {
        "regressor": train_test_split(x, (y - y.mean()) / y.std(), test_size=0.2, random_state=0),
        "classifier": train_test_split(x_c, y_c, test_size=0.2, random_state=0),
    }


def run(smoke: bool) -> dict:
    epochs, grid, folds, repeats = (
        (5, {"learning_rate_init": [0.01, 0.03], "alpha": [1e-4, 1e-2]}, 2, 2)
        if smoke
        else (CONFIG["max_iter"], GRID, FOLDS, 5)
    )
    jobs = 2 if smoke else -1  # every CPU, but a smoke run's joblib starts two worker processes, not one a CPU
    config = CONFIG | {"max_iter": epochs}
    record, problems, timers, fitted = SuiteRecord(), _problems(), {}, {}
    warnings.filterwarnings("ignore", category=ConvergenceWarning)
    for kind, (ours, theirs) in FIT.items():
        estimator, data, changes = FIT_SETUP[kind]
        x_train, x_test, y_train, y_test = problems[data]
        for name, module in ((ours, estimators), (theirs, neural_network)):
            fitted[name] = (getattr(module, estimator)(**(config | changes)), x_test, y_test)
            timer = record.warmed(
                name,
                lambda model=fitted[name][0], x=x_train, y=y_train: Timer(
                    lambda: model.fit(x, y), sync=lambda out: out
                ),
            )
            if timer is not None:
                timers[name] = timer
    has_skorch = importlib.util.find_spec("skorch") is not None
    if has_skorch:
        x_train, x_test, y_train, y_test = problems["regressor"]
        fitted[SKORCH_FIT] = (_skorch(epochs), *_as_torch(x_test, y_test))
        timer = record.warmed(
            SKORCH_FIT,
            lambda model=fitted[SKORCH_FIT][0]: Timer(
                lambda: model.fit(*_as_torch(x_train, y_train)), sync=lambda out: out
            ),
        )
        if timer is not None:
            timers[SKORCH_FIT] = timer
    x, _, y, _ = problems["regressor"]
    searches = {
        GRID_OURS: lambda: estimators.GridSearchCV(estimators.MLPRegressor(**config), grid, cv=folds),
        GRID_SKLEARN_OURS: lambda: SklearnGridSearchCV(estimators.MLPRegressor(**config), grid, cv=folds),
        GRID_SKLEARN: lambda: SklearnGridSearchCV(neural_network.MLPRegressor(**config), grid, cv=folds),
        GRID_OURS_JOBS: lambda: estimators.GridSearchCV(estimators.MLPRegressor(**config), grid, cv=folds, n_jobs=jobs),
        GRID_SKLEARN_OURS_JOBS: lambda: SklearnGridSearchCV(
            estimators.MLPRegressor(**config), grid, cv=folds, n_jobs=jobs
        ),
    }
    for name, make in searches.items():
        timer = record.warmed(name, lambda make=make: Timer(lambda: make().fit(x, y), sync=lambda out: out))
        if timer is not None:
            timers[name] = timer
    timings = time_interleaved(timers, repeats=repeats)
    if has_skorch:
        skorch_grid = {"lr": grid["learning_rate_init"], "optimizer__weight_decay": grid["alpha"]}
        search = SklearnGridSearchCV(_skorch(epochs), skorch_grid, cv=folds, scoring="r2")
        start = time.perf_counter()
        search.fit(*_as_torch(x, y))
        seconds = time.perf_counter() - start
        timings[GRID_SKORCH] = {
            "median": seconds,
            "q25": seconds,
            "q75": seconds,
            "min": seconds,
            "max": seconds,
            "repeats": 1,
        }
    for kind, (ours, theirs) in FIT.items():
        for name in (ours, theirs) if kind != "regressor" or not has_skorch else (ours, theirs, SKORCH_FIT):
            if name in timings:
                model, x_test, y_test = fitted[name]
                speedup = (
                    timings[theirs]["median"] / timings[ours]["median"] if name == ours and theirs in timings else None
                )
                if name == SKORCH_FIT:  # how much slower skorch is than bp_jax (not a speed-up of ours over sklearn)
                    speedup = None
                record.rows.append(
                    {
                        "name": name,
                        "group": "fit",
                        "task": kind,
                        "seconds": timings[name],
                        "held_out_score": float(model.score(x_test, y_test)),
                        "n_iter": getattr(model, "n_iter_", None),
                        "speedup_vs_sklearn": speedup,
                        "time_over_bp_jax": timings[name]["median"] / timings[ours]["median"]
                        if ours in timings
                        else None,
                    }
                )
    members = len(grid["alpha"]) * len(grid["learning_rate_init"]) * folds
    for name in [*searches, GRID_SKORCH]:
        if name in timings:
            ours = GRID_OURS_JOBS if name in GRID_JOBS else GRID_OURS
            speedup = timings[name]["median"] / timings[ours]["median"] if ours in timings else None
            record.rows.append(
                {
                    "name": name,
                    "group": "grid",
                    "n_jobs": jobs if name in GRID_JOBS else None,
                    "members": members,
                    "seconds": timings[name],
                    "bp_jax_grid_speedup": speedup,
                }
            )
    if not has_skorch:
        record.skip(
            "skorch NeuralNetRegressor (PyTorch's sklearn wrapper)",
            "skorch is not installed here: pip install -e '.[bench]'",
        )
    return record.as_dict(
        problem={
            "config": {k: list(v) if isinstance(v, tuple) else v for k, v in config.items()},
            "grid": grid,
            "folds": folds,
            "cpus": effective_n_jobs(-1),
            "n_jobs": jobs,
            "regression": "diabetes, y standardised, 80/20",
            "classification": "make_classification(442, 10, 3 classes), 80/20",
        }
    )

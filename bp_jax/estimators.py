"""scikit-learn estimators trained by bp_jax's fused loop: `MLPRegressor`, `MLPClassifier`, and a `GridSearchCV`
that trains every (grid point × fold) as one member of one `fit_ensemble` program.

An edge module (needs scikit-learn, the `sklearn` extra); `import bp_jax` does not import it.

Parameters carry scikit-learn's MLP names, defaults and meanings. What differs, and why:
- Each epoch takes n // batch_size full minibatches in `minibatch_indices` order (a pure function of the
  key and the step); the n mod batch_size rows left over wait for a later epoch (sklearn adds a short batch).
  `shuffle=False` is accepted only with full-batch training (the fused loop always reads a keyed order).
- The stopping rules are sklearn's, checked per epoch: with `early_stopping=False` the rule runs inside the
  compiled loop (`epoch_rule`, a `StopRule`), so a whole fit is one call of the loop with no trip to the host
  between epochs; it compares epoch means in the program's float precision (float32 unless x64 is on). With
  `early_stopping=True` every epoch ends a chunk, where the validation score is taken on the host and the best
  params kept.
- Binary classification uses two softmax outputs (`out_activation_ = "softmax"`), not one logistic unit.
- `solver="adam"` is optax's adam (ε added to √v̂, sklearn adds it to √v); `learning_rate` schedules other
  than constant, `warm_start`, `lbfgs` and `verbose` are not offered.
- The loss is sklearn's: ½·mean((y − ŷ)²) or the mean cross-entropy, plus α/(2b)·Σ‖W‖² per minibatch of b
  rows; α enters the program as data (a frozen params leaf), so a grid over it compiles nothing new.
"""

import collections
import contextlib
import copy
import functools
import itertools
import math
import numbers
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from joblib import effective_n_jobs, parallel_config
from scipy.special import expit, softmax
from scipy.stats import rankdata
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin, clone, is_classifier
from sklearn.exceptions import ConvergenceWarning, FitFailedWarning, UndefinedMetricWarning
from sklearn.metrics import check_scoring
from sklearn.model_selection import GridSearchCV as SklearnGridSearchCV
from sklearn.model_selection import ParameterGrid, check_cv, train_test_split
from sklearn.pipeline import Pipeline
from sklearn.utils import _safe_indexing, check_random_state, indexable
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from bp_jax._fit import NonFiniteLoss, StopRule, fit, fit_ensemble
from bp_jax._layers import mlp
from bp_jax._losses import mse, softmax_cross_entropy

#: Grid parameters that change data, not the compiled program: a grid over them is one `fit_ensemble` program.
VECTORISED = ("learning_rate_init", "random_state", "alpha", "momentum", "tol", "n_iter_no_change", "max_iter")
_ACTIVATIONS = {"identity": "identity", "relu": "relu", "tanh": "tanh", "logistic": "sigmoid"}
_NUMPY_ACTIVATIONS = {"identity": lambda z: z, "relu": lambda z: np.maximum(z, 0), "tanh": np.tanh, "logistic": expit}


def half_squared_error(pred, target):
    """½·mean((ŷ − y)²): sklearn's squared loss."""
    return mse(pred, target) / 2


@dataclass(frozen=True)
class Objective:
    """`f(params, x, y) = loss(model.apply(params["layers"], x), y) + ½·l2·Σ‖W‖²` with `l2 = α / batch_size`
    held in params but never trained (stop_gradient): sklearn's objective, its α as data."""

    model: Any
    loss: Any

    def __call__(self, params, x, y):
        weights = params["layers"][::2]  # Linear, activation, Linear, …
        penalty = sum(jnp.sum(layer["weight"] ** 2) for layer in weights)
        return self.loss(self.model.apply(params["layers"], x), y) + 0.5 * jax.lax.stop_gradient(params["l2"]) * penalty


#: Layers of at most this many weights form x·Wᵀ as a fused product and sum (Linear's contraction="sum") in a
#: one-model fit when every layer is this small: on CPU about 2× faster a step than a matmul at the seed MLP's sizes.
SUM_CONTRACTION_WEIGHTS = 64
#: An ensemble member's layers after the first of at most this many weights do the same (benchmarks/README.md).
MEMBER_SUM_WEIGHTS = 32


def contractions(sizes: tuple[int, ...], *, members: bool) -> tuple[str, ...]:
    """Each Linear layer's contraction. One model: "sum" for all when every layer is tiny, else "dot". Members
    (a grid's groups, one minibatch per group): the first layer's input is the group's shared minibatch, so its
    x·Wᵀ over the members is one matmul ("dot"); every later layer reads each member's own activations, where a
    tiny layer's batched matrix-vector products cost more than the fused product and sum ("sum")."""
    weights = [fan_in * fan_out for fan_in, fan_out in itertools.pairwise(sizes)]
    if not members:
        return ("sum" if max(weights) <= SUM_CONTRACTION_WEIGHTS else "dot",) * len(weights)
    return ("dot", *("sum" if count <= MEMBER_SUM_WEIGHTS else "dot" for count in weights[1:]))


def member_layout(sizes: tuple[int, ...], batch_size: int) -> str:
    """An ensemble member's mlp layout: "columns" (activations as features × rows, the rows the minor axis) when
    no hidden layer is wider than the batch, else "rows": the longer axis minor (benchmarks/README.md)."""
    return "columns" if max(sizes[1:-1], default=0) <= batch_size else "rows"


@functools.lru_cache(maxsize=64)  # one objective per configuration: equal configurations share one program
def objective(
    sizes: tuple[int, ...], activation: str, classifier: bool, *, members: bool = False, layout: str = "rows"
) -> Objective:
    """The training objective of an MLP of these sizes, for one model or (`members`) for a vmapped ensemble, its
    activations in `layout` (`mlp`'s)."""
    model = mlp(sizes, _ACTIVATIONS[activation], contraction=contractions(sizes, members=members), layout=layout)
    return Objective(model, softmax_cross_entropy if classifier else half_squared_error)


@functools.lru_cache(maxsize=64)
def optimizer(
    solver: str, nesterov: bool, beta_1: float, beta_2: float, epsilon: float
) -> optax.GradientTransformation:
    """sklearn's solver with its learning rate and momentum as state (`opt_state.hyperparams`): data, not
    program. sgd: v ← μ·v − η·g, w ← w + v (Nesterov: w ← w + μ·v − η·g); adam: optax.adam."""

    def rule(learning_rate, momentum):
        if solver == "sgd":
            return optax.sgd(learning_rate, momentum=momentum, nesterov=nesterov)
        return optax.adam(learning_rate, b1=beta_1, b2=beta_2, eps=epsilon)

    return optax.inject_hyperparams(rule)(learning_rate=0.0, momentum=0.0)


@functools.lru_cache(maxsize=64)
def _jitted_init(transform: optax.GradientTransformation, members: bool):
    return jax.jit(jax.vmap(transform.init) if members else transform.init)


def initial_state(transform, params, learning_rate, momentum, *, members: bool = False):
    """`transform.init(params)` (vmapped over a leading member axis when `members`) with its hyperparameters set."""
    state = _jitted_init(transform, members)(params)
    dtype = state.hyperparams["learning_rate"].dtype
    hyper = {"learning_rate": np.asarray(learning_rate, dtype), "momentum": np.asarray(momentum, dtype)}
    return state._replace(hyperparams=hyper)


def glorot(seed: int, sizes: tuple[int, ...], activation: str, dtype) -> tuple:
    """sklearn's initialisation: W and b ~ U(−s, s), s = √(f / (fan_in + fan_out)), f = 2 for logistic, else 6;
    as bp_jax layers (weights (out, in)), drawn by numpy's Generator from `seed`."""
    rng, factor, layers = np.random.default_rng(seed), 2.0 if activation == "logistic" else 6.0, []
    for fan_in, fan_out in itertools.pairwise(sizes):
        bound = np.sqrt(factor / (fan_in + fan_out))
        weight = rng.uniform(-bound, bound, (fan_in, fan_out)).T
        layers += [{"weight": weight.astype(dtype), "bias": rng.uniform(-bound, bound, fan_out).astype(dtype)}, {}]
    return tuple(layers[:-1])


def to_sklearn(layers) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """bp_jax layer params → sklearn's (coefs_, intercepts_): (n_in, n_out) and (n_out,) numpy arrays (with any
    leading axes of the params kept, e.g. an ensemble's members)."""
    linear = jax.device_get(layers[::2])
    return [np.swapaxes(np.array(layer["weight"]), -1, -2) for layer in linear], [
        np.array(layer["bias"]) for layer in linear
    ]


def from_sklearn(coefs, intercepts) -> tuple:
    layers = []
    for weight, bias in zip(coefs, intercepts):
        layers += [{"weight": jnp.asarray(weight.T), "bias": jnp.asarray(bias)}, {}]
    return tuple(layers[:-1])


def forward(coefs, intercepts, activation: str, x: np.ndarray) -> np.ndarray:
    """The network's output (before the output activation), in numpy: predicting compiles nothing. Weights with a
    leading axis (several networks, e.g. a grid's members) give one output per network."""
    hidden = _NUMPY_ACTIVATIONS[activation]
    for index, (weight, bias) in enumerate(zip(coefs, intercepts)):
        x = x @ weight + bias[..., None, :]
        if index < len(coefs) - 1:
            x = hidden(x)
    return x


def _scores_of(scores: np.ndarray) -> float | np.ndarray:
    """A metric's value: a float for one prediction, an array for predictions stacked on leading axes."""
    return float(scores) if scores.ndim == 0 else scores


def r2(y_true, y_pred) -> float | np.ndarray:
    """sklearn's r2_score (outputs averaged uniformly, force_finite) on checked arrays: per output
    1 − Σ(y − ŷ)² / Σ(y − ȳ)², except 1 for a perfect fit and 0 where y is constant and the fit is not; in the
    inputs' floating dtype (float64 for integers); NaN with an UndefinedMetricWarning below two rows. y_pred may
    stack several models' predictions on leading axes: one score each."""
    leading = np.shape(y_pred)[: np.ndim(y_pred) - np.ndim(y_true)]
    if len(y_true) < 2:
        warnings.warn("R^2 score is not well-defined with less than two samples.", UndefinedMetricWarning, stacklevel=2)
        return _scores_of(np.full(leading, np.nan))
    floating = [array.dtype for array in (y_true, y_pred) if array.dtype.kind == "f"]
    dtype = np.result_type(*floating) if floating else np.dtype(np.float64)
    y_true = np.asarray(y_true, dtype).reshape(len(y_true), -1)
    y_pred = np.asarray(y_pred, dtype).reshape(*leading, len(y_true), -1)
    numerator = np.sum((y_true - y_pred) ** 2, axis=-2)
    denominator = np.broadcast_to(np.sum((y_true - np.mean(y_true, axis=0)) ** 2, axis=0), numerator.shape)
    scores = np.ones(numerator.shape, dtype)
    valid = (numerator != 0) & (denominator != 0)
    scores[valid] = 1 - numerator[valid] / denominator[valid]
    scores[(numerator != 0) & (denominator == 0)] = 0.0
    return _scores_of(np.mean(scores, axis=-1))


def accuracy(y_true, y_pred) -> float | np.ndarray:
    """sklearn's accuracy_score on checked 1-D label arrays: the fraction of rows where y_pred equals y_true
    (y_pred may stack several models' labels on leading axes: one score each)."""
    return _scores_of(np.mean(np.asarray(y_true) == np.asarray(y_pred), axis=-1))


def seed_of(random_state) -> int:
    """An int seed: the int itself, else one drawn from `check_random_state(random_state)`."""
    if isinstance(random_state, numbers.Integral) and not isinstance(random_state, bool):
        return int(random_state)
    return int(check_random_state(random_state).randint(np.iinfo(np.int32).max))


class Stopping:
    """sklearn's stopping rule's thresholds, and its early-stopping form on the host: count epochs whose
    validation score is below best + tol, keeping the best params; stop once the count exceeds n_iter_no_change.
    (Without early stopping the rule runs inside the loop: `epoch_rule`.)"""

    def __init__(self, tol: float, n_iter_no_change: int):
        self.tol, self.patience = tol, n_iter_no_change
        self.best_score, self.count, self.best_params = -np.inf, 0, None

    def update(self, score: float, params) -> bool:
        """Record one epoch's validation score; True when training should stop after it."""
        self.count = self.count + 1 if score < self.best_score + self.tol else 0
        if score > self.best_score:
            self.best_score, self.best_params = score, params
        return self.count > self.patience


@functools.lru_cache(maxsize=64)  # one update per epoch length: every fit of that length shares one program
def _epoch_rule_update(steps_per_epoch: int):
    def end_of_epoch(state, total):
        mean = total / steps_per_epoch
        count = jnp.where(mean > state["best"] - state["tol"], state["count"] + 1, 0)
        state = state | {"total": jnp.zeros_like(total), "best": jnp.minimum(state["best"], mean), "count": count}
        return state, count > state["patience"]

    def update(state, step, loss):
        total = state["total"] + loss
        within_epoch = lambda state, total: (state | {"total": total}, jnp.zeros((), bool))
        return jax.lax.cond((step + 1) % steps_per_epoch == 0, end_of_epoch, within_epoch, state, total)

    return update


def epoch_rule(steps_per_epoch: int, tol, n_iter_no_change, dtype) -> StopRule:
    """sklearn's rule without early stopping as a `StopRule` run inside the loop (steps counted from 0): at the end of
    each epoch of `steps_per_epoch` steps, with m its mean loss, count ← count + 1 if m > best − tol else 0,
    best ← min(best, m); stop once count > n_iter_no_change. tol and n_iter_no_change may be arrays (one per
    ensemble member): they are data."""
    tol = np.asarray(tol, dtype)
    zeros = np.zeros(tol.shape, dtype)
    init = {
        "total": zeros,
        "best": np.full(tol.shape, np.inf, dtype),
        "count": np.zeros(tol.shape, np.int32),
        "tol": tol,
        "patience": np.asarray(n_iter_no_change, np.int32),
    }
    return StopRule(_epoch_rule_update(steps_per_epoch), init)


def can_stop(n_iter_no_change: int, epochs: int) -> bool:
    """Whether sklearn's rule can stop a run of `epochs` epochs: its count of epochs without improvement reaches at
    most `epochs`, and it stops once the count exceeds n_iter_no_change. A run it cannot stop takes no rule."""
    return n_iter_no_change < epochs


class Plan(NamedTuple):
    """What one training run needs beside the data: batch size, steps per epoch and the epochs to run."""

    batch_size: int
    steps_per_epoch: int


def plan(batch_size, rows: int) -> Plan:
    """sklearn's batch size ('auto': min(200, n); larger than n: n, with a warning) and n // b steps per epoch."""
    if batch_size == "auto":
        batch = min(200, rows)
    else:
        if batch_size > rows:
            warnings.warn(
                "Got `batch_size` less than 1 or larger than sample size. It is going to be clipped", stacklevel=3
            )
        batch = min(max(int(batch_size), 1), rows)
    return Plan(batch, rows // batch)


def _check_int(name: str, value, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"The '{name}' parameter of this estimator must be an int ≥ {minimum}, got {value!r}")


def _check_float(
    name: str, value, low: float, high: float = np.inf, *, open_low: bool = False, open_high: bool = False
) -> None:
    ok = (
        isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
        if high < np.inf
        else isinstance(value, numbers.Real) and not isinstance(value, bool) and not math.isnan(value)
    )
    if ok:
        ok = (value > low if open_low else value >= low) and (value < high if open_high else value <= high)
    if not ok:
        interval = f"{'(' if open_low else '['}{low}, {high}{')' if open_high else ']'}"
        raise ValueError(f"The '{name}' parameter of this estimator must be a float in {interval}, got {value!r}")


def _check_option(name: str, value, options) -> None:
    if value not in options:
        raise ValueError(f"The '{name}' parameter of this estimator must be one of {sorted(options)}, got {value!r}")


class _BaseMLP(BaseEstimator):
    """What MLPRegressor and MLPClassifier share: parameters, checks, the training run, prediction."""

    # fitted attributes (set by fit, absent before it, as sklearn's check_is_fitted expects)
    coefs_: list[np.ndarray]
    intercepts_: list[np.ndarray]
    loss_curve_: list[float]
    validation_scores_: list[float] | None
    best_validation_score_: float | None
    best_loss_: float | None
    _opt_state: Any

    def __init__(
        self,
        hidden_layer_sizes=(100,),
        activation="relu",
        *,
        solver="adam",
        alpha=0.0001,
        batch_size="auto",
        learning_rate_init=0.001,
        max_iter=200,
        shuffle=True,
        random_state=None,
        tol=1e-4,
        momentum=0.9,
        nesterovs_momentum=True,
        early_stopping=False,
        validation_fraction=0.1,
        beta_1=0.9,
        beta_2=0.999,
        epsilon=1e-8,
        n_iter_no_change=10,
    ):
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.solver = solver
        self.alpha = alpha
        self.batch_size = batch_size
        self.learning_rate_init = learning_rate_init
        self.max_iter = max_iter
        self.shuffle = shuffle
        self.random_state = random_state
        self.tol = tol
        self.momentum = momentum
        self.nesterovs_momentum = nesterovs_momentum
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon
        self.n_iter_no_change = n_iter_no_change

    @property
    def _classifier(self) -> bool:
        """`is_classifier(self)` without building scikit-learn's tags on every call (a grid asks per member)."""
        return isinstance(self, ClassifierMixin)

    # -- checks ----------------------------------------------------------------------------------------------
    def _hidden_sizes(self) -> tuple[int, ...]:
        sizes = self.hidden_layer_sizes
        sizes = (sizes,) if isinstance(sizes, numbers.Integral) else sizes
        try:
            sizes = tuple(sizes)
        except TypeError:
            sizes = (sizes,)
        if any(isinstance(s, bool) or not isinstance(s, numbers.Integral) or s < 1 for s in sizes):
            raise ValueError(f"hidden_layer_sizes must be positive integers, got {self.hidden_layer_sizes!r}")
        return tuple(int(s) for s in sizes)

    def _check_params(self) -> None:
        _check_option("activation", self.activation, _ACTIVATIONS)
        _check_option("solver", self.solver, {"sgd", "adam"})
        _check_float("alpha", self.alpha, 0.0)
        if self.batch_size != "auto":
            _check_int("batch_size", self.batch_size, 1)
        _check_float("learning_rate_init", self.learning_rate_init, 0.0, open_low=True)
        _check_int("max_iter", self.max_iter, 1)
        _check_float("tol", self.tol, 0.0)
        _check_float("momentum", self.momentum, 0.0, 1.0)
        _check_float("validation_fraction", self.validation_fraction, 0.0, 1.0, open_high=True)
        _check_float("beta_1", self.beta_1, 0.0, 1.0, open_high=True)
        _check_float("beta_2", self.beta_2, 0.0, 1.0, open_high=True)
        _check_float("epsilon", self.epsilon, 0.0, open_low=True)
        _check_int("n_iter_no_change", self.n_iter_no_change, 1)
        for name in ("shuffle", "nesterovs_momentum", "early_stopping"):
            value = getattr(self, name)
            if not isinstance(value, (bool, np.bool_)):
                raise ValueError(f"The '{name}' parameter of this estimator must be a bool, got {value!r}")

    def _program(self, features: int, outputs: int, *, members_batch: int | None = None):
        """(objective, optimizer): shared by every estimator of this configuration (`members_batch`: as a member of
        an ensemble trained on minibatches of this size)."""
        sizes = (features, *self._hidden_sizes(), outputs)
        layout = "rows" if members_batch is None else member_layout(sizes, members_batch)
        return (
            objective(sizes, self.activation, self._classifier, members=members_batch is not None, layout=layout),
            optimizer(
                self.solver, bool(self.nesterovs_momentum), float(self.beta_1), float(self.beta_2), float(self.epsilon)
            ),
        )

    def _validate_input(self, X, y, *, reset: bool):
        dtype = np.dtype(jax.dtypes.canonicalize_dtype(float))
        X, y = validate_data(
            self,
            X,
            y,
            reset=reset,
            dtype=dtype,
            multi_output=not self._classifier,
            y_numeric=not self._classifier,
        )
        return X, y

    # -- training ---------------------------------------------------------------------------------------------
    def _fit(self, X, y, *, incremental: bool, classes=None):
        self._check_params()
        first = not (incremental and hasattr(self, "coefs_"))
        X, y = self._validate_input(X, y, reset=first)
        targets = self._encode_targets(y, first=first, classes=classes)
        rows = X.shape[0]
        steps = plan(self.batch_size, rows)
        if not self.shuffle and steps.batch_size < rows:
            raise ValueError(
                "shuffle=False needs full-batch training (batch_size ≥ n_samples): the fused loop reads "
                "minibatches in a keyed order"
            )
        early = self.early_stopping and not incremental
        stopping = Stopping(self.tol, self.n_iter_no_change)
        if first:
            self._start(seed_of(self.random_state))
        run, steps = self._train(
            X, y, targets, steps, first=first, incremental=incremental, early=early, stopping=stopping
        )
        return self._adopt(run, steps, incremental=incremental, stopping=stopping if early else None)

    def _start(self, seed: int) -> None:
        """A fresh training history: no epochs, step 0, the seed of the initialisation and the data order."""
        self.loss_curve_, self.t_, self._step, self.n_iter_, self._seed = [], 0, 0, 0, seed

    def _adopt(self, run: "TrainRun", steps: Plan, *, incremental: bool, stopping: "Stopping | None"):
        """Take a training run's result as the fitted state, after the history so far (`_start`), from `fit`'s
        own run or as a GridSearchCV member; `stopping`: early stopping's rule, whose best params are kept."""
        self.coefs_, self.intercepts_, self._opt_state = run.coefs, run.intercepts, run.opt_state
        self._step = run.step
        self.loss_curve_ = [*self.loss_curve_, *run.curve]
        self.loss_ = self.loss_curve_[-1]
        self.n_iter_ += len(run.curve)
        self.t_ += len(run.curve) * steps.steps_per_epoch * steps.batch_size
        self.n_layers_ = len(self.coefs_) + 1
        self.out_activation_ = "softmax" if self._classifier else "identity"
        if stopping is not None:
            self.validation_scores_ = run.scores
            self.best_validation_score_ = stopping.best_score
            self.best_loss_ = None
            assert stopping.best_params is not None  # the first epoch's score (finite params) beats −inf
            self.coefs_, self.intercepts_ = to_sklearn(stopping.best_params["layers"])
        else:
            self.validation_scores_ = self.best_validation_score_ = None
            self.best_loss_ = float(np.min(self.loss_curve_))
        if not incremental and not run.stopped:
            warnings.warn(
                f"Stochastic Optimizer: Maximum iterations ({self.max_iter}) reached and the optimization "
                "hasn't converged yet.",
                ConvergenceWarning,
                stacklevel=3,
            )
        return self

    def _train(self, X, y, targets, steps: Plan, *, first: bool, incremental: bool, early: bool, stopping: Stopping):
        """(TrainRun, the Plan it ran): the params to start from (Glorot or the fitted ones), then `train`; with
        early stopping, on the rows left after the validation split, which it scores."""
        loss_fn, transform = self._program(X.shape[1], self._n_outputs())
        sizes = (X.shape[1], *self._hidden_sizes(), self._n_outputs())
        layers = (
            glorot(self._seed, sizes, self.activation, X.dtype)
            if first
            else from_sklearn(self.coefs_, self.intercepts_)
        )
        score = None
        if early:
            kept, held = train_test_split(
                np.arange(X.shape[0]),
                random_state=self._seed,
                test_size=self.validation_fraction,
                stratify=targets if self._classifier else None,
            )
            score = functools.partial(self._score_params, X[held], y[held])
            X, targets = X[kept], targets[kept]
            steps = plan(self.batch_size, len(kept))
        params = {"layers": layers, "l2": jnp.asarray(self.alpha / steps.batch_size, X.dtype)}
        opt_state = (
            initial_state(transform, params, self.learning_rate_init, self.momentum)
            if first or self._opt_state is None
            else self._opt_state
        )
        run = train(
            loss_fn,
            transform,
            params,
            opt_state,
            X,
            targets,
            key=jax.random.key(self._seed),
            steps=steps,
            epochs=1 if incremental else self.max_iter,
            start_step=self._step,
            stopping=None if incremental else stopping,
            score=score,
        )
        return run, steps

    def _score_params(self, X, y, params) -> float:
        """The estimator's score (R² or accuracy) on (X, y) of bp_jax `params` (early stopping's validation)."""
        return self._score_weights(X, y, *to_sklearn(params["layers"]))

    def _score_weights(self, X, y, coefs, intercepts) -> float:
        """`score` on checked X, y of the network with these sklearn-layout weights (`r2` or `accuracy`)."""
        return self._metric(y, self._decode(forward(coefs, intercepts, self.activation, X)))

    def _raw(self, X) -> np.ndarray:
        check_is_fitted(self, "coefs_")
        X = validate_data(self, X, reset=False, dtype=(np.float64, np.float32))
        return forward(self.coefs_, self.intercepts_, self.activation, X)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.non_deterministic = False
        return tags


class TrainRun(NamedTuple):
    """What `train` returns: the final weights in sklearn's layout and optimizer state (numpy), the step reached,
    the loss of each epoch run, validation scores (early stopping), and whether the stopping rule ended it."""

    coefs: list[np.ndarray]
    intercepts: list[np.ndarray]
    opt_state: Any
    step: int
    curve: list[float]
    scores: list[float]
    stopped: bool


def train(
    loss_fn,
    transform,
    params,
    opt_state,
    x,
    y,
    *,
    key,
    steps: Plan,
    epochs: int,
    start_step: int,
    stopping: Stopping | None,
    score=None,
) -> TrainRun:
    """Up to `epochs` epochs of `fit` from `start_step`, stopping where sklearn's rule would (see the module
    docstring): with a `score` (early stopping), one epoch a chunk and `stopping` on the host; otherwise with
    `stopping`, its rule inside the loop (`epoch_rule`), all epochs one call; without, all epochs."""
    per_epoch = steps.steps_per_epoch
    batch = None if steps.batch_size == x.shape[0] else steps.batch_size
    scores: list[float] = []
    halted: list[bool] = []
    rule = None
    if stopping is not None and score is None and can_stop(stopping.patience, epochs):
        rule = epoch_rule(per_epoch, stopping.tol, stopping.patience, jnp.result_type(float))

    def on_epoch(result) -> bool:
        assert stopping is not None  # a score comes with early stopping's rule
        value = score(result.params)
        scores.append(value)
        halted.append(stopping.update(value, result.params))
        return halted[-1]

    try:
        result = fit(
            loss_fn,
            params,
            x,
            y,
            batch_size=batch,
            optimizer=transform,
            key=key,
            opt_state=opt_state,
            steps=epochs * per_epoch,
            start_step=start_step,
            chunk_size=per_epoch if score is not None else start_step + epochs * per_epoch,
            on_chunk=on_epoch if score is not None else None,
            stop_rule=rule,
        )
    except NonFiniteLoss as error:
        raise ValueError(
            f"Solver produced non-finite parameter weights at step {error.step}. The input data may "
            "contain large values and need to be preprocessed."
        ) from None
    curve = epoch_means(result.losses, per_epoch).tolist()
    coefs, intercepts = to_sklearn(result.params["layers"])
    stopped = result.stopped_at >= 0 or any(halted)
    return TrainRun(coefs, intercepts, jax.device_get(result.opt_state), result.step, curve, scores, stopped)


def epoch_means(losses, steps_per_epoch: int) -> np.ndarray:
    """Each epoch's mean step loss (float64), over the first axis of `losses` (whole epochs; any axes after it
    kept, e.g. the members of an ensemble)."""
    losses = np.asarray(losses, np.float64)
    return losses.reshape(-1, steps_per_epoch, *losses.shape[1:]).mean(axis=1)


class MLPRegressor(RegressorMixin, _BaseMLP):
    """sklearn.neural_network.MLPRegressor's parameters and attributes, trained by bp_jax's fused loop: the
    identity output and the loss ½·mean((ŷ − y)²) + α/(2b)·Σ‖W‖² (see the module docstring for differences)."""

    _metric = staticmethod(r2)

    def fit(self, X, y):
        """Train from a fresh initialisation for up to max_iter epochs; returns self."""
        return self._fit(X, y, incremental=False)

    def partial_fit(self, X, y):
        """One epoch over (X, y), from the current params and optimizer state (a fresh start if unfitted)."""
        return self._fit(X, y, incremental=True)

    def _encode_targets(self, y, *, first: bool, classes=None):
        y = y.reshape(-1, 1) if y.ndim == 1 else y
        if first:
            self.n_outputs_ = y.shape[1]
        elif y.shape[1] != self.n_outputs_:
            raise ValueError(f"y has {y.shape[1]} outputs, but this estimator was fitted with {self.n_outputs_}")
        return y

    def _n_outputs(self) -> int:
        return self.n_outputs_

    def _decode(self, raw: np.ndarray) -> np.ndarray:
        return raw[..., 0] if raw.shape[-1] == 1 else raw

    def predict(self, X):
        """The network's output for X: (n,) for one target, (n, n_outputs) for several."""
        return self._decode(self._raw(X))

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        return tags


class MLPClassifier(ClassifierMixin, _BaseMLP):
    """sklearn.neural_network.MLPClassifier's parameters and attributes, trained by bp_jax's fused loop: softmax
    over one output per class (two for a binary problem) and the loss mean cross-entropy + α/(2b)·Σ‖W‖²."""

    _metric = staticmethod(accuracy)

    def fit(self, X, y):
        """Train from a fresh initialisation for up to max_iter epochs; returns self."""
        return self._fit(X, y, incremental=False)

    def partial_fit(self, X, y, classes=None):
        """One epoch over (X, y) from the current state; the first call needs `classes` (all labels to expect)."""
        if classes is None and not hasattr(self, "coefs_"):
            raise ValueError("classes must be passed on the first call to partial_fit.")
        return self._fit(X, y, incremental=True, classes=classes)

    def _encode_targets(self, y, *, first: bool, classes=None):
        check_classification_targets(y)
        if first:
            self.classes_ = np.unique(y) if classes is None else np.unique(np.asarray(classes))
        labels = np.searchsorted(self.classes_, y)
        unknown = (labels >= len(self.classes_)) | (self.classes_[np.minimum(labels, len(self.classes_) - 1)] != y)
        if np.any(unknown):
            raise ValueError(
                f"y contains labels not in classes_ {self.classes_.tolist()}: {np.unique(y[unknown]).tolist()}"
            )
        return labels.astype(np.int32)

    def _n_outputs(self) -> int:
        return max(len(self.classes_), 2)

    def _decode(self, raw: np.ndarray) -> np.ndarray:
        return self.classes_[np.argmax(raw[..., : len(self.classes_)], axis=-1)]

    def predict(self, X):
        """The class of highest probability for each row of X."""
        return self._decode(self._raw(X))

    def predict_proba(self, X):
        """softmax of the outputs: (n, n_classes), rows summing to 1, columns in the order of classes_."""
        return softmax(self._raw(X)[:, : len(self.classes_)], axis=1)

    def predict_log_proba(self, X):
        return np.log(self.predict_proba(X))


class GridSearchCV(SklearnGridSearchCV):
    """sklearn.model_selection.GridSearchCV's signature and results (cv_results_, best_index_, best_params_,
    best_score_, best_estimator_, refit_time_, scorer_, multimetric_, n_splits_) for a bp_jax MLPRegressor or
    MLPClassifier, or a Pipeline ending in one, searched as one program: every (grid point × fold) is a member
    of one `fit_ensemble` call, on its fold's rows as the pipeline's earlier steps transform them when fitted on
    that fold, with its own key, learning rate, momentum, α and stopping rule (stopped inside the program).
    Members of one fold and seed share their minibatches (one gather, one matmul). Each fitted member is then
    scored on its test fold as sklearn scores it (the default scorer through `_scores`' shared path), and
    cv_results_ laid out as sklearn's.

    The grid may vary the pipeline's earlier steps freely and the estimator's VECTORISED parameters only: any other
    is refused in one line naming it. Members sharing a program shape (features, outputs, batch size, steps per
    epoch, max_iter) share one call of one program; n_jobs > 1 (or −1: every CPU) splits them into at most that many
    calls run concurrently on threads (the same results up to float rounding: a call's groups of members sharing a
    minibatch may be smaller; calls of one size share one compiled program, folds straddling 33 rows aside:
    `_train_parts`); programs of different shapes, and the fits trained one by one, run one after another. Trained
    one by one, as sklearn would: early_stopping=True, full-batch folds (batch_size ≥ the fold's rows) and
    shuffle=False. Differences from sklearn's: fit_time is each member's share of its program's time; pre_dispatch
    is accepted and unused; `fit` takes `groups` for the splitter and no fit parameters; a scorer that raises sets
    every metric of that fit to error_score.
    """

    def fit(self, X, y=None, *, groups=None, **params):
        """Train and score every (grid point × fold) as above, then refit the best on all of X, y; returns self."""
        if params:
            raise TypeError(
                "bp_jax GridSearchCV.fit takes X, y and groups (bp_jax's estimators take no fit parameters), "
                f"got {', '.join(sorted(params))}"
            )
        final, _ = _searched(self.estimator)
        candidates = list(ParameterGrid(self.param_grid))
        _check_vectorised({key for candidate in candidates for key in candidate}, self.estimator)
        if not (self.error_score == "raise" or _is_real(self.error_score)):
            raise ValueError(f"error_score must be 'raise' or a number, got {self.error_score!r}")
        scorer, self.scorer_ = self._scorers()
        X, y = indexable(X, y)
        splits = list(check_cv(self.cv, y, classifier=is_classifier(final)).split(X, y, groups))
        self.n_splits_ = len(splits)
        if self.verbose > 0:
            print(
                f"Fitting {len(splits)} folds for each of {len(candidates)} candidates, "
                f"totalling {len(candidates) * len(splits)} fits"
            )
        jobs = _jobs(self.n_jobs)
        fits = _fit_members(
            self.estimator, candidates, X, y, splits, jobs=jobs, raise_errors=self.error_score == "raise"
        )
        _warn_or_raise_about_failures(fits, self.error_score)
        tested = self._scores(fits, scorer, X, y, [test for _, test in splits])
        trained = self._scores(fits, scorer, X, y, [train for train, _ in splits]) if self.return_train_score else None
        self.cv_results_ = _cv_results(candidates, len(splits), fits, tested, trained, self.error_score)
        self.multimetric_ = "mean_test_score" not in self.cv_results_
        self._select_best()
        if self.refit:
            self.best_estimator_ = clone(self.estimator).set_params(**clone(self.best_params_, safe=False))
            start = time.time()
            self.best_estimator_.fit(X, y)
            self.refit_time_ = time.time() - start
            if hasattr(self.best_estimator_, "feature_names_in_"):
                self.feature_names_in_ = self.best_estimator_.feature_names_in_
        return self

    def _scorers(self):
        """(the scorer to call: returns a number, or a dict for several metrics; scorer_ as sklearn keeps it)."""
        if self.scoring is None or isinstance(self.scoring, str) or callable(self.scoring):
            scorer = check_scoring(self.estimator, self.scoring)
            return scorer, scorer
        scorer = check_scoring(self.estimator, self.scoring)  # checks the names and scorers of a list or dict
        named = self.scoring if isinstance(self.scoring, dict) else {name: name for name in self.scoring}
        self._check_multimetric_refit(named)
        return scorer, {name: check_scoring(self.estimator, one) for name, one in named.items()}

    def _check_multimetric_refit(self, metrics) -> None:
        if (
            self.refit is not False
            and not callable(self.refit)
            and not (isinstance(self.refit, str) and self.refit in metrics)
        ):
            raise ValueError(
                "For multi-metric scoring, the parameter refit must be set to a scorer key or a callable to refit "
                f"an estimator with the best parameter setting on the whole data; refit={self.refit!r} was passed "
                f"(the metrics: {', '.join(metrics)})"
            )

    def _scores(self, fits: "list[_Fitted]", scorer, X, y, split_rows: list) -> list:
        """Each fit's (score, seconds) on its split's rows (fits are candidate-major). The default scorer (the
        estimator's `score`: R², or accuracy for a classifier; also when named "r2" or "accuracy") takes the rows of
        a split once through the earlier steps its fits share and validates them once, then scores each fit's
        predictions alone (`forward`, `r2`/`accuracy`: sklearn's formulas); where that shared part fails, and for
        any other scorer, the scorer scores each fit."""
        default = self.scoring in (None, "accuracy" if is_classifier(self.estimator) else "r2")
        scored: list = [(None, 0.0)] * len(fits)
        sharing: dict[tuple, list[int]] = {}
        for index, fitted in enumerate(fits):
            if fitted.estimator is not None:
                earlier = fitted.estimator.steps[:-1] if isinstance(fitted.estimator, Pipeline) else []
                split = index % len(split_rows)
                sharing.setdefault((split, *(id(step) for _, step in earlier)), []).append(index)
        for (split, *_), indices in sharing.items():
            start = time.perf_counter()
            rows = split_rows[split]
            shared = _default_scorer_rows(fits[indices[0]].estimator, X, y, rows) if default else None
            if shared is None:
                for index in indices:
                    scored[index] = self._scored(fits[index], scorer, X, y, rows)
                continue
            x, y_rows = shared
            finals = [_searched(fits[index].estimator)[0] for index in indices]  # one architecture: the grid's
            stacked = [[np.stack(layers) for layers in zip(*(getattr(f, name) for f in finals))] for name in _WEIGHTS]
            values = finals[0]._score_weights(x, y_rows, *stacked).tolist()  # one score per fit
            seconds = (time.perf_counter() - start) / len(indices)
            for index, value in zip(indices, values):
                scored[index] = (value, seconds)
        return scored

    def _scored(self, fit: "_Fitted", scorer, X, y, rows):
        """The scorer's value for a fitted member on X[rows] (a number or a dict; None for a failed fit or
        scorer) and the seconds it took."""
        if fit.estimator is None:
            return None, 0.0
        start = time.perf_counter()
        try:
            value = scorer(fit.estimator, _safe_indexing(X, rows), _safe_indexing(y, rows))
        except Exception as error:
            if self.error_score == "raise":
                raise
            warnings.warn(
                f"Scoring failed; the score on this train-test partition is set to {self.error_score}: "
                f"{_describe(error)}",
                UserWarning,
                stacklevel=3,
            )
            return None, time.perf_counter() - start
        if not isinstance(value, dict) and not _is_real(value):
            raise ValueError(f"scoring must return a number, got {value!r} ({type(value).__name__}) instead")
        return value, time.perf_counter() - start

    def _select_best(self) -> None:
        """best_index_, best_score_ and best_params_ as sklearn picks them: the best mean test score (rank 1,
        the first of ties) of the refit metric, or the index a callable refit returns."""
        results = self.cv_results_
        if self.multimetric_:
            self._check_multimetric_refit(
                [key.removeprefix("mean_test_") for key in results if key.startswith("mean_test_")]
            )
            if self.refit is False:
                return
        if callable(self.refit):
            chosen = self.refit(results)
            if not isinstance(chosen, numbers.Integral):
                raise TypeError(f"refit must return the index of the best candidate (an int), got {chosen!r}")
            best = int(chosen)
            if not 0 <= best < len(results["params"]):
                raise IndexError(f"refit returned {best}, outside the {len(results['params'])} candidates")
        else:
            metric = self.refit if self.multimetric_ else "score"
            best = int(results[f"rank_test_{metric}"].argmin())
            self.best_score_ = results[f"mean_test_{metric}"][best]
        self.best_index_ = best
        self.best_params_ = results["params"][best]


#: A fitted estimator's weights, in sklearn's layout.
_WEIGHTS = ("coefs_", "intercepts_")


def _default_scorer_rows(searched, X, y, rows):
    """(X[rows] through the searched pipeline's earlier steps, validated for its final estimator; y[rows] as an
    array) as the default scorer sees them, or None when they are not plain (x failing the earlier steps or
    validation, y non-numeric or not finite for a regressor, not 1-D for a classifier): the scorer reports those."""
    final, name = _searched(searched)
    try:
        x = _safe_indexing(X, rows)
        if name is not None and len(searched.steps) > 1:
            x = searched[:-1].transform(x)
        x = validate_data(final, x, reset=False, dtype=(np.float64, np.float32))
    except Exception:
        return None
    y_rows = np.asarray(_safe_indexing(y, rows))
    plain = (
        y_rows.ndim == 1
        if is_classifier(final)
        else y_rows.dtype.kind in "fiub" and y_rows.ndim in (1, 2) and bool(np.all(np.isfinite(y_rows)))
    )
    return (x, y_rows) if plain else None


def _is_real(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _describe(error: BaseException) -> str:
    """An exception as one line: its type and message."""
    return f"{type(error).__name__}: {' '.join(str(error).split())}"


def _check_vectorised(keys, searched) -> None:
    """ValueError naming the first grid key one program cannot search: the estimator's parameters outside
    VECTORISED, the final step itself and the Pipeline's own parameters (steps, memory, …); a pipeline's earlier
    steps and their parameters change only the data."""
    final, name = _searched(searched)
    earlier = {step for step, _ in searched.steps[:-1]} if name is not None else set()
    for key in sorted(keys):
        step, _, parameter = key.rpartition("__") if name is not None else ("", "", key)
        if step.split("__")[0] in earlier or (not step and key in earlier):
            continue
        if step != (name or "") or parameter not in VECTORISED:
            raise ValueError(
                f"GridSearchCV: the grid varies {key!r}, which one program cannot search: it vectorises the "
                f"{type(final).__name__}'s {', '.join(VECTORISED)} and a pipeline's earlier steps (search others "
                "with sklearn.model_selection.GridSearchCV)"
            )


def _searched(estimator) -> tuple[Any, str | None]:
    """(the bp_jax estimator searched, its step name in a Pipeline or None); TypeError for anything else."""
    final, name = estimator, None
    if isinstance(estimator, Pipeline) and estimator.steps:
        name, final = estimator.steps[-1]
    if not isinstance(final, _BaseMLP):
        raise TypeError(
            f"bp_jax.estimators.GridSearchCV searches MLPRegressor or MLPClassifier, or a Pipeline ending in one, "
            f"got {type(final).__name__}; use sklearn.model_selection.GridSearchCV"
        )
    return final, name


class _Fitted(NamedTuple):
    """One (grid point × fold) fit: the fitted estimator (None if its fit failed), the failure as one line, and
    the seconds it took (a program member: its share of the program's time)."""

    estimator: Any
    error: str | None
    fit_time: float


class _Block(NamedTuple):
    """One fold's training data as the searched estimator sees it: the pipeline's earlier steps fitted on the
    fold (empty without a pipeline), the transformed x, the encoded targets, and the attributes validating the
    data gave the estimator (n_features_in_, classes_, …)."""

    prefix: list
    x: np.ndarray
    targets: np.ndarray
    attributes: dict


class _Member(NamedTuple):
    """A (grid point × fold) trained as one member of a program: its position in the search, the searched
    estimator (a Pipeline or the bp_jax estimator), the bp_jax estimator, its block's key and its seed."""

    position: int
    searched: Any
    estimator: Any
    block: tuple
    seed: int


#: What validating its training data sets on an estimator: copied to every member of one block.
_DATA_ATTRIBUTES = ("n_features_in_", "feature_names_in_", "classes_", "n_outputs_")


def _jobs(n_jobs) -> int:
    """sklearn's n_jobs as a count of concurrent programs: None → 1 (or joblib's `parallel_config`), −1 → every
    CPU, −k → CPUs + 1 − k."""
    if n_jobs is not None and not (isinstance(n_jobs, numbers.Integral) and not isinstance(n_jobs, bool) and n_jobs):
        raise ValueError(f"n_jobs must be None or a nonzero integer, got {n_jobs!r}")
    with parallel_config(backend="threading"):  # threads, as `_train_parts` runs them; a caller's n_jobs kept
        return effective_n_jobs(n_jobs)


def _fit_members(estimator, candidates, X, y, splits, *, jobs: int, raise_errors: bool) -> list[_Fitted]:
    """Every (candidate, split) fitted, candidate-major: those one program can train as its members (grouped by
    program shape, one `fit_ensemble` call each, or up to `jobs` concurrent calls over parts of them: `_parts`), the
    others by their own fit. A failed fit holds its error (raised at once with `raise_errors`)."""
    fitted: list[_Fitted | None] = [None] * (len(candidates) * len(splits))
    blocks: dict[tuple, _Block] = {}
    programs: dict[tuple, list[_Member]] = {}
    prepared_in: dict[int, float] = {}
    base = None if isinstance(estimator, Pipeline) else clone(estimator)
    for index, (candidate, (fold, (train_rows, _))) in enumerate(itertools.product(candidates, enumerate(splits))):
        start = time.perf_counter()
        if isinstance(estimator, Pipeline):  # its steps, and steps in the grid: fresh copies for every fit
            searched = clone(estimator).set_params(**clone(candidate, safe=False))
        else:  # one clone in all; per fit a copy with its own copy of the grid's values (VECTORISED names)
            searched = copy.copy(base)
            vars(searched).update(clone(candidate, safe=False))
        member, name = _searched(searched)
        fold_data = lambda rows=train_rows: (_safe_indexing(X, rows), _safe_indexing(y, rows))
        try:
            member._check_params()
            alone = member.early_stopping or not member.shuffle
            # the earlier steps' grid values by identity: members of one fold and the same values share a block
            block_key = (
                fold,
                tuple((key, id(value)) for key, value in candidate.items() if name and key.split("__")[0] != name),
            )
            if not alone and block_key not in blocks:
                blocks[block_key] = _block(searched, member, name, *fold_data())
            steps = None if alone else plan(member.batch_size, len(blocks[block_key].x))
        except Exception as error:
            if raise_errors:
                raise
            fitted[index] = _Fitted(None, _describe(error), time.perf_counter() - start)
            continue
        if steps is None or steps.batch_size == len(blocks[block_key].x):  # full batch: fit takes no minibatches
            fitted[index] = _fit_alone(searched, *fold_data(), raise_errors=raise_errors, start=start)
            continue
        block = blocks[block_key]
        if name is not None:
            searched.steps = [*block.prefix, searched.steps[-1]]
        member.__dict__.update(block.attributes)
        program = member._program(block.x.shape[1], member._n_outputs(), members_batch=steps.batch_size)
        shape = (program, steps, member.max_iter, block.x.dtype)
        programs.setdefault(shape, []).append(_Member(index, searched, member, block_key, seed_of(member.random_state)))
        prepared_in[index] = time.perf_counter() - start
    for ((loss_fn, transform), steps, max_iter, _), members in programs.items():
        for part, runs, share in _train_parts(loss_fn, transform, steps, max_iter, members, blocks, jobs):
            for member, (run, diverged_at) in zip(part, runs):
                if run is None:
                    failure = ValueError(
                        f"Solver produced non-finite parameter weights at step {diverged_at}. The input data may "
                        "contain large values and need to be preprocessed."
                    )
                    if raise_errors:
                        raise failure
                    fitted[member.position] = _Fitted(None, _describe(failure), prepared_in[member.position] + share)
                    continue
                member.estimator._start(member.seed)
                member.estimator._adopt(run, steps, incremental=False, stopping=None)
                fitted[member.position] = _Fitted(member.searched, None, prepared_in[member.position] + share)
    assert all(fit is not None for fit in fitted)
    return fitted  # type: ignore[return-value]


#: JAX's settings that hold per thread inside their `with` blocks: `_train_parts`' threads enter the caller's.
_THREAD_SETTINGS = (
    jax.enable_x64,
    jax.default_matmul_precision,
    jax.default_device,
    jax.numpy_rank_promotion,
    jax.numpy_dtype_promotion,
    jax.default_prng_impl,
)


def _train_parts(loss_fn, transform, steps: Plan, max_iter: int, members: "list[_Member]", blocks: dict, jobs: int):
    """`_train_group` over `_parts(members, jobs)`, concurrently on threads where there are several (XLA runs each
    call's program while its thread waits without the GIL), each thread under the caller's JAX settings (x64,
    precision, device, …): per part, (its members, their runs, each member's share of the part's seconds). Parts
    of one size share one compiled program: each reads its blocks' rows padded to the largest part's (`_data_shape`),
    and all carry a stopping rule if any member's can stop (one that cannot fire changes nothing); only folds that
    straddle LARGE_DOMAIN rows (a part's data order taking more rounds than another's) still compile two.
    """
    settings = [(setting, setting.value) for setting in _THREAD_SETTINGS]
    parts = _parts(members, jobs)
    shape = _data_shape(parts, blocks)
    stops = can_stop(min(member.estimator.n_iter_no_change for member in members), max_iter)

    def train(part):
        with contextlib.ExitStack() as stack:
            for setting, value in settings:
                stack.enter_context(setting(value))
            start = time.perf_counter()
            runs = _train_group(loss_fn, transform, steps, max_iter, part, blocks, shape, stops)
        return part, runs, (time.perf_counter() - start) / len(part)

    if len(parts) == 1:
        return [train(parts[0])]
    with ThreadPoolExecutor(len(parts)) as pool:
        return list(pool.map(train, parts))


def _data_shape(parts: "list[list[_Member]]", blocks: dict) -> tuple[int, int]:
    """(rows of x, width of the row-index array) that every part's `_train_group` pads its data to: the most rows
    of a part's blocks stacked, and of one block. Folds differ in size by a row, so unpadded, parts of one size
    would each compile a program of their own."""
    used = [{member.block for member in part} for part in parts]
    return (
        max(sum(len(blocks[block].x) for block in part) for part in used),
        max(len(blocks[block].x) for part in used for block in part),
    )


def _sharing(members: "list[_Member]") -> "tuple[list[_Member], int]":
    """(members ordered by the minibatches they share: those of one block and seed together, in first-seen order;
    the gcd of those groups' sizes)."""
    sharing: dict[tuple, list[_Member]] = {}
    for member in members:
        sharing.setdefault((member.block, member.seed), []).append(member)
    return [member for same in sharing.values() for member in same], math.gcd(*map(len, sharing.values()))


def _parts(members: "list[_Member]", jobs: int) -> "list[list[_Member]]":
    """`members` of one program shape in at most `jobs` parts, for concurrent `fit_ensemble` calls. Members of one
    block and seed share their minibatches (`_train_group`: one gather, one matmul), so a part is whole units of d
    members of one such group: d the groups' common size, or half of it where that makes the largest part smaller;
    the units dealt out in order, the parts' unit counts differing by at most one."""
    ordered, size = _sharing(members)
    largest = lambda unit: -(-len(members) // unit // min(jobs, len(members) // unit)) * unit
    unit = min((size, size // 2) if size % 2 == 0 else (size,), key=lambda unit: (largest(unit), -unit))
    units = [ordered[start : start + unit] for start in range(0, len(ordered), unit)]
    counts = [len(chunk) for chunk in np.array_split(np.arange(len(units)), min(jobs, len(units)))]
    bounds = np.cumsum([0, *counts])
    return [[member for one in units[low:high] for member in one] for low, high in itertools.pairwise(bounds)]


def _block(searched, member, name: str | None, x, y) -> _Block:
    """One fold's data as `member` (the bp_jax estimator in `searched`) sees it: through the pipeline's earlier
    steps fitted on it, validated, targets encoded."""
    if name is not None and len(searched.steps) > 1:
        x = searched[:-1].fit_transform(x, y)
    x, y = member._validate_input(x, y, reset=True)
    targets = member._encode_targets(y, first=True)
    attributes = {attribute: getattr(member, attribute) for attribute in _DATA_ATTRIBUTES if hasattr(member, attribute)}
    return _Block(list(searched.steps[:-1]) if name is not None else [], x, targets, attributes)


def _fit_alone(searched, x, y, *, raise_errors: bool, start: float) -> _Fitted:
    try:
        searched.fit(x, y)
    except Exception as error:
        if raise_errors:
            raise
        return _Fitted(None, _describe(error), time.perf_counter() - start)
    return _Fitted(searched, None, time.perf_counter() - start)


def _warn_or_raise_about_failures(fits: list[_Fitted], error_score) -> None:
    """sklearn's rule: ValueError if every fit failed, else a FitFailedWarning; both one line, the errors counted."""
    errors = collections.Counter(fit.error for fit in fits if fit.error is not None)
    if not errors:
        return
    failed = sum(errors.values())
    summary = "; ".join(f"{count} × {error}" for error, count in errors.items())
    if failed == len(fits):
        raise ValueError(f"All the {failed} fits failed (set error_score='raise' to see the first): {summary}")
    warnings.warn(
        f"{failed} fits failed out of a total of {len(fits)}; their scores are set to {error_score} "
        f"(error_score='raise' raises instead): {summary}",
        FitFailedWarning,
        stacklevel=3,
    )


def _cv_results(candidates, n_splits: int, fits, tested, trained, error_score) -> dict:
    """cv_results_ as sklearn's GridSearchCV lays it out: fit and score times, a masked array per parameter,
    params, and per metric the split scores, their mean and (unweighted) std, and the test rank (failed fits
    score error_score; NaN means rank last)."""
    results: dict[str, Any] = {}
    shape = (len(candidates), n_splits)

    def store(key: str, values, *, splits: bool = False, rank: bool = False) -> None:
        array = np.asarray(values, np.float64).reshape(shape)
        if splits:
            for split in range(n_splits):
                results[f"split{split}_{key}"] = array[:, split]
        means = array.mean(axis=1)
        results[f"mean_{key}"] = means
        if key.startswith(("train_", "test_")) and not np.all(np.isfinite(means)):
            warnings.warn(
                f"One or more of the {key.split('_')[0]} scores are non-finite: {means}", UserWarning, stacklevel=4
            )
        results[f"std_{key}"] = np.sqrt(((array - means[:, None]) ** 2).mean(axis=1))
        if rank:
            if np.all(np.isnan(means)):
                results[f"rank_{key}"] = np.ones(len(means), np.int32)
            else:
                worst = np.nanmin(means) - 1
                results[f"rank_{key}"] = rankdata(-np.nan_to_num(means, nan=worst), method="min").astype(np.int32)

    store("fit_time", [fit.fit_time for fit in fits])
    store("score_time", [time_taken for _, time_taken in tested])
    results |= _parameter_arrays(candidates)
    results["params"] = candidates
    first = next((value for value, _ in tested if value is not None), None)
    metrics = list(first) if isinstance(first, dict) else ["score"]
    value_of = lambda value, metric: (
        error_score if value is None else value[metric] if isinstance(value, dict) else value
    )
    for metric in metrics:
        store(f"test_{metric}", [value_of(value, metric) for value, _ in tested], splits=True, rank=True)
        if trained is not None:
            store(f"train_{metric}", [value_of(value, metric) for value, _ in trained], splits=True)
    return results


def _parameter_arrays(candidates) -> dict[str, np.ma.MaskedArray]:
    """param_<name>: a masked array over the candidates (masked where a candidate lacks the parameter), of the
    values' own dtype unless they are strings or sequences (then object), as sklearn lays them out."""
    values: dict[str, dict[int, Any]] = {}
    for index, candidate in enumerate(candidates):
        for name, value in candidate.items():
            values.setdefault(f"param_{name}", {})[index] = value
    arrays = {}
    for key, by_index in values.items():
        try:
            inferred = np.array(list(by_index.values()))
            dtype = inferred.dtype if inferred.dtype.kind != "U" and inferred.ndim == 1 else np.dtype(object)
        except ValueError:  # sequences of different lengths
            dtype = np.dtype(object)
        array = np.ma.MaskedArray(np.empty(len(candidates), dtype), mask=True)
        for index, value in by_index.items():
            array[index] = value
        arrays[key] = array
    return arrays


#: One PRNG key per seed, compiled once (an eager vmap traces on every call).
_keys = jax.jit(jax.vmap(jax.random.key))


def _train_group(
    loss_fn,
    transform,
    steps: Plan,
    max_iter: int,
    members: list[_Member],
    blocks: dict,
    shape: tuple[int, int],
    stops: bool,
) -> list:
    """One `fit_ensemble` call for members of one program shape, over their blocks stacked (x padded to shape[0]
    rows that no minibatch reads, the row indices to shape[1] columns), each member on its own block's rows and
    (`stops`) stopped by its own `epoch_rule` inside the program: per member, (its TrainRun, −1), or (None, the
    step it diverged at). Members of one block and seed read the same minibatches: they form the program's groups
    (sizes the gcd of theirs), a group's gather and matmuls shared."""
    ordered, group_size = _sharing(members)
    leaders = ordered[::group_size]
    used = list(dict.fromkeys(member.block for member in ordered))
    padded = lambda arrays: np.pad(
        np.concatenate(arrays), [(0, shape[0] - sum(map(len, arrays)))] + [(0, 0)] * (arrays[0].ndim - 1)
    )
    x_all = padded([blocks[block].x for block in used])
    targets_all = padded([blocks[block].targets for block in used])
    offsets = dict(zip(used, np.cumsum([0] + [len(blocks[block].x) for block in used])))
    counts = np.array([len(blocks[leader.block].x) for leader in leaders])
    rows = np.zeros((len(leaders), shape[1]), np.int32)
    for index, leader in enumerate(leaders):
        rows[index, : counts[index]] = offsets[leader.block] + np.arange(counts[index])
    estimators = [member.estimator for member in ordered]
    first, dtype = estimators[0], x_all.dtype
    sizes = (x_all.shape[1], *first._hidden_sizes(), first._n_outputs())
    initial = {seed: glorot(seed, sizes, first.activation, dtype) for seed in {member.seed for member in ordered}}
    layers = [initial[member.seed] for member in ordered]
    params = {
        "layers": jax.tree.map(lambda *leaves: np.stack(leaves), *layers),
        "l2": np.asarray([estimator.alpha / steps.batch_size for estimator in estimators], dtype),
    }
    opt_state = initial_state(
        transform,
        params,
        [estimator.learning_rate_init for estimator in estimators],
        [estimator.momentum for estimator in estimators],
        members=True,
    )
    per_epoch = steps.steps_per_epoch
    tolerances = [estimator.tol for estimator in estimators]
    patience = [estimator.n_iter_no_change for estimator in estimators]
    rule = epoch_rule(per_epoch, tolerances, patience, jnp.result_type(float)) if stops else None
    result = fit_ensemble(
        loss_fn,
        params,
        x_all,
        targets_all,
        steps=max_iter * per_epoch,
        optimizer=transform,
        opt_state=opt_state,
        batch_size=steps.batch_size,
        key=_keys(np.asarray([leader.seed for leader in leaders])),
        rows=rows,
        row_counts=counts,
        chunk_size=max_iter * per_epoch,
        stop_rule=rule,
    )
    curves = epoch_means(result.losses, per_epoch)
    coefs, intercepts = to_sklearn(result.params["layers"])
    opt_states = jax.device_get(result.opt_state)
    stopped_at = np.full(len(ordered), -1) if result.stopped_at is None else result.stopped_at
    runs: dict[int, tuple[TrainRun | None, int]] = {}
    for index, member in enumerate(ordered):
        if result.diverged[index] >= 0:
            runs[member.position] = (None, int(result.diverged[index]))
            continue
        stopped = stopped_at[index] >= 0
        epochs = (stopped_at[index] + 1) // per_epoch if stopped else max_iter
        run = TrainRun(
            [coef[index] for coef in coefs],
            [intercept[index] for intercept in intercepts],
            jax.tree.map(lambda leaf, i=index: leaf[i], opt_states),
            epochs * per_epoch,
            curves[:epochs, index].tolist(),
            [],
            stopped,
        )
        runs[member.position] = (run, -1)
    return [runs[member.position] for member in members]

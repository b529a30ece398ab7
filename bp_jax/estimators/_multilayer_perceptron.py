"""What scikit-learn's MLPRegressor and MLPClassifier share, on bp_jax's fused loop: `BaseMLP`, holding the parameters,
checks, training run (sgd, adam, lbfgs; warm start, partial_fit, early stopping) and prediction, as
`sklearn/neural_network/_multilayer_perceptron.py`'s base class; the two estimators are `_regressor` and
`_classifier`.

It follows sklearn's `_fit` step by step: each call's RandomState (from the seed) draws the initial weights, then
early stopping's validation split; an epoch is ⌈n / b⌉ minibatches, the last one short (sklearn's, through
zero-weight padding); adam is sklearn's (ε added to the uncorrected √v). Deliberately different (the package
docstring lists every difference): with shuffle=True each epoch's order is drawn inside the compiled loop from a JAX
key (`minibatch_indices`: every row once, the short batch last), not by sklearn's RandomState, so no epoch returns
to the host and no order table is stored; the minibatches differ from sklearn's (with shuffle=False they are its
own)."""

import functools
import numbers
import warnings
from typing import Any

import numpy as np
from scipy.optimize import OptimizeResult
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import train_test_split
from sklearn.utils.optimize import _check_optimize_result
from sklearn.utils.validation import _check_sample_weight, check_is_fitted, column_or_1d, validate_data

from bp_jax.estimators._base import (
    densified,
    forward,
    from_sklearn,
    glorot,
    member_layout,
    objective,
    precision,
    prng_key,
    random_state,
    seed_of,
    to_sklearn,
    weighted,
)
from bp_jax.estimators._constraints import MLP_CONSTRAINTS, validate_params
from bp_jax.estimators._lbfgs import MESSAGES, STATUS, Result, compiled, counts, unpacked
from bp_jax.estimators._reporting import Progress
from bp_jax.estimators._stochastic_optimizers import hyperparams, initial_state, solver_transform
from bp_jax.estimators._training import Plan, Stopping, TrainRun, fit_epochs, non_finite_error, plan, rule_state


def _atomic(method):
    """`method`, leaving the estimator's attributes as they were if it raises: a failed fit changes nothing."""

    @functools.wraps(method)
    def atomic(self, *args, **kwargs):
        before = dict(vars(self))
        try:
            return method(self, *args, **kwargs)
        except BaseException:
            vars(self).clear()
            vars(self).update(before)
            raise

    return atomic


class BaseMLP(BaseEstimator):
    """What MLPRegressor and MLPClassifier share: parameters, checks, the training run, prediction."""

    # fitted attributes (set by fit, absent before it, as sklearn's check_is_fitted expects)
    coefs_: list[np.ndarray]
    intercepts_: list[np.ndarray]
    loss_curve_: list[float]
    validation_scores_: list[float] | None
    best_validation_score_: float | None
    best_loss_: float | None
    _best_coefs: list[np.ndarray]
    _best_intercepts: list[np.ndarray]
    _opt_state: Any

    _parameter_constraints: dict = MLP_CONSTRAINTS

    def __init__(
        self,
        hidden_layer_sizes,
        activation,
        *,
        solver,
        alpha,
        batch_size,
        learning_rate,
        learning_rate_init,
        power_t,
        max_iter,
        loss,
        shuffle,
        random_state,
        tol,
        verbose,
        warm_start,
        momentum,
        nesterovs_momentum,
        early_stopping,
        validation_fraction,
        beta_1,
        beta_2,
        epsilon,
        n_iter_no_change,
        max_fun,
    ):
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.solver = solver
        self.alpha = alpha
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.learning_rate_init = learning_rate_init
        self.power_t = power_t
        self.max_iter = max_iter
        self.loss = loss
        self.shuffle = shuffle
        self.random_state = random_state
        self.tol = tol
        self.verbose = verbose
        self.warm_start = warm_start
        self.momentum = momentum
        self.nesterovs_momentum = nesterovs_momentum
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon
        self.n_iter_no_change = n_iter_no_change
        self.max_fun = max_fun

    @classmethod
    @functools.cache
    def _get_param_names(cls) -> list[str]:
        """scikit-learn's (the names of `__init__`'s parameters), read once a class: its `inspect.signature` is
        most of `get_params`' time."""
        return super()._get_param_names()

    def _validate_params(self) -> None:
        """scikit-learn's check of the parameters (`fit_context` calls it), remembering those that passed."""
        validate_params(self)

    @property
    def _classifier(self) -> bool:
        """`is_classifier(self)` without building scikit-learn's tags on every call (a grid asks per member)."""
        return isinstance(self, ClassifierMixin)

    # -- checks (scikit-learn's `_validate_params` runs before them: `fit_context`) -----------------------------
    def _hidden_sizes(self) -> tuple[int, ...]:
        sizes = self.hidden_layer_sizes
        sizes = list(sizes) if hasattr(sizes, "__iter__") else [sizes]
        if any(isinstance(size, numbers.Real) and size <= 0 for size in sizes):
            raise ValueError(f"hidden_layer_sizes must be > 0, got {sizes}.")  # scikit-learn's words
        if not all(isinstance(size, numbers.Integral) for size in sizes):
            raise ValueError(f"hidden_layer_sizes must be integers, got {sizes}.")
        return tuple(int(size) for size in sizes)

    def _check_params(self) -> None:
        """The check scikit-learn makes in `_fit`, beyond its parameter constraints: hidden_layer_sizes' elements."""
        self._hidden_sizes()

    def _objective(self, features: int, *, members_batch: int | None = None, full_batch: bool = False):
        """The objective, shared by every estimator of this configuration (`members_batch`: as a member of an
        ensemble trained on minibatches of this size; `full_batch`: as one model trained on every row, lbfgs, its
        activations as features × rows: a loss-and-gradient evaluation ~25 % faster, 10 → 5 → 1 on 353 rows in
        float64, and no slower for wider nets; and every layer a matmul, where the rule of minibatches gives a small
        layer the product and sum: 10 → 5 → 1 on 353 rows in float64, 9.8 → 9.5 µs an lbfgs trip). Its loss is
        sklearn's: `loss`, where log-loss over logistic outputs is the binary log-loss."""
        sizes = (features, *self._hidden_sizes(), self.n_outputs_)
        layout = ("columns" if full_batch else "rows") if members_batch is None else member_layout(sizes, members_batch)
        loss = "binary_log_loss" if self.out_activation_ == "logistic" else self.loss
        members = members_batch is not None
        contraction = "dot" if full_batch else None
        return objective(sizes, self.activation, loss, members=members, layout=layout, contraction=contraction)

    def _program(self, features: int, *, members_batch: int | None = None):
        """(objective, optimizer) of sgd or adam: shared by every estimator of this configuration (its solver's
        hyperparameters are data)."""
        return self._objective(features, members_batch=members_batch), solver_transform(self.solver)

    def _rule_state(self, steps: Plan, *, first: bool) -> dict:
        """sklearn's stopping rule and schedule (`rule_state`; adam's schedule is "constant", as sklearn's Adam
        ignores `learning_rate`), continuing the fitted count, best loss (early stopping: minus the best validation
        score) and t_ unless `first`."""
        carried = {}
        if not first:
            best = self.best_loss_
            if self.early_stopping:
                best = None if self.best_validation_score_ is None else -self.best_validation_score_
            carried = {"best": np.inf if best is None else best, "count": self._no_improvement_count, "t": self.t_}
        return rule_state(
            self.tol,
            self.n_iter_no_change,
            schedule=self.learning_rate if self.solver == "sgd" else "constant",
            learning_rate_init=self.learning_rate_init,
            power_t=self.power_t,
            rows=steps.rows,
            **carried,
        )

    def _validate_input(self, X, y, *, reset: bool):
        X, y = validate_data(
            self,
            X,
            y,
            reset=reset,
            accept_sparse=["csr", "csc"],
            dtype=(np.float64, np.float32),
            multi_output=True,
            y_numeric=not self._classifier,
        )
        X = densified(X)
        if y.ndim == 2 and y.shape[1] == 1:
            y = column_or_1d(y, warn=True)  # sklearn's DataConversionWarning, then one output
        if not self._classifier and y.dtype.kind not in "fiub":  # text targets: numbers spelled as text, or refused
            try:
                y = y.astype(X.dtype)
            except ValueError:
                raise ValueError(f"{type(self).__name__} needs numeric targets, got y of dtype {y.dtype}") from None
        return X, y

    # -- training ---------------------------------------------------------------------------------------------
    @_atomic
    def _fit(self, X, y, *, incremental: bool, classes=None, sample_weight=None):
        self._check_params()
        # sklearn's rule: partial_fit and warm_start continue the fitted weights (also ones set by hand)
        first = not hasattr(self, "coefs_") or not (incremental or self.warm_start)
        X, y = self._validate_input(X, y, reset=first)
        if sample_weight is not None:
            sample_weight = _check_sample_weight(sample_weight, X)
        targets = self._encode_targets(y, first=first, classes=classes).astype(X.dtype)
        if incremental and self.early_stopping and self.solver != "lbfgs":
            raise ValueError("partial_fit does not support early_stopping=True")
        seed = seed_of(self.random_state)  # each call, as sklearn's `check_random_state` in `_fit`
        if first:
            self._start(seed)
        else:
            self._seed = seed
        with precision(X.dtype):
            if self.solver == "lbfgs":
                return self._fit_lbfgs(X, weighted(targets, sample_weight), first=first)
            early = self.early_stopping and not incremental
            run, steps, stopping = self._run_epochs(
                X, y, targets, sample_weight, first=first, incremental=incremental, early=early
            )
            return self._adopt(run, steps, incremental=incremental, stopping=stopping if early else None)

    def _start(self, seed: int) -> None:
        """A fresh training history, as sklearn's `_initialize` sets it: step 0, the seed of the initialisation and
        the data order and, for sgd and adam, an empty loss curve, no-improvement count 0 and the best loss (or,
        with early stopping, validation score) yet to come."""
        self.t_, self._step, self.n_iter_, self._seed = 0, 0, 0, seed
        if self.solver != "lbfgs":
            self.loss_curve_, self._no_improvement_count = [], 0
            early = bool(self.early_stopping)
            self.best_loss_ = None if early else np.inf
            self.validation_scores_ = [] if early else None
            self.best_validation_score_ = -np.inf if early else None

    def _initial_layers(self, X, *, first: bool, rng: np.random.RandomState) -> tuple:
        """bp_jax params to train from: Glorot's initialisation drawn from `rng` if `first`, else the fitted (or
        hand-set) weights in X's dtype."""
        if first:
            sizes = (X.shape[1], *self._hidden_sizes(), self.n_outputs_)
            return glorot(rng, sizes, self.activation, X.dtype)
        cast = lambda arrays: [np.asarray(array, X.dtype) for array in arrays]
        return from_sklearn(cast(self.coefs_), cast(self.intercepts_))

    def _set_weights(self, coefs, intercepts) -> None:
        """The fitted weights (sklearn's layout) and the layer count they give."""
        self.coefs_, self.intercepts_ = coefs, intercepts
        self.n_layers_ = len(self.coefs_) + 1

    def _fit_lbfgs(self, X, targets, *, first: bool):
        """sklearn's lbfgs: the whole optimisation one call of one compiled program (`_lbfgs.compiled`) on every row,
        from Glorot's initialisation, or from the fitted weights (warm_start, or the regressor's partial_fit, as
        sklearn's)."""
        layers = self._initial_layers(X, first=first, rng=random_state(self._seed))
        result = compiled(self._objective(X.shape[1], full_batch=True), members=False)(
            layers,
            np.asarray(self.alpha / X.shape[0], X.dtype),
            X,
            targets,
            np.asarray(self.tol, X.dtype),
            *counts(self.max_iter, self.max_fun),
        )
        return self._adopt_lbfgs(unpacked(layers, *result))

    def _adopt_lbfgs(self, result: Result):
        """Take an lbfgs run as the fitted state, as sklearn's `_fit_lbfgs` sets it (no loss curve; n_iter_ and the
        ConvergenceWarning by sklearn's own `_check_optimize_result`, from scipy's status and message)."""
        self._set_weights(*to_sklearn(result.params))
        self._opt_state = None
        self.loss_ = float(result.loss)
        reason = int(result.reason)
        ended = OptimizeResult(nit=int(result.iterations), status=STATUS[reason], message=MESSAGES[reason])
        self.n_iter_ = _check_optimize_result("lbfgs", ended, self.max_iter)
        if not all(np.isfinite(weights).all() for weights in (*self.coefs_, *self.intercepts_)):
            raise non_finite_error()
        return self

    def _adopt(self, run: TrainRun, steps: Plan, *, incremental: bool, stopping: Stopping | None):
        """Take a training run's result as the fitted state, after the history so far (`_start`, or the fits it
        continues), from `fit`'s own run or as a GridSearchCV member; `stopping`: early stopping's rule, whose best
        params are kept (those of an earlier fit when this one's scores never beat them, as sklearn's). An
        interrupted run (KeyboardInterrupt) is kept up to its last complete epoch with sklearn's warning, "Training
        interrupted by user."."""
        self._set_weights(run.coefs, run.intercepts)
        self._opt_state, self._step, self._no_improvement_count = run.opt_state, run.step, run.no_improvement
        self.loss_curve_ = [*self.loss_curve_, *run.curve]
        if self.loss_curve_:  # as sklearn's, no loss_ before an epoch ends
            self.loss_ = self.loss_curve_[-1]
        self.n_iter_ = len(run.curve)  # this call's epochs, as sklearn's
        self.t_ += len(run.curve) * steps.rows
        if stopping is not None:
            self.validation_scores_ = [*(self.validation_scores_ or []), *run.scores]
            self.best_validation_score_ = stopping.best_score
            if stopping.best_params is not None:
                self._best_coefs, self._best_intercepts = to_sklearn(stopping.best_params["layers"])
            self.coefs_, self.intercepts_ = self._best_coefs, self._best_intercepts
        else:
            self.best_loss_ = float(min([np.inf if self.best_loss_ is None else self.best_loss_, *run.curve]))
        if run.interrupted:
            warnings.warn("Training interrupted by user.", stacklevel=3)
        elif not incremental and not run.stopped:
            warnings.warn(
                f"Stochastic Optimizer: Maximum iterations ({self.max_iter}) reached and the optimization "
                "hasn't converged yet.",
                ConvergenceWarning,
                stacklevel=3,
            )
        return self

    def _run_epochs(self, X, y, targets, sample_weight, *, first: bool, incremental: bool, early: bool):
        """(TrainRun, the Plan it ran, its Stopping): the params to start from (Glorot or the fitted ones), then
        `fit_epochs` (row weights, if any, a targets leaf); with early stopping, on the rows left after the
        validation split, which it scores (weighted, as sklearn's).

        As sklearn's `_fit`, each call makes a RandomState (here from the seed: sklearn's own for an int
        `random_state`); a first fit draws the initial weights from it, and the validation split continues it."""
        steps = plan(self.batch_size, X.shape[0])
        loss_fn, transform = self._program(X.shape[1])
        rng = random_state(self._seed)
        layers = self._initial_layers(X, first=first, rng=rng)
        if first:
            self._best_coefs, self._best_intercepts = to_sklearn(layers)
        score = None
        if early:
            # as sklearn's: only a binary problem is stratified, on its one binarized column (True for classes_[1])
            binary = self._classifier and self.n_outputs_ == 1
            kept, held = train_test_split(
                np.arange(X.shape[0]),
                random_state=rng,
                test_size=self.validation_fraction,
                stratify=targets.astype(bool) if binary else None,
            )
            if len(held) < 2:
                raise ValueError(
                    "The validation set is too small. Increase 'validation_fraction' or the size of your dataset."
                )
            held_weight = None if sample_weight is None else sample_weight[held]
            score = functools.partial(self._score_params, X[held], y[held], sample_weight=held_weight)
            X, targets = X[kept], targets[kept]
            sample_weight = None if sample_weight is None else sample_weight[kept]
            steps = plan(self.batch_size, len(kept))
        params = {"layers": layers, "l2": np.asarray(self.alpha / steps.batch_size, X.dtype)}
        # sklearn's optimizer: continued by partial_fit, fresh in each fit (also a warm_start one)
        fresh = first or not incremental or self._opt_state is None
        opt_state = initial_state(transform, params, hyperparams(self)) if fresh else self._opt_state
        stopping = Stopping(self._rule_state(steps, first=first))
        # each call's epochs start at a multiple of the steps per epoch (shuffle=False: at row 0, as sklearn's)
        start = -(-self._step // steps.steps_per_epoch) * steps.steps_per_epoch
        progress = None
        if self.verbose:
            adaptive = self.solver == "sgd" and self.learning_rate == "adaptive"
            progress = Progress(self.tol, self.n_iter_no_change, early_stopping=early, adaptive=adaptive)
        run = fit_epochs(
            loss_fn,
            transform,
            params,
            opt_state,
            X,
            weighted(targets, sample_weight),
            key=prng_key(self._seed),
            steps=steps,
            epochs=1 if incremental else self.max_iter,
            start_step=start,
            stopping=stopping,
            score=score,
            shuffle=bool(self.shuffle),
            on_epoch=progress,
        )
        return run, steps, stopping

    def _score_params(self, X, y, params, *, sample_weight=None) -> float:
        """The estimator's score (R² or accuracy, weighted) on (X, y) of bp_jax `params` (early stopping's
        validation)."""
        return self._score_weights(X, y, *to_sklearn(params["layers"]), sample_weight=sample_weight)

    def _score_weights(self, X, y, coefs, intercepts, *, sample_weight=None) -> float:
        """`score` on checked X, y of the network with these sklearn-layout weights (`r2` or `accuracy`)."""
        return self._metric(y, self._decode(self._forward(coefs, intercepts, X)), sample_weight)

    def _forward(self, coefs, intercepts, X) -> np.ndarray:
        return forward(coefs, intercepts, self.activation, X, out_activation=self.out_activation_)

    def _output(self, X) -> np.ndarray:
        """The output layer's activations for X (sklearn's `_forward_pass_fast`)."""
        check_is_fitted(self, "coefs_")
        X = validate_data(self, X, reset=False, accept_sparse=["csr", "csc"], dtype=(np.float64, np.float32))
        return self._forward(self.coefs_, self.intercepts_, X)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.non_deterministic = False
        tags.input_tags.sparse = True
        return tags

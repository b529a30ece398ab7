"""scikit-learn's MLPRegressor and MLPClassifier on bp_jax's fused loop: one base holding the parameters, checks,
training run and prediction, and two thin subclasses (as `sklearn/neural_network/_multilayer_perceptron.py`)."""

import functools
import numbers
import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from scipy.optimize import OptimizeResult
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import LabelBinarizer
from sklearn.utils.metaestimators import available_if
from sklearn.utils.multiclass import _check_partial_fit_first_call, type_of_target, unique_labels
from sklearn.utils.optimize import _check_optimize_result
from sklearn.utils.validation import _check_sample_weight, check_is_fitted, column_or_1d, validate_data

from bp_jax.estimators._base import (
    accuracy,
    densified,
    forward,
    from_sklearn,
    glorot,
    member_layout,
    objective,
    precision,
    r2,
    seed_of,
    to_sklearn,
    weighted,
)
from bp_jax.estimators._constraints import MLP_CONSTRAINTS, REGRESSOR_CONSTRAINTS, fit_context
from bp_jax.estimators._lbfgs import MESSAGES, STATUS, Result, compiled, counts
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

    def _objective(self, features: int, *, members_batch: int | None = None):
        """The objective, shared by every estimator of this configuration (`members_batch`: as a member of an
        ensemble trained on minibatches of this size). Its loss is sklearn's: `loss`, where log-loss over logistic
        outputs is the binary log-loss."""
        sizes = (features, *self._hidden_sizes(), self.n_outputs_)
        layout = "rows" if members_batch is None else member_layout(sizes, members_batch)
        loss = "binary_log_loss" if self.out_activation_ == "logistic" else self.loss
        return objective(sizes, self.activation, loss, members=members_batch is not None, layout=layout)

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
        if first:
            self._start(seed_of(self.random_state))
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

    def _initial_layers(self, X, *, first: bool) -> tuple:
        """bp_jax params to train from: Glorot's initialisation if `first`, else the fitted (or hand-set) weights
        in X's dtype."""
        if first:
            sizes = (X.shape[1], *self._hidden_sizes(), self.n_outputs_)
            return glorot(self._seed, sizes, self.activation, X.dtype)
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
        result = compiled(self._objective(X.shape[1]), members=False)(
            self._initial_layers(X, first=first),
            np.asarray(self.alpha / X.shape[0], X.dtype),
            X,
            targets,
            np.asarray(self.tol, X.dtype),
            *counts(self.max_iter, self.max_fun),
        )
        return self._adopt_lbfgs(jax.device_get(result))

    def _adopt_lbfgs(self, result: Result):
        """Take an lbfgs run as the fitted state, as sklearn's `_fit_lbfgs` sets it (no loss curve; n_iter_ and the
        ConvergenceWarning by sklearn's own `_check_optimize_result`, from scipy's status and message)."""
        self._set_weights(*to_sklearn(result.params))
        self._opt_state = None
        self.loss_ = float(result.loss)
        reason = int(result.reason)
        ended = OptimizeResult(nit=int(result.iterations), status=STATUS[reason], message=MESSAGES[reason])
        self.n_iter_ = _check_optimize_result("lbfgs", ended, self.max_iter)
        if not all(np.all(np.isfinite(weights)) for weights in (*self.coefs_, *self.intercepts_)):
            raise non_finite_error()
        return self

    def _adopt(self, run: TrainRun, steps: Plan, *, incremental: bool, stopping: Stopping | None):
        """Take a training run's result as the fitted state, after the history so far (`_start`, or the fits it
        continues), from `fit`'s own run or as a GridSearchCV member; `stopping`: early stopping's rule, whose best
        params are kept (those of an earlier fit when this one's scores never beat them, as sklearn's)."""
        self._set_weights(run.coefs, run.intercepts)
        self._opt_state, self._step, self._no_improvement_count = run.opt_state, run.step, run.no_improvement
        self.loss_curve_ = [*self.loss_curve_, *run.curve]
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
            self.best_loss_ = float(min(np.inf if self.best_loss_ is None else self.best_loss_, *run.curve))
        if not incremental and not run.stopped:
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
        validation split, which it scores (weighted, as sklearn's)."""
        steps = plan(self.batch_size, X.shape[0])
        loss_fn, transform = self._program(X.shape[1])
        layers = self._initial_layers(X, first=first)
        if first:
            self._best_coefs, self._best_intercepts = to_sklearn(layers)
        score = None
        if early:
            # as sklearn's: only a binary problem is stratified, on its one binarized column (True for classes_[1])
            binary = self._classifier and self.n_outputs_ == 1
            kept, held = train_test_split(
                np.arange(X.shape[0]),
                random_state=self._seed,
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
        params = {"layers": layers, "l2": jnp.asarray(self.alpha / steps.batch_size, X.dtype)}
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
            key=jax.random.key(self._seed),
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


class MLPRegressor(RegressorMixin, BaseMLP):
    """sklearn.neural_network.MLPRegressor's parameters and attributes, trained by bp_jax's fused loop.

    The output is the identity and the loss on a minibatch of b rows ½·mean((ŷ − y)²) + α/(2b)·Σ‖W‖², or with
    loss="poisson" ŷ = exp(z) and the half Poisson deviance Σ_outputs mean(y·log(y/ŷ) − y + ŷ) + α/(2b)·Σ‖W‖²
    (`bp_jax.estimators` lists where it differs from sklearn's).

    Args:
        loss: "squared_error" or "poisson" (y ≥ 0, checked).
        hidden_layer_sizes: the hidden layers' widths (an int for one layer).
        activation: the hidden activation: "identity", "relu", "tanh" or "logistic".
        solver: "lbfgs" (full batch, the whole fit one compiled loop), "sgd" (sklearn's, with momentum) or "adam"
            (sklearn's).
        alpha: α, the L2 penalty's strength: α/(2b)·Σ‖W‖² on a minibatch of b rows.
        batch_size: rows per minibatch; "auto" is min(200, n).
        learning_rate: sgd's schedule of η, set at each epoch's end: "constant"; "invscaling",
            η = learning_rate_init / (t_ + 1)^power_t; "adaptive", η ÷ 5 where the rule would stop (stopping once
            η ≤ 1e-6). Ignored by adam and lbfgs, as in sklearn.
        learning_rate_init: η₀, the first learning rate.
        power_t: the exponent of "invscaling".
        max_iter: the most epochs to train (lbfgs: iterations).
        shuffle: False reads the minibatches in order (rows 0 … b − 1, b … 2b − 1, … each epoch).
        random_state: the seed of the initialisation and the minibatch order (int, None or RandomState).
        tol: the improvement an epoch's loss (or validation score) must make to count as one (lbfgs: the largest
            |gradient| component of a converged fit).
        verbose: print sklearn's lines for sgd and adam (each epoch's loss, the validation score, the rule's
            messages); lbfgs prints nothing, as sklearn's with scipy ≥ 1.15.
        warm_start: `fit` continues from the fitted (or hand-set) weights with a fresh optimizer, carrying the loss
            curve, t_, the best loss or validation score and the no-improvement count (as sklearn's).
        momentum: μ for sgd.
        nesterovs_momentum: Nesterov momentum for sgd.
        early_stopping: stop on a held-out validation score (checked on the host each epoch).
        validation_fraction: the share of rows held out with early stopping.
        beta_1: adam's β₁.
        beta_2: adam's β₂.
        epsilon: adam's ε.
        n_iter_no_change: stop once more than this many epochs in a row did not improve by tol (np.inf: never).
        max_fun: lbfgs stops at the end of the iteration after more than this many loss evaluations.

    Attributes:
        coefs_: each layer's weights, (n_in, n_out).
        intercepts_: each layer's biases.
        loss_curve_: each epoch's mean loss (not set by lbfgs, as in sklearn).
        n_iter_: the epochs of the last fit or partial_fit (lbfgs: iterations).
        n_outputs_: the targets' columns.
        out_activation_: "identity", or "exp" for poisson.

    Examples:
        >>> import numpy as np
        >>> from bp_jax.estimators import MLPRegressor
        >>> X = np.linspace(-1, 1, 64).reshape(-1, 1)
        >>> model = MLPRegressor(
        ...     hidden_layer_sizes=(8,), learning_rate_init=0.05, max_iter=100, tol=1e-2, random_state=0
        ... )
        >>> model.fit(X, 2 * X[:, 0]).predict(X[:3]).shape
        (3,)
        >>> model.n_iter_ < 100  # stopped by the rule, inside the compiled loop
        True
    """

    _parameter_constraints: dict = REGRESSOR_CONSTRAINTS
    _metric = staticmethod(r2)

    def __init__(
        self,
        loss="squared_error",
        hidden_layer_sizes=(100,),
        activation="relu",
        *,
        solver="adam",
        alpha=0.0001,
        batch_size="auto",
        learning_rate="constant",
        learning_rate_init=0.001,
        power_t=0.5,
        max_iter=200,
        shuffle=True,
        random_state=None,
        tol=1e-4,
        verbose=False,
        warm_start=False,
        momentum=0.9,
        nesterovs_momentum=True,
        early_stopping=False,
        validation_fraction=0.1,
        beta_1=0.9,
        beta_2=0.999,
        epsilon=1e-8,
        n_iter_no_change=10,
        max_fun=15000,
    ):
        super().__init__(
            hidden_layer_sizes=hidden_layer_sizes,
            activation=activation,
            solver=solver,
            alpha=alpha,
            batch_size=batch_size,
            learning_rate=learning_rate,
            learning_rate_init=learning_rate_init,
            power_t=power_t,
            max_iter=max_iter,
            loss=loss,
            shuffle=shuffle,
            random_state=random_state,
            tol=tol,
            verbose=verbose,
            warm_start=warm_start,
            momentum=momentum,
            nesterovs_momentum=nesterovs_momentum,
            early_stopping=early_stopping,
            validation_fraction=validation_fraction,
            beta_1=beta_1,
            beta_2=beta_2,
            epsilon=epsilon,
            n_iter_no_change=n_iter_no_change,
            max_fun=max_fun,
        )

    @fit_context
    def fit(self, X, y, sample_weight=None):
        """Train for up to max_iter epochs from a fresh initialisation (warm_start: from the fitted weights).

        Args:
            X: (n, features) inputs.
            y: the targets.
            sample_weight: (n,) row weights w (None: all 1): the loss Σwℓ/Σw + ½·α/Σw·Σ‖W‖² a minibatch.

        Returns:
            self.
        """
        return self._fit(X, y, incremental=False, sample_weight=sample_weight)

    @fit_context
    def partial_fit(self, X, y, sample_weight=None):
        """One epoch over (X, y), from the current weights and optimizer state (a fresh start if unfitted); with
        solver="lbfgs", a whole lbfgs fit from the current weights, as sklearn's MLPRegressor does.

        Args:
            X: (n, features) inputs.
            y: the targets.
            sample_weight: (n,) row weights (None: all 1), as `fit` takes them.

        Returns:
            self.

        Raises:
            ValueError: early_stopping=True with sgd or adam (as in sklearn).
        """
        return self._fit(X, y, incremental=True, sample_weight=sample_weight)

    def _encode_targets(self, y, *, first: bool, classes=None):
        """y as an (n, n_outputs_) matrix; the first fit sets n_outputs_ and out_activation_ ("exp" for poisson).
        Poisson targets must be ≥ 0: sklearn's docstring requires it but does not check, and its loss is NaN."""
        y = y.reshape(-1, 1) if y.ndim == 1 else y
        if first:
            self.n_outputs_ = y.shape[1]
            self.out_activation_ = "exp" if self.loss == "poisson" else "identity"
        elif y.shape[1] != self.n_outputs_:
            raise ValueError(f"y has {y.shape[1]} outputs, but this estimator was fitted with {self.n_outputs_}")
        if self.loss == "poisson" and np.any(y < 0):
            raise ValueError("Some value(s) of y are out of the valid range of the loss 'poisson': y must be >= 0.")
        return y

    def _decode(self, output: np.ndarray) -> np.ndarray:
        return output[..., 0] if output.shape[-1] == 1 else output

    def predict(self, X):
        """The network's output for X: out(z) of the last layer's z (exp for poisson, else the identity).

        Args:
            X: (n, features) inputs.

        Returns:
            (n,) for one target, (n, n_outputs) for several.
        """
        return self._decode(self._output(X))


class MLPClassifier(ClassifierMixin, BaseMLP):
    """sklearn.neural_network.MLPClassifier's parameters and attributes, trained by bp_jax's fused loop.

    Targets binarized as sklearn's `LabelBinarizer`: one logistic output p = σ(z) for two classes (classes_[1] where
    p > ½), softmax over one output per class for more, one logistic output per label for a multilabel indicator
    y; on a minibatch of b rows, the loss sklearn's log-loss (its binary log-loss for logistic outputs)
    + α/(2b)·Σ‖W‖² (`bp_jax.estimators` lists where it differs from sklearn's).

    Args:
        hidden_layer_sizes: the hidden layers' widths (an int for one layer).
        activation: the hidden activation: "identity", "relu", "tanh" or "logistic".
        solver: "lbfgs" (full batch, the whole fit one compiled loop), "sgd" (sklearn's, with momentum) or "adam"
            (sklearn's).
        alpha: α, the L2 penalty's strength: α/(2b)·Σ‖W‖² on a minibatch of b rows.
        batch_size: rows per minibatch; "auto" is min(200, n).
        learning_rate: sgd's schedule of η, set at each epoch's end: "constant"; "invscaling",
            η = learning_rate_init / (t_ + 1)^power_t; "adaptive", η ÷ 5 where the rule would stop (stopping once
            η ≤ 1e-6). Ignored by adam and lbfgs, as in sklearn.
        learning_rate_init: η₀, the first learning rate.
        power_t: the exponent of "invscaling".
        max_iter: the most epochs to train (lbfgs: iterations).
        shuffle: False reads the minibatches in order (rows 0 … b − 1, b … 2b − 1, … each epoch).
        random_state: the seed of the initialisation and the minibatch order (int, None or RandomState).
        tol: the improvement an epoch's loss (or validation score) must make to count as one (lbfgs: the largest
            |gradient| component of a converged fit).
        verbose: print sklearn's lines for sgd and adam (each epoch's loss, the validation score, the rule's
            messages); lbfgs prints nothing, as sklearn's with scipy ≥ 1.15.
        warm_start: `fit` continues from the fitted (or hand-set) weights with a fresh optimizer, carrying the loss
            curve, t_, the best loss or validation score and the no-improvement count (as sklearn's).
        momentum: μ for sgd.
        nesterovs_momentum: Nesterov momentum for sgd.
        early_stopping: stop on a held-out validation score (checked on the host each epoch).
        validation_fraction: the share of rows held out with early stopping.
        beta_1: adam's β₁.
        beta_2: adam's β₂.
        epsilon: adam's ε.
        n_iter_no_change: stop once more than this many epochs in a row did not improve by tol (np.inf: never).
        max_fun: lbfgs stops at the end of the iteration after more than this many loss evaluations.

    Attributes:
        classes_: the labels, sorted (arange(k) for a multilabel indicator of k labels).
        n_outputs_: the output units: 1 for two classes, else one per class or label.
        out_activation_: "logistic" (two classes, multilabel) or "softmax".
        loss: "log_loss", as sklearn's (not a parameter).
        coefs_: each layer's weights, (n_in, n_out).
        intercepts_: each layer's biases.
        loss_curve_: each epoch's mean loss (not set by lbfgs, as in sklearn).
        n_iter_: the epochs of the last fit or partial_fit (lbfgs: iterations).

    Examples:
        >>> import numpy as np
        >>> from bp_jax.estimators import MLPClassifier
        >>> X = np.linspace(-1, 1, 64).reshape(-1, 1)
        >>> model = MLPClassifier(
        ...     hidden_layer_sizes=(8,), learning_rate_init=0.05, max_iter=100, tol=1e-2, random_state=0
        ... )
        >>> model.fit(X, X[:, 0] > 0).predict_proba(X[:3]).shape
        (3, 2)
        >>> model.classes_.tolist()
        [False, True]
    """

    _metric = staticmethod(accuracy)

    def __init__(
        self,
        hidden_layer_sizes=(100,),
        activation="relu",
        *,
        solver="adam",
        alpha=0.0001,
        batch_size="auto",
        learning_rate="constant",
        learning_rate_init=0.001,
        power_t=0.5,
        max_iter=200,
        shuffle=True,
        random_state=None,
        tol=1e-4,
        verbose=False,
        warm_start=False,
        momentum=0.9,
        nesterovs_momentum=True,
        early_stopping=False,
        validation_fraction=0.1,
        beta_1=0.9,
        beta_2=0.999,
        epsilon=1e-8,
        n_iter_no_change=10,
        max_fun=15000,
    ):
        super().__init__(
            hidden_layer_sizes=hidden_layer_sizes,
            activation=activation,
            solver=solver,
            alpha=alpha,
            batch_size=batch_size,
            learning_rate=learning_rate,
            learning_rate_init=learning_rate_init,
            power_t=power_t,
            max_iter=max_iter,
            loss="log_loss",
            shuffle=shuffle,
            random_state=random_state,
            tol=tol,
            verbose=verbose,
            warm_start=warm_start,
            momentum=momentum,
            nesterovs_momentum=nesterovs_momentum,
            early_stopping=early_stopping,
            validation_fraction=validation_fraction,
            beta_1=beta_1,
            beta_2=beta_2,
            epsilon=epsilon,
            n_iter_no_change=n_iter_no_change,
            max_fun=max_fun,
        )

    @fit_context
    def fit(self, X, y, sample_weight=None):
        """Train for up to max_iter epochs from a fresh initialisation (warm_start: from the fitted weights).

        Args:
            X: (n, features) inputs.
            y: the targets.
            sample_weight: (n,) row weights w (None: all 1): the loss Σwℓ/Σw + ½·α/Σw·Σ‖W‖² a minibatch.

        Returns:
            self.
        """
        return self._fit(X, y, incremental=False, sample_weight=sample_weight)

    def _check_solver(self) -> bool:
        if self.solver not in ("sgd", "adam"):
            raise AttributeError(
                f"partial_fit is only available for stochastic optimizers. {self.solver} is not stochastic."
            )
        return True

    @available_if(lambda estimator: estimator._check_solver())
    @fit_context
    def partial_fit(self, X, y, sample_weight=None, classes=None):
        """One epoch over (X, y), from the current weights and optimizer state (a fresh start if unfitted); absent
        with solver="lbfgs", as in sklearn.

        Args:
            X: (n, features) inputs.
            y: the labels.
            sample_weight: (n,) row weights (None: all 1), as `fit` takes them.
            classes: every label to expect; needed on the first call.

        Returns:
            self.

        Raises:
            ValueError: the first call came without classes, a later one with other classes, y has labels not in
                classes_, or early_stopping=True (sklearn's rules and words).
        """
        _check_partial_fit_first_call(self, classes)
        return self._fit(X, y, incremental=True, classes=self.classes_, sample_weight=sample_weight)

    def _encode_targets(self, y, *, first: bool, classes=None):
        """y binarized as sklearn's `LabelBinarizer` binarizes it (fitted on `classes` if given, on y if a multilabel
        indicator): one 0/1 column for two classes (True for classes_[1]), one-hot columns for more, the indicator
        itself for multilabel. The first fit sets classes_, n_outputs_ and out_activation_ ("softmax" for more than
        two classes, else "logistic")."""
        if first:
            multilabel = type_of_target(y).startswith("multilabel")
            self._label_binarizer = LabelBinarizer().fit(y if classes is None or multilabel else classes)
            self.classes_ = self._label_binarizer.classes_
            self.out_activation_ = "softmax" if self._label_binarizer.y_type_ == "multiclass" else "logistic"
        elif self.warm_start and set(unique_labels(y)) != set(self.classes_):
            raise ValueError(
                "warm_start can only be used where `y` has the same classes as in the previous call to fit. "
                f"Previously got {self.classes_}, `y` has {unique_labels(y)}"
            )
        if classes is not None or not first:
            labels = unique_labels(y)
            if len(np.setdiff1d(labels, self.classes_, assume_unique=True)):
                raise ValueError(
                    f"`y` has classes not in `self.classes_`. `self.classes_` has {self.classes_}. 'y' has {labels}."
                )
        targets = self._label_binarizer.transform(y)
        if first:
            self.n_outputs_ = targets.shape[1]
        return targets

    def _decode(self, output: np.ndarray) -> np.ndarray:
        """Labels from the output layer's probabilities: the likeliest class (softmax); classes_[1] where p > ½ (one
        logistic unit; classes_[0] always for a single class); the indicator p > ½ (multilabel)."""
        if self.out_activation_ == "softmax":
            return self.classes_[np.argmax(output, axis=-1)]
        positive = output > 0.5
        if self.n_outputs_ > 1:
            return positive.astype(int)
        return self.classes_[np.minimum(positive[..., 0], len(self.classes_) - 1)]

    def predict(self, X):
        """The class of highest probability for each row of X (multilabel: each label of probability above ½).

        Args:
            X: (n, features) inputs.

        Returns:
            (n,) labels, or the (n, n_classes) indicator for multilabel y.
        """
        return self._decode(self._output(X))

    def predict_proba(self, X):
        """The output layer's probabilities: softmax over the classes, [1 − p, p] of a binary problem's one logistic
        unit p, or each label's p (multilabel).

        Args:
            X: (n, features) inputs.

        Returns:
            (n, n_classes) probabilities, columns in the order of classes_.
        """
        output = self._output(X)
        return np.stack([1 - output[:, 0], output[:, 0]], axis=1) if self.n_outputs_ == 1 else output

    def predict_log_proba(self, X):
        """log of `predict_proba`.

        Args:
            X: (n, features) inputs.

        Returns:
            (n, n_classes) log-probabilities.
        """
        return np.log(self.predict_proba(X))

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_label = True
        return tags

"""scikit-learn's MLPRegressor on bp_jax's fused loop: `BaseMLP` with real-valued targets (squared error or Poisson)."""

import numpy as np
from sklearn.base import RegressorMixin

from bp_jax.estimators._base import r2
from bp_jax.estimators._constraints import REGRESSOR_CONSTRAINTS, fit_context
from bp_jax.estimators._multilayer_perceptron import BaseMLP


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
        random_state: the seed of the initialisation, the early-stopping split (sklearn's for an int) and the
            minibatch order (int, None or RandomState).
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

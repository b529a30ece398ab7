"""scikit-learn's MLPClassifier on bp_jax's fused loop: `BaseMLP` with scikit-learn's `LabelBinarizer` targets."""

import numpy as np
from sklearn.base import ClassifierMixin
from sklearn.preprocessing import LabelBinarizer
from sklearn.utils.metaestimators import available_if
from sklearn.utils.multiclass import _check_partial_fit_first_call, type_of_target, unique_labels

from bp_jax.estimators._base import accuracy
from bp_jax.estimators._constraints import fit_context
from bp_jax.estimators._multilayer_perceptron import BaseMLP


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
            multilabel = classes is not None and type_of_target(y).startswith("multilabel")
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
        if y.ndim == 1 and (self.out_activation_ == "softmax" or len(self.classes_) == 2):
            # LabelBinarizer's transform of labels all in classes_ (checked above), as comparisons: one-hot rows, or
            # for two classes the column of classes_[1] (~20× faster than the transform, which checks y's type again)
            targets = y[:, None] == (self.classes_ if self.out_activation_ == "softmax" else self.classes_[1:])
        else:
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

"""scikit-learn's own parameter validation for the MLPs: the constraints of its `MLPClassifier` and `MLPRegressor`
(`sklearn/neural_network/_multilayer_perceptron.py`), and the `_fit_context` that checks them before `fit` and
`partial_fit`, so that a bad value raises its InvalidParameterError, word for word.

The constraints are scikit-learn's objects themselves, not copies: its messages list a set of options in that set's
iteration order, which a copy need not share. This is the one module importing scikit-learn's private validation,
so a release that moves it breaks here (tests/test_estimators.py compares the constraints with scikit-learn's).
"""

from sklearn import neural_network
from sklearn.base import _fit_context
from sklearn.utils._param_validation import StrOptions

#: The constraint of each parameter the two MLPs share (hidden_layer_sizes, activation, solver, …, max_fun).
MLP_CONSTRAINTS: dict = neural_network.MLPClassifier._parameter_constraints

#: MLPRegressor's: the shared ones and `loss` (scikit-learn's own from 1.7, which added the parameter).
REGRESSOR_CONSTRAINTS: dict = {
    "loss": [StrOptions({"squared_error", "poisson"})],
    **neural_network.MLPRegressor._parameter_constraints,
}

#: The decorator of `fit` and `partial_fit`, as scikit-learn's MLPs use it: `_validate_params()` first (unless
#: scikit-learn's `skip_parameter_validation` is set, or `partial_fit` continues a fitted estimator), then the fit
#: with scikit-learn's nested validation skipped.
fit_context = _fit_context(prefer_skip_nested_validation=True)

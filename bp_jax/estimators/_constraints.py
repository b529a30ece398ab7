"""scikit-learn's own parameter validation for the MLPs: the constraints of its `MLPClassifier` and `MLPRegressor`
(`sklearn/neural_network/_multilayer_perceptron.py`), and the `_fit_context` that checks them before `fit` and
`partial_fit`, so that a bad value raises its InvalidParameterError, word for word.

The constraints are scikit-learn's objects themselves, not copies: its messages list a set of options in that set's
iteration order, which a copy need not share. This is the one module importing scikit-learn's private validation,
so a release that moves it breaks here (tests/test_estimators.py compares the constraints with scikit-learn's).
`validate_params` is scikit-learn's `_validate_params`, remembering the parameters that passed.
"""

import functools

from sklearn import neural_network
from sklearn.base import BaseEstimator, _fit_context
from sklearn.utils._param_validation import StrOptions, validate_parameter_constraints

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


@functools.lru_cache(maxsize=256)
def _passed(checked: tuple) -> None:
    """scikit-learn's check of (estimator class, its parameters as (name, type, value) triples); cached, so
    parameters that passed are not checked again (an error is raised again each time: lru_cache keeps none)."""
    estimator_type, params = checked
    values = {name: value for name, _, value in params}
    validate_parameter_constraints(estimator_type._parameter_constraints, values, caller_name=estimator_type.__name__)


def validate_params(estimator: BaseEstimator) -> None:
    """scikit-learn's `_validate_params` of `estimator` (its InvalidParameterError, word for word), skipped for
    parameters its class passed before (the check is ~0.1 ms, ~4 % of an lbfgs fit on diabetes); parameters with
    an unhashable value (a list of layer sizes) are checked every time. A value's type is part of what is
    remembered (1, 1.0 and True are three)."""
    params = estimator.get_params(deep=False)
    checked = (type(estimator), tuple((name, type(value), value) for name, value in params.items()))
    try:
        hash(checked)
    except TypeError:
        validate_parameter_constraints(estimator._parameter_constraints, params, caller_name=type(estimator).__name__)
    else:
        _passed(checked)

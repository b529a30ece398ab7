"""bp_jax.estimators' targets and losses against scikit-learn's own MLPs, in float64 from the same weights: a binary
target's one logistic unit, multiclass softmax, a multilabel indicator's logistic units, multi-output squared
error (sklearn's gradient is that of ½·Σ over the outputs, its reported loss ½·mean) and loss="poisson" (exp
output, half Poisson deviance), which without a hidden layer is scikit-learn's PoissonRegressor.

Full-batch sgd without momentum (shuffle=False, one step an epoch), so both take the same steps: the loss curves,
predictions and probabilities agree to 1e-10. Tiny data: 30 rows, 3 features, one hidden layer of 3.
"""

import warnings

import jax
import numpy as np
import pytest

pytest.importorskip("sklearn")
from scipy.special import expit, softmax
from sklearn import linear_model, neural_network
from sklearn.exceptions import DataConversionWarning
from sklearn.metrics import mean_poisson_deviance
from sklearn.neural_network import _base as sklearn_base
from sklearn.preprocessing import LabelBinarizer

from bp_jax import estimators
from bp_jax.estimators._base import LOG_CHUNK

ROWS, EPOCHS = 30, 6
SGD = dict(
    hidden_layer_sizes=(3,),
    activation="tanh",
    solver="sgd",
    alpha=1e-3,
    batch_size=ROWS,
    shuffle=False,
    momentum=0.0,
    learning_rate_init=0.1,
    max_iter=EPOCHS,
    random_state=0,
)

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


@pytest.fixture(autouse=True)
def float64():
    with jax.enable_x64(True), jax.default_matmul_precision("highest"):
        yield


def _x():
    return np.random.default_rng(0).normal(size=(ROWS, 3))


#: each target kind: (estimator name, extra parameters, y of _x(), the out_activation_ sklearn gives it)
TARGETS = {
    "binary": ("MLPClassifier", {}, lambda x: np.where(x[:, 0] + x[:, 1] > 0, "yes", "no"), "logistic"),
    "multiclass": ("MLPClassifier", {}, lambda x: np.digitize(x[:, 0], [-0.5, 0.5]), "softmax"),
    "multilabel": ("MLPClassifier", {}, lambda x: (x > 0).astype(int), "logistic"),
    "multi-output": ("MLPRegressor", {}, lambda x: np.stack([x[:, 0] + x[:, 1] ** 2, x[:, 2]], axis=1), "identity"),
    "poisson": (
        "MLPRegressor",
        {"loss": "poisson"},
        lambda x: np.random.default_rng(1).poisson(np.exp(x[:, 0])),
        "exp",
    ),
}


def _sklearn_from_our_initialisation(name, params, x, y):
    """scikit-learn's estimator fitted (sgd, `params`) from the Glorot weights bp_jax draws for random_state=0:
    set up by a warm_start fit of one epoch, its weights and history then replaced."""
    theirs = getattr(neural_network, name)(warm_start=True, **(params | {"max_iter": 1})).fit(x, y)
    sizes = (x.shape[1], *params["hidden_layer_sizes"], theirs.n_outputs_)
    theirs.coefs_, theirs.intercepts_ = estimators.to_sklearn(
        estimators.glorot(0, sizes, params["activation"], x.dtype)
    )
    theirs.loss_curve_, theirs.best_loss_, theirs._no_improvement_count = [], np.inf, 0
    return theirs.set_params(max_iter=params["max_iter"]).fit(x, y)


#: each loss: sklearn's output activation of z, and targets y for it
OUTPUTS = {
    "squared_error": (lambda z: z, lambda z: z - 1.0),
    "poisson": (np.exp, lambda z: np.round(np.exp(z / 2))),
    "log_loss": (lambda z: softmax(z, axis=1), lambda z: np.eye(3)[np.arange(len(z)) % 3]),
    "binary_log_loss": (expit, lambda z: (np.arange(z.size).reshape(z.shape) % 2).astype(float)),
}


@pytest.mark.parametrize("loss", OUTPUTS)
def test_each_loss_is_sklearns_value_with_sklearns_gradient(loss):
    """On raw outputs z as far out as ±40 (where the log-losses' probabilities are clipped to [ε, 1 − ε] in
    sklearn's value): the value is sklearn's, and the gradient its backprop's delta (out(z) − y)/n, not the
    clipped value's (zero where p is clipped)."""
    out, targets = OUTPUTS[loss]
    z = np.linspace(-40, 40, 12).reshape(4, 3) if "log" in loss else np.linspace(-2, 2, 12).reshape(4, 3)
    y = targets(z)
    value, gradient = jax.value_and_grad(estimators.LOSSES[loss])(z, y)
    np.testing.assert_allclose(value, sklearn_base.LOSS_FUNCTIONS[loss](y, out(z)), rtol=1e-12)
    np.testing.assert_allclose(gradient, (out(z) - y) / len(z), rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("loss", ["log_loss", "binary_log_loss"])
def test_the_log_losses_over_many_rows_are_sklearns(loss):
    """Over more entries than one product of mantissas takes (LOG_CHUNK, the last chunk padded), unweighted and
    weighted: sklearn's value."""
    out, targets = OUTPUTS[loss]
    z = np.random.default_rng(0).normal(scale=4, size=(LOG_CHUNK + 37, 3))
    y, weight = targets(z), np.random.default_rng(1).uniform(size=len(z))
    for w in (None, weight):
        value = estimators.LOSSES[loss](z, y, w)
        np.testing.assert_allclose(value, sklearn_base.LOSS_FUNCTIONS[loss](y, out(z), sample_weight=w), rtol=1e-13)


#: labels and the classes given to a first partial_fit (None: fit's, from the labels)
LABELS = {
    "ints": (np.array([3, 1, 2, 1, 3]), None),
    "strings, two classes": (np.array(["b", "a", "b"]), None),
    "objects": (np.array(["x", "y", "z", "x"], dtype=object), None),
    "floats, one class": (np.array([1.0, 1.0]), None),
    "a subset of three classes": (np.array([0, 2, 2]), np.array([0, 1, 2])),
    "one of two classes": (np.array(["no", "no"]), np.array(["no", "yes"])),
    "multilabel": (np.array([[1, 0], [1, 1], [0, 1]]), None),
}


@pytest.mark.parametrize("name", LABELS)
def test_the_classifiers_targets_are_label_binarizers(name):
    """What the classifier trains on is sklearn's LabelBinarizer's encoding of y (fitted on the classes given, else
    on y), however it computes it."""
    labels, classes = LABELS[name]
    model = estimators.MLPClassifier()
    targets = model._encode_targets(labels, first=True, classes=classes)
    expected = LabelBinarizer().fit(labels if classes is None else classes).transform(labels)
    np.testing.assert_array_equal(targets, expected)
    assert targets.shape == expected.shape == (len(labels), model.n_outputs_)


@pytest.mark.parametrize("kind", TARGETS)
def test_full_batch_sgd_from_the_same_weights_equals_sklearns(kind):
    name, extra, target, out_activation = TARGETS[kind]
    x = _x()
    y = target(x)
    ours = getattr(estimators, name)(**SGD, **extra).fit(x, y)
    theirs = _sklearn_from_our_initialisation(name, SGD | extra, x, y)
    assert ours.out_activation_ == theirs.out_activation_ == out_activation
    assert ours.n_outputs_ == theirs.n_outputs_
    assert [coef.shape for coef in ours.coefs_] == [coef.shape for coef in theirs.coefs_]
    np.testing.assert_allclose(ours.loss_curve_, theirs.loss_curve_, rtol=1e-10)
    np.testing.assert_allclose(
        ours.predict(x) if name == "MLPRegressor" else ours.predict_proba(x),
        theirs.predict(x) if name == "MLPRegressor" else theirs.predict_proba(x),
        rtol=1e-10,
        atol=1e-12,
    )
    if name == "MLPClassifier":
        np.testing.assert_array_equal(ours.classes_, theirs.classes_)
        np.testing.assert_array_equal(ours.predict(x), theirs.predict(x))
        assert ours.score(x, y) == theirs.score(x, y)


def test_poisson_without_a_hidden_layer_is_sklearns_poisson_regressor():
    """No hidden layer, identity: log ŷ = x·w + b, and the objective mean half-deviance + α/(2n)·‖w‖² (intercept
    unpenalised) is PoissonRegressor's with alpha = α/n: its gradient vanishes at PoissonRegressor's solution, and
    bp_jax's lbfgs ends at that objective's minimum (its loss_ to 1e-9; the weights as close as scipy's ftol, which
    sklearn's MLP lbfgs keeps, lets them come)."""
    x = _x()
    y = TARGETS["poisson"][2](x)
    alpha = 0.3
    glm = linear_model.PoissonRegressor(alpha=alpha / ROWS, tol=1e-12, max_iter=1000).fit(x, y)
    objective = estimators.objective((3, 1), "identity", "poisson")
    layers = estimators.from_sklearn([glm.coef_[:, None]], [np.array([glm.intercept_])])
    loss, grads = jax.value_and_grad(objective)({"layers": layers, "l2": alpha / ROWS}, x, y[:, None].astype(float))
    np.testing.assert_allclose(np.concatenate([np.ravel(g) for g in jax.tree.leaves(grads["layers"])]), 0, atol=1e-9)
    deviance = mean_poisson_deviance(y, glm.predict(x)) / 2
    np.testing.assert_allclose(loss, deviance + alpha / (2 * ROWS) * glm.coef_ @ glm.coef_, rtol=1e-12)
    ours = estimators.MLPRegressor(  # one initialisation: ftol leaves ~1 seed in 20 (6, 22 of 0–39) 1.1e-4 away
        loss="poisson",
        hidden_layer_sizes=(),
        activation="identity",
        solver="lbfgs",
        alpha=alpha,
        tol=1e-10,
        random_state=0,
    ).fit(x, y)
    np.testing.assert_allclose(ours.loss_, loss, rtol=1e-9)
    np.testing.assert_allclose(ours.coefs_[0][:, 0], glm.coef_, rtol=1e-4)


def test_poisson_refuses_negative_targets_where_sklearn_trains_on_a_nan_loss():
    """The pinned difference (E22): sklearn's docstring requires y ≥ 0 for loss="poisson" but does not check it;
    its loss is then NaN (log of a negative ratio). bp_jax refuses y < 0 before training."""
    x, y = _x(), np.arange(ROWS) - 1.0
    theirs = neural_network.MLPRegressor(**SGD, loss="poisson")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        assert np.isnan(theirs.fit(x, y).loss_curve_[0])
    ours = estimators.MLPRegressor(**SGD, loss="poisson")
    with pytest.raises(ValueError, match=r"^Some value\(s\) of y are out of the valid range of the loss 'poisson'"):
        ours.fit(x, y)
    assert not hasattr(ours, "coefs_")


def test_a_column_y_is_raveled_with_sklearns_warning():
    x = _x()
    y = TARGETS["multi-output"][2](x)[:, :1]
    predictions = []
    for make in (estimators.MLPRegressor, neural_network.MLPRegressor):
        with pytest.warns(DataConversionWarning, match="A column-vector y was passed when a 1d array was expected"):
            model = make(**SGD).fit(x, y)
        assert model.n_outputs_ == 1
        predictions.append(model.predict(x))
    assert predictions[0].shape == predictions[1].shape == (ROWS,)


def test_tags_are_sklearns():
    for name in ("MLPRegressor", "MLPClassifier"):
        ours, theirs = (
            getattr(estimators, name)().__sklearn_tags__(),
            getattr(neural_network, name)().__sklearn_tags__(),
        )
        assert ours.target_tags == theirs.target_tags and ours.classifier_tags == theirs.classifier_tags


def test_a_multilabel_indicator_is_not_stratified_under_early_stopping():
    """sklearn stratifies only a binary target; a label combination seen once cannot be stratified, yet trains."""
    x = _x()
    y = (x > 0).astype(int)
    y[0] = [1, 1, 1] if not (y[1:] == 1).all(axis=1).any() else y[0]
    model = estimators.MLPClassifier(
        **(SGD | {"max_iter": 2, "batch_size": 24}), early_stopping=True, validation_fraction=0.2
    ).fit(x, y)
    assert len(model.validation_scores_) == 2 and model.predict(x).shape == y.shape

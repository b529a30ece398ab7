"""scikit-learn estimators trained by bp_jax's fused loop: `MLPRegressor`, `MLPClassifier`, and a `GridSearchCV`
that trains every (grid point × fold) as one member of one `fit_ensemble` program.

An edge package (needs scikit-learn, the `sklearn` extra); `import bp_jax` does not import it. Its modules, as
scikit-learn lays out `neural_network/` and `model_selection/`: `_base` (objective, initialisation, weights, forward
pass, metrics), `_stochastic_optimizers` (sklearn's sgd and adam, every hyperparameter data), `_lbfgs` (lbfgs: scipy's
L-BFGS-B as one compiled program), `_training` (epochs and stopping rules, one model's run), `_reporting` (`verbose`'s
lines), `_multilayer_perceptron` (`BaseMLP`, what the estimators share), `_regressor` and `_classifier` (the
estimators), `_members` (a grid's members trained together), `_search`
(GridSearchCV) and `_constraints` (scikit-learn's own parameter validation).

The estimators take scikit-learn's MLP parameters (names, order, defaults, meanings), checked as scikit-learn checks
them (its InvalidParameterError, word for word). Data as scikit-learn's: float64 X trains and comes back in float64
(`coefs_`, predictions; `jax.enable_x64(True)` scoped to the fit, never left on), float32 stays float32, anything
else becomes float64; sparse CSR/CSC X is densified for training (refused in one line above `DENSE_BYTES`) and
predicted from directly; `sample_weight` in `fit` and `partial_fit` (GridSearchCV: per fold, and in the scores) gives
sklearn ≥ 1.7's Σwℓ/Σw + ½·α/Σw·Σ‖W‖² a minibatch and a weighted validation score (a weights leaf of the targets:
one more program, the unweighted one unchanged). State carries over as scikit-learn's:
`warm_start=True` fits from the fitted (or hand-set) weights with a fresh optimizer, continuing `loss_curve_`, `t_`,
`best_loss_`, the no-improvement count and the validation scores; `partial_fit` also continues the optimizer;
`n_iter_` counts the last call's epochs (partial_fit: 1). Each fit's RandomState is made afresh from a seed, as
sklearn's `_fit` makes its own (`check_random_state` at every call: an int `random_state` is the seed, None or a
RandomState gives a fresh draw, advancing the instance): a first fit draws the initial weights from it and early
stopping's validation split continues it (a warm-start fit's split draws from a fresh one), so an int `random_state`
gives sklearn's weights and validation rows. `verbose` prints scikit-learn's lines for sgd and adam
(the fit then runs one epoch per chunk of the same loop: the same bits), nothing for lbfgs (as scikit-learn's with
scipy ≥ 1.15). A warm-start fit with early stopping that never beats the best score keeps the best weights
(scikit-learn's ends with its last: its restored best arrays are trained in place).
What differs, and why:
- An epoch is sklearn's: ⌈n / b⌉ minibatches, the last one short (n mod b rows, filled with zero-weight padding
  rows read at the end of each epoch: its loss the mean over its rows plus α/(2·its rows)·Σ‖W‖², weighted: its
  weights' sum), the epoch's loss Σ (batch loss · batch rows) / n, and `t_` (so invscaling's
  η = η₀/(t_ + 1)^power_t) adds n an epoch; adam counts ⌈n / b⌉ steps an epoch. `shuffle=False` reads the rows in
  order, each epoch rows 0 … b − 1, b … 2b − 1, …: sklearn's batches.
- `shuffle=True` draws each epoch's order differently from sklearn, deliberately: inside the compiled loop, from a
  JAX key (`minibatch_indices`, a pure function of the key and the step costing O(b) a step), with no trip to the
  host and no stored order, where sklearn permutes the rows with its RandomState each epoch. Each epoch still reads
  every row once, the short batch last; the minibatches, and so the fit, differ from sklearn's.
- sgd and adam are sklearn's SGDOptimizer and AdamOptimizer (v ← μv − ηg; adam's ε added to the uncorrected √v),
  and the stopping rule and `learning_rate` schedule are sklearn's, checked per epoch (`epoch_end`): with
  `early_stopping=False` inside the compiled loop (`epoch_rule`, a `StopRule` that also sets η), so a whole fit is
  one call of the loop with no trip to the host between epochs; it compares epoch means in the data's precision
  (t_ held as a float there). With `early_stopping=True` each epoch is one call,
  the validation score taken on the host, η set between calls and the best params kept. Given the same weights
  and full batches or `shuffle=False`, `loss_curve_` equals sklearn's to 1e-8 in float64
  (tests/test_sklearn_parity_solvers.py).
- A KeyboardInterrupt in an sgd or adam fit is taken as sklearn's: the warning "Training interrupted by user." and
  the fitted estimator returned with the epochs done (with early stopping, their best weights). But bp_jax knows
  an epoch done once it is back on the host: between epochs with early stopping or `verbose`; otherwise between
  chunks of whole epochs (at least `_training.CHUNK_STEPS` steps), so an interrupt keeps the last chunk's epochs
  (sklearn keeps those of its last step).
- `solver="lbfgs"` is scipy's L-BFGS-B without bounds, ported: the same iterations, evaluations and stopping
  rules (max_iter, max_fun, tol on max|gᵢ|, scipy's default ftol), so from the same weights in float64 the same
  iterates up to the order of float64 sums: equal at a convex fit's end (to 1e-6), while a non-convex fit
  amplifies that rounding over tens of iterations, so its n_iter_ and final weights can differ (diabetes,
  10 → 5 → 1: 1e-13 after 10 iterations, 1e-3 after 60, 132 iterations against sklearn's 116; the `_lbfgs`
  docstring); and in the data's precision (float32 X: float32), where scipy always computes in float64.
- A step whose loss or update is not finite ends the fit with sklearn's ValueError ("Solver produced non-finite
  parameter weights…", the step in a note). sklearn checks only the final weights: it trains on through a
  non-finite loss (an inf in `loss_curve_`) and succeeds if the weights stay finite. A fit that raises leaves the
  estimator as it was before (sklearn leaves the non-finite weights on it).
- The loss is sklearn's (`LOSSES`): ½·mean((y − ŷ)²), the half Poisson deviance, the log-loss (softmax) or the
  binary log-loss (one logistic unit for two classes, one per label for a multilabel indicator), plus
  α/(2b)·Σ‖W‖² per minibatch of b rows, differentiated as sklearn differentiates it; α enters the program as data
  (a frozen params leaf), so a grid over it compiles nothing new. `loss="poisson"` refuses y < 0 (sklearn does not
  check it and trains on a NaN loss).
"""

from bp_jax.estimators._base import (
    LOSSES,
    Objective,
    accuracy,
    contractions,
    forward,
    from_sklearn,
    glorot,
    half_squared_error,
    member_layout,
    objective,
    r2,
    seed_of,
    to_sklearn,
)
from bp_jax.estimators._classifier import MLPClassifier
from bp_jax.estimators._regressor import MLPRegressor
from bp_jax.estimators._search import VECTORISED, GridSearchCV
from bp_jax.estimators._stochastic_optimizers import initial_state, sklearn_adam, sklearn_sgd, solver_transform
from bp_jax.estimators._training import (
    Plan,
    Stopping,
    TrainRun,
    can_stop,
    epoch_means,
    epoch_rule,
    fit_epochs,
    plan,
    rule_state,
)

__all__ = [
    "LOSSES",
    "VECTORISED",
    "GridSearchCV",
    "MLPClassifier",
    "MLPRegressor",
    "Objective",
    "Plan",
    "Stopping",
    "TrainRun",
    "accuracy",
    "can_stop",
    "contractions",
    "epoch_means",
    "epoch_rule",
    "fit_epochs",
    "forward",
    "from_sklearn",
    "glorot",
    "half_squared_error",
    "initial_state",
    "member_layout",
    "objective",
    "plan",
    "r2",
    "rule_state",
    "seed_of",
    "sklearn_adam",
    "sklearn_sgd",
    "solver_transform",
    "to_sklearn",
]

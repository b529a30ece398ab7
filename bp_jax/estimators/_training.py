"""sklearn's epochs and stopping rules on bp_jax's fused loop: the batch plan, the `n_iter_no_change` rule (inside
the compiled loop, or on the host with early stopping) and one model's training run (`fit_epochs`).

An epoch is n // b minibatches of b rows in `minibatch_indices` order (with shuffle=False the rows in order, an
epoch starting at a step that is a multiple of n // b reading rows 0 … b − 1 first); its loss is the mean of its
steps' losses.
"""

import functools
import warnings
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from bp_jax._fit import NonFiniteLoss, StopRule, fit
from bp_jax.estimators._base import to_sklearn


class Plan(NamedTuple):
    """What one training run needs beside the data.

    Attributes:
        batch_size: rows per minibatch.
        steps_per_epoch: minibatches per epoch.
    """

    batch_size: int
    steps_per_epoch: int


def plan(batch_size, rows: int) -> Plan:
    """sklearn's batch size and n // b steps per epoch.

    Args:
        batch_size: "auto" (min(200, n)) or an int (clipped to n, with a warning, when larger).
        rows: n, the training rows.

    Returns:
        The `Plan`.
    """
    if batch_size == "auto":
        batch = min(200, rows)
    else:
        if batch_size > rows:
            warnings.warn(
                "Got `batch_size` less than 1 or larger than sample size. It is going to be clipped", stacklevel=3
            )
        batch = min(max(int(batch_size), 1), rows)
    return Plan(batch, rows // batch)


class Stopping:
    """sklearn's stopping rule's thresholds, and its early-stopping form on the host: count the epochs whose
    validation score is below best + tol, keeping the best params; stop once the count exceeds n_iter_no_change.
    (Without early stopping the rule runs inside the loop: `epoch_rule`.)

    Args:
        tol: the improvement an epoch must make to reset the count.
        n_iter_no_change: the count at which to stop, once exceeded.
    """

    def __init__(self, tol: float, n_iter_no_change: float):
        self.tol, self.patience = tol, n_iter_no_change
        self.best_score, self.count, self.best_params = -np.inf, 0, None

    def update(self, score: float, params) -> bool:
        """Record one epoch's validation score and the params that gave it.

        Args:
            score: the epoch's validation score.
            params: the params at the end of the epoch.

        Returns:
            True when training should stop after this epoch.
        """
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
    """sklearn's rule without early stopping, as a `StopRule` run inside the loop (steps counted from 0).

    At the end of each epoch, with m its mean loss: count ← count + 1 if m > best − tol else 0,
    best ← min(best, m); stop once count > n_iter_no_change.

    Args:
        steps_per_epoch: the steps of an epoch.
        tol: the improvement that resets the count; one value, or one per ensemble member (data).
        n_iter_no_change: the patience, shaped as tol (np.inf, never reached, held as int32's largest).
        dtype: the dtype of the losses summed.

    Returns:
        The `StopRule`; one `update` per epoch length, so rules of one length share one program.
    """
    tol = np.asarray(tol, dtype)
    zeros = np.zeros(tol.shape, dtype)
    init = {
        "total": zeros,
        "best": np.full(tol.shape, np.inf, dtype),
        "count": np.zeros(tol.shape, np.int32),
        "tol": tol,
        "patience": np.minimum(n_iter_no_change, np.iinfo(np.int32).max).astype(np.int32),  # np.inf: never fires
    }
    return StopRule(_epoch_rule_update(steps_per_epoch), init)


def can_stop(n_iter_no_change: float, epochs: int) -> bool:
    """Whether sklearn's rule can stop a run (a run it cannot stop takes no rule).

    Args:
        n_iter_no_change: the patience: the rule stops once its count exceeds it.
        epochs: the run's epochs, the most its count can reach.

    Returns:
        n_iter_no_change < epochs.
    """
    return n_iter_no_change < epochs


class TrainRun(NamedTuple):
    """One model's training run, in numpy.

    Attributes:
        coefs: the final weights, sklearn's layout.
        intercepts: the final biases.
        opt_state: the final optimizer state.
        step: the step reached.
        curve: each epoch's mean loss.
        scores: each epoch's validation score (early stopping; else empty).
        stopped: whether the stopping rule ended the run.
    """

    coefs: list[np.ndarray]
    intercepts: list[np.ndarray]
    opt_state: Any
    step: int
    curve: list[float]
    scores: list[float]
    stopped: bool


def non_finite_error(step: int | None = None, cause: str = "loss or update") -> ValueError:
    """sklearn's error for weights that are not finite; with a `step`, a note naming the step whose `cause` (loss or
    update) was not finite, where bp_jax stopped."""
    error = ValueError(
        "Solver produced non-finite parameter weights. The input data may contain large values and need to be "
        "preprocessed."
    )
    if step is not None:
        error.add_note(f"bp_jax stopped training at step {step}, whose {cause} was not finite.")
    return error


def fit_epochs(
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
    shuffle: bool = True,
) -> TrainRun:
    """Up to `epochs` epochs of `fit` from `start_step`, stopping where sklearn's rule would.

    With a `score` (early stopping): one epoch a chunk, `stopping` updated on the host. Otherwise with `stopping`:
    its `epoch_rule` inside the loop, all epochs one call; without: all epochs.

    Args:
        loss_fn: the `Objective`.
        transform: the `solver_transform`.
        params: the params to start from.
        opt_state: the optimizer state to start from.
        x: (n, features) inputs.
        y: targets, encoded.
        key: the PRNG key of the minibatch order.
        steps: the `Plan`.
        epochs: the most epochs to run.
        start_step: the first step (a resumed run's).
        stopping: sklearn's rule, or None to run every epoch.
        score: `score(params)`, the validation score of early stopping.
        shuffle: False reads the minibatches in order (`fit`'s shuffle).

    Returns:
        The `TrainRun`.

    Raises:
        ValueError: a step's loss or update was not finite (sklearn's message; the step in a note).
    """
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
            shuffle=shuffle,
        )
    except NonFiniteLoss as error:
        raise non_finite_error(error.step, error.cause) from None
    curve = epoch_means(result.losses, per_epoch).tolist()
    coefs, intercepts = to_sklearn(result.params["layers"])
    stopped = result.stopped_at >= 0 or any(halted)
    return TrainRun(coefs, intercepts, jax.device_get(result.opt_state), result.step, curve, scores, stopped)


def epoch_means(losses, steps_per_epoch: int) -> np.ndarray:
    """Each epoch's mean step loss, in float64.

    Args:
        losses: (steps, …) step losses, whole epochs; any axes after the first kept (e.g. an ensemble's members).
        steps_per_epoch: the steps of an epoch.

    Returns:
        (epochs, …) means.
    """
    losses = np.asarray(losses, np.float64)
    return losses.reshape(-1, steps_per_epoch, *losses.shape[1:]).mean(axis=1)

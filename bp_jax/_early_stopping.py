"""Validation early stopping as a `StopRule`: the validation set scored inside the compiled loop at each epoch's end,
the best params kept in the rule's state, the run stopped after `patience` epochs without improvement.
"""

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from bp_jax._fit import StopRule


class EarlyStopping(NamedTuple):
    """`early_stopping`'s rule state (a pytree of arrays, checkpointed with the run).

    Attributes:
        params: the best params: those at the end of epoch `best_epoch` (the starting params before any epoch).
        best_loss: their validation loss (inf before any epoch).
        best_epoch: the epoch that gave them, counted from 0 (−1 before any epoch).
        count: the epochs since then without improvement.
        loss: the latest epoch's validation loss (NaN before any epoch): what a plateau schedule would read.
        losses: epoch i's validation loss at `losses[i]` (NaN before it is scored), as far as the buffer reaches.
    """

    params: Any
    best_loss: Any
    best_epoch: Any
    count: Any
    loss: Any
    losses: Any


class ValidationData(NamedTuple):
    """`early_stopping`'s rule data: the validation set and the settings, all data (new values, same program)."""

    x: Any
    y: Any
    steps_per_epoch: Any
    patience: Any
    min_delta: Any


def early_stopping(
    loss_fn: Callable,
    params,
    x_val,
    y_val,
    *,
    steps_per_epoch: int,
    patience: int,
    min_delta: float = 0.0,
    epochs: int = 0,
    members: int | None = None,
) -> StopRule:
    """A `StopRule` for `fit` (or `fit_ensemble`) that scores a validation set at each epoch's end in the loop.

    At the end of epoch e (after step s with (s + 1) mod steps_per_epoch = 0, e = (s + 1) / steps_per_epoch − 1),
    v = loss_fn(params, x_val, y_val); the epoch improves when v < best_loss − min_delta, and then best_loss ← v,
    best params ← params, best_epoch ← e, count ← 0; otherwise count ← count + 1; the run stops once count ≥
    patience. The result's `params` are the last step's (a resumed run continues from them); the best are
    `result.rule_state.params`. The update is one function per `loss_fn` and the validation set and settings are
    data: a new validation set of the same shapes, or another patience, reuses the compiled loop.

    Args:
        loss_fn: `loss_fn(params, x, y) -> scalar`, the validation loss (e.g. the training loss function).
        params: the starting params (one model's, or with `members` the members' stacked ones).
        x_val: the validation inputs (an array or a pytree of arrays, as `fit`'s x).
        y_val: the validation targets.
        steps_per_epoch: the steps of an epoch, counted from step 0.
        patience: the epochs without improvement that stop the run, ≥ 1.
        min_delta: how much lower than the best a loss must be to improve on it, ≥ 0.
        epochs: the length of the state's `losses` buffer (0: only the latest, `loss`); a new length compiles anew.
        members: for `fit_ensemble`, the number of members E: each gets its own state (best params, count, …).

    Returns:
        The `StopRule` (init: an `EarlyStopping`; data: the validation set and settings).

    Raises:
        ValueError: steps_per_epoch or patience < 1, min_delta < 0 or not finite, epochs < 0.

    Examples:
        >>> import jax
        >>> from bp_jax import early_stopping, fit, loss_fn, mlp
        >>> x = jax.numpy.linspace(-1, 1, 32).reshape(-1, 1)
        >>> model = mlp((1, 8, 1), "tanh")
        >>> params, loss = model.init(jax.random.key(0)), loss_fn(model)
        >>> rule = early_stopping(loss, params, x[::3], 2 * x[::3], steps_per_epoch=4, patience=3, epochs=50)
        >>> result = fit(loss, params, x, 2 * x, steps=200, batch_size=8, key=jax.random.key(1), lr=0.1,
        ...              stop_rule=rule)
        >>> best = result.rule_state   # best.params: the params of epoch best.best_epoch
        >>> int(best.best_epoch) == int(jax.numpy.nanargmin(best.losses))
        True
    """
    for name, value in (("steps_per_epoch", steps_per_epoch), ("patience", patience)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be an integer ≥ 1, got {value!r}")
    if not isinstance(epochs, (int, np.integer)) or isinstance(epochs, bool) or epochs < 0:
        raise ValueError(f"epochs must be an integer ≥ 0, got {epochs!r}")
    if not np.isfinite(min_delta) or min_delta < 0:
        raise ValueError(f"min_delta must be a finite number ≥ 0, got {min_delta!r}")
    one = params if members is None else jax.tree.map(lambda leaf: leaf[0], params)
    dtype = jax.eval_shape(loss_fn, one, x_val, y_val).dtype
    shape = () if members is None else (members,)
    init = EarlyStopping(
        params=params,
        best_loss=np.full(shape, np.inf, dtype),
        best_epoch=np.full(shape, -1, np.int32),
        count=np.zeros(shape, np.int32),
        loss=np.full(shape, np.nan, dtype),
        losses=np.full((*shape, epochs), np.nan, dtype),
    )
    data = ValidationData(x_val, y_val, np.int32(steps_per_epoch), np.int32(patience), np.asarray(min_delta, dtype))
    return StopRule(_update(loss_fn), init, touches_params=True, data=data)


@functools.lru_cache(maxsize=32)  # one update per loss function: every validation set and setting shares a program
def _update(loss_fn: Callable) -> Callable:
    def score(state: EarlyStopping, step, params, data: ValidationData) -> EarlyStopping:
        loss = loss_fn(params, data.x, data.y)
        epoch = jax.lax.div(step + 1, data.steps_per_epoch.astype(step.dtype)) - 1  # step ≥ 0: floor division
        # a cond on the improvement (under vmap, a select), not a where per field re-reading best_loss: the state is
        # then updated in place, sparing the loop two scalar copies at every step, scored or not
        best, best_loss, best_epoch, count = jax.lax.cond(
            loss < state.best_loss - data.min_delta,
            lambda: (params, loss, epoch.astype(state.best_epoch.dtype), jnp.zeros_like(state.count)),
            lambda: (state.params, state.best_loss, state.best_epoch, state.count + 1),
        )
        return EarlyStopping(
            params=best,
            best_loss=best_loss,
            best_epoch=best_epoch,
            count=count,
            loss=loss,
            losses=state.losses.at[epoch].set(loss, mode="drop") if state.losses.size else state.losses,
        )

    def update(state: EarlyStopping, step, loss, *, params, data: ValidationData):
        # lax.rem (step ≥ 0), not %: one fusion a step, not three; the members share it: a cond even under vmap
        epoch_end = jax.lax.rem(step + 1, data.steps_per_epoch.astype(step.dtype)) == 0
        stops = lambda state: (state, state.count >= data.patience)  # in each branch: no copy of count after it
        scored = lambda *args: stops(score(*args))
        return jax.lax.cond(epoch_end, scored, lambda state, *_: stops(state), state, step, params, data)

    return update

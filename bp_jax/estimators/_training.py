"""sklearn's epochs, stopping rules and learning-rate schedules on bp_jax's fused loop: the batch plan, the
`n_iter_no_change` rule with the schedule it drives (`epoch_end`: inside the compiled loop, or on the host with early
stopping) and one model's training run (`fit_epochs`).

An epoch is sklearn's ⌈n / b⌉ minibatches in `minibatch_indices` order, the last one short (n mod b rows) when b does
not divide n: the rows are padded to a multiple of b with zero-weight rows (`padded`) that each epoch reads last
(`fit`'s padding), so the short batch's loss is its rows' mean and its L2 term α/(2·its rows)·Σ‖W‖² (weighted: its
weights' sum). With shuffle=False the rows in order, an epoch starting at a step that is a multiple of ⌈n / b⌉
reading rows 0 … b − 1 first. The epoch's loss is sklearn's Σ (batch loss · batch rows) / n.
"""

import functools
import warnings
from collections.abc import Callable
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
        rows: n, the training rows (what an epoch adds to sklearn's `t_`).
    """

    batch_size: int
    steps_per_epoch: int
    rows: int

    @property
    def padding(self) -> int:
        """The zero-weight rows that fill the last minibatch: ⌈n / b⌉·b − n."""
        return self.steps_per_epoch * self.batch_size - self.rows

    def batch_rows(self) -> np.ndarray:
        """The rows of each minibatch of an epoch: b, …, b, n − (⌈n / b⌉ − 1)·b."""
        rows = np.full(self.steps_per_epoch, self.batch_size)
        rows[-1] = self.rows - (self.steps_per_epoch - 1) * self.batch_size
        return rows


def plan(batch_size, rows: int) -> Plan:
    """sklearn's batch size and ⌈n / b⌉ steps per epoch.

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
    return Plan(batch, -(-rows // batch), rows)


def padded(x, y, steps: Plan):
    """(x, y) as the training loop reads them: with `steps.padding` P > 0, P zero rows appended to x and y given
    zero weights (y becomes {"target": t, "weight": w} if it was t, w = 1 on the rows), which `fit` reads at the end
    of each epoch (`fit`'s padding); else x and y as they are.

    Args:
        x: (n, features) inputs.
        y: the targets, or {"target": t, "weight": w} (`weighted`).
        steps: the `Plan`.

    Returns:
        (x, y), n + P rows.
    """
    if not steps.padding:
        return x, y
    if not isinstance(y, dict):
        y = {"target": y, "weight": np.ones(len(y), y.dtype)}
    pad = lambda array: np.pad(array, [(0, steps.padding)] + [(0, 0)] * (array.ndim - 1))
    return pad(x), {name: pad(leaf) for name, leaf in y.items()}


#: sklearn's `learning_rate` schedules, as the rule's state holds them (data).
SCHEDULES = {"constant": 0, "invscaling": 1, "adaptive": 2}
_INVSCALING, _ADAPTIVE = SCHEDULES["invscaling"], SCHEDULES["adaptive"]


def rule_state(
    tol,
    n_iter_no_change,
    *,
    schedule="constant",
    learning_rate_init=0.0,
    power_t=0.0,
    rows=0,
    best=np.inf,
    count=0,
    t=0,
) -> dict:
    """sklearn's stopping rule and learning-rate schedule as numpy arrays (float64; `epoch_end` advances them).

    Args:
        tol: the improvement that resets the count; one value, or one per ensemble member.
        n_iter_no_change: the patience (np.inf: never stops).
        schedule: "constant", "invscaling" or "adaptive" (a name per member, or one).
        learning_rate_init: invscaling's η₀.
        power_t: invscaling's exponent.
        rows: the samples an epoch adds to t.
        best: the best loss so far (sklearn's `best_loss_`).
        count: the epochs without improvement so far (sklearn's `_no_improvement_count`).
        t: the samples seen so far (sklearn's `t_`).

    Returns:
        A dict of arrays shaped as tol.
    """
    tol = np.asarray(tol, np.float64)
    codes = np.vectorize(SCHEDULES.__getitem__, otypes=[np.int32])(schedule)
    shaped = lambda value, dtype=np.float64: np.broadcast_to(np.asarray(value, dtype), tol.shape).copy()
    return {
        "best": shaped(best),
        "count": shaped(count, np.int64),
        "tol": tol,
        "patience": shaped(n_iter_no_change),
        "schedule": shaped(codes, np.int32),
        "lr_init": shaped(learning_rate_init),
        "power_t": shaped(power_t),
        "rows": shaped(rows),
        "t": shaped(t),
    }


def epoch_end(xp, state: dict, loss, lr):
    """sklearn's end of an epoch (`_update_no_improvement_count`, then its optimizer's `iteration_ends` and, past
    the patience, `trigger_stopping`), in numpy or jax.numpy (`xp`), for an epoch's mean loss (early stopping:
    minus the validation score):

    count ← count + 1 if loss > best − tol else 0; best ← min(best, loss); t ← t + rows; invscaling:
    η ← η₀ / (t + 1)^power_t. Once count > patience: adaptive with η > 1e-6 sets η ← η / 5 and count ← 0, all
    else stop.

    Args:
        xp: numpy or jax.numpy.
        state: a `rule_state` (extra keys kept).
        loss: the epoch's loss.
        lr: η, the learning rate the epoch used.

    Returns:
        (state, stop, η for the next epoch).
    """
    count = xp.where(loss > state["best"] - state["tol"], state["count"] + 1, 0)
    t = state["t"] + state["rows"]
    lr = xp.where(state["schedule"] == _INVSCALING, state["lr_init"] / (t + 1) ** state["power_t"], lr)
    exceeded = count > state["patience"]
    shrink = exceeded & (state["schedule"] == _ADAPTIVE) & (lr > 1e-6)
    state = state | {"best": xp.minimum(state["best"], loss), "count": xp.where(shrink, 0, count), "t": t}
    return state, exceeded & ~shrink, xp.where(shrink, lr / 5, lr)


class Stopping:
    """sklearn's rule with early stopping, on the host: `epoch_end` on minus each epoch's validation score
    (count the epochs whose score is below best + tol; the schedule's η set between epochs), keeping the best
    params. (Without early stopping the rule runs inside the loop: `epoch_rule`.)

    Args:
        state: the `rule_state` to start from.
    """

    def __init__(self, state: dict):
        self.state, self.best_params = state, None

    @property
    def best_score(self) -> float:
        """The best validation score so far."""
        return -float(self.state["best"])

    def update(self, score: float, params, lr: float) -> tuple[bool, float]:
        """Record one epoch's validation score and the params that gave it.

        Args:
            score: the epoch's validation score.
            params: the params at the end of the epoch.
            lr: η, the learning rate the epoch used.

        Returns:
            (whether training should stop after this epoch, η for the next).
        """
        if score > self.best_score:
            self.best_params = params
        self.state, stop, lr = epoch_end(np, self.state, -score, lr)
        return bool(stop), float(lr)


@functools.lru_cache(maxsize=64)  # one update per epoch length and batch: every such fit shares one program
def _epoch_rule_update(steps_per_epoch: int, batch_size: int):
    def end_of_epoch(state, total, opt_state):
        rates = opt_state.hyperparams
        state, stop, lr = epoch_end(jnp, state, total / state["rows"], rates["learning_rate"])
        rates = rates | {"learning_rate": lr.astype(rates["learning_rate"].dtype)}
        return state | {"total": jnp.zeros_like(total)}, stop, opt_state._replace(hyperparams=rates)

    def update(state, step, loss, opt_state):
        last = (step + 1) % steps_per_epoch == 0
        total = state["total"] + loss * jnp.where(last, state["rows"] - (steps_per_epoch - 1) * batch_size, batch_size)
        within_epoch = lambda state, total, opt_state: (state | {"total": total}, jnp.zeros((), bool), opt_state)
        return jax.lax.cond(last, end_of_epoch, within_epoch, state, total, opt_state)

    return update


def epoch_rule(steps_per_epoch: int, batch_size: int, state: dict, dtype) -> StopRule:
    """sklearn's rule without early stopping, as a `StopRule` run inside the loop (steps counted from 0): at the end
    of each epoch `epoch_end` on its loss Σ (step loss · its rows) / n (the last step n − (steps − 1)·b rows, n
    the state's `rows`), setting the optimizer's `hyperparams["learning_rate"]`.

    Args:
        steps_per_epoch: the steps of an epoch.
        batch_size: b, the rows of its every step but the last.
        state: the `rule_state` to start from (one value, or one per ensemble member: data).
        dtype: the dtype of the losses summed.

    Returns:
        The `StopRule`; one `update` per epoch length, so rules of one length share one program.
    """
    largest = np.iinfo(np.int32).max
    init = {key: np.asarray(value, dtype) for key, value in state.items()} | {
        "total": np.zeros(state["tol"].shape, dtype),
        "count": np.minimum(state["count"], largest).astype(np.int32),
        "patience": np.minimum(state["patience"], largest).astype(np.int32),  # np.inf: never fires
        "schedule": state["schedule"],
    }
    return StopRule(_epoch_rule_update(steps_per_epoch, batch_size), init, touches_opt_state=True)


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
        no_improvement: the epochs without improvement at the end (sklearn's `_no_improvement_count`).
        interrupted: a KeyboardInterrupt ended the run: the rest is the last complete epoch's.
    """

    coefs: list[np.ndarray]
    intercepts: list[np.ndarray]
    opt_state: Any
    step: int
    curve: list[float]
    scores: list[float]
    stopped: bool
    no_improvement: int
    interrupted: bool = False


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


def _learning_rate(opt_state) -> float:
    return float(opt_state.hyperparams["learning_rate"])


#: the fewest steps in a chunk of a fit with neither early stopping nor `verbose` (whole epochs): the host trip
#: between chunks, where an interrupt's work done is recorded, costs nothing measurable beside them (~40 ms of steps
#: here; the sklearn suite's 2 200-step classifier fit, in turns: 14.2 ms in chunks of 1024, 13.4 ms in one, 2026-12-05)
CHUNK_STEPS = 8192


class _Record:
    """`fit`'s `on_chunk` for chunks of whole epochs: keeps the last complete chunk's state as `fit_epochs`' `done`
    (what an interrupt keeps: params, optimizer state, losses so far, rule state)."""

    def __init__(self, done: tuple):
        self.done = done

    def __call__(self, result) -> None:
        self.keep(result, result.losses)

    def keep(self, result, losses) -> None:
        """Record `result` as the run so far, its chunk's `losses` after those before."""
        final = jax.device_get(result.rule_state)
        state = {name: np.asarray(final[name]) for name in self.done[4]}
        self.done = (result.params, result.opt_state, (*self.done[2], losses), (), state, None)


class _EpochReporter(_Record):
    """`fit`'s `on_chunk` for chunks of one epoch: `on_epoch` with the epoch's loss and η before and after it
    (`stopped=True` for the epoch at which the rule stopped, whose chunk `fit` does not report), recording each
    reported epoch as `_Record` does."""

    def __init__(self, on_epoch, steps: Plan, done: tuple):
        super().__init__(done)
        self.on_epoch, self.steps = on_epoch, steps
        self.rates = [_learning_rate(done[1])]

    def __call__(self, result, stopped: bool = False) -> None:
        self.rates.append(_learning_rate(result.opt_state))
        epoch = result.losses[-self.steps.steps_per_epoch :]
        self.keep(result, epoch)
        loss = epoch_means(epoch, self.steps.batch_rows())[0]
        self.on_epoch(float(loss), None, stopped, *self.rates[-2:])


def with_learning_rate(opt_state, lr):
    """A `solver_transform`'s state with η set (the dtype kept)."""
    rates = opt_state.hyperparams
    return opt_state._replace(hyperparams=rates | {"learning_rate": np.asarray(lr, rates["learning_rate"].dtype)})


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
    stopping: Stopping,
    score=None,
    shuffle: bool = True,
    on_epoch: Callable[[float, float | None, bool, float, float], None] | None = None,
) -> TrainRun:
    """Up to `epochs` epochs of `fit` from `start_step` (a multiple of the steps per epoch), stopping and setting η
    where sklearn's rule would.

    A KeyboardInterrupt ends the run at the last complete epoch it knows of (`TrainRun.interrupted`), the last one
    ended on the host: with early stopping or an `on_epoch`, the last epoch; otherwise the last chunk's (chunks of
    whole epochs, at least `CHUNK_STEPS` steps). With a `score` (early stopping): one `fit` call an epoch,
    `stopping` updated on the host and η set between them. Otherwise `stopping`'s `epoch_rule` inside the loop, in
    chunks of that many steps (one epoch a chunk with an `on_epoch`; the same bits as one call); its final state is
    written back to `stopping.state`.

    Args:
        loss_fn: the `Objective`.
        transform: the `solver_transform`.
        params: the params to start from.
        opt_state: the optimizer state to start from.
        x: (n, features) inputs.
        y: targets, encoded (with row weights: {"target": t, "weight": w}); with x, `padded` here.
        key: the PRNG key of the minibatch order.
        steps: the `Plan`.
        epochs: the most epochs to run.
        start_step: the first step (a resumed run's).
        stopping: sklearn's rule and schedule, from the state to continue.
        score: `score(params)`, the validation score of early stopping.
        shuffle: False reads the minibatches in order (`fit`'s shuffle).
        on_epoch: called after each epoch with its mean loss, validation score (None without a `score`), whether
            the rule stopped there, and η before and after its end (e.g. `_reporting.Progress`).

    Returns:
        The `TrainRun`.

    Raises:
        ValueError: a step's loss or update was not finite (sklearn's message; the step in a note).
    """
    per_epoch, batch_rows = steps.steps_per_epoch, steps.batch_rows()
    x, y = padded(x, y, steps)
    train = functools.partial(
        fit,
        loss_fn,
        batch_size=None if steps.batch_size == x.shape[0] else steps.batch_size,
        optimizer=transform,
        key=key,
        shuffle=shuffle,
        padding=steps.padding,
    )
    # the last complete epoch's (params, opt_state, losses, scores, rule state, best params): what an interrupt keeps
    done: tuple = (params, opt_state, (), (), stopping.state, stopping.best_params)
    stopped = interrupted = False
    try:
        if score is None:
            rule = epoch_rule(per_epoch, steps.batch_size, stopping.state, jnp.result_type(float))
            end = start_step + epochs * per_epoch
            report = None if on_epoch is None else _EpochReporter(on_epoch, steps, done)
            record = _Record(done) if report is None else report
            try:
                result = train(
                    params,
                    x,
                    y,
                    opt_state=opt_state,
                    steps=end - start_step,
                    start_step=start_step,
                    chunk_size=per_epoch * -(-CHUNK_STEPS // per_epoch) if report is None else per_epoch,
                    on_chunk=record,
                    stop_rule=rule,
                )
                if report is not None and result.stopped_at >= 0:  # the loop returns before the stopping epoch's chunk
                    report(result, stopped=True)
            except KeyboardInterrupt:
                interrupted, done = True, record.done
            else:
                final = jax.device_get(result.rule_state)
                state = {name: np.asarray(final[name]) for name in stopping.state}
                done, stopped = (
                    (result.params, result.opt_state, (result.losses,), (), state, None),
                    result.stopped_at >= 0,
                )
        else:
            x, y = jax.device_put((x, y))  # once: each epoch is a call
            step = start_step
            try:
                for _ in range(epochs):
                    result = train(
                        params, x, y, opt_state=opt_state, steps=per_epoch, start_step=step, chunk_size=per_epoch
                    )
                    params, step, epoch_score = result.params, result.step, score(result.params)
                    before = _learning_rate(result.opt_state)
                    stopped, lr = stopping.update(epoch_score, params, before)
                    opt_state = with_learning_rate(result.opt_state, lr)
                    _, _, losses, scores, _, _ = done
                    done = (
                        params,
                        opt_state,
                        (*losses, result.losses),
                        (*scores, epoch_score),
                        stopping.state,
                        stopping.best_params,
                    )
                    if on_epoch is not None:
                        on_epoch(float(epoch_means(result.losses, batch_rows)[0]), epoch_score, stopped, before, lr)
                    if stopped:
                        break
            except KeyboardInterrupt:
                interrupted = True
    except NonFiniteLoss as error:
        raise non_finite_error(error.step, error.cause) from None
    params, opt_state, losses, scores, stopping.state, stopping.best_params = done
    curve: list[float] = epoch_means(np.concatenate(losses), batch_rows).tolist() if losses else []
    coefs, intercepts = to_sklearn(params["layers"])
    step = start_step + len(curve) * per_epoch
    count = int(stopping.state["count"])
    opt_state = jax.device_get(opt_state)
    return TrainRun(coefs, intercepts, opt_state, step, curve, list(scores), bool(stopped), count, interrupted)


def epoch_means(losses, batch_rows) -> np.ndarray:
    """Each epoch's loss as sklearn's: Σ (step loss · its rows) / Σ rows, in float64.

    Args:
        losses: (steps, …) step losses, whole epochs; any axes after the first kept (e.g. an ensemble's members).
        batch_rows: the rows of each step of an epoch (`Plan.batch_rows`), (steps per epoch,) or shaped as an
            epoch of losses (e.g. one column per member).

    Returns:
        (epochs, …) means.
    """
    losses, rows = np.asarray(losses, np.float64), np.asarray(batch_rows, np.float64)
    rows = rows.reshape(rows.shape + (1,) * (losses.ndim - rows.ndim))
    return (losses.reshape(-1, *rows.shape[:1], *losses.shape[1:]) * rows).sum(axis=1) / rows.sum(axis=0)

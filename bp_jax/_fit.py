"""The fused training loop: many steps in one compiled XLA program, for one model (`fit`) or many
(`fit_ensemble`, the same loop under `jax.vmap`).

One program per configuration (loss, optimizer, batch size, mesh, array shapes): the first step and
the number of steps are data, so any run length, chunk size or resume point reuses it, and every step
of a run executes the same compiled loop body; stopping and resuming anywhere gives the bits of one
uninterrupted run by construction. A call runs at most CAPACITY steps (`lax.while_loop`, no masked
steps); longer chunks are several calls. Between chunks the host may report progress or checkpoint.
Minibatch order is a pure function of (key, step) costing O(batch) (`minibatch_indices`), or the rows in order
(`shuffle=False`); so is a stochastic loss's (dropout's) noise, drawn from a stream of its own (`noise_keys`).
x and y are arrays or pytrees of arrays (e.g. y = {"target": t, "weight": w}), examples on every leaf's leading
axis: a minibatch is the same rows of every leaf.

Here: the public results, the set-up both functions share and the host's chunk loop; the argument checks are in
`_fit_checks`, the compiled loop in `_fit_loop`.
"""

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from bp_jax import _fit_checks as checks
from bp_jax._fit_loop import (
    CAPACITY,
    CAUSES,
    Divergence,
    InParts,
    LoopState,
    RuleState,
    apply_rule,
    compiled_loop,
    copy_tree,
    core_count,
    examples,
    member_parts,
    to_host,
)
from bp_jax._mesh import MODELS_AXIS, batch_sharded, data_devices, member_devices, member_sharded, place, replicated
from bp_jax._order import LARGE_DOMAIN
from bp_jax._steps import check_lr

#: The number `noise_keys` folds into the run's key: dropout's stream, apart from anything else drawn from the key.
NOISE_STREAM = 0x6E6F6973  # "nois"


class FitResult(NamedTuple):
    """What `fit` returns.

    Attributes:
        params: the final params.
        opt_state: the optimizer's final state (None for the hand-written SGD).
        losses: the loss before each step, a host array: `losses[i]` belongs to step `start_step + i` (with
            `keep_losses=False`, those of the last chunk only: `losses[i]` belongs to step `step − len(losses) + i`).
        step: the number of steps taken in all (the step to resume from).
        stopped_at: the step after which a `StopRule` ended the run (−1: none did).
        rule_state: the `StopRule`'s final state (None without a rule); `early_stopping`'s holds the best params.
    """

    params: Any
    opt_state: Any
    losses: np.ndarray
    step: int
    stopped_at: int = -1
    rule_state: Any = None


class EnsembleResult(NamedTuple):
    """What `fit_ensemble` returns: `FitResult` for E models.

    Attributes:
        params: the final params, a leading member axis E on every leaf.
        opt_state: the optimizer's final state, vmapped over the members (None for the hand-written SGD).
        losses: (steps, E) losses before each step; NaN once a member has diverged or stopped (with
            `keep_losses=False`, those of the last chunk only).
        step: the number of steps taken in all.
        diverged: (E,) the step at which each member's loss or update went non-finite, or −1.
        stopped_at: (E,) the step after which each member's `StopRule` stopped it, or −1 (None without a rule).
        rule_state: the members' `StopRule` final states, a leading member axis (None without a rule).
    """

    params: Any
    opt_state: Any
    losses: np.ndarray
    step: int
    diverged: np.ndarray
    stopped_at: np.ndarray | None = None
    rule_state: Any = None


class NonFiniteLoss(FloatingPointError):
    """Training produced a NaN or inf; the step was not applied.

    Args:
        step: the step whose loss or update was not finite.
        result: the `FitResult` up to that step, holding the last finite params.
        cause: "loss" (the loss was non-finite) or "update" (the loss was finite, the new params were not).
    """

    def __init__(self, step: int, result: FitResult, cause: str = "loss"):
        what = (
            "loss became non-finite"
            if cause == "loss"
            else "the update made the params non-finite (the loss was finite)"
        )
        super().__init__(f"{what} at step {step}; stopped with the last finite params")
        self.step, self.result, self.cause = step, result, cause


class StopRule(NamedTuple):
    """A stopping rule evaluated inside the compiled loop, so stopping costs no trip to the host.

    After each applied step, `(state, stop) = update(state, step, loss)`, starting from `init`; once `stop` is
    True the model takes no more steps. With `touches_opt_state`, the rule also sees the optimizer state the step
    produced and returns the one the next step starts from: `(state, stop, opt_state) = update(state, step, loss,
    opt_state)`, e.g. a learning-rate schedule writing `opt_state.hyperparams["learning_rate"]` of an
    `optax.inject_hyperparams` optimizer at the end of each epoch (scikit-learn's "adaptive": η ← η / 5 once the
    epochs without improvement exceed the patience). For `fit_ensemble`, `init` has a leading member axis (one
    state per member, e.g. per-member thresholds as data) and `update` is vmapped, each member seeing its own
    optimizer state and params. With `touches_params`, `update` also sees the params the step produced (keyword
    `params=`), and a rule with `data` sees it as keyword `data=` (shared by the members): a validation set that
    `update` scores, as `early_stopping`'s does. The state and the stop markers are what a checkpoint keeps (resume
    with `stop_rule=rule._replace(init=result.rule_state), stopped_at=result.stopped_at`); the data is not.

    Attributes:
        update: `update(state, step, loss) -> (state, stop)`, or with `touches_opt_state`
            `update(state, step, loss, opt_state) -> (state, stop, opt_state)` (the same structure and shapes
            back), plus the keywords `params=` and `data=` where they apply; part of the compiled program (keep one
            function object per rule to reuse it).
        init: the rule's first state (a pytree of arrays, e.g. a dict naming its parts); data.
        touches_opt_state: whether `update` takes and returns the optimizer state (static: needs an optax
            optimizer; False keeps a rule's program as it was).
        touches_params: whether `update` sees the params (static).
        data: a pytree of arrays `update` reads and never changes (None: no `data=`); data, so new values of the
            same shapes reuse the program.

    Examples:
        Halve an `inject_hyperparams` learning rate every 10 steps, and stop after step 29:

        >>> import jax, optax
        >>> from bp_jax import StopRule, fit, loss_fn, mlp
        >>> def halve(state, step, loss, opt_state):
        ...     epoch_end = (step + 1) % 10 == 0
        ...     rates = opt_state.hyperparams | {"learning_rate": jax.numpy.where(
        ...         epoch_end, opt_state.hyperparams["learning_rate"] / 2, opt_state.hyperparams["learning_rate"])}
        ...     return state, step >= 29, opt_state._replace(hyperparams=rates)
        >>> x = jax.numpy.linspace(-1, 1, 32).reshape(-1, 1)
        >>> model = mlp((1, 8, 1), "tanh")
        >>> optimizer = optax.inject_hyperparams(optax.sgd)(learning_rate=0.25)
        >>> result = fit(loss_fn(model), model.init(jax.random.key(0)), x, 2 * x, steps=100, optimizer=optimizer,
        ...              stop_rule=StopRule(halve, {}, touches_opt_state=True))
        >>> result.step, float(result.opt_state.hyperparams["learning_rate"])
        (30, 0.03125)
    """

    update: Callable
    init: Any
    touches_opt_state: bool = False
    touches_params: bool = False
    data: Any = None


def stop_rules(*rules: StopRule) -> StopRule:
    """One `StopRule` made of several (`fit` takes one): after each step each rule is updated in turn, the optimizer
    state threaded through those that touch it in their order, and the run stops once any says stop:
    stop = stop₁ ∨ … ∨ stopₙ. Its state is the tuple of theirs (resume with `init=result.rule_state`), its data the
    tuple of theirs (None if none has any), and it touches the optimizer state or the params where any of them does.
    The update is one function per combination of updates, so the combined rule reuses its compiled loop.

    Examples:
        Early stopping on a validation set, and a rule halving the step every 10 steps:

        >>> import jax, optax
        >>> from bp_jax import StopRule, early_stopping, fit, loss_fn, mlp, stop_rules
        >>> def halve(state, step, loss, opt_state):
        ...     rate = opt_state.hyperparams["learning_rate"]
        ...     rates = {"learning_rate": jax.numpy.where((step + 1) % 10 == 0, rate / 2, rate)}
        ...     return state, False, opt_state._replace(hyperparams=rates)
        >>> x = jax.numpy.linspace(-1, 1, 32).reshape(-1, 1)
        >>> model = mlp((1, 8, 1), "tanh")
        >>> params, loss = model.init(jax.random.key(0)), loss_fn(model)
        >>> rule = stop_rules(early_stopping(loss, params, x[::3], 2 * x[::3], steps_per_epoch=4, patience=3),
        ...                   StopRule(halve, {}, touches_opt_state=True))
        >>> result = fit(loss, params, x, 2 * x, steps=40, batch_size=8, key=jax.random.key(1),
        ...              optimizer=optax.inject_hyperparams(optax.sgd)(learning_rate=0.1), stop_rule=rule)
        >>> round(float(result.opt_state.hyperparams["learning_rate"]), 6), int(result.rule_state[0].best_epoch)
        (0.00625, 9)

    Raises:
        TypeError: no rules, or one that is not a `StopRule`.
    """
    if not rules or not all(isinstance(rule, StopRule) for rule in rules):
        raise TypeError(f"stop_rules takes one or more bp_jax.StopRule, got {[type(r).__name__ for r in rules]}")
    parts = tuple((rule.update, bool(rule.touches_opt_state), bool(rule.touches_params)) for rule in rules)
    has_data = any(rule.data is not None for rule in rules)
    return StopRule(
        _combined_update(parts),
        tuple(rule.init for rule in rules),
        touches_opt_state=any(rule.touches_opt_state for rule in rules),
        touches_params=any(rule.touches_params for rule in rules),
        data=tuple(rule.data for rule in rules) if has_data else None,
    )


@functools.lru_cache(maxsize=32)  # one update per combination: the combined rule's program is reused
def _combined_update(parts: tuple[tuple[Callable, bool, bool], ...]) -> Callable:
    def update(state, step, loss, *opt_state, params=None, data=None):
        states, stop, carried = [], jnp.zeros((), bool), opt_state[0] if opt_state else None
        datas = (None,) * len(parts) if data is None else data
        for (rule_update, touches_opt_state, touches_params), rule_state, rule_data in zip(parts, state, datas):
            rule_state, rule_stop, carried = apply_rule(
                rule_update, touches_opt_state, touches_params, rule_state, step, loss, carried, params, rule_data
            )
            states.append(rule_state)
            stop = stop | jnp.asarray(rule_stop, bool)
        return (tuple(states), stop, carried) if opt_state else (tuple(states), stop)

    return update


class _Run(NamedTuple):
    """A checked call of `fit` or `fit_ensemble`, ready to run: the compiled loop, its first state (fresh buffers:
    the loop donates them), its data `(lr, key, x, y, rows, rule_data)`, the steps and chunk sizes, the members
    (None for one model) and the noise keys of a stochastic loss (None otherwise)."""

    loop: Callable
    state: LoopState
    data: tuple
    start_step: int
    end: int
    chunk_sizes: tuple[int, ...]
    members: int | None
    noise: jax.Array | None = None


def is_stochastic(loss_fn) -> bool:
    """Whether `loss_fn` takes a `key` (its `stochastic` attribute, e.g. a `LossFn` whose model has dropout)."""
    return bool(getattr(loss_fn, "stochastic", False))


@functools.partial(jax.jit, static_argnums=1)
def noise_keys(key: jax.Array, members: int | None) -> jax.Array:
    """The noise keys of a stochastic loss: step s of a model hands its loss `hash_fold_in(noise, s)`, where `noise` is
    `fold_in(fold_in(k, NOISE_STREAM), j)` for the model's key k and its place j in its group: one key for `fit`
    (j = 0); (E,) keys for `fit_ensemble`, member i of G groups taking key k_g, g = i // (E/G), j = i mod (E/G)
    (one shared key: G = 1). Threefry's fold_in here, once a run, puts the noise apart from the minibatch order,
    which hashes the key's own bits."""
    if not jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.wrap_key_data(key)
    member = lambda group_key, j: jax.random.fold_in(jax.random.fold_in(group_key, NOISE_STREAM), j)
    if members is None:
        return member(key, 0)
    group_keys = jnp.reshape(key, (-1,))
    places = jnp.arange(members // group_keys.shape[0])
    return jax.vmap(lambda group_key: jax.vmap(lambda j: member(group_key, j))(places))(group_keys).reshape(members)


def fit(
    loss_fn: Callable,
    params,
    x,
    y,
    *,
    steps: int,
    batch_size: int | None = None,
    lr=None,
    optimizer: optax.GradientTransformation | None = None,
    key: jax.Array | None = None,
    opt_state=None,
    start_step: int = 0,
    stopped_at=None,
    chunk_size: int | tuple[int, ...] = 1000,
    on_chunk: Callable[[FitResult], bool | None] | None = None,
    mesh: jax.sharding.Mesh | None = None,
    stop_rule: StopRule | None = None,
    keep_losses: bool = True,
    shuffle: bool = True,
    padding: int = 0,
    shard_rows=None,
) -> FitResult:
    """Train for `steps` steps from `start_step` in one compiled loop.

    Each step is w ← w − lr·g (`sgd_step`) or the optax update (`optax_step`), g = ∇ loss_fn(params, x_b, y_b) on
    the full batch or the minibatch `minibatch_indices(key, step, n, batch_size, shuffle=shuffle)` (the same rows
    of every leaf when x or y is a pytree). A stochastic loss_fn (`loss_fn.stochastic`, e.g. a `loss_fn(model)`
    whose model has dropout) is called as `loss_fn(params, x_b, y_b, key=k_s)`, k_s = `hash_fold_in(noise, step)` with
    `noise = noise_keys(key)`: fresh masks each step, a pure function of (key, step) apart from the order's. A
    step whose loss or new params are not finite is not applied. The chunking changes nothing but where
    `on_chunk` is called: stopping and resuming anywhere gives the bits of one uninterrupted run. The caller's
    params are never donated.

    Args:
        loss_fn: `loss_fn(params, x, y) -> scalar` (with `key=` if `loss_fn.stochastic`); one compiled loop per
            function object.
        params: the params pytree to start from.
        x: inputs, examples on the leading axis: an array, or a pytree of arrays (a dict, NamedTuple, …; a plain
            list or tuple is one array, as numpy reads it) whose leaves share that axis.
        y: targets, as x (e.g. {"target": t, "weight": w}: per-row weights gathered with their rows, for a loss
            that reads them).
        steps: the steps to take.
        batch_size: rows per minibatch; None for the full batch.
        lr: the hand-written SGD's learning rate (data: a new value does not recompile); exactly one of lr and
            optimizer.
        optimizer: any optax GradientTransformation.
        key: the PRNG key of the minibatch order (needed with a batch_size, unused with shuffle=False) and of a
            stochastic loss's noise (needed then, full batch too).
        opt_state: the optimizer's state to resume from (`optimizer.init(params)` when None).
        start_step: the first step's number (a resumed run's `result.step`).
        stopped_at: a resumed run's `result.stopped_at` (None: the stop rule has not stopped the model): a step
            before start_step returns at once, as the uninterrupted run would have ended there.
        chunk_size: chunk boundaries fall on its multiples (or on those of each of several sizes, e.g.
            (1000, checkpoint_every)).
        on_chunk: called after each chunk with the `FitResult` so far and that chunk's losses; returning True
            stops there (`result.step` < start_step + steps).
        mesh: a `data_parallel_mesh`: each batch is split over its "data" axis, which must divide it; params,
            optimizer state and results are replicated and the compiler reduces the gradients. A mesh spanning
            processes takes the same x and y in every process.
        stop_rule: a `StopRule`: the loop ends after the step at which it says stop (`result.stopped_at`;
            `result.step` is the one after it; on_chunk sees no part-chunk). With a `mesh` its data is replicated,
            but for arrays already laid out on that mesh (a validation set split over "data", as shard_rows' x).
        keep_losses: False keeps on the host only the losses of the chunk being run (on_chunk is handed each
            chunk's), so a long run watched by on_chunk holds O(chunk) losses, not O(steps): the result's
            losses are the last chunk's, a NonFiniteLoss's those of the chunk it stopped in.
        shuffle: False reads the minibatches in order, step s the rows (s mod n // b)·b … + b − 1 (scikit-learn's
            shuffle=False; static: a program of its own); no effect on the full batch.
        padding: P, how many of x's n rows, the last ones, are padding: the order shuffles the first n − P and
            reads the P last in each epoch (`minibatch_indices`), e.g. P < b zero-weight rows making n a multiple
            of b, so that an epoch's last batch holds (n − P) mod b real rows (scikit-learn's short last batch;
            static); no effect on the full batch.
        shard_rows: with a `mesh` of D "data" devices and a batch_size b, each device's row count n_d (D ints):
            x and y hold D blocks of n / D rows, block d on the mesh's d-th device (a jax.Array laid out so, as
            each process builds from its own rows, or a host array), its first n_d rows real, the rest never
            read. Device d draws its b / D rows of each minibatch from its own block,
            `minibatch_indices(fold_in(key, d), step, n_d, b / D)`: no row crosses devices, no process needs
            another's rows.

    Returns:
        The `FitResult`.

    Raises:
        NonFiniteLoss: a step's loss or update was not finite; it carries the last finite params.
        ValueError: an argument does not fit (named in the message).
        TypeError: an argument has the wrong type.

    Examples:
        >>> import jax
        >>> from bp_jax import fit, loss_fn, mlp
        >>> x = jax.numpy.linspace(-1, 1, 32).reshape(-1, 1)
        >>> model = mlp((1, 8, 1), "tanh")
        >>> result = fit(loss_fn(model), model.init(jax.random.key(0)), x, 2 * x, steps=100, lr=0.1)
        >>> result.losses.shape, result.step
        ((100,), 100)
        >>> bool(result.losses[-1] < result.losses[0] / 10)
        True
    """
    run = _set_up(
        loss_fn,
        params,
        x,
        y,
        ensemble=False,
        steps=steps,
        batch_size=batch_size,
        lr=lr,
        optimizer=optimizer,
        key=key,
        opt_state=opt_state,
        start_step=start_step,
        stopped_at=stopped_at,
        chunk_size=chunk_size,
        mesh=mesh,
        stop_rule=stop_rule,
        shuffle=shuffle,
        padding=padding,
        shard_rows=shard_rows,
    )
    state, losses, step = _run_in_chunks(run, on_chunk, _fit_result, keep_losses)
    first = step - len(losses)  # the step of losses[0]: start_step, unless only the last chunk's are kept
    bad = int(to_host(state.divergence.step))
    if bad >= 0:
        partial = _fit_result(state, losses[: bad - first + 1], bad)
        raise NonFiniteLoss(bad, partial, CAUSES[int(to_host(state.divergence.cause))])
    stop = _stopped_at(state)
    if stop >= run.start_step:  # stopped in this call, not before it
        losses, step = losses[: stop - first + 1], stop + 1
    return _fit_result(state, losses, step)


def fit_ensemble(
    loss_fn: Callable,
    params,
    x,
    y,
    *,
    steps: int,
    lr=None,
    optimizer: optax.GradientTransformation | None = None,
    batch_size: int | None = None,
    key: jax.Array | None = None,
    opt_state=None,
    start_step: int = 0,
    stopped_at=None,
    chunk_size: int | tuple[int, ...] = 1000,
    on_chunk: Callable[[EnsembleResult], bool | None] | None = None,
    mesh: jax.sharding.Mesh | None = None,
    rows=None,
    row_counts=None,
    stop_rule: StopRule | None = None,
    keep_losses: bool = True,
    shuffle: bool = True,
    padding=0,
) -> EnsembleResult:
    """Train E models at once, as one program: `fit`'s loop under `jax.vmap` over the members.

    Member i ends where `fit(loss_fn, params[i], ..., lr=lr[i], key=key[g])` ends, g its group, up to float
    rounding (for a stochastic loss when it is its group's first member: each member of a group draws its own
    noise, `noise_keys`). Stacked keys make groups: member i is in group i // (E/G), and a group's members read the same
    minibatches, drawn by `minibatch_indices` from its key as in `fit` (G = E: one order each); a group's minibatch
    is gathered once and its members' matmuls run as one. Layers of "auto" contraction are chosen as members'
    (`bp_jax._contraction.members`): one wide matmul x·[W₁ … W_E] where they read the shared minibatch, the fused
    product and sum for tiny layers reading each member's own activations. A member whose loss or update turns
    non-finite is frozen at its last finite params and reported in `diverged`; the others carry on.

    On CPU, without a mesh, the members run in parts, up to as many as the process has cores where their work
    repays it (`bp_jax._fit_loop.member_parts`; the last part padded with copies where the count does not divide
    the members): the one compiled loop is called once a part, each call from its own thread, so the parts run on
    separate cores (XLA:CPU keeps one call of a small step to one core); each member's result is the one it has in
    one call, up to float rounding.

    Args:
        loss_fn: `loss_fn(params, x, y) -> scalar` for one member.
        params: the members' params, a leading member axis E on every leaf (e.g.
            `jax.vmap(model.init)(jax.random.split(k, E))`).
        x: inputs, examples on the leading axis, shared by the members; an array or a pytree of them, as `fit`'s.
        y: targets, as x.
        steps: the steps to take.
        lr: one learning rate or E of them for the hand-written SGD, traced as data (new rates never recompile).
        optimizer: one optax transformation for all members, its state vmapped over them; per-member
            hyperparameters through `optax.inject_hyperparams`, with `opt_state.hyperparams[name]` an (E,) array.
        batch_size: rows per minibatch; None for the full batch.
        key: one key (every member reads the same minibatches) or G stacked keys, G dividing E; unused with
            shuffle=False unless the loss is stochastic (needed then: each member its own noise stream).
        opt_state: the members' optimizer state (`jax.vmap(optimizer.init)(params)` when None).
        start_step: the first step's number.
        stopped_at: a resumed run's `result.stopped_at`, (E,) steps before start_step or −1 (None: none stopped):
            the members the stop rule had stopped stay frozen, as in the uninterrupted run.
        chunk_size: as `fit`'s.
        on_chunk: as `fit`'s, called with an `EnsembleResult`.
        mesh: an `ensemble_mesh`: the members are split over its "models" axis, which must divide E; x and y are
            replicated.
        rows: (G, R) integer indices into x: group g trains on x[rows[g, :row_counts[g]]] (e.g. the folds of a
            cross-validation), reading minibatch `step` at `rows[g][minibatch_indices(key_g, step, row_counts[g],
            b, shuffle=shuffle)]`; needs a batch_size ≤ every count, and G equal to the key's when the keys are
            stacked.
        row_counts: (G,) how many of each group's rows it uses; data, like rows.
        stop_rule: a `StopRule` whose `init` has a leading member axis: a member stops after the step at which
            its rule says stop (frozen there, NaN losses from then on, that step in `stopped_at`); once every
            member's rule has stopped it the run returns, `result.step` = max(stopped_at) + 1.
        keep_losses: as `fit`'s.
        shuffle: as `fit`'s: False reads every member's minibatches (of x, or of its group's rows) in order.
        padding: as `fit`'s, for x; with rows, the last padding[g] of group g's row_counts[g] rows (one int for
            all groups, or (G,) ints; data).

    Returns:
        The `EnsembleResult`.

    Raises:
        ValueError: an argument does not fit (named in the message).
        TypeError: an argument has the wrong type.

    Examples:
        >>> import jax
        >>> import numpy as np
        >>> from bp_jax import fit_ensemble, loss_fn, mlp
        >>> x = jax.numpy.linspace(-1, 1, 32).reshape(-1, 1)
        >>> model = mlp((1, 8, 1), "tanh")
        >>> params = jax.vmap(model.init)(jax.random.split(jax.random.key(0), 4))
        >>> result = fit_ensemble(loss_fn(model), params, x, 2 * x, steps=100, lr=np.array([0.01, 0.03, 0.1, 0.3]))
        >>> result.losses.shape, result.diverged.tolist()
        ((100, 4), [-1, -1, -1, -1])
    """
    run = _set_up(
        loss_fn,
        params,
        x,
        y,
        ensemble=True,
        steps=steps,
        batch_size=batch_size,
        lr=lr,
        optimizer=optimizer,
        key=key,
        opt_state=opt_state,
        start_step=start_step,
        stopped_at=stopped_at,
        chunk_size=chunk_size,
        mesh=mesh,
        stop_rule=stop_rule,
        rows=rows,
        row_counts=row_counts,
        shuffle=shuffle,
        padding=padding,
    )
    return _ensemble_result(*_run_in_chunks(run, on_chunk, _ensemble_result, keep_losses))


def _set_up(
    loss_fn,
    params,
    x,
    y,
    *,
    ensemble: bool,
    steps,
    batch_size,
    lr,
    optimizer,
    key,
    opt_state,
    start_step,
    stopped_at,
    chunk_size,
    mesh,
    stop_rule,
    rows=None,
    row_counts=None,
    shuffle=True,
    padding=0,
    shard_rows=None,
) -> _Run:
    """The checks, first state, data layout and compiled loop of `fit` (one model) or `fit_ensemble` (E members,
    the state's leaves with a leading member axis)."""
    members = checks.member_count(params) if ensemble else None
    if is_stochastic(loss_fn) and key is None:
        raise ValueError(
            "loss_fn is stochastic (its model has dropout): pass key=, the PRNG key its masks are drawn from; got None"
        )
    optimizer = checks.check_update_rule(params, lr, optimizer, opt_state, ensemble=ensemble)
    steps, start_step = checks.check_steps(steps, start_step)
    chunk_sizes = checks.chunk_sizes(chunk_size)
    shuffle = checks.check_shuffle(shuffle)
    x, y, batch_size = checks.check_data(x, y, batch_size, key, mesh, shuffle)
    num_examples = examples(x)
    shuffle = shuffle or batch_size is None  # the full batch has no order: one program either way
    member_rows, key_axis, groups = None, None, None
    if members is None:
        if key is not None and checks.key_batch_shape(key) != ():
            raise ValueError(
                f"fit takes one key, got keys of shape {checks.key_batch_shape(key)}; fit_ensemble takes one per member"
            )
        lr = 0.0 if optimizer is not None else check_lr(lr)  # a Python float: traced weakly typed, as sgd_step's
    else:
        if rows is not None or row_counts is not None:
            member_rows = checks.member_rows(rows, row_counts, members, num_examples, batch_size, padding)
            padding = 0
        key_groups = None if key is None else checks.key_groups(key, members)
        if not shuffle:  # the rows in order: keys group nothing
            key_groups = None
        groups = checks.groups(key_groups, member_rows, members)
        key_axis = None if key_groups is None else 0
        float_dtype = jax.dtypes.canonicalize_dtype(float)
        lr = checks.member_lrs(lr, members) if optimizer is None else np.zeros(members, float_dtype)
    padding = checks.check_padding(padding, num_examples)
    if shard_rows is not None:  # each device's row count, where the loop takes an ensemble's row sets
        shard_rows = checks.shard_rows(shard_rows, mesh if members is None else None, num_examples, batch_size, padding)
    if batch_size is None or not shuffle:  # no order, or the rows in order: the padding is read last anyway
        padding = 0
    if optimizer is not None and opt_state is None:
        opt_state = _initial_opt_state(optimizer, ensemble)(params)
    stop_update, touches_opt_state, touches_params = _stop_update(stop_rule, optimizer)
    noise = noise_keys(key, members) if is_stochastic(loss_fn) else None
    if not shuffle:
        key = None  # the rows in order: no key enters the program
    shape = () if members is None else (members,)
    stopped_at = checks.stopped_at(stopped_at, stop_rule, members, start_step)
    rule = None if stop_rule is None else RuleState(stop_rule.init, stopped_at)
    state = LoopState(params, opt_state, Divergence(np.full(shape, -1, np.int32), np.zeros(shape, np.int32)), rule)
    # once, not at every chunk; an array already on devices (a validation set laid out over processes) as it is
    put = lambda leaf: leaf if isinstance(leaf, jax.Array) else jax.device_put(leaf)
    rule_data = None if stop_rule is None else jax.tree.map(put, stop_rule.data)
    data = (lr, key, x, y, member_rows if shard_rows is None else shard_rows, rule_data)
    if mesh is not None:
        state, data = _laid_out(mesh, state, data, batch_size, members, groups, shard_rows is not None)
        if noise is not None:
            noise = place(noise, replicated(mesh) if members is None else member_sharded(mesh))
    loop = compiled_loop(
        loss_fn,
        optimizer,
        batch_size,
        mesh,
        ensemble=ensemble,
        key_axis=key_axis,
        own_rows=member_rows is not None,
        stop_update=stop_update,
        rule_touches_opt_state=touches_opt_state,
        rule_touches_params=touches_params,
        group_size=members // groups if members and groups else 1,
        large_row_sets=shuffle
        and member_rows is not None
        and bool(np.all(member_rows.counts - member_rows.padding >= LARGE_DOMAIN)),
        shuffle=shuffle,
        padding=padding,
        shard_rows=shard_rows is not None,
    )
    count = 1
    if members and mesh is None:
        units = groups or members
        weights = sum(np.size(leaf) for leaf in jax.tree.leaves(params)) // members
        rows = num_examples if batch_size is None else batch_size
        steps_per_call = min(steps, CAPACITY, *chunk_sizes)
        own_minibatches = batch_size is not None and (groups or 1) > 1  # each group draws its own
        unit_work = members // units * rows * weights * (2 if own_minibatches else 1)
        count = member_parts(units, unit_work, steps_per_call, jax.default_backend(), core_count())
    if count > 1:
        loop = InParts(loop, count, units, key_axis, member_rows is not None, state, data, noise)
        state = loop.state
    else:
        params, opt_state, rule = copy_tree((state.params, state.opt_state, state.rule))
        state = state._replace(params=params, opt_state=opt_state, rule=rule)
    return _Run(loop, state, data, start_step, start_step + steps, chunk_sizes, members, noise)


@functools.lru_cache(maxsize=32)  # one jitted init per optimizer: a new vmap each call would compile again
def _initial_opt_state(optimizer: optax.GradientTransformation, ensemble: bool) -> Callable:
    return jax.jit(jax.vmap(optimizer.init) if ensemble else optimizer.init)


def _stop_update(stop_rule, optimizer) -> tuple[Callable | None, bool, bool]:
    """(the rule's update, part of the compiled program, or None without a rule; whether it touches the optimizer
    state; whether it sees the params). TypeError for a non-StopRule, ValueError for a rule touching the state of
    the hand-written SGD (none)."""
    if stop_rule is None:
        return None, False, False
    if not isinstance(stop_rule, StopRule) or not callable(stop_rule.update):
        raise TypeError(f"stop_rule must be a bp_jax.StopRule(update, init), got {type(stop_rule).__name__}")
    for name in ("touches_opt_state", "touches_params"):
        if not isinstance(getattr(stop_rule, name), (bool, np.bool_)):
            raise TypeError(f"StopRule.{name} must be True or False, got {getattr(stop_rule, name)!r}")
    if stop_rule.touches_opt_state and optimizer is None:
        raise ValueError(
            "a StopRule with touches_opt_state=True updates an optax optimizer's state: pass optimizer=..., "
            "not lr= (the hand-written SGD has no state)"
        )
    return stop_rule.update, bool(stop_rule.touches_opt_state), bool(stop_rule.touches_params)


def _laid_out(
    mesh, state: LoopState, data: tuple, batch_size, members: int | None, groups: int | None, sharded: bool = False
):
    """(state, data) placed on `mesh`. One model (a `data_parallel_mesh`): the state and key replicated, the full
    batch split over "data" (a minibatch's rows are split in the loop), or with `sharded` rows x, y and the
    row counts split over "data". Members (an `ensemble_mesh`): the state
    and learning rates split over "models", keys and row sets too where each member has its own, x and y
    replicated. A stop rule's data replicated, but for arrays already laid out on the mesh (a validation set split
    over "data" stays split: the rule's loss sums over every device's rows). ValueError where the batch or the
    members do not split evenly."""
    lr, key, x, y, member_rows, rule_data = data
    on_mesh = lambda leaf: isinstance(leaf, jax.Array) and getattr(leaf.sharding, "mesh", None) == mesh
    rule_data = jax.tree.map(lambda leaf: leaf if on_mesh(leaf) else place(leaf, replicated(mesh)), rule_data)
    if members is None:
        devices, batch = data_devices(mesh), examples(x) if batch_size is None else batch_size
        if batch % devices:
            raise ValueError(
                f"the global batch of {batch} examples does not split evenly over the mesh's "
                f"{devices} 'data' devices; use a batch size that is a multiple of {devices}"
            )
        params, opt_state, key, rule = jax.tree.map(
            lambda leaf: place(leaf, replicated(mesh)), (state.params, state.opt_state, key, state.rule)
        )
        data_layout = batch_sharded(mesh) if batch_size is None or sharded else replicated(mesh)
        member_rows = None if member_rows is None else place(member_rows, batch_sharded(mesh))  # sharded: counts
        state = state._replace(params=params, opt_state=opt_state, rule=rule)
        return state, (lr, key, *_placed((x, y), data_layout), member_rows, rule_data)
    if members % member_devices(mesh):
        raise ValueError(
            f"the {members} members do not split evenly over the mesh's {member_devices(mesh)} '{MODELS_AXIS}' devices"
        )
    split = lambda leaf: place(leaf, member_sharded(mesh))
    state, lr = jax.tree.map(split, (state, lr))
    by_group = lambda leaf: split(leaf) if groups == members else place(leaf, replicated(mesh))
    if key is not None:
        key = by_group(key) if checks.key_batch_shape(key) != () else place(key, replicated(mesh))
    member_rows = None if member_rows is None else jax.tree.map(by_group, member_rows)
    return state, (lr, key, *_placed((x, y), replicated(mesh)), member_rows, rule_data)


def _placed(data, sharding):
    """Every leaf of `data` placed with `sharding`."""
    return jax.tree.map(lambda leaf: place(leaf, sharding), data)


def _run_in_chunks(run: _Run, on_chunk, result, keep_losses: bool) -> tuple[LoopState, np.ndarray, int]:
    """The host side of both loops: calls the loop for at most CAPACITY steps at a time, gives `on_chunk` the
    `result(state, chunk losses, step)` after every chunk (boundaries on the multiples of each chunk size) and
    stops when it returns True; returns the state, the losses (steps, *members; the last chunk's alone unless
    `keep_losses`) and the step reached. One model returns as soon as it diverged or its stop rule stopped it, members
    as soon as every one's rule has stopped it (the step reached: the last one's stop + 1)."""
    state, step = run.state, run.start_step
    shape = () if run.members is None else (run.members,)
    if state.rule is not None and np.all(to_host(state.rule.stopped_at) >= 0):  # resumed after the rule stopped all
        return state, np.zeros((0, *shape), np.float32), step
    losses: list[np.ndarray] = []
    while step < run.end:
        chunk_end = min(run.end, *((step // size + 1) * size for size in run.chunk_sizes))
        chunk: list[np.ndarray] = []
        while step < chunk_end:
            length = min(chunk_end - step, CAPACITY)
            state, piece = run.loop(state, *run.data, step, length, run.noise)
            chunk.append(to_host(piece)[:length])
            step += length
            if run.members is None and (to_host(state.divergence.step) >= 0 or _stopped_at(state) >= 0):
                return state, np.concatenate((losses if keep_losses else []) + chunk), step
            if run.members is not None and state.rule is not None and np.all(to_host(state.rule.stopped_at) >= 0):
                ended = int(np.max(to_host(state.rule.stopped_at))) + 1  # every member's rule stopped it: none steps on
                return state, np.concatenate((losses if keep_losses else []) + chunk)[: ended - step or None], ended
        if not keep_losses:
            losses = []
        losses += chunk
        if on_chunk is not None:
            params, opt_state, rule = copy_tree((state.params, state.opt_state, state.rule))  # the next call donates
            chunk_result = result(
                state._replace(params=params, opt_state=opt_state, rule=rule), np.concatenate(chunk), step
            )
            if on_chunk(chunk_result) is True:
                break
    return state, np.concatenate(losses) if losses else np.zeros((0, *shape), np.float32), step


def _stopped_at(state: LoopState) -> int:
    """One model's step after which its stop rule stopped it (−1: none did)."""
    return -1 if state.rule is None else int(to_host(state.rule.stopped_at))


def _fit_result(state: LoopState, losses: np.ndarray, step: int) -> FitResult:
    rule_state = None if state.rule is None else state.rule.state
    return FitResult(state.params, state.opt_state, losses, step, _stopped_at(state), rule_state)


def _ensemble_result(state: LoopState, losses: np.ndarray, step: int) -> EnsembleResult:
    stopped_at, rule_state = (None, None) if state.rule is None else (to_host(state.rule.stopped_at), state.rule.state)
    return EnsembleResult(
        state.params, state.opt_state, losses, step, to_host(state.divergence.step), stopped_at, rule_state
    )

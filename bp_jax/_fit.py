"""The fused training loop: many steps in one compiled XLA program, for one model (`fit`) or many
(`fit_ensemble`, the same loop under `jax.vmap`).

One program per configuration (loss, optimizer, batch size, mesh, array shapes): the first step and
the number of steps are data, so any run length, chunk size or resume point reuses it, and every step
of a run executes the same compiled loop body; stopping and resuming anywhere gives the bits of one
uninterrupted run by construction. A call runs at most CAPACITY steps (`lax.while_loop`, no masked
steps); longer chunks are several calls. Between chunks the host may report progress or checkpoint.
Minibatch order is a pure function of (key, step) costing O(batch) (`minibatch_indices`).
"""

import functools
import operator
import threading
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from bp_jax._mesh import MODELS_AXIS, batch_sharded, data_devices, member_devices, member_sharded, place, replicated
from bp_jax._order import LARGE_DOMAIN, minibatch_indices
from bp_jax._steps import check_lr, check_optimizer, optax_update, sgd_update

#: Steps per call of the compiled loop: the size of its loss buffer.
CAPACITY = 1024
#: Why a model stopped: its loss was non-finite, or its loss was finite but the update was not.
CAUSES = ("loss", "update")
#: The step counter inside the loop is an int32.
MAX_STEP = 2**31 - 1


class FitResult(NamedTuple):
    """Final `params` and `opt_state` (None for the hand-written SGD), the loss before each step as a
    host array (`losses[i]` belongs to step `start_step + i`), the number of steps taken in all, and the
    step after which a `StopRule` ended the run (−1: none did)."""

    params: Any
    opt_state: Any
    losses: np.ndarray
    step: int
    stopped_at: int = -1


class EnsembleResult(NamedTuple):
    """`FitResult` for E models: `losses` has shape (steps, E) (NaN once a member has diverged), and
    `diverged` (E,) the step at which each member's loss or update went non-finite, or −1; `stopped_at` (E,)
    the step after which each member's `StopRule` stopped it, or −1 (None without a rule)."""

    params: Any
    opt_state: Any
    losses: np.ndarray
    step: int
    diverged: np.ndarray
    stopped_at: np.ndarray | None = None


class NonFiniteLoss(FloatingPointError):
    """Training produced a NaN or inf at `step`: `cause` is "loss" (the loss was non-finite) or "update"
    (the loss was finite, the new params were not); `result` holds the last finite params."""

    def __init__(self, step: int, result: FitResult, cause: str = "loss"):
        what = (
            "loss became non-finite"
            if cause == "loss"
            else "the update made the params non-finite (the loss was finite)"
        )
        super().__init__(f"{what} at step {step}; stopped with the last finite params")
        self.step, self.result, self.cause = step, result, cause


class _Divergence(NamedTuple):
    """Per model: the step at which it diverged (−1: it has not) and its index in CAUSES."""

    step: jax.Array | np.ndarray
    cause: jax.Array | np.ndarray


class StopRule(NamedTuple):
    """A stopping rule evaluated inside the compiled loop, so stopping costs no trip to the host: after each
    applied step, `(state, stop) = update(state, step, loss)`, starting from `init`; once `stop` is True the
    model takes no more steps. For `fit_ensemble`, `init` has a leading member axis (one state per member, e.g.
    per-member thresholds as data) and `update` is vmapped. `update` is part of the compiled program (keep one
    function object per rule to reuse it); `init` is data."""

    update: Callable
    init: Any


class _LoopState(NamedTuple):
    """What the compiled loop carries from step to step (and donates between calls): with a stop rule, `rule`
    holds its state and the step it stopped at (−1: running)."""

    params: Any
    opt_state: Any
    divergence: _Divergence
    rule: Any = None


def _count(name: str, value, minimum: int) -> int:
    """`value` as an int ≥ minimum (numpy integers welcome); ValueError naming it otherwise."""
    try:
        number = None if isinstance(value, bool) else operator.index(value)
    except TypeError:
        number = None
    if number is None or number < minimum:
        raise ValueError(f"{name} must be an integer ≥ {minimum}, got {value!r}")
    return number


def _check_data(x, y, batch_size, key, mesh):
    """(x, y, batch_size): x and y as arrays (a nested list becomes one), batch_size an int or None;
    ValueError or TypeError naming what does not fit."""
    if mesh is not None and not isinstance(mesh, jax.sharding.Mesh):
        raise TypeError(f"mesh must be a jax.sharding.Mesh (data_parallel_mesh, ensemble_mesh), got {mesh!r}")
    x, y = (value if isinstance(value, (jax.Array, np.ndarray)) else np.asarray(value) for value in (x, y))
    if jnp.ndim(x) < 1 or jnp.ndim(y) < 1 or jnp.shape(x)[0] != jnp.shape(y)[0]:
        raise ValueError(
            f"x and y must share their leading (example) axis, got shapes {jnp.shape(x)} and {jnp.shape(y)}"
        )
    rows = jnp.shape(x)[0]
    if rows < 1:
        raise ValueError(
            f"x and y hold no examples (shapes {jnp.shape(x)} and {jnp.shape(y)}); fit needs at least one row"
        )
    if batch_size is None:
        return x, y, None
    batch_size = _count("batch_size", batch_size, 1)
    if batch_size > rows:
        raise ValueError(f"batch_size must be at most {rows} (the number of examples), got {batch_size}")
    if key is None:
        raise ValueError("fit needs a PRNG key to shuffle minibatches when batch_size is set")
    return x, y, batch_size


def _chunk_sizes(chunk_size) -> tuple[int, ...]:
    sizes = tuple(chunk_size) if isinstance(chunk_size, (tuple, list, np.ndarray)) else (chunk_size,)
    if not sizes:
        raise ValueError(f"chunk_size must be an integer ≥ 1 or a non-empty sequence of them, got {chunk_size!r}")
    return tuple(_count("chunk_size", size, 1) for size in sizes)


def _check_steps(steps, start_step) -> tuple[int, int]:
    steps, start_step = _count("steps", steps, 0), _count("start_step", start_step, 0)
    if start_step + steps > MAX_STEP:
        raise ValueError(
            f"start_step + steps must be at most {MAX_STEP} (steps are counted in int32), got {start_step} + {steps}"
        )
    return steps, start_step


def _key_batch_shape(key) -> tuple[int, ...]:
    """The shape of a typed PRNG key array, or of a raw uint32 one without its last (key data) axis;
    TypeError for anything else."""
    if isinstance(key, jax.Array) and jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        return key.shape
    if isinstance(key, (jax.Array, np.ndarray)) and key.dtype == np.uint32 and key.ndim >= 1:
        return key.shape[:-1]
    described = (
        f"{type(key).__name__} of dtype {key.dtype} and shape {key.shape}" if hasattr(key, "dtype") else repr(key)
    )
    raise TypeError(
        f"key must be a PRNG key such as jax.random.key(0) (or a raw jax.random.PRNGKey(0)), got {described}"
    )


class _Setup(NamedTuple):
    """What `fit` and `fit_ensemble` share once their arguments are checked."""

    optimizer: optax.GradientTransformation | None
    steps: int
    start_step: int
    chunk_sizes: tuple[int, ...]
    x: Any
    y: Any
    batch_size: int | None


def _check_arguments(
    params, x, y, *, steps, start_step, chunk_size, batch_size, lr, optimizer, key, opt_state, mesh, ensemble: bool
) -> _Setup:
    """The opening checks of `fit` and `fit_ensemble`: exactly one of lr or optimizer, an opt_state only with an
    optimizer and shaped as its init (vmapped for an `ensemble`) would make it, counts, chunk sizes and data;
    ValueError or TypeError naming what does not fit."""
    if (lr is None) == (optimizer is None):
        raise ValueError(
            "fit takes exactly one of lr (hand-written SGD) or optimizer (optax), "
            f"got lr={lr!r}, optimizer={optimizer!r}"
        )
    optimizer = None if optimizer is None else check_optimizer(optimizer)
    if opt_state is not None:
        if optimizer is None:
            raise ValueError(
                "opt_state is an optimizer's state: the hand-written SGD (lr=...) has none; pass "
                "optimizer=... with it, or leave opt_state out"
            )
        leaves, treedef = jax.tree.flatten(params)
        signature = tuple((jnp.shape(leaf), jnp.result_type(leaf)) for leaf in leaves)
        _check_opt_state(opt_state, _init_shapes(optimizer, ensemble, treedef, signature))
    steps, start_step = _check_steps(steps, start_step)
    chunk_sizes = _chunk_sizes(chunk_size)
    x, y, batch_size = _check_data(x, y, batch_size, key, mesh)
    return _Setup(optimizer, steps, start_step, chunk_sizes, x, y, batch_size)


@functools.lru_cache(maxsize=64)  # tracing the init costs about a millisecond: once per optimizer and params layout
def _init_shapes(optimizer, ensemble: bool, treedef, signature):
    """`jax.eval_shape` of the optimizer's init (vmapped for an ensemble) on params of this structure and
    these (shape, dtype) leaves."""
    params = jax.tree.unflatten(treedef, [jax.ShapeDtypeStruct(shape, dtype) for shape, dtype in signature])
    return jax.eval_shape(jax.vmap(optimizer.init) if ensemble else optimizer.init, params)


def _check_opt_state(opt_state, expected) -> None:
    """ValueError unless `opt_state` has the tree structure and leaf shapes of `expected` (the optimizer's
    init of these params, as jax.eval_shape gives it)."""
    got_tree, expected_tree = jax.tree.structure(opt_state), jax.tree.structure(expected)
    # jaxlib ships no stub for PyTreeDef (mypy sees "PyTreeDef?" and no __ne__), which compares structures
    if got_tree != expected_tree:  # type: ignore[operator]
        raise ValueError(
            f"opt_state does not match the optimizer: optimizer.init(params) gives {expected_tree}, got {got_tree}"
        )
    for path, leaf in jax.tree_util.tree_flatten_with_path(opt_state)[0]:
        want = _leaf_at(expected, path)
        if jnp.shape(leaf) != want.shape:
            raise ValueError(
                f"opt_state{jax.tree_util.keystr(path)} has shape {jnp.shape(leaf)}; "
                f"optimizer.init(params) gives {want.shape}"
            )


def _leaf_at(tree, path):
    for key in path:
        tree = (
            tree[key.key]
            if isinstance(key, jax.tree_util.DictKey)
            else tree[key.idx]
            if isinstance(key, jax.tree_util.SequenceKey)
            else getattr(tree, key.name)
        )
    return tree


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
    chunk_size: int | tuple[int, ...] = 1000,
    on_chunk: Callable[[FitResult], bool | None] | None = None,
    mesh: jax.sharding.Mesh | None = None,
    stop_rule: StopRule | None = None,
) -> FitResult:
    """Train for `steps` steps from `start_step`; returns a FitResult.

    Exactly one of `lr` (w ← w − lr·g, as `sgd_step`; lr is data, a new value does not recompile) or
    `optimizer` (any optax GradientTransformation, as `optax_step`; state from `optimizer.init` unless
    `opt_state` is given, which must have that state's structure). Full batch when `batch_size` is None,
    else the rows `minibatch_indices(key, step, len(x), batch_size)`. Chunk boundaries fall on the multiples
    of `chunk_size` (or of each of several sizes, e.g. (1000, checkpoint_every)); after each,
    `on_chunk(FitResult)` gets the state so far with that chunk's losses; if it returns True, fit stops
    there and returns that state (`result.step` < start_step + steps). The chunking changes nothing but
    where on_chunk is called. With a `stop_rule` (StopRule), the loop ends after the step at which the rule
    says stop: `result.stopped_at` is that step, `result.step` the one after it, and fit returns at once
    (on_chunk sees no part-chunk).
    A step whose loss or new params are not finite is not applied: fit raises NonFiniteLoss naming it
    and its cause, carrying the last finite params. The caller's params are never donated.

    With a `mesh` (`data_parallel_mesh`), each batch (full or minibatch) is split over its "data" axis,
    which must divide it; params, optimizer state and the returned arrays are replicated, and the
    compiler reduces the gradients. A mesh spanning processes takes the same x and y in every process.
    """
    setup = _check_arguments(
        params,
        x,
        y,
        steps=steps,
        start_step=start_step,
        chunk_size=chunk_size,
        batch_size=batch_size,
        lr=lr,
        optimizer=optimizer,
        key=key,
        opt_state=opt_state,
        mesh=mesh,
        ensemble=False,
    )
    optimizer, x, y, batch_size = setup.optimizer, setup.x, setup.y, setup.batch_size
    if key is not None and _key_batch_shape(key) != ():
        raise ValueError(
            f"fit takes one key, got keys of shape {_key_batch_shape(key)}; fit_ensemble takes one per member"
        )
    lr = 0.0 if optimizer is not None else check_lr(lr)  # a Python float: traced weakly typed, as sgd_step's
    opt_state = None if optimizer is None else jax.jit(optimizer.init)(params) if opt_state is None else opt_state
    stop_update, rule = _stop_update(stop_rule), _rule_state(stop_rule, ())
    if mesh is not None:
        devices, batch = data_devices(mesh), len(x) if batch_size is None else batch_size
        if batch % devices:
            raise ValueError(
                f"the global batch of {batch} examples does not split evenly over the mesh's "
                f"{devices} 'data' devices; use a batch size that is a multiple of {devices}"
            )
        params, opt_state, key, rule = jax.tree.map(
            lambda leaf: place(leaf, replicated(mesh)), (params, opt_state, key, rule)
        )
        data_layout = batch_sharded(mesh) if batch_size is None else replicated(mesh)
        x, y = place(x, data_layout), place(y, data_layout)
    run = _compiled_loop(loss_fn, optimizer, batch_size, mesh, ensemble=False, key_axis=None, stop_update=stop_update)
    params, opt_state, rule = _copy((params, opt_state, rule))
    state = _LoopState(params, opt_state, _Divergence(np.full((), -1, np.int32), np.zeros((), np.int32)), rule)

    def stopped_at(state) -> int:
        return -1 if state.rule is None else int(_to_host(state.rule[1]))

    def result(state, losses, step):
        return FitResult(state.params, state.opt_state, losses, step, stopped_at(state))

    state, losses, step = _drive(run, state, (lr, key, x, y, None), setup, on_chunk, result, single=True)
    bad = int(_to_host(state.divergence.step))
    if bad >= 0:
        raise NonFiniteLoss(
            bad, result(state, losses[: bad - setup.start_step + 1], bad), CAUSES[int(_to_host(state.divergence.cause))]
        )
    stop = stopped_at(state)
    if stop >= 0:
        losses, step = losses[: stop - setup.start_step + 1], stop + 1
    return result(state, losses, step)


def _stop_update(stop_rule) -> Callable | None:
    if stop_rule is None:
        return None
    if not isinstance(stop_rule, StopRule) or not callable(stop_rule.update):
        raise TypeError(f"stop_rule must be a bp_jax.StopRule(update, init), got {type(stop_rule).__name__}")
    return stop_rule.update


def _rule_state(stop_rule, shape: tuple[int, ...]):
    """The loop's rule state: (the rule's init, the step it stopped at: −1 of `shape`), or None; laid out on a
    mesh as the params are."""
    return None if stop_rule is None else (stop_rule.init, np.full(shape, -1, np.int32))


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
    chunk_size: int | tuple[int, ...] = 1000,
    on_chunk: Callable[[EnsembleResult], bool | None] | None = None,
    mesh: jax.sharding.Mesh | None = None,
    rows=None,
    row_counts=None,
    stop_rule: StopRule | None = None,
) -> EnsembleResult:
    """Train E models at once, as one program: `fit`'s loop under `jax.vmap` over the members.

    `params` has a leading member axis E on every leaf (e.g. `jax.vmap(model.init)(jax.random.split(k, E))`).
    `lr`: one float or an array of E learning rates for the hand-written update, traced as data (new rates
    never recompile). `optimizer`: one optax transformation for all members, its state vmapped over them
    (`jax.vmap(optimizer.init)(params)` unless `opt_state` is given, with that structure); per-member
    hyperparameters through `optax.inject_hyperparams`, whose state holds them as arrays: set
    `opt_state.hyperparams[name]` to an (E,) array. `key`: one key (every member reads the same minibatches)
    or G stacked keys, G dividing E: the members form G groups of E/G in order (member i in group
    i // (E/G)), and a group's members read the same minibatches, drawn by `minibatch_indices` from its key as in
    `fit` (G = E: one order each). A group's minibatch is gathered once and its members' matmuls run as one.
    A member whose loss or update turns non-finite is frozen at its last finite params and reported in
    `diverged`; the others carry on. Member i ends where `fit(loss_fn, params[i], ..., lr=lr[i], key=key[g])`
    ends, g its group, up to float rounding.

    Each group on its own rows (e.g. the folds of a cross-validation): `rows` (G, R) integer indices into x
    and `row_counts` (G,), both data (G dividing E, and equal to the key's G when the keys are stacked); the
    members of group g train on x[rows[g, :row_counts[g]]] (needs a `batch_size` ≤ every count), reading
    minibatch `step` at `rows[g][minibatch_indices(key_g, step, row_counts[g], b)]`, so each ends where `fit` on
    those rows ends.

    With a `stop_rule` (StopRule, `init` with a leading member axis), a member stops after the step at which
    its rule says stop: frozen there, NaN losses from then on, that step in `stopped_at`.

    With a `mesh` (`ensemble_mesh`), the members are split over its "models" axis, which must divide E;
    x and y are replicated.
    """
    members = _members(params)
    setup = _check_arguments(
        params,
        x,
        y,
        steps=steps,
        start_step=start_step,
        chunk_size=chunk_size,
        batch_size=batch_size,
        lr=lr,
        optimizer=optimizer,
        key=key,
        opt_state=opt_state,
        mesh=mesh,
        ensemble=True,
    )
    optimizer, x, y, batch_size = setup.optimizer, setup.x, setup.y, setup.batch_size
    member_rows = (
        None if rows is None and row_counts is None else _member_rows(rows, row_counts, members, len(x), batch_size)
    )
    key_groups = None if key is None else _key_groups(key, members)
    groups = _groups(key_groups, member_rows, members)
    if optimizer is None:
        lrs = _member_lrs(lr, members)
    else:
        lrs = np.zeros(members, jax.dtypes.canonicalize_dtype(float))
        opt_state = _members_init(optimizer)(params) if opt_state is None else opt_state
    key_axis = None if key_groups is None else 0
    if mesh is not None:
        if members % member_devices(mesh):
            raise ValueError(
                f"the {members} members do not split evenly over the mesh's "
                f"{member_devices(mesh)} '{MODELS_AXIS}' devices"
            )
        split = lambda leaf: place(leaf, member_sharded(mesh))
        params, opt_state, lrs = jax.tree.map(split, (params, opt_state, lrs))
        by_group = lambda leaf: split(leaf) if groups == members else place(leaf, replicated(mesh))
        key = None if key is None else by_group(key) if key_axis == 0 else place(key, replicated(mesh))
        member_rows = None if member_rows is None else jax.tree.map(by_group, member_rows)
        x, y = place(x, replicated(mesh)), place(y, replicated(mesh))
    run = _compiled_loop(
        loss_fn,
        optimizer,
        batch_size,
        mesh,
        ensemble=True,
        key_axis=key_axis,
        own_rows=member_rows is not None,
        stop_update=_stop_update(stop_rule),
        group_size=1 if groups is None else members // groups,
        large_row_sets=member_rows is not None and bool(np.all(member_rows.counts >= LARGE_DOMAIN)),
    )
    divergence = _Divergence(np.full(members, -1, np.int32), np.zeros(members, np.int32))
    rule = _rule_state(stop_rule, (members,))
    if mesh is not None:
        divergence, rule = jax.tree.map(lambda leaf: place(leaf, member_sharded(mesh)), (divergence, rule))
    params, opt_state, rule = _copy((params, opt_state, rule))
    state = _LoopState(params, opt_state, divergence, rule)

    def result(state, losses, step):
        stopped_at = None if state.rule is None else _to_host(state.rule[1])
        return EnsembleResult(state.params, state.opt_state, losses, step, _to_host(state.divergence.step), stopped_at)

    state, losses, step = _drive(
        run, state, (lrs, key, x, y, member_rows), setup, on_chunk, result, single=False, loss_shape=(members,)
    )
    return result(state, losses, step)


@functools.lru_cache(maxsize=32)  # one jitted init per optimizer: a new vmap each call would compile again
def _members_init(optimizer: optax.GradientTransformation) -> Callable:
    return jax.jit(jax.vmap(optimizer.init))


def _member_lrs(lr, members: int) -> np.ndarray:
    """lr as an (E,) array of the default float dtype; TypeError or ValueError naming what came."""
    lrs = np.asarray(jax.device_get(lr))
    if lrs.dtype.kind not in "iuf":
        raise TypeError(f"lr must be real numbers: one, or one per member ({members}); got dtype {lrs.dtype}")
    lrs = np.full(members, lrs) if lrs.ndim == 0 else lrs
    if lrs.shape != (members,):
        raise ValueError(f"lr must be one value or one per member ({members}), got shape {lrs.shape}")
    with np.errstate(over="ignore"):
        lrs = lrs.astype(jax.dtypes.canonicalize_dtype(float))
    if not np.all(np.isfinite(lrs) & (lrs > 0)):
        raise ValueError(f"lr must be finite and > 0 in {lrs.dtype}, got {lrs.tolist()}")
    return lrs


class _MemberRows(NamedTuple):
    """Each member's rows of x: indices (E, R) and how many of them it uses (E,)."""

    indices: Any
    counts: Any


def _member_rows(rows, row_counts, members: int, num_examples: int, batch_size) -> _MemberRows:
    """rows (G, R) and row_counts (G,) as int32 arrays, G dividing E; ValueError or TypeError naming what does
    not fit."""
    if rows is None or row_counts is None:
        raise ValueError("rows and row_counts come together: per-group row indices (G, R) and counts (G,)")
    if batch_size is None:
        raise ValueError("per-member rows need a batch_size (minibatches drawn from each member's own rows)")
    rows, row_counts = np.asarray(jax.device_get(rows)), np.asarray(jax.device_get(row_counts))
    if rows.dtype.kind not in "iu" or row_counts.dtype.kind not in "iu":
        raise TypeError(f"rows and row_counts must be integers, got dtypes {rows.dtype} and {row_counts.dtype}")
    if rows.ndim != 2 or row_counts.shape != rows.shape[:1] or not rows.shape[0] or members % rows.shape[0]:
        raise ValueError(
            f"rows must have shape (G, R) and row_counts (G,), G dividing the {members} members (one row set per "
            f"group of members), got {rows.shape} and {row_counts.shape}"
        )
    if np.any(row_counts < batch_size) or np.any(row_counts > rows.shape[1]):
        raise ValueError(
            f"each row count must lie in [batch_size, R] = [{batch_size}, {rows.shape[1]}], got {row_counts.tolist()}"
        )
    used = np.arange(rows.shape[1]) < row_counts[:, None]
    if np.any(used & ((rows < 0) | (rows >= num_examples))):
        raise ValueError(f"rows must index x's {num_examples} examples, got values in [{rows.min()}, {rows.max()}]")
    return _MemberRows(rows.astype(np.int32), row_counts.astype(np.int32))


def _members(params) -> int:
    sizes = {jnp.shape(leaf)[0] if jnp.ndim(leaf) else None for leaf in jax.tree.leaves(params)}
    size = next(iter(sizes)) if len(sizes) == 1 else None
    if size is None:
        raise ValueError(
            f"every leaf of an ensemble's params needs the same leading member axis, got leading "
            f"sizes {sorted(map(str, sizes))}"
        )
    return size


def _key_groups(key, members: int) -> int | None:
    """None for one key shared by all members, G for G stacked keys (G dividing E); ValueError otherwise."""
    shape = _key_batch_shape(key)
    if shape == ():
        return None
    if len(shape) == 1 and shape[0] and members % shape[0] == 0:
        return shape[0]
    raise ValueError(
        f"key must be one PRNG key or G stacked keys, G dividing the {members} members (E for one per member), "
        f"got key shape {shape}"
    )


def _groups(key_groups: int | None, member_rows: _MemberRows | None, members: int) -> int | None:
    """How many groups share minibatches: the stacked keys' G and the row sets' G, which must agree when both
    come; None when one shared key draws every member's minibatches from all of x."""
    row_groups = None if member_rows is None else len(member_rows.counts)
    if key_groups is not None and row_groups is not None and key_groups != row_groups:
        raise ValueError(
            f"key and rows must group the {members} members alike: {key_groups} stacked keys but {row_groups} row sets"
        )
    return key_groups if key_groups is not None else row_groups


@jax.jit
def _copy(tree):
    """Fresh buffers holding `tree` (the compiled loop donates its state; the caller's arrays are kept)."""
    return jax.tree.map(jnp.copy, tree)


def _to_host(array) -> np.ndarray:
    """A device array as numpy; a replicated array spanning processes gives this process's copy."""
    spans_processes = isinstance(array, jax.Array) and not array.is_fully_addressable
    return np.asarray(array.addressable_data(0) if spans_processes else array)


def _drive(
    run,
    state: _LoopState,
    inputs,
    setup: _Setup,
    on_chunk,
    result,
    single: bool,
    loss_shape: tuple[int, ...] = (),
):
    """The host side of both loops: calls `run` for at most CAPACITY steps at a time, gives `on_chunk`
    the result after every chunk (boundaries on the multiples of each chunk size) and stops when it returns
    True; returns the state, the losses (steps, *loss_shape) and the step reached; for a `single` model,
    returns as soon as it diverged or its stop rule stopped it."""
    step, end = setup.start_step, setup.start_step + setup.steps
    losses: list[np.ndarray] = []
    while step < end:
        chunk_end = min(end, *((step // size + 1) * size for size in setup.chunk_sizes))
        chunk: list[np.ndarray] = []
        while step < chunk_end:
            length = min(chunk_end - step, CAPACITY)
            state, piece = run(state, *inputs, step, length)
            chunk.append(_to_host(piece)[:length])
            step += length
            if single and (_to_host(state.divergence.step) >= 0 or (state.rule and _to_host(state.rule[1]) >= 0)):
                return state, np.concatenate(losses + chunk), step
        losses += chunk
        if on_chunk is not None:
            params, opt_state = _copy((state.params, state.opt_state))  # the next call donates the state
            chunk_result = result(state._replace(params=params, opt_state=opt_state), np.concatenate(chunk), step)
            if on_chunk(chunk_result) is True:
                break
    return state, np.concatenate(losses) if losses else np.zeros((0, *loss_shape), np.float32), step


def _running(divergence: _Divergence, rule):
    """Per model: it has neither diverged nor been stopped by its stop rule (`rule`, or None without one)."""
    running = divergence.step < 0
    return running if rule is None else running & (rule[1] < 0)


def _all_finite(tree) -> jax.Array:
    return jnp.all(jnp.asarray([jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree.leaves(tree)]))


def _guarded_update(loss_fn, optimizer, stop_update) -> Callable:
    """One model's `(params, opt_state, divergence, rule, lr, x, y, step) -> (params, opt_state, divergence, rule,
    loss)`: the update, applied only if its loss and new params are finite, the model had not diverged and its
    stop rule (if any: `rule` = (state, step it stopped at or −1)) had not stopped it; an applied step also
    updates the rule. Otherwise the old state is kept, and for a live model the first bad step and its cause
    recorded. A diverged or stopped model's loss reads NaN."""
    if optimizer is None:
        sgd = sgd_update(loss_fn)

        def update(params, opt_state, x, y, lr):
            params, loss = sgd(params, x, y, lr)
            return params, opt_state, loss
    else:
        optax_rule = optax_update(loss_fn, optimizer)
        update = lambda params, opt_state, x, y, lr: optax_rule(params, opt_state, x, y)

    def applied_rule(rule, step, loss):
        if rule is None:
            return None
        state, stop = stop_update(rule[0], step, loss)
        return state, jnp.where(stop, step, rule[1])

    def guarded(params, opt_state, divergence, rule, lr, x, y, step):
        new_params, new_opt_state, loss = update(params, opt_state, x, y, lr)
        loss_finite = jnp.isfinite(loss)
        live = _running(divergence, rule)
        apply = loss_finite & _all_finite(new_params) & live
        # one cond, not a where per leaf: it makes one model's step ~40 % cheaper on CPU (under vmap, a select)
        params, opt_state, rule = jax.lax.cond(
            apply,
            lambda: (new_params, new_opt_state, applied_rule(rule, step, loss)),
            lambda: (params, opt_state, rule),
        )
        diverges = live & ~apply
        divergence = _Divergence(
            jnp.where(diverges, step.astype(jnp.int32), divergence.step),
            jnp.where(diverges, loss_finite.astype(jnp.int32), divergence.cause),
        )
        return params, opt_state, divergence, rule, jnp.where(live, loss, jnp.nan)

    return guarded


def _vmapped_step(model_step, key_axis: int | None, own_rows: bool, group_size: int) -> Callable:
    """`model_step` over the members (a leading axis E on the state and lr): vmapped once where every member has
    its own key and rows or all share them (group_size 1); otherwise vmapped over a group's members (key, rows and
    so the minibatch shared: one gather, and x·W over the members one matmul) and then over the groups."""
    rows_axis = 0 if own_rows else None
    if group_size == 1:
        return jax.vmap(model_step, in_axes=(0, 0, 0, 0, 0, key_axis, None, None, rows_axis, None))
    group_step = jax.vmap(
        jax.vmap(model_step, in_axes=(0, 0, 0, 0, 0, None, None, None, None, None)),
        in_axes=(0, 0, 0, 0, 0, key_axis, None, None, rows_axis, None),
    )

    def step_by_group(params, opt_state, divergence, rule, lr, key, x, y, member_rows, step):
        by_group = lambda leaf: leaf.reshape(-1, group_size, *leaf.shape[1:])
        state = jax.tree.map(by_group, (params, opt_state, divergence, rule, lr))
        outputs = group_step(*state, key, x, y, member_rows, step)
        return jax.tree.map(lambda leaf: leaf.reshape(-1, *leaf.shape[2:]), outputs)

    return step_by_group


#: XLA:CPU's experimental option naming the fusions it hands to YNNPACK, and the value keeping only dots there.
CPU_FUSION_OPTION = ("xla_cpu_experimental_ynn_fusion_type", "LIBRARY_FUSION_TYPE_DOT")


@functools.cache
def loop_compiler_options(platform: str) -> dict[str, str]:
    """XLA options for the fused loop on `platform`. On CPU, YNNPACK fuses only the dots: its element-wise and
    reduction fusions run the small arrays of these steps slower than XLA's own loop fusions (the seed suite's
    fusion diagnostic, benchmarks/README.md). The option is experimental, so it is tried once on a one-line
    program; {} where this jaxlib rejects it, and off the CPU."""
    if platform != "cpu":
        return {}
    name, value = CPU_FUSION_OPTION
    try:
        jax.jit(jnp.negative, compiler_options={name: value}).lower(jnp.zeros(1)).compile()
    except Exception:  # an XLA that renamed or dropped the option: its defaults
        return {}
    return {name: value}


#: Held while a loop is looked up or built: threads asking at once for one configuration's loop (GridSearchCV's
#: n_jobs) get one jitted function, so one compilation (two lru_cache misses at once would build two).
_LOOP_LOOKUP = threading.Lock()


def _compiled_loop(*args, **kwargs) -> Callable:
    """`_build_loop(*args, **kwargs)`, the same function for every thread."""
    with _LOOP_LOOKUP:
        return _build_loop(*args, **kwargs)


@functools.lru_cache(maxsize=32)  # one compiled loop per configuration, reused by every later call
def _build_loop(
    loss_fn,
    optimizer,
    batch_size,
    mesh,
    *,
    ensemble: bool,
    key_axis: int | None,
    own_rows: bool = False,
    stop_update: Callable | None = None,
    group_size: int = 1,
    large_row_sets: bool = False,
) -> Callable:
    """jit of `run(state, lr, key, x, y, rows, first_step, length) -> (state, losses)`: steps first_step …
    first_step + length − 1 (length ≤ CAPACITY, both traced) under `lax.while_loop`, stopping early once
    every model has diverged or been stopped by `stop_update` (a StopRule's update, its state in state.rule);
    losses[i] is step first_step + i's loss, NaN past the last step run.
    state is a _LoopState. For an `ensemble` the per-model step is vmapped over the
    members, with the key shared (`key_axis` None) or stacked (0), and with `own_rows` minibatches drawn from
    row sets (`rows`, a _MemberRows; None otherwise); stacked keys and row sets belong to groups of `group_size`
    consecutive members, each group's step the members' step vmapped over one shared minibatch; `large_row_sets`:
    every row count is ≥ LARGE_DOMAIN (the order takes its fewer rounds)."""
    guarded = _guarded_update(loss_fn, optimizer, stop_update)
    data_parallel = mesh is not None and not ensemble

    def model_step(params, opt_state, divergence, rule, lr, key, x, y, member_rows, step):
        if batch_size is None:
            xb, yb = x, y
        else:
            if own_rows:
                order = minibatch_indices(key, step, member_rows.counts, batch_size, large=large_row_sets)
                rows = member_rows.indices[order]
            else:
                rows = minibatch_indices(key, step, x.shape[0], batch_size)
            xb, yb = x[rows], y[rows]
            if data_parallel:  # each device gathers only its own rows of the minibatch
                xb, yb = jax.lax.with_sharding_constraint((xb, yb), batch_sharded(mesh))
        return guarded(params, opt_state, divergence, rule, lr, xb, yb, step)

    if ensemble:
        model_step = _vmapped_step(model_step, key_axis, own_rows, group_size)
    out_shardings = None
    if mesh is not None:
        out_shardings = (
            (replicated(mesh), replicated(mesh))
            if not ensemble
            else (member_sharded(mesh), jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(None, MODELS_AXIS)))
        )

    platform = jax.default_backend() if mesh is None else mesh.devices.flat[0].platform

    @functools.partial(
        jax.jit, donate_argnums=0, out_shardings=out_shardings, compiler_options=loop_compiler_options(platform)
    )
    def run(state, lr, key, x, y, member_rows, first_step, length):
        step_shape = jax.eval_shape(model_step, *state, lr, key, x, y, member_rows, first_step)[4]
        buffer = jnp.full((CAPACITY, *step_shape.shape), jnp.nan, step_shape.dtype)

        def body(carry: tuple[jax.Array, _LoopState, jax.Array]):
            i, state, losses = carry
            *new_state, loss = model_step(*state, lr, key, x, y, member_rows, first_step + i)
            return i + 1, _LoopState(*new_state), losses.at[i].set(loss)

        def more(carry):
            i, state, _ = carry
            return (i < length) & jnp.any(_running(state.divergence, state.rule))

        _, state, losses = jax.lax.while_loop(more, body, (jnp.zeros_like(length), state, buffer))
        return state, losses

    return run

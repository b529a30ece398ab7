"""The compiled loop behind `fit` and `fit_ensemble`: one model's guarded step, lifted over an ensemble's members
by `jax.vmap`, run for up to CAPACITY steps a call under `lax.while_loop`.

`run(state, lr, key, x, y, rows, rule_data, first_step, length, noise) -> (state, losses)`, where `state` is a
`LoopState` pytree (donated) and every other argument is data (`rule_data`: a `StopRule`'s data, e.g. a validation
set): the first step and the length are traced, so any run length, chunk size or resume point reuses one program
per configuration (`compiled_loop`). `noise` is None, or for a stochastic loss (dropout) each model's noise key:
step s hands the loss `hash_fold_in(noise, s)`, a pure function of (noise, step) apart from the minibatch order
(which hashes `key`'s own bits). x and y are arrays or pytrees of them, examples on every leaf's leading axis; a
minibatch gathers the same rows of every leaf. A step whose loss or new params are not finite is not applied: the
model is frozen and the step recorded in its `Divergence`.

On CPU an ensemble's loop may run in parts (`member_parts`, `InParts`): the members split into equal parts (the last
padded with copies), each part's call of the one compiled loop made from its own thread.
"""

import contextlib
import functools
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec

from bp_jax._contraction import members
from bp_jax._layers import hash_fold_in
from bp_jax._mesh import DATA_AXIS, MODELS_AXIS, batch_sharded, member_sharded, replicated
from bp_jax._order import minibatch_indices
from bp_jax._steps import optax_update, sgd_update

#: Steps per call of the compiled loop: the size of its loss buffer.
CAPACITY = 1024
#: Why a model stopped: its loss was non-finite, or its loss was finite but the update was not.
CAUSES = ("loss", "update")
#: XLA:CPU's experimental option naming the fusions it hands to YNNPACK, and the value keeping only dots there.
CPU_FUSION_OPTION = ("xla_cpu_experimental_ynn_fusion_type", "LIBRARY_FUSION_TYPE_DOT")


class Divergence(NamedTuple):
    """Per model: the step at which it diverged (−1: it has not) and its index in CAUSES."""

    step: jax.Array | np.ndarray
    cause: jax.Array | np.ndarray


class RuleState(NamedTuple):
    """Per model, a `StopRule`'s progress: the rule's own `state` and the step after which it stopped the model
    (−1: running)."""

    state: Any
    stopped_at: jax.Array | np.ndarray


class LoopState(NamedTuple):
    """What the compiled loop carries from step to step (and donates between calls); `rule` is None without a
    stop rule."""

    params: Any
    opt_state: Any
    divergence: Divergence
    rule: RuleState | None = None


class MemberRows(NamedTuple):
    """Each member group's rows of x: indices (G, R), how many of them it uses (G,) and how many of those, the last
    ones, are padding read at the end of each epoch (G,; `minibatch_indices`' padding)."""

    indices: Any
    counts: Any
    padding: Any


def running(state: LoopState):
    """Per model: it has neither diverged nor been stopped by its stop rule."""
    live = state.divergence.step < 0
    return live if state.rule is None else live & (state.rule.stopped_at < 0)


@jax.jit
def copy_tree(tree):
    """Fresh buffers holding `tree` (the compiled loop donates its state; the caller's arrays are kept)."""
    return jax.tree.map(jnp.copy, tree)


def examples(data) -> int:
    """The number of examples in x or y: the leading axis of its (first) leaf."""
    return jax.tree.leaves(data)[0].shape[0]


def gather(data, rows):
    """The `rows` of every leaf of x or y: `data[rows]` for an array."""
    return jax.tree.map(lambda leaf: leaf[rows], data)


def to_host(array) -> np.ndarray:
    """A device array as numpy; a replicated array spanning processes gives this process's copy."""
    spans_processes = isinstance(array, jax.Array) and not array.is_fully_addressable
    return np.asarray(array.addressable_data(0) if spans_processes else array)


def _all_finite(tree) -> jax.Array:
    return jnp.all(jnp.asarray([jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree.leaves(tree)]))


def apply_rule(update, touches_opt_state: bool, touches_params: bool, state, step, loss, opt_state, params, data):
    """(state, stop, opt_state) after a step, by a `StopRule`'s `update`: given the optimizer state (and returning
    it) if it touches it, else the optimizer state unchanged; with `params=` if it touches the params, `data=` if
    its data is not None."""
    extra = ({"params": params} if touches_params else {}) | ({} if data is None else {"data": data})
    if touches_opt_state:
        return update(state, step, loss, opt_state, **extra)
    state, stop = update(state, step, loss, **extra)
    return state, stop, opt_state


def _guarded_update(
    loss_fn, optimizer, stop_update, rule_touches_opt_state: bool = False, rule_touches_params: bool = False
) -> Callable:
    """One model's `(state, lr, x, y, step, rule_data, key) -> (state, loss)`: the update (`key`: the stochastic
    loss's, or None), applied only if its loss and new params are finite and the model is `running`; an applied
    step also advances the stop rule (`stop_update`, which with `rule_touches_opt_state` also takes and returns the
    new optimizer state, with `rule_touches_params` sees the new params as `params=`, and sees `data=rule_data`
    unless that is None). Otherwise the old state is kept, and for a running model the first bad step and its
    cause recorded. A diverged or stopped model's loss reads NaN."""
    if optimizer is None:
        sgd = sgd_update(loss_fn)

        def update(params, opt_state, x, y, lr, key):
            params, loss = sgd(params, x, y, lr, key)
            return params, opt_state, loss
    else:
        optax_rule = optax_update(loss_fn, optimizer)
        update = lambda params, opt_state, x, y, lr, key: optax_rule(params, opt_state, x, y, key)

    def advanced(rule: RuleState | None, step, loss, params, opt_state, rule_data) -> tuple[Any, RuleState | None]:
        """(the optimizer state, the rule's progress) after an applied step."""
        if rule is None:
            return opt_state, None
        rule_state, stop, opt_state = apply_rule(
            stop_update,
            rule_touches_opt_state,
            rule_touches_params,
            rule.state,
            step,
            loss,
            opt_state,
            params,
            rule_data,
        )
        return opt_state, RuleState(rule_state, jnp.where(stop, step, rule.stopped_at))

    def guarded(state: LoopState, lr, x, y, step, rule_data, key) -> tuple[LoopState, jax.Array]:
        new_params, new_opt_state, loss = update(state.params, state.opt_state, x, y, lr, key)
        loss_finite = jnp.isfinite(loss)
        live = running(state)
        apply = loss_finite & _all_finite(new_params) & live
        # one cond, not a where per leaf: it makes one model's step ~40 % cheaper on CPU (under vmap, a select)
        params, opt_state, rule = jax.lax.cond(
            apply,
            lambda: (new_params, *advanced(state.rule, step, loss, new_params, new_opt_state, rule_data)),
            lambda: (state.params, state.opt_state, state.rule),
        )
        diverges = live & ~apply
        divergence = Divergence(
            jnp.where(diverges, step.astype(jnp.int32), state.divergence.step),
            jnp.where(diverges, loss_finite.astype(jnp.int32), state.divergence.cause),
        )
        return LoopState(params, opt_state, divergence, rule), jnp.where(live, loss, jnp.nan)

    return guarded


def _vmapped_step(model_step, key_axis: int | None, own_rows: bool, group_size: int) -> Callable:
    """`model_step` over the members (a leading axis E on the state, lr and noise keys): vmapped once where every
    member has its own key and rows or all share them (group_size 1); otherwise vmapped over a group's members
    (key, rows and so the minibatch shared: one gather, and x·W over the members one matmul) and then over the
    groups. The stop rule's data is shared by every member."""
    rows_axis = 0 if own_rows else None
    if group_size == 1:
        return jax.vmap(model_step, in_axes=(0, 0, key_axis, None, None, rows_axis, None, None, 0))
    group_step = jax.vmap(
        jax.vmap(model_step, in_axes=(0, 0, None, None, None, None, None, None, 0)),
        in_axes=(0, 0, key_axis, None, None, rows_axis, None, None, 0),
    )

    def step_by_group(state, lr, key, x, y, member_rows, rule_data, step, noise):
        by_group = lambda leaf: leaf.reshape(-1, group_size, *leaf.shape[1:])
        state, lr, noise = jax.tree.map(by_group, (state, lr, noise))
        outputs = group_step(state, lr, key, x, y, member_rows, rule_data, step, noise)
        return jax.tree.map(lambda leaf: leaf.reshape(-1, *leaf.shape[2:]), outputs)

    return step_by_group


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
        jax.jit(jnp.negative, compiler_options={name: value}).lower(jax.ShapeDtypeStruct((1,), jnp.float32)).compile()
    except Exception:  # an XLA that renamed or dropped the option: its defaults
        return {}
    return {name: value}


#: Held while a loop is looked up or built: threads asking at once for one configuration's loop (GridSearchCV's
#: n_jobs) get one jitted function, so one compilation (two lru_cache misses at once would build two).
_LOOP_LOOKUP = threading.Lock()


def compiled_loop(*args, **kwargs) -> Callable:
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
    rule_touches_opt_state: bool = False,
    rule_touches_params: bool = False,
    group_size: int = 1,
    large_row_sets: bool = False,
    shuffle: bool = True,
    padding: int = 0,
    shard_rows: bool = False,
) -> Callable:
    """jit of `run(state, lr, key, x, y, rows, rule_data, first_step, length, noise) -> (state, losses)`: steps
        first_step … first_step + length − 1 (length ≤ CAPACITY, both traced) under `lax.while_loop`, stopping early
        once no model is `running`; losses[i] is step first_step + i's loss, NaN past the last step run.

        The step reads the full batch (`batch_size` None) or the rows `minibatch_indices(key, step, n, batch_size,
        shuffle=shuffle, padding=padding)` of every leaf of x and y.
        For an `ensemble` the per-model step is vmapped over the members, with the key shared (`key_axis` None) or
        stacked (0), and with `own_rows` minibatches drawn from row sets (`rows`, a MemberRows; None otherwise);
        stacked keys and row sets belong to groups of `group_size` consecutive members, each group's step the members'
        step vmapped over one shared minibatch; `large_row_sets`: every row count is ≥ LARGE_DOMAIN (the order takes
        its fewer rounds). `stop_update` is a StopRule's update (its state in `state.rule`, its data `rule_data`;
        `rule_touches_opt_state`: it also takes and returns the optimizer state; `rule_touches_params`: it sees the
        params); `shuffle` False: the minibatches in order. `shard_rows` (one model on a mesh): `rows` is each "data"
    device's row count (D,), x and y D blocks, one a device, and each device gathers its share of the minibatch from
    its own block (`shard_map`). `noise` (None, or each model's noise key: (E,) keys for an
        ensemble) makes step s's key `hash_fold_in(noise, s)`, handed to the stochastic loss."""
    guarded = _guarded_update(loss_fn, optimizer, stop_update, rule_touches_opt_state, rule_touches_params)
    data_parallel = mesh is not None and not ensemble
    # the members (of a group) read one minibatch: its layers' "auto" contractions are chosen as members'
    shared_rows = (key_axis is None and not own_rows) or group_size > 1

    if shard_rows:
        share = batch_size // mesh.shape[DATA_AXIS]

        def device_rows(key, x, y, count, step):
            """Device d's b / D rows of the minibatch, drawn from its own block by fold_in(key, d)."""
            own_key = None if key is None else jax.random.fold_in(key, jax.lax.axis_index(DATA_AXIS))
            rows = minibatch_indices(own_key, step, count[0], share, shuffle=shuffle)
            return gather(x, rows), gather(y, rows)

        split, whole = PartitionSpec(DATA_AXIS), PartitionSpec()
        _own_rows = jax.shard_map(
            device_rows, mesh=mesh, in_specs=(whole, split, split, split, whole), out_specs=split, check_vma=False
        )

    def model_step(state: LoopState, lr, key, x, y, member_rows, rule_data, step, noise) -> tuple[LoopState, jax.Array]:
        if batch_size is None:
            xb, yb = x, y
        elif shard_rows:
            xb, yb = _own_rows(key, x, y, member_rows, step)
        else:
            if own_rows:
                order = minibatch_indices(
                    key,
                    step,
                    member_rows.counts,
                    batch_size,
                    large=large_row_sets,
                    shuffle=shuffle,
                    padding=member_rows.padding,
                )
                rows = member_rows.indices[order]
            else:
                rows = minibatch_indices(key, step, examples(x), batch_size, shuffle=shuffle, padding=padding)
            xb, yb = gather(x, rows), gather(y, rows)
            if data_parallel:  # each device gathers only its own rows of the minibatch
                xb, yb = jax.lax.with_sharding_constraint((xb, yb), batch_sharded(mesh))
        noise_key = None if noise is None else hash_fold_in(noise, step)
        if not ensemble:
            return guarded(state, lr, xb, yb, step, rule_data, noise_key)
        with members(shared=(xb, rule_data) if shared_rows else rule_data):
            return guarded(state, lr, xb, yb, step, rule_data, noise_key)

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
    def run(state: LoopState, lr, key, x, y, member_rows, rule_data, first_step, length, noise=None):
        loss_shape = jax.eval_shape(model_step, state, lr, key, x, y, member_rows, rule_data, first_step, noise)[1]
        buffer = jnp.full((CAPACITY, *loss_shape.shape), jnp.nan, loss_shape.dtype)

        def body(carry: tuple[jax.Array, LoopState, jax.Array]):
            i, state, losses = carry
            state, loss = model_step(state, lr, key, x, y, member_rows, rule_data, first_step + i, noise)
            return i + 1, state, losses.at[i].set(loss)

        def more(carry):
            i, state, _ = carry
            return (i < length) & jnp.any(running(state))

        _, state, losses = jax.lax.while_loop(more, body, (jnp.zeros_like(length), state, buffer))
        return state, losses

    return run


def core_count() -> int:
    """The CPU cores this process may run on (its affinity where the OS tells it)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # no affinity on this OS
        return os.cpu_count() or 1


#: The least work that a part's step and a part's call must hold for an ensemble to run in parts on CPU, in
#: multiply-adds (rows · weights, summed over a part's members; doubled for members drawing their own minibatches,
#: whose own order, gather and products cost about twice a shared one's). Measured on the seed MLP (55 weights, 32
#: rows), 1 100-step fits in turns: 16 members sharing a minibatch gain nothing from two parts (8 a part: 14 080),
#: 32 gain 26 %, 16 with their own minibatches 34 %; a call in parts costs ~0.6 ms more (a second dispatch, a
#: thread's wake-up, the split and the join), which 256 shared members repay after ~15 steps (benchmarks/README.md).
MIN_PART_STEP_WORK = 20_000
MIN_PART_CALL_WORK = 4_000_000


def member_parts(units: int, unit_work: int, steps_per_call: int, platform: str, cores: int) -> int:
    """How many parts an ensemble's loop runs in, each part's call of the one compiled loop on its own thread.

    On CPU, XLA runs concurrent calls of a program on separate cores, while one call of a small members' step keeps
    to one core and pays for handing its thunks between threads. So the count ≤ cores with the fewest `units`
    (members, or groups of members sharing a minibatch; `unit_work` multiply-adds a step each) a part, ⌈units /
    count⌉ (the smallest such count), among those leaving each part at least MIN_PART_STEP_WORK a step and
    MIN_PART_CALL_WORK a call of `steps_per_call` steps. Every part is the same program: a count that does not divide
    the units pads the last part with copies of the last unit (`InParts`). Off the CPU one part."""
    if platform != "cpu":
        return 1

    def worth_it(count: int) -> bool:
        part_work = -(-units // count) * unit_work
        return part_work >= MIN_PART_STEP_WORK and part_work * steps_per_call >= MIN_PART_CALL_WORK

    counts = [c for c in range(1, min(cores, units) + 1) if c == 1 or worth_it(c)]
    return min(counts, key=lambda c: (-(-units // c), c))


def _padded(leaf, units: int, padded_units: int):
    """`leaf` (a leading axis of `units` equal blocks) with its last block repeated up to `padded_units` blocks."""
    block = leaf.shape[0] // units
    return jnp.concatenate([leaf] + [leaf[leaf.shape[0] - block :]] * (padded_units - units))


@functools.partial(jax.jit, static_argnums=(1, 2))
def _split(tree, count: int, units: int) -> list:
    """`tree` (every leaf's leading axis `units` blocks: members or groups) as `count` equal parts of ⌈units / count⌉
    blocks, the last block repeated where count does not divide units."""
    padded_units = -(-units // count) * count
    leaves, structure = jax.tree.flatten(tree)
    pieces = [jnp.split(_padded(leaf, units, padded_units), count) for leaf in leaves]
    return [jax.tree.unflatten(structure, [piece[j] for piece in pieces]) for j in range(count)]


@functools.partial(jax.jit, static_argnums=(2, 3))
def _prepared(state, member_data, count: int, units: int):
    """A copy of the first state, its parts and the parts of the members' data, in one program."""
    return jax.tree.map(jnp.copy, state), _split(state, count, units), _split(member_data, count, units)


@functools.partial(jax.jit, static_argnums=2)
def _joined(states, losses, members: int):
    """The parts' states (members on axis 0) and losses (axis 1) as one state and one loss array of the first
    `members` (the rest: copies padding the last part)."""
    state = jax.tree.map(lambda *leaves: jnp.concatenate(leaves)[:members], *states)
    return state, jnp.concatenate(losses, axis=1)[:, :members]


def _same(tree, other) -> bool:
    """Whether two pytrees hold the very same leaves."""
    leaves, other_leaves = jax.tree.leaves(tree), jax.tree.leaves(other)
    return len(leaves) == len(other_leaves) and all(a is b for a, b in zip(leaves, other_leaves))


#: JAX's settings that hold per thread inside their `with` blocks: work handed to another thread enters its caller's.
THREAD_SETTINGS = (
    jax.enable_x64,
    jax.default_matmul_precision,
    jax.default_device,
    jax.numpy_rank_promotion,
    jax.numpy_dtype_promotion,
    jax.default_prng_impl,
)


def with_callers_settings(function: Callable) -> Callable:
    """`function`, run on whichever thread under the THREAD_SETTINGS in force on the calling thread now."""
    settings = [(setting, setting.value) for setting in THREAD_SETTINGS]

    def run(*args):
        with contextlib.ExitStack() as stack:
            for setting, value in settings:
                stack.enter_context(setting(value))
            return function(*args)

    return run


@functools.cache  # made once, like the compiled loops: threads that wait on XLA, holding no state of a fit
def _workers(count: int) -> ThreadPoolExecutor:
    """The threads that make the calls of parts 1 … count − 1 (part 0's call is the caller's own)."""
    return ThreadPoolExecutor(count - 1, thread_name_prefix="bp_jax-part")


def _member_data(data: tuple, key_axis: int | None, own_rows: bool, noise) -> tuple:
    """Of a loop's data `(lr, key, x, y, rows, rule_data)` and noise keys, what each member has its own of."""
    lr, key, _, _, member_rows, _ = data
    return lr, None if key_axis is None else key, member_rows if own_rows else None, noise


class InParts:
    """A members' loop of `_build_loop` run over `count` parts of the members, each part's call made from its own
    thread (part 0's from the caller's), the parts' states and losses joined after each call: every member steps as in
    one call. The parts hold ⌈units / count⌉ of the `units` (members, or groups sharing a minibatch) each, the last
    one padded with copies of the last unit (their results dropped), so that every part is the same program.

    The first state (`self.state`, a copy) and the members' own data (lr, stacked keys, row sets, noise keys) are split
    once, here; a call given the state the previous call returned steps the parts it kept."""

    def __init__(
        self, loop: Callable, count: int, units: int, key_axis: int | None, own_rows: bool, state, data: tuple, noise
    ):
        self.loop, self.count, self.units, self.key_axis, self.own_rows = loop, count, units, key_axis, own_rows
        self.members = jax.tree.leaves(state)[0].shape[0]
        member_data = _member_data(data, key_axis, own_rows, noise)
        self.state, parts, self._data = _prepared(state, member_data, count, units)
        self._kept: tuple | None = (self.state, parts)  # a state a call may be given, and its parts

    def __call__(self, state, lr, key, x, y, member_rows, rule_data, first_step, length, noise=None):
        kept, self._kept = self._kept, None  # the kept parts are donated below: a failed call leaves none
        states = kept[1] if kept is not None and _same(state, kept[0]) else _split(state, self.count, self.units)

        def call(j: int):
            lr_j, key_j, rows_j, noise_j = self._data[j]
            key_j = key if self.key_axis is None else key_j
            rows_j = rows_j if self.own_rows else member_rows
            out = self.loop(states[j], lr_j, key_j, x, y, rows_j, rule_data, first_step, length, noise_j)
            return jax.block_until_ready(out)

        others = [_workers(self.count).submit(with_callers_settings(call), j) for j in range(1, self.count)]
        outputs = [call(0)] + [other.result() for other in others]
        parts = [state for state, _ in outputs]
        joined, losses = _joined(parts, [loss for _, loss in outputs], self.members)
        self._kept = (joined, parts)
        return joined, losses

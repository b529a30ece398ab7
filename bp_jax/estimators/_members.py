"""GridSearchCV's members trained together: every (grid point × fold) of one program shape is a member of one
`fit_ensemble` call (or of one of up to n_jobs concurrent calls), on its fold's rows, with its own key, solver
hyperparameters (η, μ, Nesterov, β₁, β₂, ε), α, learning-rate schedule and stopping rule as data. lbfgs members of
one fold are one call of the vmapped lbfgs program (`train_lbfgs`), each with its own initialisation, α, tol,
max_iter and max_fun, each stopping on its own.

Members of one fold and seed read the same minibatches: they form the program's groups (one gather, and x·W over
the group's members one matmul). Parts of one size share one compiled program: each pads its folds' rows alike.
"""

import itertools
import math
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from bp_jax._fit import fit_ensemble
from bp_jax._fit_loop import with_callers_settings
from bp_jax.estimators._base import glorot, to_sklearn
from bp_jax.estimators._lbfgs import Result, compiled, counts, unpacked
from bp_jax.estimators._stochastic_optimizers import hyperparams, initial_state
from bp_jax.estimators._training import Plan, TrainRun, can_stop, epoch_means, epoch_rule


class Block(NamedTuple):
    """One fold's training data as the searched estimator sees it: the pipeline's earlier steps fitted on the
    fold (empty without a pipeline), the transformed x, the encoded targets, and the attributes validating the
    data gave the estimator (n_features_in_, classes_, …)."""

    prefix: list
    x: np.ndarray
    targets: np.ndarray
    attributes: dict


class Member(NamedTuple):
    """A (grid point × fold) trained as one member of a program: its position in the search, the searched
    estimator (a Pipeline or the bp_jax estimator), the bp_jax estimator, its block's key and its seed."""

    position: int
    searched: Any
    estimator: Any
    block: tuple
    seed: int


def train_parts(
    loss_fn, transform, steps: Plan, max_iter: int, members: list[Member], blocks: dict, jobs: int, shuffle: bool
):
    """`train_members` over `split_members(members, jobs, shuffle)` (`shuffle`: the members' own, static), concurrently
    on threads where there are several (XLA runs each call's program while its thread waits without the GIL), each
    thread under the caller's JAX settings (x64, precision, device, …): per part, (its members, their runs, each
    member's share of the part's seconds). Parts of one size share one compiled program: each reads its blocks' rows
    padded to the largest part's (`_data_shape`), and all carry a stopping rule if any member's can stop or follows an
    sgd schedule (one that cannot fire changes nothing); only folds that straddle LARGE_DOMAIN rows (a part's data order
    taking more rounds than another's) still compile two.
    """
    parts = split_members(members, jobs, shuffle)
    shape = _data_shape(parts, blocks, steps)
    stops = can_stop(min(member.estimator.n_iter_no_change for member in members), max_iter) or any(
        member.estimator.solver == "sgd" and member.estimator.learning_rate != "constant" for member in members
    )

    @with_callers_settings
    def train_part(part):
        start = time.perf_counter()
        runs = train_members(loss_fn, transform, steps, max_iter, part, blocks, shape, stops, shuffle)
        return part, runs, (time.perf_counter() - start) / len(part)

    if len(parts) == 1:
        return [train_part(parts[0])]
    with ThreadPoolExecutor(len(parts)) as pool:
        return list(pool.map(train_part, parts))


def _data_shape(parts: list[list[Member]], blocks: dict, steps: Plan) -> tuple[int, int, bool]:
    """(rows of x, width of the row-index array, short) that every part's `train_members` pads its data to: the
    most rows of a part's blocks stacked, and of one block; `short` where some block's rows are not a multiple of b:
    then one row more (the zero-weight row that fills the short batches) and ⌈n / b⌉·b columns. Folds differ in size
    by a row, so unpadded, parts of one size would each compile a program of their own."""
    used = [{member.block for member in part} for part in parts]
    rows = max(sum(len(blocks[block].x) for block in part) for part in used)
    width = max(len(blocks[block].x) for part in used for block in part)
    if any(len(blocks[block].x) % steps.batch_size for part in used for block in part):
        return rows + 1, max(width, steps.steps_per_epoch * steps.batch_size), True
    return rows, width, False


def sharing(members: list[Member], shuffle: bool = True) -> tuple[list[Member], int]:
    """(members ordered by the minibatches they share: those of one block and seed together (shuffle=False: of one
    block, their order the rows'), in first-seen order; the gcd of those groups' sizes)."""
    sharing: dict[tuple, list[Member]] = {}
    for member in members:
        sharing.setdefault((member.block, member.seed if shuffle else None), []).append(member)
    return [member for same in sharing.values() for member in same], math.gcd(*map(len, sharing.values()))


def split_members(members: list[Member], jobs: int, shuffle: bool = True) -> list[list[Member]]:
    """`members` of one program shape in at most `jobs` parts, for concurrent `fit_ensemble` calls. Members of one block
    and seed (shuffle=False: of one block) share their minibatches (`train_members`: one gather, one matmul), so a part
    is whole units of d members of one such group: d the groups' common size, or half of it where that makes the largest
    part smaller; the units dealt out in order, the parts' unit counts differing by at most one."""
    ordered, size = sharing(members, shuffle)
    largest = lambda unit: -(-len(members) // unit // min(jobs, len(members) // unit)) * unit
    unit = min((size, size // 2) if size % 2 == 0 else (size,), key=lambda unit: (largest(unit), -unit))
    units = [ordered[start : start + unit] for start in range(0, len(ordered), unit)]
    counts = [len(chunk) for chunk in np.array_split(np.arange(len(units)), min(jobs, len(units)))]
    bounds = np.cumsum([0, *counts])
    return [[member for one in units[low:high] for member in one] for low, high in itertools.pairwise(bounds)]


#: One PRNG key per seed, compiled once (an eager vmap traces on every call).
_keys = jax.jit(jax.vmap(jax.random.key))


def train_members(
    loss_fn,
    transform,
    steps: Plan,
    max_iter: int,
    members: list[Member],
    blocks: dict,
    shape: tuple[int, int, bool],
    stops: bool,
    shuffle: bool = True,
) -> list:
    """One `fit_ensemble` call for members of one program shape, over their blocks stacked (x padded to shape[0]
    rows, the row indices to shape[1] columns), each member on its own block's rows (where b does not divide them,
    followed by the zero-weight last row of x up to ⌈n / b⌉·b, `fit_ensemble`'s padding: sklearn's short batch) and
    (`stops`) stopped by its own `epoch_rule` inside the program: per member, (its TrainRun, −1), or (None, the
    step it diverged at). Members of one block and seed (shuffle=False, `fit_ensemble`'s: of one block) read the same
    minibatches: they form the program's groups (sizes the gcd of theirs), a group's gather and matmuls shared."""
    ordered, group_size = sharing(members, shuffle)
    leaders = ordered[::group_size]
    used = list(dict.fromkeys(member.block for member in ordered))
    pad = lambda leaves: np.pad(
        np.concatenate(leaves), [(0, shape[0] - sum(map(len, leaves)))] + [(0, 0)] * (leaves[0].ndim - 1)
    )
    padded = lambda arrays: jax.tree.map(lambda *leaves: pad(leaves), *arrays)  # each leaf of pytree targets alike
    x_all = padded([blocks[block].x for block in used])
    targets = [blocks[block].targets for block in used]
    if shape[2]:  # shaped for short batches (`_data_shape`): every part weighted, the last row of x weight 0
        targets = [t if isinstance(t, dict) else {"target": t, "weight": np.ones(len(t), t.dtype)} for t in targets]
    targets_all = padded(targets)
    offsets = dict(zip(used, np.cumsum([0] + [len(blocks[block].x) for block in used])))
    counts = np.array([len(blocks[leader.block].x) for leader in leaders])
    per_epoch = steps.steps_per_epoch
    padding = per_epoch * steps.batch_size - counts
    rows = np.full((len(leaders), shape[1]), shape[0] - 1, np.int32)
    for index, leader in enumerate(leaders):
        rows[index, : counts[index]] = offsets[leader.block] + np.arange(counts[index])
    estimators = [member.estimator for member in ordered]
    dtype = x_all.dtype
    params = {
        "layers": _initial_layers(ordered, x_all.shape[1], dtype),
        "l2": np.asarray([estimator.alpha / steps.batch_size for estimator in estimators], dtype),
    }
    each = [hyperparams(estimator) for estimator in estimators]
    opt_state = initial_state(transform, params, {name: [one[name] for one in each] for name in each[0]}, members=True)
    states = [  # each member's t_ grows by its own fold's rows an epoch
        member.estimator._rule_state(steps._replace(rows=len(blocks[member.block].x)), first=True) for member in ordered
    ]
    state = {name: np.stack([one[name] for one in states]) for name in states[0]}
    rule = epoch_rule(per_epoch, steps.batch_size, state, jnp.result_type(float)) if stops else None
    result = fit_ensemble(
        loss_fn,
        params,
        x_all,
        targets_all,
        steps=max_iter * per_epoch,
        optimizer=transform,
        opt_state=opt_state,
        batch_size=steps.batch_size,
        key=_keys(np.asarray([leader.seed for leader in leaders])),
        rows=rows,
        row_counts=counts + padding,
        padding=padding,
        chunk_size=max_iter * per_epoch,
        stop_rule=rule,
        shuffle=shuffle,
    )
    rows_of_members = [steps._replace(rows=len(blocks[member.block].x)).batch_rows() for member in ordered]
    curves = epoch_means(result.losses, np.stack(rows_of_members, axis=1))
    coefs, intercepts = to_sklearn(result.params["layers"])
    opt_states = jax.device_get(result.opt_state)
    stopped_at = np.full(len(ordered), -1) if result.stopped_at is None else result.stopped_at
    no_improvement = np.zeros(len(ordered), int) if result.rule_state is None else result.rule_state["count"]
    runs: dict[int, tuple[TrainRun | None, int]] = {}
    for index, member in enumerate(ordered):
        if result.diverged[index] >= 0:
            runs[member.position] = (None, int(result.diverged[index]))
            continue
        stopped = stopped_at[index] >= 0
        epochs = (stopped_at[index] + 1) // per_epoch if stopped else max_iter
        run = TrainRun(
            [coef[index] for coef in coefs],
            [intercept[index] for intercept in intercepts],
            jax.tree.map(lambda leaf, i=index: leaf[i], opt_states),
            epochs * per_epoch,
            curves[:epochs, index].tolist(),
            [],
            stopped,
            int(no_improvement[index]),
        )
        runs[member.position] = (run, -1)
    return [runs[member.position] for member in members]


def _initial_layers(members: list[Member], features: int, dtype):
    """The members' Glorot initialisations (one draw per seed), stacked on a leading member axis."""
    first = members[0].estimator
    sizes = (features, *first._hidden_sizes(), first.n_outputs_)
    initial = {seed: glorot(seed, sizes, first.activation, dtype) for seed in {member.seed for member in members}}
    return jax.tree.map(lambda *leaves: np.stack(leaves), *(initial[member.seed] for member in members))


def train_lbfgs(loss_fn, members: list[Member], block: Block) -> list[Result]:
    """lbfgs members on one block's rows: one call of the vmapped lbfgs program (`_lbfgs.compiled`), every row
    shared, each member from its seed's initialisation with its own α/n, tol, max_iter and max_fun, stopping on its
    own; per member its `Result` in numpy."""
    x, estimators = block.x, [member.estimator for member in members]
    layers = _initial_layers(members, x.shape[1], x.dtype)
    result = compiled(loss_fn, members=True)(
        layers,
        np.asarray([estimator.alpha / len(x) for estimator in estimators], x.dtype),
        x,
        block.targets,
        np.asarray([estimator.tol for estimator in estimators], x.dtype),
        *counts([estimator.max_iter for estimator in estimators], [estimator.max_fun for estimator in estimators]),
    )
    result = unpacked(layers, *result)
    return [jax.tree.map(lambda leaf, index=index: leaf[index], result) for index in range(len(members))]

"""sklearn's lbfgs solver as one compiled program: full-batch L-BFGS, the whole run one `lax.while_loop` with one
loss-and-gradient evaluation a trip, stopped as scipy's L-BFGS-B (what scikit-learn calls) stops.

Without bounds, L-BFGS-B is this algorithm, and `minimize` follows it:
- direction d = −H·g, with H the inverse Hessian of the last MEMORY pairs (s, y) in compact form,
  H·g = γg + S·R⁻ᵀ((D + γYᵀY)·R⁻¹Sᵀg − γYᵀg) − γY·R⁻¹Sᵀg (R the upper triangle of SᵀY, oldest pair first, D its
  diagonal, γ = sᵀy / yᵀy of the newest pair; H = I with no pairs); a pair is kept only if sᵀy > ε·(−gᵀs);
- step: MINPACK-2's Moré–Thuente line search (dcsrch: sufficient decrease 1e-3, curvature 0.9, xtol 0.1, steps in
  [0, STEP_MAX]) from 1 (1/‖g‖ on the first iteration); after MAX_LINE_SEARCH evaluations without an acceptable
  step the iterate is kept, the pairs are dropped and the search restarts along −g (with no pairs to drop, the
  run ends "ABNORMAL");
- stopping after iteration k: k = max_iter, more than max_fun evaluations (the first included), max|gᵢ| ≤ tol, or
  (f_{k−1} − f_k) / max(|f_{k−1}|, |f_k|, 1) ≤ FTOL, tested in that order (scipy's `reason`, `MESSAGES`).

It runs in the params' dtype (scipy always runs float64): in float32 the FTOL test can fire only once an
iteration no longer lowers f. In float64 its iterates are scipy's up to the order of float64 sums, which a
non-convex fit amplifies: from the same weights on the sklearn benchmark's diabetes fit (10 → 5 → 1), the weights
agree to 1e-13 (relative) after 10 iterations, 1e-9 after 40 and 1e-3 after 60, and the run stops (FTOL) after 132
iterations where scikit-learn's stops after 116, at a loss 1e-6 relative from its.
"""

import functools
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree
from jax.scipy.linalg import solve_triangular

from bp_jax._fit_loop import loop_compiler_options

#: L-BFGS-B's defaults in scipy.optimize.minimize: pairs kept (maxcor), evaluations per line search (maxls), and
#: ftol (factr = 1e7 times float64's ε).
MEMORY, MAX_LINE_SEARCH, FTOL = 10, 20, 2.2204460492503131e-09
#: dcsrch's sufficient-decrease and curvature tolerances, its xtol and the largest step, as L-BFGS-B sets them.
DECREASE, CURVATURE, XTOL, STEP_MAX = 1e-3, 0.9, 0.1, 1e10
#: Why a run ended (its `reason` indexes these): scipy's messages, and the status each gives.
MESSAGES = (
    "CONVERGENCE: NORM OF PROJECTED GRADIENT <= PGTOL",
    "CONVERGENCE: RELATIVE REDUCTION OF F <= FACTR*EPSMCH",
    "STOP: TOTAL NO. OF ITERATIONS REACHED LIMIT",
    "STOP: TOTAL NO. OF F,G EVALUATIONS EXCEEDS LIMIT",
    "ABNORMAL: ",
)
STATUS = (0, 0, 1, 1, 2)


class LineSearch(NamedTuple):
    """dcsrch's state: the trial step, whether a minimiser is bracketed, whether its second stage began, the
    decrease slope DECREASE·g₀, the bracket's last two widths, the best step (stx) and the other end (sty) with
    their values and slopes, the interval for the next trial, and the evaluations made."""

    step: Any
    bracketed: Any
    second_stage: Any
    gtest: Any
    width: Any
    width1: Any
    stx: Any
    fx: Any
    gx: Any
    sty: Any
    fy: Any
    gy: Any
    stmin: Any
    stmax: Any
    evaluations: Any

    def packed(self, dtype):
        """The state as one vector of `dtype` (the flags 0 or 1, the evaluations ≤ MAX_LINE_SEARCH, exact): one
        buffer in the loop's carry, not fifteen scalars each copied every trip."""
        return jnp.stack([jnp.asarray(field, dtype) for field in self])

    @classmethod
    def unpacked(cls, vector) -> "LineSearch":
        """The state `packed` gives, back as its fields."""
        fields = list(vector)
        fields[1], fields[2], fields[-1] = fields[1] != 0, fields[2] != 0, fields[-1].astype(jnp.int32)
        return cls(*fields)


class Memory(NamedTuple):
    """The last MEMORY pairs, oldest first (unused rows zero, at the front): the pairs (2·MEMORY, n), the rows of
    S then of Y, one array so that one product reads both; their products (2, MEMORY, MEMORY), SᵀY then YᵀY
    (sᵢ·yⱼ and yᵢ·yⱼ); how many are used, and γ."""

    pairs: Any
    products: Any
    count: Any
    gamma: Any


class State(NamedTuple):
    """The loop's carry: the iterate x with f and g, the direction d and slope gᵀd, the line search
    (`LineSearch.packed`), the memory, the iterations and evaluations counted, and the reason it ended (−1:
    running)."""

    x: Any
    f: Any
    g: Any
    direction: Any
    slope: Any
    search: Any
    memory: Memory
    iterations: Any
    evaluations: Any
    reason: Any


class Result(NamedTuple):
    """A run's end: the params, f there, the iterations and evaluations, and the index of its MESSAGES."""

    params: Any
    loss: Any
    iterations: Any
    evaluations: Any
    reason: Any


def _select(condition, new, old):
    return jax.tree.map(lambda a, b: jnp.where(condition, a, b), new, old)


def dcstep(stx, fx, dx, sty, fy, dy, stp, fp, dp, bracketed, stpmin, stpmax):
    """MINPACK-2's dcstep: the next trial step from the best step (stx), the bracket's other end (sty) and the
    last trial (stp), each with its value f and slope d, by the cubic or secant step of its four cases; and the
    updated bracket.

    Returns:
        (stx, fx, dx, sty, fy, dy, the new step, bracketed).
    """
    higher, opposite = fp > fx, jnp.sign(dp) * jnp.sign(dx) < 0
    theta = 3 * (fx - fp) / (stp - stx) + dx + dp
    s = jnp.maximum(jnp.maximum(jnp.abs(theta), jnp.abs(dx)), jnp.abs(dp))
    root = (theta / s) ** 2 - (dx / s) * (dp / s)
    secant = stp + dp / (dp - dx) * (stx - stp)
    # 1: a higher value: the cubic step if nearer stx than the quadratic one, else their mean
    gamma = jnp.where(stp < stx, -1, 1) * s * jnp.sqrt(root)
    cubic = stx + ((gamma - dx) + theta) / (((gamma - dx) + gamma) + dp) * (stp - stx)
    quadratic = stx + dx / ((fx - fp) / (stp - stx) + dx) / 2 * (stp - stx)
    first = jnp.where(jnp.abs(cubic - stx) < jnp.abs(quadratic - stx), cubic, cubic + (quadratic - cubic) / 2)
    # 2: a lower value, slopes of opposite signs: the cubic step if farther from stp than the secant one
    gamma = jnp.where(stp > stx, -1, 1) * s * jnp.sqrt(root)
    cubic = stp + ((gamma - dp) + theta) / (((gamma - dp) + gamma) + dx) * (stx - stp)
    second = jnp.where(jnp.abs(cubic - stp) > jnp.abs(secant - stp), cubic, secant)
    # 3: a lower value, slopes of one sign, the slope's magnitude decreasing
    gamma = jnp.where(stp > stx, -1, 1) * s * jnp.sqrt(jnp.maximum(root, 0))
    r = ((gamma - dp) + theta) / ((gamma + (dx - dp)) + gamma)
    cubic = jnp.where((r < 0) & (gamma != 0), stp + r * (stx - stp), jnp.where(stp > stx, stpmax, stpmin))
    nearer = jnp.where(jnp.abs(cubic - stp) < jnp.abs(secant - stp), cubic, secant)
    limit = stp + 0.66 * (sty - stp)
    third = jnp.where(
        bracketed,
        jnp.where(stp > stx, jnp.minimum(limit, nearer), jnp.maximum(limit, nearer)),
        jnp.clip(jnp.where(jnp.abs(cubic - stp) > jnp.abs(secant - stp), cubic, secant), stpmin, stpmax),
    )
    # 4: a lower value, slopes of one sign, the slope's magnitude not decreasing
    theta = 3 * (fp - fy) / (sty - stp) + dy + dp
    s = jnp.maximum(jnp.maximum(jnp.abs(theta), jnp.abs(dy)), jnp.abs(dp))
    gamma = jnp.where(stp > sty, -1, 1) * s * jnp.sqrt((theta / s) ** 2 - (dy / s) * (dp / s))
    cubic = stp + ((gamma - dp) + theta) / (((gamma - dp) + gamma) + dy) * (sty - stp)
    fourth = jnp.where(bracketed, cubic, jnp.where(stp > stx, stpmax, stpmin))
    step = jnp.select([higher, opposite, jnp.abs(dp) < jnp.abs(dx)], [first, second, third], fourth)
    # the bracket: a higher trial becomes its other end; a lower one its best, the old best the other end when the
    # slopes' signs differ
    sty, fy, dy = (
        jnp.where(higher, p, jnp.where(opposite, x, y)) for p, x, y in ((stp, stx, sty), (fp, fx, fy), (dp, dx, dy))
    )
    stx, fx, dx = (jnp.where(higher, x, p) for x, p in ((stx, stp), (fx, fp), (dx, dp)))
    return stx, fx, dx, sty, fy, dy, step, bracketed | higher | opposite


def start_search(f, slope, step) -> LineSearch:
    """dcsrch's start at a point of value f and slope gᵀd < 0, first trying `step`."""
    zero = jnp.zeros_like(f)
    gtest = DECREASE * slope
    return LineSearch(
        step, jnp.bool_(False), jnp.bool_(False), gtest, zero + STEP_MAX, zero + 2 * STEP_MAX,
        zero, f, slope, zero, f, slope, zero, 5 * step, jnp.int32(0),
    )  # fmt: skip


def accepted(search: LineSearch, finit, ginit, f, g):
    """dcsrch's test of the trial step, given the value f and slope g there: whether it is accepted (converged, or a
    warning: no better one can be found)."""
    stp = search.step
    ftest = finit + stp * search.gtest
    warned = (
        (search.bracketed & ((stp <= search.stmin) | (stp >= search.stmax)))
        | (search.bracketed & (search.stmax - search.stmin <= XTOL * search.stmax))
        | ((stp == STEP_MAX) & (f <= ftest) & (g <= search.gtest))
        | ((stp == 0) & ((f > ftest) | (g >= search.gtest)))
    )
    return warned | ((f <= ftest) & (jnp.abs(g) <= CURVATURE * -ginit))


def dcsrch(search: LineSearch, finit, f, g) -> LineSearch:
    """One step of MINPACK-2's dcsrch after a trial step that was not `accepted`: the state with the next trial
    step, given the value at step 0 and the value f and slope g at the trial step."""
    stp = search.step
    ftest = finit + stp * search.gtest
    second_stage = search.second_stage | ((f <= ftest) & (g >= 0))
    # in the first stage, a lower value without sufficient decrease: step on ψ(α) = f(α) − α·gtest instead
    shift = jnp.where(~second_stage & (f <= search.fx) & (f > ftest), search.gtest, 0)
    stx, fx, gx, sty, fy, gy, step, bracketed = dcstep(
        search.stx, search.fx - search.stx * shift, search.gx - shift,
        search.sty, search.fy - search.sty * shift, search.gy - shift,
        stp, f - stp * shift, g - shift, search.bracketed, search.stmin, search.stmax,
    )  # fmt: skip
    fx, fy, gx, gy = fx + stx * shift, fy + sty * shift, gx + shift, gy + shift
    bisect = bracketed & (jnp.abs(sty - stx) >= 0.66 * search.width1)
    step = jnp.where(bisect, stx + 0.5 * (sty - stx), step)
    width1 = jnp.where(bracketed, search.width, search.width1)
    width = jnp.where(bracketed, jnp.abs(sty - stx), search.width)
    stmin = jnp.where(bracketed, jnp.minimum(stx, sty), step + 1.1 * (step - stx))
    stmax = jnp.where(bracketed, jnp.maximum(stx, sty), step + 4.0 * (step - stx))
    step = jnp.clip(step, 0, STEP_MAX)
    stuck = bracketed & ((step <= stmin) | (step >= stmax) | (stmax - stmin <= XTOL * stmax))
    step = jnp.where(stuck, stx, step)
    return LineSearch(
        step, bracketed, second_stage, search.gtest, width, width1, stx, fx, gx, sty, fy, gy, stmin, stmax,
        search.evaluations,
    )  # fmt: skip


def empty_memory(n: int, dtype) -> Memory:
    """No pairs: H = I."""
    zeros = jnp.zeros((2, MEMORY, MEMORY), dtype)
    return Memory(jnp.zeros((2 * MEMORY, n), dtype), zeros, jnp.int32(0), jnp.ones((), dtype))


def push(memory: Memory, s, y, sy) -> Memory:
    """The memory with the pair (s, y) of sᵀy = `sy` added as the newest, the oldest dropped when full."""
    pairs = jnp.roll(memory.pairs.reshape(2, MEMORY, -1), -1, axis=1).at[:, -1].set(jnp.stack([s, y]))
    pairs = pairs.reshape(2 * MEMORY, -1)
    with_s, with_y = pairs @ s, pairs @ y  # (sᵢ·s, yᵢ·s), (sᵢ·y, yᵢ·y)
    rows = jnp.stack([with_s[MEMORY:], with_y[MEMORY:]])  # the newest rows: s·yⱼ and y·yⱼ
    columns = jnp.stack([with_y[:MEMORY], with_y[MEMORY:]])  # the newest columns: sᵢ·y and yᵢ·y
    products = jnp.roll(memory.products, (-1, -1), axis=(1, 2)).at[:, -1].set(rows).at[:, :, -1].set(columns)
    return Memory(pairs, products, jnp.minimum(memory.count + 1, MEMORY), sy / with_y[-1])


def direction(memory: Memory, g):
    """−H·g by the compact form (module docstring); the unused pairs (zero rows) take a unit diagonal in R."""
    unused = jnp.arange(MEMORY) < MEMORY - memory.count
    sy, yy = memory.products
    r = jnp.triu(sy) + jnp.diag(unused.astype(g.dtype))
    gamma = memory.gamma
    sg, yg = jnp.split(memory.pairs @ g, 2)  # Sᵀg, Yᵀg
    u = solve_triangular(r, sg, lower=False)
    rhs = jnp.diagonal(sy) * u + gamma * (yy @ u) - gamma * yg
    w = solve_triangular(r, rhs, lower=False, trans="T")
    return -(gamma * g + jnp.concatenate([w, -gamma * u]) @ memory.pairs)


def minimize(loss_fn, layers, l2, x, y, tol, max_iter, max_fun) -> Result:
    """sklearn's lbfgs fit of `loss_fn` on (x, y) from `layers` (module docstring); traceable, and under `vmap`
    each member stops on its own.

    Args:
        loss_fn: the `Objective`.
        layers: the initial layer params.
        l2: α / n, the penalty's weight (data).
        x: (n, features) inputs, every row (full batch).
        y: the encoded targets.
        tol: the largest |gᵢ| that counts as converged.
        max_iter: the most iterations.
        max_fun: evaluations beyond which the run stops at the end of an iteration.

    Returns:
        The `Result`.
    """
    flat, unravel = ravel_pytree(layers)
    value_and_grad = jax.value_and_grad(lambda v: loss_fn({"layers": unravel(v), "l2": l2}, x, y))
    # the first evaluation is the loop's first trip (one evaluation in the program, not two): a step of 0 along
    # d = 0, taken as a new line search's start that ends no iteration
    zero = jnp.zeros((), flat.dtype)
    search = start_search(zero, zero, zero).packed(flat.dtype)
    memory = empty_memory(flat.size, flat.dtype)
    none = jnp.zeros_like(flat)
    state = State(flat, zero, none, none, zero, search, memory, jnp.int32(0), jnp.int32(0), jnp.int32(-1))

    def trip(state: State) -> State:
        search = LineSearch.unpacked(state.search)  # read here as slices, each fused into its reader
        step = search.step
        trial = state.x + step * state.direction
        f_t, g_t = value_and_grad(trial)
        slope_t = g_t @ state.direction
        starting = state.evaluations == 0
        done = starting | accepted(search, state.f, state.slope, f_t, slope_t)
        failed = ~done & (search.evaluations + 1 >= MAX_LINE_SEARCH)
        fresh = done | failed  # a new line search starts
        iterations, evaluations = state.iterations + (done & ~starting), state.evaluations + 1
        x, f, g = _select(done, (trial, f_t, g_t), (state.x, state.f, state.g))

        def turn(memory: Memory):
            """A new line search: its memory, direction, slope and search state, and the reason the run ended."""
            ended = jnp.select(
                [
                    starting,
                    iterations >= max_iter,
                    evaluations > max_fun,
                    jnp.max(jnp.abs(g_t)) <= tol,
                    state.f - f_t <= FTOL * jnp.maximum(jnp.maximum(jnp.abs(state.f), jnp.abs(f_t)), 1),
                ],
                [jnp.where(jnp.max(jnp.abs(g_t)) <= tol, 0, -1), 2, 3, 0, 1],
                -1,
            )
            sy = step * (slope_t - state.slope)
            kept = ~starting & (sy > jnp.finfo(sy.dtype).eps * -(state.slope * step))
            cleared = empty_memory(state.x.size, state.x.dtype)
            abnormal = failed & (memory.count == 0)
            memory = _select(failed, cleared, memory)
            memory = _select(done & kept, push(memory, step * state.direction, g_t - state.g, sy), memory)
            d = direction(memory, g)
            slope = g @ d
            uphill = slope >= 0  # no descent along −H·g: drop the pairs and go along −g
            memory = _select(uphill, cleared, memory)
            d, slope = _select(uphill, (-g, -(g @ g)), (d, slope))
            reason = jnp.where(done, ended, -1)
            reason = jnp.where((reason < 0) & (abnormal | (slope >= 0)), 4, reason)
            search = start_search(f, slope, jnp.where(starting, jnp.minimum(1 / jnp.sqrt(-slope), STEP_MAX), 1))
            return memory, d, slope, search.packed(f.dtype), reason.astype(state.reason.dtype)

        def inside(memory: Memory):
            """A trip inside a line search: dcsrch's next trial step, the rest kept."""
            search = LineSearch.unpacked(state.search)  # from the one vector: not fifteen operands of the cond
            search = search._replace(evaluations=search.evaluations + 1)
            following = dcsrch(search, state.f, f_t, slope_t).packed(f.dtype)
            return memory, state.direction, state.slope, following, jnp.full_like(state.reason, -1)

        # a cond, not selects: a trip runs either the memory's update and the direction (a new line search, three
        # quarters of the benchmark's trips) or dcsrch's next step, never both (under vmap a select again)
        memory, d, slope, search, reason = jax.lax.cond(fresh, turn, inside, state.memory)
        return State(x, f, g, d, slope, search, memory, iterations, evaluations, reason)

    state = jax.lax.while_loop(lambda state: state.reason < 0, trip, state)
    return Result(unravel(state.x), state.f, state.iterations, state.evaluations, state.reason)


def counts(*values) -> tuple[np.ndarray, ...]:
    """max_iter and max_fun (one value or one per member) as int32 data, capped at its largest."""
    cap = np.iinfo(np.int32).max
    return tuple(
        np.minimum(np.asarray(value, np.int64), cap).astype(np.int32)
        if np.ndim(value)
        else np.asarray(min(value, cap), np.int32)
        for value in values
    )


def packed(result: Result):
    """A run's `Result` as two arrays, one transfer each: the params raveled with f appended, and (iterations,
    evaluations, reason) as int32."""
    flat, _ = ravel_pytree(result.params)
    numbers = jnp.stack([result.iterations, result.evaluations, result.reason.astype(jnp.int32)])
    return jnp.append(flat, result.loss), numbers


def unpacked(layers, values, numbers) -> Result:
    """The `Result` that `packed` gave (its two arrays, fetched here), its params shaped as `layers`, the initial
    params (leading axes of `values`, e.g. members, leading each leaf): views of the one fetched vector."""
    values, numbers = np.asarray(values), np.asarray(numbers)  # one copy each (jax.device_get: ~10× the host time)
    leaves, treedef = jax.tree.flatten(layers)
    lead, start, parts = values.shape[:-1], 0, []
    for leaf in leaves:
        shape = np.shape(leaf)[len(lead) :]
        end = start + math.prod(shape)
        parts.append(values[..., start:end].reshape(*lead, *shape))
        start = end
    params = jax.tree.unflatten(treedef, parts)
    return Result(params, values[..., -1], numbers[..., 0], numbers[..., 1], numbers[..., 2])


@functools.lru_cache(maxsize=64)  # one program per objective: a second fit of any α, tol, max_iter, max_fun or seed
def compiled(loss_fn, members: bool):
    """`minimize` of `loss_fn` jitted, with its members (`vmap`: params, l2, tol, max_iter, max_fun one per member,
    x and y shared) when `members`; its result `packed` (two transfers, not one a leaf: `unpacked` fetches them)."""
    run = lambda *args: packed(minimize(loss_fn, *args))
    if members:
        run = jax.vmap(run, in_axes=(0, 0, None, None, 0, 0, 0))
    return jax.jit(run, compiler_options=loop_compiler_options(jax.default_backend()))

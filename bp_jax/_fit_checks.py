"""The argument checks of `fit` and `fit_ensemble`: each returns the argument in the form the loop takes, or
raises a ValueError or TypeError naming what does not fit."""

import functools
import operator

import jax
import jax.numpy as jnp
import numpy as np
import optax

from bp_jax._fit_loop import MemberRows
from bp_jax._mesh import DATA_AXIS
from bp_jax._steps import check_optimizer

#: The step counter inside the loop is an int32.
MAX_STEP = 2**31 - 1


def count(name: str, value, minimum: int) -> int:
    """`value` as an int ≥ minimum (numpy integers welcome); ValueError naming it otherwise."""
    try:
        number = None if isinstance(value, bool) else operator.index(value)
    except TypeError:
        number = None
    if number is None or number < minimum:
        raise ValueError(f"{name} must be an integer ≥ {minimum}, got {value!r}")
    return number


def _as_arrays(data):
    """x or y with every leaf an array: an array, or a pytree of them (a dict, NamedTuple, …). A plain list or tuple
    is one array, as numpy reads nested sequences (so a nested list of numbers is data, not a tree)."""
    as_array = lambda value: value if isinstance(value, (jax.Array, np.ndarray)) else np.asarray(value)
    return jax.tree.map(as_array, data, is_leaf=lambda value: type(value) in (list, tuple))


def check_data(x, y, batch_size, key, mesh, shuffle: bool = True):
    """(x, y, batch_size): x and y as arrays or pytrees of them (`_as_arrays`), every leaf with the same leading
    (example) axis; batch_size an int or None; a key needed for shuffled minibatches. ValueError or TypeError
    naming what does not fit."""
    if mesh is not None and not isinstance(mesh, jax.sharding.Mesh):
        raise TypeError(f"mesh must be a jax.sharding.Mesh (data_parallel_mesh, ensemble_mesh), got {mesh!r}")
    x, y = _as_arrays(x), _as_arrays(y)
    leaves = jax.tree.leaves((x, y))
    leading = {jnp.shape(leaf)[0] if jnp.ndim(leaf) else None for leaf in leaves}
    shapes = lambda data: jax.tree.map(jnp.shape, data)  # an array's shape, or the tree of its leaves' shapes
    if not jax.tree.leaves(x) or not jax.tree.leaves(y) or None in leading or len(leading) != 1:
        raise ValueError(f"x and y must share their leading (example) axis, got shapes {shapes(x)} and {shapes(y)}")
    rows = jnp.shape(leaves[0])[0]
    if rows < 1:
        raise ValueError(f"x and y hold no examples (shapes {shapes(x)} and {shapes(y)}); fit needs at least one row")
    if batch_size is None:
        return x, y, None
    batch_size = count("batch_size", batch_size, 1)
    if batch_size > rows:
        raise ValueError(f"batch_size must be at most {rows} (the number of examples), got {batch_size}")
    if key is None and shuffle:
        raise ValueError("fit needs a PRNG key to shuffle minibatches when batch_size is set (or shuffle=False)")
    return x, y, batch_size


def check_shuffle(shuffle) -> bool:
    """shuffle as a bool; TypeError for anything else."""
    if not isinstance(shuffle, (bool, np.bool_)):
        raise TypeError(f"shuffle must be True or False, got {shuffle!r}")
    return bool(shuffle)


def chunk_sizes(chunk_size) -> tuple[int, ...]:
    sizes = tuple(chunk_size) if isinstance(chunk_size, (tuple, list, np.ndarray)) else (chunk_size,)
    if not sizes:
        raise ValueError(f"chunk_size must be an integer ≥ 1 or a non-empty sequence of them, got {chunk_size!r}")
    return tuple(count("chunk_size", size, 1) for size in sizes)


def check_steps(steps, start_step) -> tuple[int, int]:
    steps, start_step = count("steps", steps, 0), count("start_step", start_step, 0)
    if start_step + steps > MAX_STEP:
        raise ValueError(
            f"start_step + steps must be at most {MAX_STEP} (steps are counted in int32), got {start_step} + {steps}"
        )
    return steps, start_step


def key_batch_shape(key) -> tuple[int, ...]:
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


def check_update_rule(params, lr, optimizer, opt_state, *, ensemble: bool) -> optax.GradientTransformation | None:
    """The optimizer (None for the hand-written SGD) once exactly one of lr or optimizer came, and an opt_state
    only with an optimizer, shaped as its init (vmapped for an `ensemble`) would make it; ValueError or TypeError
    naming what does not fit."""
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
    return optimizer


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


def member_count(params) -> int:
    sizes = {jnp.shape(leaf)[0] if jnp.ndim(leaf) else None for leaf in jax.tree.leaves(params)}
    size = next(iter(sizes)) if len(sizes) == 1 else None
    if size is None:
        raise ValueError(
            f"every leaf of an ensemble's params needs the same leading member axis, got leading "
            f"sizes {sorted(map(str, sizes))}"
        )
    return size


def member_lrs(lr, members: int) -> np.ndarray:
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


def stopped_at(stopped_at, stop_rule, members: int | None, start_step: int) -> np.ndarray:
    """The stop markers a run resumes from, int32 of shape () or (E,): −1 (running, the default) or the step, before
    start_step, after which the rule stopped the model; ValueError or TypeError naming what does not fit."""
    shape = () if members is None else (members,)
    if stopped_at is None:
        return np.full(shape, -1, np.int32)
    if stop_rule is None:
        raise ValueError("stopped_at resumes a stop rule's run: pass the stop_rule too")
    steps = np.asarray(jax.device_get(stopped_at))
    if steps.dtype.kind not in "iu":
        raise TypeError(f"stopped_at must be integers (−1: running), got dtype {steps.dtype}")
    if steps.shape != shape or np.any((steps < -1) | (steps >= start_step)):
        raise ValueError(
            f"stopped_at must be {'one step' if members is None else f'one step per member ({members})'}, −1 or "
            f"before start_step ({start_step}), got {steps.tolist()}"
        )
    return steps.astype(np.int32)


def member_rows(rows, row_counts, members: int, num_examples: int, batch_size, padding=0) -> MemberRows:
    """rows (G, R) and row_counts (G,) as int32 arrays, G dividing E, and each group's padding (one int for all, or
    (G,)) in [0, its count); ValueError or TypeError naming what does not fit."""
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
    padding = np.asarray(jax.device_get(padding))
    if padding.dtype.kind not in "iu" or padding.shape not in ((), row_counts.shape):
        raise ValueError(f"padding must be one integer or one per row set {row_counts.shape}, got {padding!r}")
    if np.any(padding < 0) or np.any(padding >= row_counts):
        raise ValueError(f"padding must lie in [0, row count) = [0, {row_counts.tolist()}), got {padding.tolist()}")
    padding = np.broadcast_to(padding, row_counts.shape).astype(np.int32)
    return MemberRows(rows.astype(np.int32), row_counts.astype(np.int32), padding)


def shard_rows(counts, mesh, num_examples: int, batch_size, padding) -> np.ndarray:
    """Each "data" device's real rows, (D,) int32: D the mesh's "data" devices, D dividing x's rows (D blocks of
    n / D) and the batch size, each count in [batch_size / D, n / D]; ValueError naming what does not fit."""
    if mesh is None or DATA_AXIS not in mesh.shape:
        raise ValueError("shard_rows splits x over a data_parallel_mesh: pass mesh=data_parallel_mesh(...)")
    if batch_size is None or padding:
        raise ValueError("shard_rows needs a batch_size and no padding (each device draws minibatch rows of its own)")
    counts, devices = np.asarray(jax.device_get(counts)), mesh.shape[DATA_AXIS]
    if counts.dtype.kind not in "iu" or counts.shape != (devices,):
        raise ValueError(f"shard_rows must be {devices} integers, one per 'data' device, got {counts!r}")
    if num_examples % devices or batch_size % devices:
        raise ValueError(
            f"shard_rows: x's {num_examples} rows and the batch of {batch_size} must split evenly over "
            f"{devices} devices"
        )
    block, share = num_examples // devices, batch_size // devices
    if np.any(counts < share) or np.any(counts > block):
        raise ValueError(
            f"each of shard_rows must lie in [batch_size / D, rows / D] = [{share}, {block}], got {counts.tolist()}"
        )
    return counts.astype(np.int32)


def check_padding(padding, num_examples: int) -> int:
    """padding as an int in [0, num_examples); ValueError naming it otherwise."""
    padding = count("padding", padding, 0)
    if padding >= num_examples:
        raise ValueError(f"padding must be fewer than the {num_examples} examples, got {padding}")
    return padding


def key_groups(key, members: int) -> int | None:
    """None for one key shared by all members, G for G stacked keys (G dividing E); ValueError otherwise."""
    shape = key_batch_shape(key)
    if shape == ():
        return None
    if len(shape) == 1 and shape[0] and members % shape[0] == 0:
        return shape[0]
    raise ValueError(
        f"key must be one PRNG key or G stacked keys, G dividing the {members} members (E for one per member), "
        f"got key shape {shape}"
    )


def groups(key_groups: int | None, member_rows: MemberRows | None, members: int) -> int | None:
    """How many groups share minibatches: the stacked keys' G and the row sets' G, which must agree when both
    come; None when one shared key draws every member's minibatches from all of x."""
    row_groups = None if member_rows is None else len(member_rows.counts)
    if key_groups is not None and row_groups is not None and key_groups != row_groups:
        raise ValueError(
            f"key and rows must group the {members} members alike: {key_groups} stacked keys but {row_groups} row sets"
        )
    return key_groups if key_groups is not None else row_groups

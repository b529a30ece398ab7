"""How a Linear layer forms x·Wᵀ, and the one rule that picks how.

"dot" is a matmul; "sum" is yᵢ = Σⱼ xⱼ·Wᵢⱼ, an elementwise product and a sum that XLA fuses with its neighbours
(the same function up to float rounding). "auto" picks one per layer at trace time with `choose`, from the
layer's shape, the rows it reads and the backend; `Linear`, `mlp` and the estimators all ask `choose`.

Under `fit_ensemble` the layers are vmapped members: its step is traced inside `members(shared)`, so that "auto"
gives a layer reading one of the arrays every member shares (its minibatch) the matmul, which vmap turns into one
wide matmul x·[W₁ … W_E], and a layer reading the members' own activations the product and sum while it is tiny.
A trace-time scope, not `jax.custom_batching.custom_vmap` (whose rule would see which inputs are batched): a
custom_vmap function has no reverse-mode derivative (jax 0.10: `vmap(grad(f))` fails to linearize; jax issue
#9073, PR #25259 still open), and the members' step is `vmap(grad(loss))`.
"""

import contextlib
import contextvars
import math

import jax
import jax.numpy as jnp

#: The contractions `Linear` takes: the rule, the matmul, the product and sum.
CONTRACTIONS = ("auto", "dot", "sum")
#: One model on CPU: "sum" while its (rows, out, in) product has at most this many elements. Inside `fit`'s loop,
#: in turns (benchmarks/README.md): 10 → 5 → 1 on 32 rows (1 600) 2.3 against 5.0 µs a step, 10 → 16 → 1 on 32
#: rows (5 120) 3.1 against 3.9 µs, 10 → 5 → 1 on 128 rows (6 400) even in float32 and slower in float64, 10 → 32 →
#: 1 on 32 rows (10 240) 10.2 against 7.4 µs.
SUM_MAX_PRODUCTS = 5120
#: Vmapped members: a layer reading the members' own activations takes "sum" up to this many weights, where the
#: matmul is a batch of tiny matrix products (a layer reading one input shared by all is one wide matmul, "dot").
MEMBER_SUM_WEIGHTS = 32
#: What a layer's input is in `choose`: one model's; shared by vmapped members; each member's own.
INPUTS = ("model", "shared", "own")


def choose(fan_in: int, fan_out: int, rows: int, *, platform: str, inputs: str = "model") -> str:
    """The contraction ("dot" or "sum") for a layer of `fan_in` × `fan_out` weights reading `rows` rows.

    Off the CPU (GPU, TPU): "dot", the matmul units' form. On CPU: for one model "sum" when
    rows·fan_in·fan_out ≤ SUM_MAX_PRODUCTS; for vmapped members "dot" when the input is shared (x·[W₁ … W_E]
    is one wide matmul), "sum" for their own inputs when fan_in·fan_out ≤ MEMBER_SUM_WEIGHTS.

    Args:
        fan_in: the layer's inputs.
        fan_out: its outputs.
        rows: the rows of x (the product of its leading dims).
        platform: the backend, as `jax.default_backend()` names it.
        inputs: one of INPUTS.

    Returns:
        "dot" or "sum".

    Examples:
        >>> from bp_jax._contraction import choose
        >>> choose(10, 5, 32, platform="cpu"), choose(10, 5, 353, platform="cpu"), choose(10, 5, 32, platform="gpu")
        ('sum', 'dot', 'dot')
    """
    if platform != "cpu" or inputs == "shared":
        return "dot"
    if inputs == "own":
        return "sum" if fan_in * fan_out <= MEMBER_SUM_WEIGHTS else "dot"
    return "sum" if rows * fan_in * fan_out <= SUM_MAX_PRODUCTS else "dot"


#: The arrays vmapped members share while `fit_ensemble`'s step is traced (None outside it).
_SHARED: contextvars.ContextVar[tuple | None] = contextvars.ContextVar("bp_jax_shared_inputs", default=None)


@contextlib.contextmanager
def members(shared):
    """Trace vmapped members' layers: an "auto" layer reading a leaf of `shared` (a pytree of arrays every member
    reads, e.g. the minibatch) takes `choose`'s rule for a shared input, any other layer the rule for their own."""
    token = _SHARED.set(tuple(jax.tree.leaves(shared)))
    try:
        yield
    finally:
        _SHARED.reset(token)


def inputs_of(x) -> str:
    """What `x` is to a layer, one of INPUTS: one model's input outside `members`; inside, "shared" when x is one
    of the shared arrays itself (the same object: a layer reading a function of it reads the members' own)."""
    shared = _SHARED.get()
    if shared is None:
        return "model"
    return "shared" if any(x is leaf for leaf in shared) else "own"


def resolve(contraction: str, weight: jax.Array, rows, inputs: str = "model") -> str:
    """`contraction` itself, or for "auto" `choose`'s pick for a layer reading `rows` rows of `inputs` on this
    backend; "dot" for one model's symbolic row count (`jax.export`'s any number of rows)."""
    if contraction != "auto":
        return contraction
    if inputs == "model" and not isinstance(rows, int):
        return "dot"
    fan_out, fan_in = jnp.shape(weight)
    return choose(fan_in, fan_out, rows, platform=jax.default_backend(), inputs=inputs)


def contract(x: jax.Array, weight: jax.Array, contraction: str) -> jax.Array:
    """x·Wᵀ over any leading dims of x (…, in) with W (out, in), by `contraction` (`resolve`d)."""
    inputs = inputs_of(x)
    if resolve(contraction, weight, math.prod(jnp.shape(x)[:-1]), inputs) == "sum":
        weight = jnp.expand_dims(weight, tuple(range(jnp.ndim(x) - 1)))  # (1, …, out, in)
        return jnp.sum(jnp.expand_dims(x, -2) * weight, axis=-1)
    if inputs == "shared" and jnp.ndim(x) >= 2:
        # (W·xᵀ)ᵀ: vmapped over the members' W, one matmul whose output is laid out member-major as the later layers
        # read it, and W is not transposed every step (seed MLPs, E = 4096: 1.9× faster a step than x·Wᵀ)
        return jnp.swapaxes(weight @ jnp.swapaxes(x, -1, -2), -1, -2)
    return x @ weight.T

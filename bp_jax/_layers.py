"""Models as pure functions over explicit parameter pytrees, in the style of stax.

A `Model` is a NamedTuple of pure functions::

    params = model.init(key)                  # PRNG key -> params pytree
    y = model.apply(params, x, key=None)      # params, x -> y; a key draws a stochastic model's noise
    y, backward = model.vjp(params, x, key=None)  # forward pass that keeps what the backward pass needs
    grad_params, grad_x = backward(grad_y)    # hand-written chain rule: dL/dparams, dL/dx from dL/dy

`vjp` is the layer's local derivative written by hand (no autodiff), used by `bp_jax.manual`; it is None
for a model without one. A `stochastic` model (one holding a Dropout) draws its noise from the keyword-only
`key`; no key is inference, the deterministic function (dropout the identity). Keys reach only stochastic
models (`call`), so a deterministic model may leave the keyword out. Layers check their params and inputs at
trace time and raise ValueError or TypeError naming the layer, the expected and the received shapes.
"""

import functools
import itertools
import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.custom_derivatives import SymbolicZero

from bp_jax._contraction import CONTRACTIONS, contract, inputs_of, resolve
from bp_jax._order import mix32

Params = Any
Array = jax.Array


class Model(NamedTuple):
    """A model as a NamedTuple of pure functions: `init(key) -> params`, `apply(params, x, *, key=None) -> y`.

    Attributes:
      init: PRNG key -> the params pytree, freshly drawn.
      apply: (params, x, *, key=None) -> y, the forward pass; checks params and x at trace time (ValueError,
        TypeError). `key` draws a stochastic model's noise (dropout masks); None is inference.
      vjp: (params, x, *, key=None) -> (y, backward), with `backward(dL/dy) -> (dL/dparams, dL/dx)` the
        hand-written chain rule (no autodiff) of the function the same key gives; None for a model without one.
      name: what the model is as the constructor call that builds it, e.g.
        "Sequential(Linear(10, 5), ReLU(), Linear(5, 1))" (None when unknown): two models of one name
        compute the same function of the same params.
      stochastic: whether `apply` with a key differs from `apply` without one (a Dropout of rate > 0 inside):
        training then needs a key (`bp_jax.fit` draws one per step). A deterministic model is given no key.

    Examples:
      >>> import jax
      >>> from bp_jax import Linear
      >>> model = Linear(2, 1)
      >>> params = model.init(jax.random.key(0))
      >>> model.apply(params, jax.numpy.ones((4, 2))).shape
      (4, 1)
      >>> model.name
      'Linear(2, 1)'
    """

    init: Callable[[Array], Params]
    apply: Callable[..., Array]
    vjp: Callable[..., tuple[Array, Callable]] | None = None
    name: str | None = None
    stochastic: bool = False


def call(fn: Callable, model: Model, params: Params, x, key: Array | None):
    """`fn(params, x, key=key)` for a stochastic `model` given a key, else `fn(params, x)` (`fn` its apply or
    vjp): a deterministic model, or any model at inference, is called as before keys existed."""
    return fn(params, x) if key is None or not model.stochastic else fn(params, x, key=key)


def _relu_derivative(z):
    return (z > 0).astype(z.dtype)  # 0 at z == 0, as jax.nn.relu and torch.relu


def _sigmoid_derivative(z):
    s = jax.nn.sigmoid(z)
    return s * (1 - s)


def _tanh_derivative(z):
    return 1 - jnp.tanh(z) ** 2


ACTIVATIONS: Mapping[str, tuple[Callable, Callable]] = {
    "identity": (lambda z: z, jnp.ones_like),
    "relu": (jax.nn.relu, _relu_derivative),
    "sigmoid": (jax.nn.sigmoid, _sigmoid_derivative),
    "tanh": (jnp.tanh, _tanh_derivative),
}
"""name -> (a, a'): each activation beside its hand-derived derivative (relu'(0) = 0, σ' = σ·(1 − σ),
tanh' = 1 − tanh²)."""


def activation(name: str) -> tuple[Callable, Callable]:
    """(a, a') for an activation name; ValueError listing the known names otherwise."""
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; expected one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]


def default_float():
    """float64 under `jax.enable_x64`, float32 otherwise."""
    return jnp.zeros(()).dtype


def check_params(layer: str, params: Params, shapes: Mapping[str, tuple | list[tuple]]) -> None:
    """Raise unless `params` is a mapping with exactly the keys in `shapes`, each of its shape
    (or of one of its shapes, where `shapes[name]` is a list of them)."""
    if not isinstance(params, Mapping):
        raise TypeError(f"{layer} expects params as a dict with keys {sorted(shapes)}, got {type(params).__name__}")
    if set(params) != set(shapes):
        raise ValueError(f"{layer} expects params with keys {sorted(shapes)}, got {sorted(params)}")
    for name, shape in shapes.items():
        allowed = shape if isinstance(shape, list) else [shape]
        if jnp.shape(params[name]) not in allowed:
            raise ValueError(
                f"{layer} expects {name} of shape {' or '.join(map(str, allowed))}, got {jnp.shape(params[name])}"
            )


#: The documents' weights are scalars written as `torch.tensor([0.5])`: shape () or (1,).
_SCALAR = [(), (1,)]


def _check_positive_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def Linear(in_features: int, out_features: int, bias: bool = True, *, dtype=None, contraction: str = "auto") -> Model:
    """Fully connected layer y = x·Wᵀ + b over any leading batch dims, as torch.nn.Linear.

    Params `{"weight": (out, in), "bias": (out,)}` (PyTorch's layout), both drawn from
    U(−1/√in, 1/√in) like nn.Linear. Backward: dW = dyᵀ·x, db = Σ dy, dx = dy·W.

    Args:
      in_features: the size of x's last axis.
      out_features: the size of y's last axis.
      bias: whether the layer adds b (params without "bias" otherwise).
      dtype (jax.typing.DTypeLike | None): the params' dtype; default float (float64 under
        `jax.enable_x64`, float32 otherwise).
      contraction: "auto" (default) picks per call at trace time, from the layer's size, the rows of x and the
        backend: on CPU "sum" while rows·in·out ≤ 5120 (2× faster a `fit` step for the seed MLP), else and off
        the CPU "dot" (`bp_jax._contraction.choose`, measured in benchmarks/README.md). "dot" forms x·Wᵀ as a
        matmul; "sum" as yᵢ = Σⱼ xⱼ·Wᵢⱼ, an elementwise product and a sum that XLA fuses with its neighbours.
        All three are the same function up to float rounding.

    Returns:
      The layer as a Model, with its hand-written `vjp`.

    Raises:
      ValueError: a size that is not a positive int, or an unknown `contraction`.

    Examples:
      >>> import jax.numpy as jnp
      >>> from bp_jax import Linear
      >>> params = {"weight": jnp.array([[1.0, 2.0], [3.0, 4.0]]), "bias": jnp.array([0.5, -0.5])}
      >>> Linear(2, 2).apply(params, jnp.array([1.0, 1.0])).tolist()
      [3.5, 6.5]
      >>> y, backward = Linear(2, 2).vjp(params, jnp.array([[1.0, 1.0]]))
      >>> grads, dx = backward(jnp.ones((1, 2)))   # dW = dyᵀ·x, db = Σ dy, dx = dy·W
      >>> grads["weight"].tolist(), grads["bias"].tolist(), dx.tolist()
      ([[1.0, 1.0], [1.0, 1.0]], [1.0, 1.0], [[4.0, 6.0]])
    """
    _check_positive_int("in_features", in_features)
    _check_positive_int("out_features", out_features)
    if contraction not in CONTRACTIONS:
        raise ValueError(f"contraction must be one of {CONTRACTIONS}, got {contraction!r}")
    options = ("" if bias else ", bias=False") + ("" if contraction == "auto" else f", contraction={contraction!r}")
    name = f"Linear({in_features}, {out_features}{options})"
    shapes = {"weight": (out_features, in_features)} | ({"bias": (out_features,)} if bias else {})

    def init(key):
        weight_key, bias_key = jax.random.split(key)
        bound = 1 / in_features**0.5
        draw = lambda k, shape: jax.random.uniform(k, shape, dtype or default_float(), -bound, bound)
        params = {"weight": draw(weight_key, shapes["weight"])}
        return params | ({"bias": draw(bias_key, (out_features,))} if bias else {})

    def check_input(params, x):
        check_params(name, params, shapes)
        if jnp.ndim(x) < 1 or jnp.shape(x)[-1] != in_features:
            raise ValueError(f"{name} expects x with {in_features} features in its last axis, got shape {jnp.shape(x)}")

    def apply(params, x, *, key=None):
        check_input(params, x)
        y = contract(x, params["weight"], contraction)
        return y + jnp.broadcast_to(params["bias"], y.shape) if bias else y

    def vjp(params, x, *, key=None):
        y = apply(params, x)

        def backward(dy):
            dy_rows = dy.reshape(-1, out_features)
            grads = {"weight": dy_rows.T @ x.reshape(-1, in_features)}
            grads |= {"bias": dy_rows.sum(axis=0)} if bias else {}
            return grads, dy @ params["weight"]

        return y, backward

    return Model(init, apply, vjp, name)


#: Each activation's layer as torch.nn names it.
_LAYER_NAMES = {"identity": "Identity", "relu": "ReLU", "sigmoid": "Sigmoid", "tanh": "Tanh"}


def elementwise(name: str) -> Model:
    """Parameter-free layer y = a(x) for an activation name (a key of ACTIVATIONS); backward dx = dy·a'(x)."""
    fn, derivative = activation(name)
    layer = name.capitalize()

    def apply(params, x, *, key=None):
        check_params(layer, params, {})
        return fn(x)

    def vjp(params, x, *, key=None):
        return apply(params, x), lambda dy: ({}, dy * derivative(x))

    return Model(lambda key: {}, apply, vjp, f"{_LAYER_NAMES[name]}()")


def ReLU() -> Model:
    """Parameter-free layer y = max(x, 0), with derivative 0 at 0 like torch.nn.ReLU.

    Returns:
      The layer as a Model: params `{}`, backward dx = dy·[x > 0].

    Examples:
      >>> import jax.numpy as jnp
      >>> from bp_jax import ReLU
      >>> ReLU().apply({}, jnp.array([-1.0, 0.0, 2.0])).tolist()
      [0.0, 0.0, 2.0]
    """
    return elementwise("relu")


def Sigmoid() -> Model:
    """Parameter-free layer y = 1 / (1 + e^−x), derivative y·(1 − y), as torch.nn.Sigmoid.

    Returns:
      The layer as a Model: params `{}`, backward dx = dy·y·(1 − y).

    Examples:
      >>> import jax.numpy as jnp
      >>> from bp_jax import Sigmoid
      >>> Sigmoid().apply({}, jnp.array([0.0])).tolist()
      [0.5]
    """
    return elementwise("sigmoid")


def Tanh() -> Model:
    """Parameter-free layer y = tanh(x), derivative 1 − y², as torch.nn.Tanh.

    Returns:
      The layer as a Model: params `{}`, backward dx = dy·(1 − y²).

    Examples:
      >>> import jax.numpy as jnp
      >>> from bp_jax import Tanh
      >>> Tanh().apply({}, jnp.array([0.0])).tolist()
      [0.0]
    """
    return elementwise("tanh")


def _is_typed(key: Array) -> bool:
    return jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key)


def _words(key: Array) -> Array:
    """The key's data as uint32 words (a raw uint32 key is its own data)."""
    return (jax.random.key_data(key) if _is_typed(key) else key).astype(jnp.uint32)


def hash_fold_in(key: Array, data) -> Array:
    """A new key of `key`'s kind for the integer `data`, as `jax.random.fold_in` gives, by hashing instead of
    threefry's rounds: word i becomes mix32(wᵢ ⊕ mix32((d + i·φ) ⊕ wᵢ₊₁)), φ = 0x9E3779B9, the words cyclic. A
    bijection of d for a fixed key (distinct data, distinct keys), and a few integer ops: `fit` derives keys in
    every step, where threefry's rounds cost more than a small model's step itself on CPU."""
    words = _words(key)
    flat, data = jnp.ravel(words), jnp.asarray(data).astype(jnp.uint32)
    mixed = [
        mix32(word ^ mix32((data + jnp.uint32(i * 0x9E3779B9 % 2**32)) ^ flat[(i + 1) % flat.size]))
        for i, word in enumerate(flat)
    ]
    new = jnp.stack(mixed).reshape(words.shape)
    return jax.random.wrap_key_data(new, impl=jax.random.key_impl(key)) if _is_typed(key) else new


def hashed_bits(key: Array, shape: tuple[int, ...]) -> Array:
    """32 pseudo-random bits per element of `shape`: the element's index hashed with each 32-bit word of the key's
    data in turn (`mix32`), u = mix32(… mix32(mix32(i ⊕ w₀) ⊕ w₁) …). One hash per word and element: several
    times cheaper than `jax.random.bits`' threefry rounds on CPU, and as fresh as the key (a new key, new bits)."""
    bits = jax.lax.iota(jnp.uint32, math.prod(shape)).reshape(shape)
    for word in jnp.ravel(_words(key)):
        bits = mix32(bits ^ word)
    return bits


def Dropout(rate: float) -> Model:
    """Inverted dropout, as torch.nn.Dropout: y = x·m/(1 − rate), m ~ Bernoulli(1 − rate) per element, drawn
    from `key` (m = [u ≥ rate·2³²] for the element's `hashed_bits` u); no key (inference) is the identity.

    Backward: dx = dy·m/(1 − rate), the same mask (the layer is linear in x for a fixed mask). The bits come
    from integer hashing, not threefry: a step of `fit` with dropout costs about 1.1× one without on CPU, against
    3.8× with `jax.random.bernoulli` (an mlp 10 → 32 → 32 → 1, batches of 32, process CPU time).

    Args:
      rate: the probability of dropping an element, in [0, 1); 0 is the identity, and not `stochastic`.

    Returns:
      The layer as a Model: params `{}`, `stochastic` when rate > 0.

    Raises:
      ValueError: a rate that is not a number in [0, 1).

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from bp_jax import Dropout
      >>> layer = Dropout(0.5)
      >>> layer.apply({}, jnp.ones(4)).tolist()   # no key: inference, the identity
      [1.0, 1.0, 1.0, 1.0]
      >>> y = layer.apply({}, jnp.ones(1000), key=jax.random.key(0))
      >>> sorted(set(y.tolist())), bool(abs(y.mean() - 1) < 0.1)   # kept elements scaled by 1/(1 − rate)
      ([0.0, 2.0], True)
    """
    if isinstance(rate, bool) or not isinstance(rate, numbers.Real) or not 0 <= rate < 1:
        raise ValueError(f"Dropout rate must be a number in [0, 1), got {rate!r}")
    rate = float(rate)
    threshold = min(round(rate * 2**32), 2**32 - 1)

    def scale(x, key):
        """m/(1 − rate) in x's dtype, m = [u ≥ rate·2³²] per element of x, u its `hashed_bits`."""
        kept = hashed_bits(key, jnp.shape(x)) >= jnp.uint32(threshold)
        return kept.astype(jnp.result_type(x)) / (1 - rate)

    def apply(params, x, *, key=None):
        check_params("Dropout", params, {})
        return x if key is None or rate == 0 else x * scale(x, key)

    def vjp(params, x, *, key=None):
        check_params("Dropout", params, {})
        if key is None or rate == 0:
            return x, lambda dy: ({}, dy)
        mask = scale(x, key)
        return x * mask, lambda dy: ({}, dy * mask)

    return Model(lambda key: {}, apply, vjp, f"Dropout({rate})", stochastic=rate > 0)


@contextmanager
def _naming_layer(index: int):
    try:
        yield
    except (TypeError, ValueError) as err:
        raise type(err)(f"Sequential layer {index}: {err}") from err


def Sequential(*layers: Model) -> Model:
    """Layers applied in order, as torch.nn.Sequential; params is a tuple with one entry per layer.

    Backward applies each layer's hand-written backward in reverse order (the chain rule). `init` splits
    its key once per layer; `apply` and `vjp` give stochastic layer i the key `hash_fold_in(key, i)`
    (the same key, the same masks). An error in a layer's checks names the layer's index.

    Args:
      *layers: one or more Models, applied first to last.

    Returns:
      The composition as a Model; it has a `vjp` when every layer has one, a `name` when every layer has, and
      is `stochastic` when a layer is.

    Raises:
      TypeError: no layers, or one that is not a Model.

    Examples:
      >>> import jax
      >>> from bp_jax import Linear, ReLU, Sequential
      >>> model = Sequential(Linear(10, 5), ReLU(), Linear(5, 1))
      >>> params = model.init(jax.random.key(0))
      >>> jax.tree.map(jax.numpy.shape, params)
      ({'bias': (5,), 'weight': (5, 10)}, {}, {'bias': (1,), 'weight': (1, 5)})
      >>> model.apply(params, jax.numpy.ones((32, 10))).shape
      (32, 1)
    """
    if not layers or not all(isinstance(layer, Model) for layer in layers):
        raise TypeError(f"Sequential expects one or more Models, got {layers!r}")

    def init(key):
        return tuple(layer.init(k) for layer, k in zip(layers, jax.random.split(key, len(layers))))

    def check_length(params):
        if not isinstance(params, (tuple, list)) or len(params) != len(layers):
            got = f"{len(params)} entries" if isinstance(params, (tuple, list)) else type(params).__name__
            raise ValueError(f"Sequential of {len(layers)} layers expects a tuple of {len(layers)} params, got {got}")

    def layer_key(key, index: int):
        return None if key is None or not layers[index].stochastic else hash_fold_in(key, index)

    def apply(params, x, *, key=None):
        check_length(params)
        for index, (layer, layer_params) in enumerate(zip(layers, params)):
            with _naming_layer(index):
                x = call(layer.apply, layer, layer_params, x, layer_key(key, index))
        return x

    def vjp(params, x, *, key=None):
        check_length(params)
        backwards = []
        for index, (layer, layer_params) in enumerate(zip(layers, params)):
            assert layer.vjp is not None  # Sequential offers vjp only when every layer has one
            with _naming_layer(index):
                x, layer_backward = call(layer.vjp, layer, layer_params, x, layer_key(key, index))
            backwards.append(layer_backward)

        def backward(dy):
            grads = []
            for layer_backward in reversed(backwards):
                layer_grads, dy = layer_backward(dy)
                grads.append(layer_grads)
            return tuple(reversed(grads)), dy

        return x, backward

    names = [layer.name for layer in layers if layer.name is not None]
    name = f"Sequential({', '.join(names)})" if len(names) == len(layers) else None
    stochastic = any(layer.stochastic for layer in layers)
    return Model(init, apply, vjp if all(layer.vjp for layer in layers) else None, name, stochastic)


#: How an mlp holds its activations between layers: (rows, features), as each layer's apply does, or
#: (features, rows).
LAYOUTS = ("rows", "columns")


@jax.custom_jvp
def _input_product(weight, x):
    """W·xᵀ of one model's rows × features input on CPU, from a copy of x laid out features × rows (made once,
    outside a loop that reads x: XLA hoists it), so that the matmul reads both operands as it packs them; W·xᵀ of x
    as it comes repacks x on every call (the lbfgs evaluation, 10 → 5 → 1 on 353 rows in float64: ~1 µs of its ~6).
    Its tangent dW·xᵀ + W·dxᵀ reads x itself, so reverse mode's dW = G·x reads x as it comes: the plain product's
    derivatives, the same numbers."""
    return weight @ jax.lax.optimization_barrier(jnp.swapaxes(x, -1, -2))


@functools.partial(_input_product.defjvp, symbolic_zeros=True)
def _input_product_jvp(primals, tangents):
    """dW·xᵀ + W·dxᵀ without the terms of zero tangents (JAX calls the rule when at least one is not zero)."""
    (weight, x), (weight_dot, x_dot) = primals, tangents
    terms = []
    if not isinstance(weight_dot, SymbolicZero):
        terms.append(weight_dot @ jnp.swapaxes(x, -1, -2))
    if not isinstance(x_dot, SymbolicZero):
        terms.append(weight @ jnp.swapaxes(x_dot, -1, -2))
    return _input_product(weight, x), sum(terms[1:], terms[0])


def mlp(
    sizes: Sequence[int],
    activation_name: str = "relu",
    *,
    dtype=None,
    contraction: str | Sequence[str] = "auto",
    layout: str = "rows",
    dropout: float = 0.0,
) -> Model:
    """Sequential(Linear(n0, n1), a, Linear(n1, n2), a, …, Linear(n_{k−1}, n_k)): a multilayer perceptron.

    An activation between every pair of Linear layers, none after the last; with `dropout` > 0, a
    `Dropout(dropout)` after every activation. `mlp((10, 5, 1))` is the documents' seed MLP.

    Args:
      sizes: the layer widths n0, n1, …, n_k (inputs first, outputs last), at least two.
      activation_name: a key of ACTIVATIONS: "identity", "relu", "sigmoid" or "tanh".
      dtype (jax.typing.DTypeLike | None): the params' dtype; default float.
      contraction: as Linear's, one for every layer or a sequence of one per Linear layer.
      layout: "rows", the Sequential itself; or "columns": the same function of the same params, computed
        with the activations held as (features, rows) between the layers, h ← a(W·h + b) ("sum":
        h ← a(Σⱼ Wᵢⱼ·hⱼ + b)), x and y still rows × features; named `mlp(...)` (the hand-written backward is
        the Sequential's). On CPU it is the faster layout for many small models under vmap when no hidden
        layer is wider than the batch: the rows are the longer, minor axis (benchmarks/README.md).
      dropout: the Dropout rate after each hidden activation, in [0, 1); 0 (default): no Dropout layers.
        Only with layout "rows".

    Returns:
      The network as a Model with the Sequential's params (a tuple, `{}` for each activation and Dropout),
      `vjp` and `stochastic`.

    Raises:
      ValueError: fewer than two sizes, an unknown activation or layout, as many contractions as there are
        not Linear layers, or a dropout outside [0, 1) (or with layout "columns").

    Examples:
      >>> import jax
      >>> from bp_jax import mlp
      >>> model = mlp((10, 5, 1))
      >>> model.name
      'Sequential(Linear(10, 5), ReLU(), Linear(5, 1))'
      >>> params = model.init(jax.random.key(0))
      >>> model.apply(params, jax.numpy.ones((32, 10))).shape
      (32, 1)
    """
    sizes = tuple(sizes)
    if len(sizes) < 2:
        raise ValueError(f"mlp needs at least two sizes (inputs and outputs), got {sizes}")
    fn, _ = activation(activation_name)
    contractions = (contraction,) * (len(sizes) - 1) if isinstance(contraction, str) else tuple(contraction)
    if len(contractions) != len(sizes) - 1:
        raise ValueError(
            f"contraction must be one name or one per Linear layer ({len(sizes) - 1}), got {len(contractions)}"
        )
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    hidden_dropout = [layer for layer in [Dropout(dropout)] if layer.stochastic]
    if hidden_dropout and layout != "rows":
        raise ValueError(f"dropout needs layout 'rows', got layout {layout!r} with dropout {dropout!r}")
    layers = []
    for (fan_in, fan_out), layer_contraction in zip(itertools.pairwise(sizes), contractions):
        linear = Linear(fan_in, fan_out, dtype=dtype, contraction=layer_contraction)
        layers.append([linear, elementwise(activation_name), *hidden_dropout])
    rows = Sequential(*itertools.chain(*layers[:-1]), layers[-1][0])
    if layout == "rows":
        return rows

    def apply(params, x, *, key=None):
        jax.eval_shape(rows.apply, params, x)  # the Sequential's checks, with its messages
        h = jnp.swapaxes(jnp.atleast_2d(x), -1, -2)
        lift = lambda array, rank: jnp.expand_dims(array, tuple(range(rank - array.ndim)))  # leading axes of 1
        for index, (linear, layer_contraction) in enumerate(zip(params[::2], contractions)):
            weight, bias = linear["weight"], linear["bias"]
            count = math.prod(jnp.shape(h)[:-2]) * jnp.shape(h)[-1]  # the rows
            if resolve(layer_contraction, weight, count, inputs_of(x if index == 0 else h)) == "sum":
                inputs = jnp.expand_dims(h, -3)  # (…, 1, in, rows)
                h = jnp.sum(lift(weight[:, :, None], inputs.ndim) * inputs, axis=-2)
            elif index == 0 and jnp.ndim(x) == 2 and inputs_of(x) == "model" and jax.default_backend() == "cpu":
                h = _input_product(weight, x)
            else:
                h = weight @ h
            h = h + lift(bias[:, None], h.ndim)
            h = fn(h) if index < len(contractions) - 1 else h
        y = jnp.swapaxes(h, -1, -2)
        return y[0] if jnp.ndim(x) == 1 else y

    name = f"mlp({sizes}, {activation_name!r}, contraction={contractions}, layout='columns')"
    return Model(rows.init, apply, rows.vjp, name)


def neuron(activation_name: str = "identity") -> Model:
    """The documents' single neuron y = a(w·x) with a scalar weight, params `{"w": ()}` (or shape (1,)).

    init draws w ~ U(−1, 1), nn.Linear(1, 1, bias=False)'s distribution.

    Args:
      activation_name: a key of ACTIVATIONS: "identity", "relu", "sigmoid" or "tanh".

    Returns:
      The neuron as a Model (without a `vjp`: its derivative is `bp_jax.manual.neuron_grad`).

    Raises:
      ValueError: an unknown activation.

    Examples:
      >>> from bp_jax import neuron
      >>> round(float(neuron("sigmoid").apply({"w": 0.8}, 1.5)), 4)   # sigmoid(1.2)
      0.7685
    """
    fn, _ = activation(activation_name)
    name = f"neuron({activation_name!r})"

    def apply(params, x, *, key=None):
        check_params(name, params, {"w": _SCALAR})
        return fn(params["w"] * x)

    return Model(lambda key: {"w": jax.random.uniform(key, (), default_float(), -1, 1)}, apply, name=name)


def tiny_net() -> Model:
    """The documents' tiny network x → ·w1 → ReLU → ·w2 → y, params `{"w1": (), "w2": ()}`.

    y = w2·relu(w1·x). Weights of shape (1,), as the document's `torch.tensor([0.5])`, are accepted too;
    init draws both from U(−1, 1).

    Returns:
      The network as a Model (without a `vjp`: its derivatives are `bp_jax.manual.tiny_net_grads`).

    Examples:
      >>> from bp_jax import tiny_net
      >>> float(tiny_net().apply({"w1": 0.5, "w2": 1.5}, 2.0))   # the document's y = 1.5·relu(0.5·2)
      1.5
    """

    def init(key):
        w1, w2 = jax.random.uniform(key, (2,), default_float(), -1, 1)
        return {"w1": w1, "w2": w2}

    def apply(params, x, *, key=None):
        check_params("tiny_net", params, {"w1": _SCALAR, "w2": _SCALAR})
        return params["w2"] * jax.nn.relu(params["w1"] * x)

    return Model(init, apply, name="tiny_net()")

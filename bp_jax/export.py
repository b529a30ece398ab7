"""Trained models out of bp_jax: a portable `jax.export` program, or an ONNX graph (an edge module; onnx is
imported inside `to_onnx` only, and only it needs the export extra).

    scaling = Scaling(x_mean=..., x_std=..., y_mean=..., y_std=...)   # what surrounds the model, for both
    exported = to_jax_export(model, params, scaling)
    Path("model.jax").write_bytes(exported.serialize())       # elsewhere, jax and flatbuffers alone:
    jax.export.deserialize(Path("model.jax").read_bytes()).call(x)
    proto = to_onnx(model, params, Scaling(x_mean=..., x_std=..., probabilities=True))   # an onnx.ModelProto
    Path("model.onnx").write_bytes(proto.SerializeToString())  # onnxruntime.InferenceSession(...).run(None, {"x": x})

Both compute one function of raw float32 rows x, shape (rows, inputs), the number of rows free:

    x̃ = where(isnan(x), fill, x)       only with `fill`: a NaN input takes its fill value
    z = (x̃ − x_mean) / x_std            only with `x_mean` and `x_std`: the training standardisation
    o = model.apply(params, z)          params baked in as float32 constants, matmuls at "highest" precision;
                                        no key: inference (Dropout layers are the identity)
    y = o·y_std + y_mean                only with `y_mean` and `y_std`: a regression's target units
    p = softmax(o) over the last axis   only with `probabilities=True`: a classifier's class probabilities

The output has shape (rows, outputs). With `ensemble=True` the params carry a leading member axis K and the
members' outputs o_k are combined:

    ȳ = mean_k o_k·y_std + y_mean, s = std_k(o_k)·y_std        regression: (rows, 2·outputs), [ȳ, s]
    p̄ = mean_k softmax(o_k), H = −Σ_c p̄_c log p̄_c             probabilities: (rows, classes + 1), [p̄, H]

(std with divisor K, times |y_std|; H in nats, 0·log 0 = 0). `to_jax_export` takes any Model; `to_onnx` a
Sequential of Linear, ReLU, Sigmoid, Tanh and Dropout layers (as `mlp` builds; Dropout exported as the identity it
is at inference), read from `model.name`. The names are `bp_jax.Scaling`, `bp_jax.to_jax_export` and
`bp_jax.to_onnx`; `bp-jax export` wraps them for a trained run.
"""

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from numpy.typing import ArrayLike

from bp_jax._layers import Model, Params

if TYPE_CHECKING:  # for the annotations only: onnx loads when to_onnx runs
    import onnx

#: the platforms `to_jax_export` lowers for by default: every one JAX serves
PLATFORMS = ("cpu", "cuda", "rocm", "tpu")
#: ONNX opset and IR version of `to_onnx`'s graphs (opset 17 has every operator used; IR 8 is read by
#: onnxruntime ≥ 1.10)
ONNX_OPSET, ONNX_IR_VERSION = 17, 8
_LAYER = re.compile(
    r"Linear\((\d+), (\d+)(, bias=False)?(?:, contraction='\w+')?\)|(ReLU|Sigmoid|Tanh)\(\)|(Dropout)\([0-9.e-]+\)"
)
_ONNX_ACTIVATIONS = {"ReLU": "Relu", "Sigmoid": "Sigmoid", "Tanh": "Tanh"}


class Scaling(NamedTuple):
    """What `to_jax_export` and `to_onnx` put around the model: the steps of the module docstring's function.
    Every field is optional; `Scaling()` exports the bare model.

    Attributes:
        inputs: The number of input columns; None: the first Linear layer's in-features.
        fill: One value per input, taken where x is NaN (imputation); None: a NaN input stays NaN.
        x_mean: One value per input, subtracted from x (given with `x_std`).
        x_std: One value per input, dividing x after the mean is subtracted.
        y_mean: Added to the output after it is multiplied by `y_std` (given with `y_std`): a regression's
            target in its own units.
        y_std: Multiplies the output.
        probabilities: True for a classifier: the softmax of the outputs, each class's probability.

    Examples:
        >>> from bp_jax.export import Scaling
        >>> Scaling(x_mean=[0.5, 1.0], x_std=[2.0, 1.0]).probabilities
        False
    """

    inputs: int | None = None
    fill: ArrayLike | None = None
    x_mean: ArrayLike | None = None
    x_std: ArrayLike | None = None
    y_mean: float | None = None
    y_std: float | None = None
    probabilities: bool = False

    def _checked(self, model: Model) -> "Scaling":
        """This scaling for `model`: `inputs` resolved, vectors as float32 arrays of one value per input, scalars
        finite floats; ValueError naming what came where something else was expected."""
        inputs = self.inputs
        if inputs is None:
            layers = _layers(model)
            if not layers or layers[0][0] != "Linear":
                raise ValueError(
                    f"pass inputs=, the number of input columns: {model.name or 'the model'} does not say it"
                )
            inputs = layers[0][1]
        if not isinstance(inputs, int) or isinstance(inputs, bool) or inputs < 1:
            raise ValueError(f"inputs must be a positive int, got {inputs!r}")
        if (self.x_mean is None) != (self.x_std is None) or (self.y_mean is None) != (self.y_std is None):
            raise ValueError("give x_mean with x_std, and y_mean with y_std (or neither of a pair)")
        if self.probabilities and self.y_mean is not None:
            raise ValueError("probabilities=True is a classifier's output; y_mean and y_std are a regression's")
        return Scaling(
            inputs,
            _vector("fill", self.fill, inputs),
            _vector("x_mean", self.x_mean, inputs),
            _vector("x_std", self.x_std, inputs),
            _scalar("y_mean", self.y_mean),
            _scalar("y_std", self.y_std),
            bool(self.probabilities),
        )


def _vector(name: str, value, inputs: int) -> np.ndarray | None:
    if value is None:
        return None
    array = np.asarray(value, np.float32)
    if array.shape != (inputs,):
        raise ValueError(f"{name} must have one value per input, shape ({inputs},), got shape {array.shape}")
    return array


def _scalar(name: str, value) -> float | None:
    if value is None:
        return None
    if not np.isfinite(float(value)):
        raise ValueError(f"{name} must be finite, got {value}")
    return float(value)


def _predictor(model: Model, params: Params, scaling: Scaling, ensemble: bool = False) -> jax.stages.Wrapped:
    """The jitted `x -> y` of the module docstring, params as float32 constants (`scaling` checked); an `ensemble`'s
    members combined as there."""
    constants = jax.tree.map(lambda leaf: np.asarray(leaf, np.float32), params)
    row = lambda values: np.reshape(values, (1, -1))  # of x's rank: no rank promotion (which a user may forbid)

    @jax.jit
    def predict(x):
        if scaling.fill is not None:
            x = jnp.where(jnp.isnan(x), row(scaling.fill), x)
        if scaling.x_mean is not None and scaling.x_std is not None:
            x = (x - row(scaling.x_mean)) / row(scaling.x_std)
        with jax.default_matmul_precision("highest"):
            out = jax.vmap(model.apply, (0, None))(constants, x) if ensemble else model.apply(constants, x)
        if ensemble:
            return _combined(out, scaling)
        if scaling.y_mean is not None and scaling.y_std is not None:
            out = out * np.float32(scaling.y_std) + np.float32(scaling.y_mean)
        return jax.nn.softmax(out, axis=-1) if scaling.probabilities else out

    return predict


def _combined(out: jax.Array, scaling: Scaling) -> jax.Array:
    """The members' outputs `out` (members, rows, outputs) combined: [ȳ, s] or [p̄, H] of the module docstring."""
    if scaling.probabilities:
        mean = jnp.mean(jax.nn.softmax(out, axis=-1), axis=0)
        entropy = -jnp.sum(mean * jnp.log(jnp.maximum(mean, np.finfo(np.float32).tiny)), axis=-1, keepdims=True)
        return jnp.concatenate([mean, entropy], axis=-1)
    mean, std = jnp.mean(out, axis=0), jnp.std(out, axis=0)
    if scaling.y_mean is not None and scaling.y_std is not None:
        mean, std = mean * np.float32(scaling.y_std) + np.float32(scaling.y_mean), std * np.float32(abs(scaling.y_std))
    return jnp.concatenate([mean, std], axis=-1)


def to_jax_export(
    model: Model,
    params: Params,
    scaling: Scaling | None = None,
    *,
    platforms: Sequence[str] = PLATFORMS,
    ensemble: bool = False,
) -> jax.export.Exported:
    """The model's predictions as a portable `jax.export` program: `scaling`'s steps around `model.apply`.

    The program takes float32 x of shape (rows, inputs), rows symbolic (any number, 0 included: its input shape
    reads `rows_plus_one - 1`), and is lowered for each of `platforms`.
    `.serialize()` (which needs flatbuffers) gives bytes that `jax.export.deserialize(...).call(x)` runs with jax
    and flatbuffers alone, on any of them.

    Args:
        model: Any bp_jax Model.
        params: Its trained params.
        scaling: What surrounds the model (fill, standardisation, target units or probabilities); None exports
            the bare model, its inputs read from the first Linear layer.
        platforms: The platforms to lower for (default: cpu, cuda, rocm and tpu).
        ensemble: True: `params` hold members on a leading axis; y is their mean and std, or their averaged
            probabilities and entropy (the module docstring).

    Returns:
        A `jax.export.Exported` mapping x (rows × inputs) to y (rows × outputs; an ensemble's as above).

    Raises:
        ValueError: A scaling that does not fit the model (see `Scaling`), or a model that does not say its
            inputs when `scaling.inputs` is None.

    Examples:
        >>> import jax, numpy as np, bp_jax
        >>> model = bp_jax.mlp((2, 3, 1))
        >>> params = model.init(jax.random.key(0))
        >>> scaling = bp_jax.Scaling(x_mean=[1.0, 2.0], x_std=[2.0, 4.0], y_mean=10.0, y_std=3.0)
        >>> exported = bp_jax.to_jax_export(model, params, scaling, platforms=("cpu",))
        >>> exported.call(np.ones((5, 2), np.float32)).shape, exported.call(np.ones((0, 2), np.float32)).shape
        ((5, 1), (0, 1))
    """
    scaling = (Scaling() if scaling is None else scaling)._checked(model)
    # jax.export takes a dimension variable to be >= 1: rows = rows_plus_one − 1 is any number, 0 included
    (rows,) = jax.export.symbolic_shape("rows_plus_one - 1")
    x = jax.ShapeDtypeStruct((rows, scaling.inputs), jnp.float32)
    return jax.export.export(_predictor(model, params, scaling, ensemble), platforms=tuple(platforms))(x)


def _layers(model: Model) -> list[tuple]:
    """`model.name` read as layers: ("Linear", in, out, bias) or ("ReLU" | "Sigmoid" | "Tanh" | "Dropout",); []
    when the name is not a Sequential (or a single layer) of those."""
    name = model.name or ""
    body = name[len("Sequential(") : -1] if name.startswith("Sequential(") and name.endswith(")") else name
    layers, position = [], 0
    for match in _LAYER.finditer(body):
        if body[position : match.start()].strip(", "):
            return []
        linear_in, linear_out, no_bias, activation, dropout = match.groups()
        parameter_free = activation or dropout
        layers.append(
            ("Linear", int(linear_in), int(linear_out), not no_bias) if not parameter_free else (parameter_free,)
        )
        position = match.end()
    return layers if body and not body[position:].strip(", ") else []


def to_onnx(
    model: Model, params: Params, scaling: Scaling | None = None, *, ensemble: bool = False
) -> "onnx.ModelProto":
    """The model's predictions as an ONNX graph: `scaling`'s steps around the model's layers.

    Input "x" and output "y" are float32, rows × inputs and rows × outputs, "rows" free: IsNaN/Where for
    `scaling.fill`, Sub/Div for the standardisation, Gemm (y = x·Wᵀ + b, transB=1: the weight keeps PyTorch's
    (out, in) layout) per Linear, Relu/Sigmoid/Tanh, Mul/Add to the target's units, Softmax. An ensemble's layers
    are batched over the members (MatMul by the (K, in, out) weights, Add), then ReduceMean over them (the std
    from ReduceMean of the squared deviations, Sqrt; the entropy from Max, Log, Mul, ReduceSum) and Concat.

    Args:
        model: A Sequential of Linear, ReLU, Sigmoid, Tanh and Dropout layers (as `bp_jax.mlp` builds), read from
            its name; a Dropout layer adds no node (inference).
        params: Its trained params, of its layers' shapes.
        scaling: What surrounds the model (fill, standardisation, target units or probabilities); None exports
            the bare model.
        ensemble: True: `params` hold members on a leading axis, combined as in the module docstring.

    Returns:
        An `onnx.ModelProto` (opset 17, IR version 8), checked by `onnx.checker`.

    Raises:
        ValueError: Another model, params of other shapes, or a scaling that does not fit the model.
        ImportError: onnx is missing (it comes with the export extra).

    Examples:
        >>> import jax, bp_jax
        >>> model = bp_jax.mlp((2, 3, 4))
        >>> proto = bp_jax.to_onnx(model, model.init(jax.random.key(0)), bp_jax.Scaling(probabilities=True))
        >>> [node.op_type for node in proto.graph.node]
        ['Gemm', 'Relu', 'Gemm', 'Softmax', 'Identity']
    """
    try:
        import onnx
        from onnx import TensorProto, helper, numpy_helper
    except ImportError as err:
        raise ImportError("bp_jax.to_onnx needs onnx: pip install 'bp_jax[export]'") from err

    layers = _layers(model)
    if not layers:
        raise ValueError(
            "to_onnx exports a Sequential of Linear, ReLU, Sigmoid and Tanh layers, Dropout too (as bp_jax.mlp "
            "builds); "
            f"got {model.name or 'a model without a name'}"
        )
    layer_params = tuple(params) if (model.name or "").startswith("Sequential(") else (params,)
    if len(layer_params) != len(layers):
        raise ValueError(f"{model.name} has {len(layers)} layers but params has {len(layer_params)} entries")
    scaling = (Scaling() if scaling is None else scaling)._checked(model)
    widths = [layer[1] for layer in layers if layer[0] == "Linear"]
    if widths[0] != scaling.inputs:
        raise ValueError(f"{model.name} takes {widths[0]} inputs, not inputs={scaling.inputs}")

    nodes, constants = [], []
    current = "x"

    def constant(name: str, value) -> str:
        constants.append(numpy_helper.from_array(np.asarray(value, np.float32), name))
        return name

    def node(op: str, operands: list[str], output: str, **attributes) -> str:
        nonlocal current
        nodes.append(helper.make_node(op, operands, [output], name=output, **attributes))
        current = output
        return output

    if scaling.fill is not None:
        raw = current
        node("IsNaN", [raw], "missing")
        node("Where", ["missing", constant("fill", scaling.fill), raw], "filled")
    if scaling.x_mean is not None:
        node("Sub", [current, constant("x_mean", scaling.x_mean)], "centred")
        node("Div", [current, constant("x_std", scaling.x_std)], "standardised")
    outputs = widths[0]  # the in-features, until a Linear layer
    first_linear = next(index for index, layer in enumerate(layers) if layer[0] == "Linear")
    members = (np.shape(layer_params[first_linear]["weight"]) or (0,))[0]
    shape = lambda *sizes: (members, *sizes) if ensemble else sizes
    for index, (layer, layer_param) in enumerate(zip(layers, layer_params, strict=True)):
        if layer[0] == "Dropout":
            continue  # the identity at inference
        if layer[0] != "Linear":
            node(_ONNX_ACTIVATIONS[layer[0]], [current], f"{index}.{layer[0].lower()}")
            continue
        _, fan_in, outputs, bias = layer
        weight = np.asarray(layer_param["weight"], np.float32)
        if ensemble and weight.ndim != 3:
            raise ValueError(
                f"ensemble=True takes params with a leading member axis; layer {index}'s weight has shape "
                f"{weight.shape}"
            )
        if weight.shape != shape(outputs, fan_in):
            raise ValueError(f"layer {index}: weight of shape {shape(outputs, fan_in)} expected, got {weight.shape}")
        bias_value = np.asarray(layer_param["bias"], np.float32).reshape(shape(1, outputs)) if bias else None
        if ensemble:  # (rows, in) @ (K, in, out) broadcasts to (K, rows, out)
            node("MatMul", [current, constant(f"{index}.weight", weight.transpose(0, 2, 1))], f"{index}.matmul")
            if bias_value is not None:
                node("Add", [current, constant(f"{index}.bias", bias_value)], f"{index}.linear")
            continue
        operands = [current, constant(f"{index}.weight", weight)]
        if bias_value is not None:
            operands.append(constant(f"{index}.bias", bias_value.reshape(outputs)))
        node("Gemm", operands, f"{index}.linear", transB=1)
    if ensemble and scaling.probabilities:
        node("Softmax", [current], "member_probabilities", axis=-1)
        node("ReduceMean", [current], "probabilities", axes=[0], keepdims=0)
        node("Max", [current, constant("tiny", np.finfo(np.float32).tiny)], "clipped")
        node("Log", [current], "log_probabilities")
        node("Mul", ["probabilities", current], "terms")
        constants.append(numpy_helper.from_array(np.asarray([-1], np.int64), "last_axis"))
        node("ReduceSum", [current, "last_axis"], "negative_entropy", keepdims=1)
        node("Neg", [current], "entropy")
        node("Concat", ["probabilities", current], "combined", axis=-1)
        outputs += 1
    elif ensemble:
        member_outputs = current
        node("ReduceMean", [member_outputs], "mean", axes=[0], keepdims=0)
        node("Sub", [member_outputs, "mean"], "deviations")
        node("Mul", [current, current], "squared_deviations")
        node("ReduceMean", [current], "variance", axes=[0], keepdims=0)
        node("Sqrt", [current], "std")
        mean = "mean"
        if scaling.y_mean is not None and scaling.y_std is not None:
            node("Mul", ["mean", constant("y_std", scaling.y_std)], "scaled")
            mean = node("Add", [current, constant("y_mean", scaling.y_mean)], "units")
            node("Mul", ["std", constant("abs_y_std", abs(scaling.y_std))], "units_std")
        node("Concat", [mean, current], "combined", axis=-1)
        outputs *= 2
    else:
        if scaling.y_mean is not None:
            node("Mul", [current, constant("y_std", scaling.y_std)], "scaled")
            node("Add", [current, constant("y_mean", scaling.y_mean)], "units")
        if scaling.probabilities:
            node("Softmax", [current], "probabilities", axis=-1)
    node("Identity", [current], "y")
    graph = helper.make_graph(
        nodes,
        model.name or "bp_jax",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["rows", scaling.inputs])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["rows", outputs])],
        initializer=constants,
    )
    proto = helper.make_model(
        graph,
        producer_name="bp_jax",
        opset_imports=[helper.make_opsetid("", ONNX_OPSET)],
        ir_version=ONNX_IR_VERSION,
    )
    onnx.checker.check_model(proto, full_check=True)
    return proto

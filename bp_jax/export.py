"""Trained models out of bp_jax: a portable `jax.export` program, or an ONNX graph (an edge module; onnx is
imported inside `to_onnx` only, and only it needs the export extra).

    exported = to_jax_export(model, params, x_mean=..., x_std=..., y_mean=..., y_std=...)
    Path("model.jax").write_bytes(exported.serialize())       # elsewhere, jax and flatbuffers alone:
    jax.export.deserialize(Path("model.jax").read_bytes()).call(x)
    proto = to_onnx(model, params, x_mean=..., x_std=..., probabilities=True)    # an onnx.ModelProto
    Path("model.onnx").write_bytes(proto.SerializeToString())  # onnxruntime.InferenceSession(...).run(None, {"x": x})

Both compute one function of raw float32 rows x, shape (rows, inputs), the number of rows free:

    x̃ = where(isnan(x), fill, x)       only with `fill`: a NaN input takes its fill value
    z = (x̃ − x_mean) / x_std            only with `x_mean` and `x_std`: the training standardisation
    o = model.apply(params, z)          params baked in as float32 constants, matmuls at "highest" precision
    y = o·y_std + y_mean                only with `y_mean` and `y_std`: a regression's target units
    p = softmax(o) over the last axis   only with `probabilities=True`: a classifier's class probabilities

The output has shape (rows, outputs). `to_jax_export` takes any Model; `to_onnx` a Sequential of Linear, ReLU,
Sigmoid and Tanh layers (as `mlp` builds), read from `model.name`. The names are `bp_jax.to_jax_export` and
`bp_jax.to_onnx`; `bp-jax export` wraps them for a trained run.
"""

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from bp_jax._layers import Model, Params

if TYPE_CHECKING:  # for the annotations only: onnx loads when to_onnx runs
    import onnx

#: the platforms `to_jax_export` lowers for by default: every one JAX serves
PLATFORMS = ("cpu", "cuda", "rocm", "tpu")
#: ONNX opset and IR version of `to_onnx`'s graphs (opset 17 has every operator used; IR 8 is read by
#: onnxruntime ≥ 1.10)
ONNX_OPSET, ONNX_IR_VERSION = 17, 8
_LAYER = re.compile(r"Linear\((\d+), (\d+)(, bias=False)?\)|(ReLU|Sigmoid|Tanh)\(\)")
_ONNX_ACTIVATIONS = {"ReLU": "Relu", "Sigmoid": "Sigmoid", "Tanh": "Tanh"}


class _Around(NamedTuple):
    """What surrounds the model, checked and as float32 arrays (None where absent)."""

    inputs: int
    fill: np.ndarray | None
    x_mean: np.ndarray | None
    x_std: np.ndarray | None
    y_mean: np.ndarray | None
    y_std: np.ndarray | None
    probabilities: bool


def _vector(name: str, value, inputs: int) -> np.ndarray | None:
    if value is None:
        return None
    array = np.asarray(value, np.float32)
    if array.shape != (inputs,):
        raise ValueError(f"{name} must have one value per input, shape ({inputs},), got shape {array.shape}")
    return array


def _around(model: Model, inputs, fill, x_mean, x_std, y_mean, y_std, probabilities) -> _Around:
    """The arguments checked: ValueError naming what came where something else was expected."""
    if inputs is None:
        layers = _layers(model)
        if not layers or layers[0][0] != "Linear":
            raise ValueError(f"pass inputs=, the number of input columns: {model.name or 'the model'} does not say it")
        inputs = layers[0][1]
    if not isinstance(inputs, int) or isinstance(inputs, bool) or inputs < 1:
        raise ValueError(f"inputs must be a positive int, got {inputs!r}")
    if (x_mean is None) != (x_std is None) or (y_mean is None) != (y_std is None):
        raise ValueError("give x_mean with x_std, and y_mean with y_std (or neither of a pair)")
    if probabilities and y_mean is not None:
        raise ValueError("probabilities=True is a classifier's output; y_mean and y_std are a regression's")
    scalar = lambda name, value: None if value is None else np.asarray(_finite(name, float(value)), np.float32)
    return _Around(
        inputs,
        _vector("fill", fill, inputs),
        _vector("x_mean", x_mean, inputs),
        _vector("x_std", x_std, inputs),
        scalar("y_mean", y_mean),
        scalar("y_std", y_std),
        bool(probabilities),
    )


def _finite(name: str, value: float) -> float:
    if not np.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return value


def _predictor(model: Model, params: Params, around: _Around) -> jax.stages.Wrapped:
    """The jitted `x -> y` of the module docstring, params as float32 constants."""
    constants = jax.tree.map(lambda leaf: np.asarray(leaf, np.float32), params)

    @jax.jit
    def predict(x):
        if around.fill is not None:
            x = jnp.where(jnp.isnan(x), around.fill, x)
        if around.x_mean is not None:
            x = (x - around.x_mean) / around.x_std
        with jax.default_matmul_precision("highest"):
            out = model.apply(constants, x)
        if around.y_mean is not None and around.y_std is not None:
            out = out * around.y_std + around.y_mean
        return jax.nn.softmax(out, axis=-1) if around.probabilities else out

    return predict


def to_jax_export(
    model: Model,
    params: Params,
    *,
    inputs: int | None = None,
    fill: Sequence[float] | None = None,
    x_mean: Sequence[float] | None = None,
    x_std: Sequence[float] | None = None,
    y_mean: float | None = None,
    y_std: float | None = None,
    probabilities: bool = False,
    platforms: Sequence[str] = PLATFORMS,
) -> jax.export.Exported:
    """The predictor (module docstring) as a `jax.export.Exported` for float32 x of shape (rows, inputs), rows
    symbolic, lowered for each of `platforms`. `inputs` defaults to the first Linear layer's in-features.
    `.serialize()` (which needs flatbuffers) gives bytes that `jax.export.deserialize(...).call(x)` runs with jax
    and flatbuffers alone, on any of them."""
    around = _around(model, inputs, fill, x_mean, x_std, y_mean, y_std, probabilities)
    (rows,) = jax.export.symbolic_shape("rows")
    x = jax.ShapeDtypeStruct((rows, around.inputs), jnp.float32)
    return jax.export.export(_predictor(model, params, around), platforms=tuple(platforms))(x)


def _layers(model: Model) -> list[tuple]:
    """`model.name` read as layers: ("Linear", in, out, bias) or ("ReLU" | "Sigmoid" | "Tanh",); [] when the
    name is not a Sequential (or a single layer) of those."""
    name = model.name or ""
    body = name[len("Sequential(") : -1] if name.startswith("Sequential(") and name.endswith(")") else name
    layers, position = [], 0
    for match in _LAYER.finditer(body):
        if body[position : match.start()].strip(", "):
            return []
        linear_in, linear_out, no_bias, activation = match.groups()
        layers.append(("Linear", int(linear_in), int(linear_out), not no_bias) if activation is None else (activation,))
        position = match.end()
    return layers if body and not body[position:].strip(", ") else []


def to_onnx(
    model: Model,
    params: Params,
    *,
    inputs: int | None = None,
    fill: Sequence[float] | None = None,
    x_mean: Sequence[float] | None = None,
    x_std: Sequence[float] | None = None,
    y_mean: float | None = None,
    y_std: float | None = None,
    probabilities: bool = False,
) -> "onnx.ModelProto":
    """The predictor (module docstring) as an ONNX graph, input "x" and output "y" (float32, rows × inputs and
    rows × outputs, "rows" free): IsNaN/Where for `fill`, Sub/Div for the standardisation, Gemm (y = x·Wᵀ + b,
    transB=1: the weight keeps PyTorch's (out, in) layout) per Linear, Relu/Sigmoid/Tanh, Mul/Add to the
    target's units, Softmax. ValueError unless the model is a Sequential of Linear, ReLU, Sigmoid and Tanh layers
    whose params have its shapes; ImportError naming the extra without onnx."""
    try:
        import onnx
        from onnx import TensorProto, helper, numpy_helper
    except ImportError as err:
        raise ImportError("bp_jax.to_onnx needs onnx: pip install 'bp_jax[export]'") from err

    layers = _layers(model)
    if not layers:
        raise ValueError(
            f"to_onnx exports a Sequential of Linear, ReLU, Sigmoid and Tanh layers (as bp_jax.mlp builds); "
            f"got {model.name or 'a model without a name'}"
        )
    layer_params = tuple(params) if (model.name or "").startswith("Sequential(") else (params,)
    if len(layer_params) != len(layers):
        raise ValueError(f"{model.name} has {len(layers)} layers but params has {len(layer_params)} entries")
    around = _around(model, inputs, fill, x_mean, x_std, y_mean, y_std, probabilities)
    widths = [layer[1] for layer in layers if layer[0] == "Linear"]
    if widths[0] != around.inputs:
        raise ValueError(f"{model.name} takes {widths[0]} inputs, not inputs={around.inputs}")

    nodes, constants = [], []
    current = "x"

    def constant(name: str, value) -> str:
        constants.append(numpy_helper.from_array(np.asarray(value, np.float32), name))
        return name

    def node(op: str, operands: list[str], output: str, **attributes) -> None:
        nonlocal current
        nodes.append(helper.make_node(op, operands, [output], name=output, **attributes))
        current = output

    if around.fill is not None:
        raw = current
        node("IsNaN", [raw], "missing")
        node("Where", ["missing", constant("fill", around.fill), raw], "filled")
    if around.x_mean is not None:
        node("Sub", [current, constant("x_mean", around.x_mean)], "centred")
        node("Div", [current, constant("x_std", around.x_std)], "standardised")
    outputs = around.inputs
    for index, (layer, layer_param) in enumerate(zip(layers, layer_params, strict=True)):
        if layer[0] != "Linear":
            node(_ONNX_ACTIVATIONS[layer[0]], [current], f"{index}.{layer[0].lower()}")
            continue
        _, fan_in, outputs, bias = layer
        weight = np.asarray(layer_param["weight"], np.float32)
        if weight.shape != (outputs, fan_in):
            raise ValueError(f"layer {index}: weight of shape {(outputs, fan_in)} expected, got {weight.shape}")
        operands = [current, constant(f"{index}.weight", weight)]
        if bias:
            operands.append(constant(f"{index}.bias", np.asarray(layer_param["bias"], np.float32).reshape(outputs)))
        node("Gemm", operands, f"{index}.linear", transB=1)
    if around.y_mean is not None:
        node("Mul", [current, constant("y_std", around.y_std)], "scaled")
        node("Add", [current, constant("y_mean", around.y_mean)], "units")
    if around.probabilities:
        node("Softmax", [current], "probabilities", axis=-1)
    node("Identity", [current], "y")
    graph = helper.make_graph(
        nodes,
        model.name or "bp_jax",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["rows", around.inputs])],
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

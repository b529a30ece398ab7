"""PyTorch interop, the one edge module that imports torch: weights in and out of nn.Sequential.

    params = from_torch(torch_model)              # nn.Sequential -> params for the matching bp_jax.Sequential
    params = from_torch(state_dict, model=model)  # {"0.weight": ..., "2.bias": ...} -> the same
    to_torch(params, torch_model, model=model)    # writes params into the module in place, returns it

Layers map one to one: nn.Linear -> {"weight": (out, in), "bias": (out,)} (PyTorch's layout, no transposes;
no "bias" for bias=False), nn.ReLU, nn.Sigmoid, nn.Tanh, nn.Dropout -> {}, nn.Sequential -> a tuple with one entry per
layer. Any other module is a TypeError naming its place and type. Given a `model`, its `name` must be the
module's (same layers, same activations): a Tanh network's weights never go silently into a ReLU one. Values
are copied, never shared.
"""

import re
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np

try:
    import torch
    from torch import nn
except ImportError as err:
    raise ImportError("bp_jax.from_torch and bp_jax.to_torch need PyTorch: pip install 'bp_jax[torch]'") from err

from bp_jax._layers import Model, Params

PARAMETER_FREE = (nn.ReLU, nn.Sigmoid, nn.Tanh, nn.Dropout)
SUPPORTED = "supported: nn.Sequential, nn.Linear, nn.ReLU, nn.Sigmoid, nn.Tanh, nn.Dropout"


def _to_jax(tensor: torch.Tensor | np.ndarray) -> jax.Array:
    if isinstance(tensor, (np.ndarray, np.generic)):
        return jnp.array(tensor)
    tensor = tensor.detach().cpu()
    if tensor.dtype == torch.bfloat16:  # numpy has no bfloat16: move the bits, as JAX's (ml_dtypes') bfloat16
        return jnp.array(tensor.view(torch.int16).numpy().view(jnp.bfloat16))
    return jnp.array(tensor.numpy())  # jnp.array copies: later in-place torch updates don't leak in


def _to_torch(value: np.ndarray) -> torch.Tensor:
    if value.dtype == jnp.bfloat16:  # torch.from_numpy cannot read ml_dtypes' bfloat16: move the bits
        return torch.from_numpy(value.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(value)


def _module_params(module: nn.Module, where: str) -> Params:
    if isinstance(module, nn.Sequential):
        return tuple(_module_params(layer, f"{where}{index}.") for index, layer in enumerate(module))
    if isinstance(module, nn.Linear):
        return {name: _to_jax(tensor) for name, tensor in module.named_parameters()}
    if isinstance(module, PARAMETER_FREE):
        return {}
    raise TypeError(
        f"layer {where.rstrip('.') or '(top)'} is {type(module).__name__}, which bp_jax has no layer for; {SUPPORTED}"
    )


#: A Linear's contraction option in a model's name.
_CONTRACTION = re.compile(r", contraction='\w+'")


def _module_name(module: nn.Module) -> str:
    """The module as the bp_jax constructor call naming the same layers: `Model.name`'s form."""
    if isinstance(module, nn.Sequential):
        return f"Sequential({', '.join(map(_module_name, module))})"
    if isinstance(module, nn.Linear):
        return f"Linear({module.in_features}, {module.out_features}{'' if module.bias is not None else ', bias=False'})"
    if isinstance(module, nn.Dropout):
        return f"Dropout({float(module.p)})"
    return f"{type(module).__name__}()"


def _check_layers(module: nn.Module, model: Model | None) -> None:
    """ValueError unless the module has the model's layers and activations (where the model's name is known; a
    Linear's contraction is how it computes the same function, so it is left out of the comparison)."""
    if model is not None and model.name is not None and _module_name(module) != _CONTRACTION.sub("", model.name):
        raise ValueError(
            f"the torch module is {_module_name(module)} but the model is {model.name}: they compute "
            "different functions"
        )


def _state_dict_params(state_dict: Mapping, num_layers: int | None) -> Params:
    layers: dict[int, dict] = {}
    for key, tensor in state_dict.items():
        index, dot, name = key.partition(".")
        if not (index.isdigit() and dot and name in ("weight", "bias")):
            raise ValueError(
                f"state_dict key {key!r} is not '<layer index>.weight' or '<layer index>.bias', "
                f"the keys of a flat nn.Sequential of nn.Linear and activations"
            )
        layers.setdefault(int(index), {})[name] = _to_jax(tensor)
    if num_layers is None:
        num_layers = max(layers, default=-1) + 1
    elif layers and max(layers) >= num_layers:
        raise ValueError(f"state_dict has layer {max(layers)} but the model has {num_layers} layers")
    return tuple(layers.get(index, {}) for index in range(num_layers))


def _shapes(tree):
    return jax.tree.map(jnp.shape, tree)


def _expected_shapes(model: Model):
    return _shapes(jax.eval_shape(model.init, jax.random.key(0)))


def _check_against(params: Params, expected) -> None:
    """ValueError naming the first layer whose keys or shapes differ from the model's."""
    got = _shapes(params)
    if isinstance(expected, tuple) and isinstance(got, tuple):
        if len(got) != len(expected):
            raise ValueError(f"torch gives {len(got)} layers but the model has {len(expected)}")
        for index, (got_layer, expected_layer) in enumerate(zip(got, expected)):
            if got_layer != expected_layer:
                raise ValueError(
                    f"layer {index}: torch gives params of shapes {got_layer}, the model expects {expected_layer}"
                )
    elif got != expected:
        raise ValueError(f"torch gives params of shapes {got}, the model expects {expected}")


def from_torch(module_or_state_dict: nn.Module | Mapping, model: Model | None = None) -> Params:
    """Params for the bp_jax model matching a torch module or an nn.Sequential's state_dict.

    Args:
      module_or_state_dict: an nn.Sequential (possibly nested) of nn.Linear, nn.ReLU, nn.Sigmoid, nn.Tanh, nn.Dropout,
        one such layer, or an nn.Sequential's `state_dict()` (keys "<index>.weight", "<index>.bias").
      model: the matching bp_jax model. When given, every layer's keys and shapes are checked against
        `jax.eval_shape(model.init, key)` and a mismatch is a ValueError naming the layer index; a module's
        layers and activations must be the model's (`model.name`). A state_dict (of torch tensors or numpy arrays)
        says nothing about parameter-free layers: without `model` it yields `{}` for each missing index up to
        the highest one present, so a trailing activation (Linear, ReLU, Linear, Sigmoid) needs `model`.

    Returns:
      The params pytree: a tuple for nn.Sequential, a dict per layer, arrays in PyTorch's layout and dtype
        (float64 stays float64 only under `jax.enable_x64`; otherwise JAX stores float32). Always copies.

    Raises:
      TypeError: a module bp_jax has no layer for (naming its place and type), or neither a module nor a
        mapping; a state_dict with a `model` that is not a Sequential.
      ValueError: a state_dict key that is not "<index>.weight" or "<index>.bias", or (given `model`) a
        layer whose keys or shapes differ from the model's, or a module whose layers are not the model's.

    Examples:
      >>> import jax
      >>> import jax.numpy as jnp
      >>> import torch
      >>> from torch import nn
      >>> from bp_jax import from_torch, mlp
      >>> module = nn.Sequential(nn.Linear(10, 5), nn.ReLU(), nn.Linear(5, 1))
      >>> model = mlp((10, 5, 1))
      >>> params = from_torch(module, model=model)
      >>> jax.tree.map(jnp.shape, params)
      ({'bias': (5,), 'weight': (5, 10)}, {}, {'bias': (1,), 'weight': (1, 5)})
      >>> expected = module(torch.ones(3, 10)).detach().numpy()
      >>> bool(jnp.allclose(model.apply(params, jnp.ones((3, 10))), expected, atol=1e-6))
      True
      >>> jax.tree.map(jnp.shape, from_torch(module.state_dict(), model=model))
      ({'bias': (5,), 'weight': (5, 10)}, {}, {'bias': (1,), 'weight': (1, 5)})
    """
    expected = None if model is None else _expected_shapes(model)
    if isinstance(module_or_state_dict, nn.Module):
        params = _module_params(module_or_state_dict, "")
    elif isinstance(module_or_state_dict, Mapping):
        if expected is not None and not isinstance(expected, tuple):
            raise TypeError("from_torch(state_dict, model) needs a bp_jax.Sequential model")
        params = _state_dict_params(module_or_state_dict, None if expected is None else len(expected))
    else:
        raise TypeError(f"from_torch expects an nn.Module or a state_dict, got {type(module_or_state_dict).__name__}")
    if expected is not None:
        _check_against(params, expected)
    if isinstance(module_or_state_dict, nn.Module):
        _check_layers(module_or_state_dict, model)
    return params


def _pairs(params: Params, module: nn.Module, where: str) -> list[tuple[torch.Tensor, np.ndarray]]:
    """(module tensor, new value) for every parameter, every shape checked before anything is written."""
    name = f"layer {where.rstrip('.') or '(top)'} ({type(module).__name__})"
    if isinstance(module, nn.Sequential):
        if not isinstance(params, (tuple, list)) or len(params) != len(module):
            got = f"{len(params)} entries" if isinstance(params, (tuple, list)) else type(params).__name__
            raise ValueError(f"{name} has {len(module)} layers but params has {got}")
        return [
            pair
            for index, (layer_params, layer) in enumerate(zip(params, module))
            for pair in _pairs(layer_params, layer, f"{where}{index}.")
        ]
    if not isinstance(module, (nn.Linear, *PARAMETER_FREE)):
        raise TypeError(f"{name}: bp_jax has no layer for it; {SUPPORTED}")
    tensors = dict(module.named_parameters())
    if not isinstance(params, Mapping) or set(params) != set(tensors):
        got = str(sorted(params)) if isinstance(params, Mapping) else type(params).__name__
        raise ValueError(f"{name} expects params with keys {sorted(tensors)}, got {got}")
    pairs: list[tuple[torch.Tensor, np.ndarray]] = []
    for key, tensor in tensors.items():
        value = np.array(params[key])  # a writable copy, as torch.from_numpy wants
        if value.shape != tuple(tensor.shape):
            raise ValueError(f"{name} {key}: module has shape {tuple(tensor.shape)}, params have {value.shape}")
        pairs.append((tensor, value))
    return pairs


def to_torch(params: Params, module: nn.Module, model: Model | None = None) -> nn.Module:
    """Copy bp_jax params into `module`'s parameters in place (under torch.no_grad) and return the module.

    The inverse of `from_torch`: the same layers and layout. Each tensor keeps the module's dtype and device.
    Every layer is checked before anything is written, so a failed call leaves the module untouched.

    Args:
      params: the params pytree, as `from_torch` gives it for this module.
      module: an nn.Sequential (possibly nested) of nn.Linear, nn.ReLU, nn.Sigmoid, nn.Tanh, or one such layer.
      model: the bp_jax model the params belong to; when given, its layers and activations must be the
        module's (`model.name`).

    Returns:
      The module, its parameters now holding the params' values.

    Raises:
      ValueError: a missing key or a value of another shape (naming the layer and both shapes), or a
        `model` whose layers or activations are not the module's.
      TypeError: a module bp_jax has no layer for.

    Examples:
      >>> import jax
      >>> import jax.numpy as jnp
      >>> import torch
      >>> from torch import nn
      >>> from bp_jax import mlp, to_torch
      >>> model = mlp((10, 5, 1))
      >>> params = model.init(jax.random.key(0))
      >>> module = to_torch(params, nn.Sequential(nn.Linear(10, 5), nn.ReLU(), nn.Linear(5, 1)), model=model)
      >>> expected = module(torch.ones(3, 10)).detach().numpy()
      >>> bool(jnp.allclose(model.apply(params, jnp.ones((3, 10))), expected, atol=1e-6))
      True
    """
    _check_layers(module, model)
    pairs = _pairs(params, module, "")
    with torch.no_grad():
        for tensor, value in pairs:
            tensor.copy_(_to_torch(value))  # casts to the tensor's dtype and device
    return module

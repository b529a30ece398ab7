"""bp_jax: the documents' backpropagation as pure JAX functions over explicit parameter pytrees.

The public names are listed once, in `_EXPORTS` (name -> the submodule that defines it), and resolved from
their submodule on first access (PEP 562), so `import bp_jax` imports neither jax nor torch: the command
installs its signal handling before anything heavy loads. `from_torch` and `to_torch` come from the edge
module `bp_jax.torch_interop` and are listed in `__all__` only where torch is installed.

Examples:
  The documents' tiny network y = w2·relu(w1·x) at x = 2, w1 = 0.5, w2 = 1.5, t = 3, by autodiff and by hand:

  >>> import jax
  >>> import bp_jax
  >>> loss = bp_jax.loss_fn(bp_jax.tiny_net(), bp_jax.squared_error)   # L = (y − t)²
  >>> grads = jax.grad(loss)({"w1": 0.5, "w2": 1.5}, 2.0, 3.0)
  >>> {name: float(grad) for name, grad in grads.items()}
  {'w1': -9.0, 'w2': -3.0}
  >>> {name: float(grad) for name, grad in bp_jax.manual.tiny_net_grads(w1=0.5, w2=1.5, x=2.0, t=3.0).items()}
  {'w1': -9.0, 'w2': -3.0, 'x': -2.25}
"""

import importlib
import importlib.util
from typing import TYPE_CHECKING

#: public name -> the submodule it lives in (the module itself for a submodule such as `manual`)
_EXPORTS = {
    "ACTIVATIONS": "_layers",
    "Dropout": "_layers",
    "Linear": "_layers",
    "Model": "_layers",
    "ReLU": "_layers",
    "Sequential": "_layers",
    "Sigmoid": "_layers",
    "Tanh": "_layers",
    "mlp": "_layers",
    "neuron": "_layers",
    "tiny_net": "_layers",
    "Graph": "_explain",
    "Node": "_explain",
    "explain": "_explain",
    "EarlyStopping": "_early_stopping",
    "early_stopping": "_early_stopping",
    "EnsembleResult": "_fit",
    "FitResult": "_fit",
    "NonFiniteLoss": "_fit",
    "StopRule": "_fit",
    "fit": "_fit",
    "fit_ensemble": "_fit",
    "stop_rules": "_fit",
    "data_parallel_mesh": "_mesh",
    "ensemble_mesh": "_mesh",
    "minibatch_indices": "_order",
    "loss_fn": "_losses",
    "mse": "_losses",
    "softmax_cross_entropy": "_losses",
    "squared_error": "_losses",
    "optax_step": "_steps",
    "sgd_step": "_steps",
    "manual": "manual",
    "Scaling": "export",
    "to_jax_export": "export",
    "to_onnx": "export",
    "from_torch": "torch_interop",
    "to_torch": "torch_interop",
}
_TORCH_INTEROP = ("from_torch", "to_torch")

__all__ = sorted(name for name in _EXPORTS if name not in _TORCH_INTEROP)
if importlib.util.find_spec("torch") is not None:  # keeps `from bp_jax import *` working without torch
    __all__ += _TORCH_INTEROP

if TYPE_CHECKING:  # what type checkers see; at run time `__getattr__` imports each name on first use
    from bp_jax import manual  # noqa: F401
    from bp_jax._early_stopping import EarlyStopping, early_stopping  # noqa: F401
    from bp_jax._explain import Graph, Node, explain  # noqa: F401
    from bp_jax._fit import EnsembleResult, FitResult, NonFiniteLoss, StopRule, fit, fit_ensemble, stop_rules  # noqa: F401
    from bp_jax._layers import (  # noqa: F401
        ACTIVATIONS,
        Dropout,
        Linear,
        Model,
        ReLU,
        Sequential,
        Sigmoid,
        Tanh,
        mlp,
        neuron,
        tiny_net,
    )
    from bp_jax._losses import loss_fn, mse, softmax_cross_entropy, squared_error  # noqa: F401
    from bp_jax._mesh import data_parallel_mesh, ensemble_mesh  # noqa: F401
    from bp_jax._order import minibatch_indices  # noqa: F401
    from bp_jax._steps import optax_step, sgd_step  # noqa: F401
    from bp_jax.export import Scaling, to_jax_export, to_onnx  # noqa: F401
    from bp_jax.torch_interop import from_torch, to_torch  # noqa: F401


def __getattr__(name: str):
    """The public `name`, imported from its submodule and kept here for the next access."""
    if name not in _EXPORTS:
        raise AttributeError(f"module 'bp_jax' has no attribute {name!r}")
    module = importlib.import_module(f"bp_jax.{_EXPORTS[name]}")
    value = module if _EXPORTS[name] == name else getattr(module, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    """The module's globals and every public name, imported or not."""
    return sorted(set(globals()) | set(_EXPORTS))

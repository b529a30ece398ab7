"""bp_jax: the documents' backpropagation as pure JAX functions over explicit parameter pytrees.

`from_torch` and `to_torch` live in the edge module `bp_jax.torch_interop`, imported on first access:
`import bp_jax` never imports torch.
"""

import importlib.util

from bp_jax import manual
from bp_jax._layers import (
    ACTIVATIONS,
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
from bp_jax._explain import Graph, Node, explain
from bp_jax._fit import EnsembleResult, FitResult, NonFiniteLoss, fit, fit_ensemble
from bp_jax._mesh import data_parallel_mesh, ensemble_mesh
from bp_jax._order import minibatch_indices
from bp_jax._losses import loss_fn, mse, softmax_cross_entropy, squared_error
from bp_jax._steps import optax_step, sgd_step

__all__ = [
    "ACTIVATIONS",
    "EnsembleResult",
    "FitResult",
    "Graph",
    "Linear",
    "Model",
    "Node",
    "NonFiniteLoss",
    "ReLU",
    "Sequential",
    "Sigmoid",
    "Tanh",
    "data_parallel_mesh",
    "ensemble_mesh",
    "explain",
    "fit",
    "fit_ensemble",
    "loss_fn",
    "manual",
    "minibatch_indices",
    "mlp",
    "mse",
    "neuron",
    "optax_step",
    "sgd_step",
    "softmax_cross_entropy",
    "squared_error",
    "tiny_net",
]

_TORCH_INTEROP = ("from_torch", "to_torch")
if importlib.util.find_spec("torch") is not None:  # keeps `from bp_jax import *` working without torch
    __all__ += _TORCH_INTEROP


def __getattr__(name: str):
    if name in _TORCH_INTEROP:
        from bp_jax import torch_interop

        return getattr(torch_interop, name)
    raise AttributeError(f"module 'bp_jax' has no attribute {name!r}")

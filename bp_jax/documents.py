"""The seed documents' three examples, each with the document's constants, built in one place.

    from bp_jax import documents
    documents.NEURON.w, documents.NEURON.x, documents.NEURON.t    # 0.8, 1.5, 0.5
    documents.neuron_loss("sigmoid")(documents.NEURON.params, documents.NEURON.x, documents.NEURON.t)
    documents.tiny_net_loss(documents.TINY_NET.params, documents.TINY_NET.x, documents.TINY_NET.t)   # 2.25
    documents.TINY_NET.params, documents.TINY_NET.x, ...          # {"w1": 0.5, "w2": 1.5}, 2.0, t = 3.0
    documents.TINY_NET_VALUES["L"], documents.TINY_NET_GRADS["w1"]    # 2.25, −9.0: the document's numbers
    model, params, x, y = documents.seed_problem(jax.random.key(0))   # the seed MLP, x = randn(32, 10)
    documents.every_layer_mlp()       # beyond the documents: every layer kind once, for the parity checks

Single neuron y = a(w·x), L = (y − t)²; tiny network z1 = w1·x, a1 = relu(z1), y = w2·a1, L = (y − t)²;
seed MLP `nn.Sequential(nn.Linear(10, 5), nn.ReLU(), nn.Linear(5, 1))` with MSE, SGD lr = 0.01, batch 32.
Pure: no files, no globals beyond these constants.
"""

from collections.abc import Callable
from typing import NamedTuple

import jax

from bp_jax._layers import Linear, Model, ReLU, Sequential, Sigmoid, Tanh, default_float, mlp, neuron, tiny_net
from bp_jax._losses import squared_error


class Neuron(NamedTuple):
    """The single neuron's weight, input and target (demo and explain use these)."""

    w: float = 0.8
    x: float = 1.5
    t: float = 0.5

    @property
    def params(self) -> dict:
        return {"w": self.w}


class TinyNet(NamedTuple):
    """The tiny network's input, weights and target, as the document writes them."""

    x: float = 2.0
    w1: float = 0.5
    w2: float = 1.5
    t: float = 3.0

    @property
    def params(self) -> dict:
        return {"w1": self.w1, "w2": self.w2}


NEURON = Neuron()
TINY_NET = TinyNet()
#: The document's forward values at TINY_NET: z1 = w1·x, a1 = relu(z1), y = w2·a1, L = (y − t)².
TINY_NET_VALUES = {"z1": 1.0, "a1": 1.0, "y": 1.5, "L": 2.25}
#: The document's gradients at TINY_NET: dL/dw1 = 2(y − t)·w2·relu'(z1)·x, dL/dw2 = 2(y − t)·a1, dL/dx.
TINY_NET_GRADS = {"w1": -9.0, "w2": -3.0, "x": -2.25}
#: The tiny network's equations as the document names them: symbol -> the symbols it is computed from, in
#: forward order (w1, w2, x and t are the inputs). `bp-jax explain` finds each in the graph by its operands.
TINY_NET_EQUATIONS = {"z1": ("w1", "x"), "a1": ("z1",), "y": ("w2", "a1"), "y − t": ("y", "t"), "L": ("y − t",)}

#: The seed MLP's layer sizes, learning rate and batch: nn.Linear(10, 5), nn.ReLU(), nn.Linear(5, 1); SGD lr 0.01.
SEED_SIZES = (10, 5, 1)
SEED_LR = 0.01
SEED_BATCH = 32


def neuron_loss(activation: str = "identity") -> Callable:
    """L(params, x, t) = (a(w·x) − t)², the single neuron's loss (its arguments named as the document's)."""
    model = neuron(activation)

    def loss(params, x, t):
        return squared_error(model.apply(params, x), t)

    return loss


def tiny_net_loss(params, x, t):
    """L = (w2·relu(w1·x) − t)², the tiny network's loss."""
    return squared_error(tiny_net().apply(params, x), t)


def seed_mlp(activation: str = "relu", *, sizes=SEED_SIZES, dtype=None) -> Model:
    """`mlp(sizes, activation)`: the documents' seed MLP 10 → 5 → 1 by default."""
    return mlp(sizes, activation, dtype=dtype)


def seed_problem(
    key: jax.Array, rows: int = SEED_BATCH, *, activation: str = "relu", sizes=SEED_SIZES, dtype=None
) -> tuple[Model, object, jax.Array, jax.Array]:
    """(model, params, x, y): `seed_mlp`, its init and x, y ~ N(0, 1) of shapes (rows, sizes[0]) and
    (rows, sizes[-1]); `key` is split in three, for params, x and y."""
    model = seed_mlp(activation, sizes=sizes, dtype=dtype)
    params_key, x_key, y_key = jax.random.split(key, 3)
    dtype = dtype or default_float()
    x = jax.random.normal(x_key, (rows, sizes[0]), dtype)
    y = jax.random.normal(y_key, (rows, sizes[-1]), dtype)
    return model, model.init(params_key), x, y


def every_layer_mlp() -> Model:
    """Beyond the documents: every layer kind once, 10 → 8 → 6 → 4 → 3 (Linear, Tanh, Linear, Sigmoid, Linear
    without bias, ReLU, Linear), the one network that `bp-jax check` and the manual-derivative tests run past the
    seed MLP."""
    return Sequential(Linear(10, 8), Tanh(), Linear(8, 6), Sigmoid(), Linear(6, 4, bias=False), ReLU(), Linear(4, 3))

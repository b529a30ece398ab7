"""The seed documents' three examples, each with the document's constants, built in one place.

Single neuron y = a(w·x), L = (y − t)²; tiny network z1 = w1·x, a1 = relu(z1), y = w2·a1, L = (y − t)²;
seed MLP `nn.Sequential(nn.Linear(10, 5), nn.ReLU(), nn.Linear(5, 1))` with MSE, SGD lr = 0.01, batch 32.
Pure: no files, no globals beyond these constants.

Examples:
  >>> import jax
  >>> from bp_jax import documents
  >>> neuron = documents.NEURON
  >>> neuron
  Neuron(w=0.8, x=1.5, t=0.5)
  >>> round(float(documents.neuron_loss("sigmoid")(neuron.params, neuron.x, neuron.t)), 4)
  0.0721
  >>> net = documents.TINY_NET
  >>> net.params, net.x, net.t
  ({'w1': 0.5, 'w2': 1.5}, 2.0, 3.0)
  >>> float(documents.tiny_net_loss(net.params, net.x, net.t))
  2.25
  >>> documents.TINY_NET_VALUES["L"], documents.TINY_NET_GRADS["w1"]   # the document's numbers
  (2.25, -9.0)
  >>> model, params, x, y = documents.seed_problem(jax.random.key(0))   # the seed MLP, x = randn(32, 10)
  >>> model.name, x.shape, y.shape
  ('Sequential(Linear(10, 5), ReLU(), Linear(5, 1))', (32, 10), (32, 1))
  >>> documents.every_layer_mlp().name   # beyond the documents: every layer kind once, for the parity checks
  'Sequential(Linear(10, 8), Tanh(), Linear(8, 6), Sigmoid(), Linear(6, 4, bias=False), ReLU(), Linear(4, 3))'
"""

from collections.abc import Callable
from typing import NamedTuple

import jax

from bp_jax._layers import Linear, Model, ReLU, Sequential, Sigmoid, Tanh, default_float, mlp, neuron, tiny_net
from bp_jax._losses import squared_error


class Neuron(NamedTuple):
    """The single neuron's weight, input and target (demo and explain use these).

    Attributes:
      w: the weight.
      x: the input.
      t: the target.
    """

    w: float = 0.8
    x: float = 1.5
    t: float = 0.5

    @property
    def params(self) -> dict:
        """`{"w": w}`, the params of `bp_jax.neuron`."""
        return {"w": self.w}


class TinyNet(NamedTuple):
    """The tiny network's input, weights and target, as the document writes them.

    Attributes:
      x: the input.
      w1: the first weight.
      w2: the second weight.
      t: the target.
    """

    x: float = 2.0
    w1: float = 0.5
    w2: float = 1.5
    t: float = 3.0

    @property
    def params(self) -> dict:
        """`{"w1": w1, "w2": w2}`, the params of `bp_jax.tiny_net`."""
        return {"w1": self.w1, "w2": self.w2}


NEURON = Neuron()
TINY_NET = TinyNet()
TINY_NET_VALUES = {"z1": 1.0, "a1": 1.0, "y": 1.5, "L": 2.25}
"""The document's forward values at TINY_NET: z1 = w1·x, a1 = relu(z1), y = w2·a1, L = (y − t)²."""
TINY_NET_GRADS = {"w1": -9.0, "w2": -3.0, "x": -2.25}
"""The document's gradients at TINY_NET: dL/dw1 = 2(y − t)·w2·relu'(z1)·x, dL/dw2 = 2(y − t)·a1, dL/dx."""
TINY_NET_EQUATIONS = {"z1": ("w1", "x"), "a1": ("z1",), "y": ("w2", "a1"), "y − t": ("y", "t"), "L": ("y − t",)}
"""The tiny network's equations as the document names them: symbol -> the symbols it is computed from, in
forward order (w1, w2, x and t are the inputs). `bp-jax explain` finds each in the graph by its operands."""

#: The seed MLP's layer sizes, learning rate and batch: nn.Linear(10, 5), nn.ReLU(), nn.Linear(5, 1); SGD lr 0.01.
SEED_SIZES = (10, 5, 1)
SEED_LR = 0.01
SEED_BATCH = 32


def neuron_loss(activation: str = "identity") -> Callable:
    """L(params, x, t) = (a(w·x) − t)², the single neuron's loss (its arguments named as the document's).

    Args:
      activation: a key of `bp_jax.ACTIVATIONS`: "identity", "relu", "sigmoid" or "tanh".

    Returns:
      The loss function `L(params, x, t)`, params `{"w": w}`.

    Raises:
      ValueError: an unknown activation.

    Examples:
      >>> from bp_jax import documents
      >>> round(float(documents.neuron_loss()({"w": 0.8}, 1.5, 0.5)), 4)   # (1.2 − 0.5)²
      0.49
    """
    model = neuron(activation)

    def loss(params, x, t):
        return squared_error(model.apply(params, x), t)

    return loss


def tiny_net_loss(params, x, t):
    """L = (w2·relu(w1·x) − t)², the tiny network's loss.

    Args:
      params (dict): `{"w1": w1, "w2": w2}`, scalars (or of shape (1,)).
      x (jax.typing.ArrayLike): the input.
      t (jax.typing.ArrayLike): the target.

    Returns:
      (jax.Array): L, of x's shape.

    Examples:
      >>> from bp_jax import documents
      >>> float(documents.tiny_net_loss({"w1": 0.5, "w2": 1.5}, 2.0, 3.0))   # (1.5 − 3)²
      2.25
    """
    return squared_error(tiny_net().apply(params, x), t)


def seed_mlp(activation: str = "relu", *, sizes=SEED_SIZES, dtype=None) -> Model:
    """`mlp(sizes, activation)`: the documents' seed MLP 10 → 5 → 1 by default.

    Args:
      activation: the activation between the Linear layers, a key of `bp_jax.ACTIVATIONS`.
      sizes (Sequence[int]): the layer widths, inputs first.
      dtype (jax.typing.DTypeLike | None): the params' dtype; default float.

    Returns:
      The MLP as a Model.

    Examples:
      >>> from bp_jax import documents
      >>> documents.seed_mlp("tanh").name
      'Sequential(Linear(10, 5), Tanh(), Linear(5, 1))'
    """
    return mlp(sizes, activation, dtype=dtype)


def seed_problem(
    key: jax.Array, rows: int = SEED_BATCH, *, activation: str = "relu", sizes=SEED_SIZES, dtype=None
) -> tuple[Model, object, jax.Array, jax.Array]:
    """(model, params, x, y): `seed_mlp`, its init, and x, y ~ N(0, 1), a batch of the seed problem.

    Args:
      key: the PRNG key, split in three: for params, x and y.
      rows: the number of examples.
      activation: the MLP's activation, a key of `bp_jax.ACTIVATIONS`.
      sizes (Sequence[int]): the layer widths, inputs first.
      dtype (jax.typing.DTypeLike | None): the params' and data's dtype; default float.

    Returns:
      (model, params, x, y), x of shape (rows, sizes[0]) and y of shape (rows, sizes[-1]).

    Examples:
      >>> import jax
      >>> from bp_jax import documents
      >>> model, params, x, y = documents.seed_problem(jax.random.key(0), rows=8)
      >>> x.shape, y.shape, model.apply(params, x).shape
      ((8, 10), (8, 1), (8, 1))
    """
    model = seed_mlp(activation, sizes=sizes, dtype=dtype)
    params_key, x_key, y_key = jax.random.split(key, 3)
    dtype = dtype or default_float()
    x = jax.random.normal(x_key, (rows, sizes[0]), dtype)
    y = jax.random.normal(y_key, (rows, sizes[-1]), dtype)
    return model, model.init(params_key), x, y


def every_layer_mlp() -> Model:
    """Beyond the documents: every layer kind once, 10 → 8 → 6 → 4 → 3.

    Linear, Tanh, Linear, Sigmoid, Linear without bias, ReLU, Linear: the one network that `bp-jax check` and the
    manual-derivative tests run past the seed MLP.

    Returns:
        Model: the network; its `name` is the constructor call, as `torch.nn` spells it.

    Examples:
        >>> import jax
        >>> from bp_jax import documents
        >>> model = documents.every_layer_mlp()
        >>> model.apply(model.init(jax.random.key(0)), jax.numpy.ones((2, 10))).shape
        (2, 3)
    """
    return Sequential(Linear(10, 8), Tanh(), Linear(8, 6), Sigmoid(), Linear(6, 4, bias=False), ReLU(), Linear(4, 3))

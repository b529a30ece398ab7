"""`bp-jax explain`: the graph jax.grad works on for one of the documents' models, every value and gradient.

Prints `Graph.table()` with, where `bp_jax.manual` derives it by hand, the hand-derived gradient and the
difference beside autodiff's; writes graph.dot, graph.svg and graph.png into --out, a new or empty folder
(default: a new runs/explain-MODEL-TIME), each file atomically (`folders`).
"""

from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

import bp_jax
from bp_jax import manual
from bp_jax.cli import folders
from bp_jax.cli._args import UsageError

MODELS = ("neuron", "tiny-net", "seed-mlp")
LAYERS = {"relu": bp_jax.ReLU, "sigmoid": bp_jax.Sigmoid, "tanh": bp_jax.Tanh}
#: the tiny network's node names -> the document's symbols (the keys of manual.tiny_net_backward)
TINY_NET_SYMBOLS = {
    "w1": "w1", "w2": "w2", "x": "x", "target": "t", "w1·x": "z1", "relu(w1·x)": "a1", "w2·relu(w1·x)": "y",
    "w2·relu(w1·x) − target": "y − t", "(w2·relu(w1·x) − target)²": "L",
}


class Example(NamedTuple):
    """A model's graph, the document's symbol for some of its nodes, and the hand-derived gradient of some."""

    title: str
    graph: bp_jax.Graph
    symbols: dict[bp_jax.Node, str]
    by_hand: dict[bp_jax.Node, Any]


def neuron(activation: str) -> Example:
    """y = a(w·x), L = (y − t)² at w = 0.8, x = 1.5, t = 0.5. By hand dL/dw = 2(y − t)·a'(w·x)·x, and
    dL/dx, the same formula with w and x swapped (w·x is symmetric in them)."""
    w, x, t = 0.8, 1.5, 0.5
    model = bp_jax.neuron(activation)

    def loss(params, x, t):
        return bp_jax.squared_error(model.apply(params, x), t)

    graph = bp_jax.explain(loss, {"w": w}, x, t)
    params, x_node, _ = graph.inputs
    by_hand = {params["w"]: manual.neuron_grad(w, x, t, activation),
               x_node: manual.neuron_grad(x, w, t, activation)}
    title = f"single neuron y = {activation}(w·x), L = (y − t)², w = {w}, x = {x}, t = {t}"
    return Example(title, graph, {}, by_hand)


def tiny_net(activation: str) -> Example:
    """The document's x → ·w1 → ReLU → ·w2 → y, L = (y − t)², at x = 2, w1 = 0.5, w2 = 1.5, t = 3."""
    if activation != "relu":
        raise UsageError(f"tiny-net is the document's ReLU network; --activation {activation} applies to "
                         f"neuron and seed-mlp")
    params, x, target = {"w1": 0.5, "w2": 1.5}, 2.0, 3.0

    def loss(params, x, target):
        return bp_jax.squared_error(bp_jax.tiny_net().apply(params, x), target)

    graph = bp_jax.explain(loss, params, x, target)
    steps = manual.tiny_net_backward(params["w1"], params["w2"], x, target)
    symbols = {node: TINY_NET_SYMBOLS[node.name] for node in graph.nodes if node.name in TINY_NET_SYMBOLS}
    by_hand = {node: steps[symbol][1] for node, symbol in symbols.items()}
    return Example("tiny network x → ·w1 → ReLU → ·w2 → y, L = (y − t)², x = 2, w1 = 0.5, w2 = 1.5, t = 3",
                   graph, symbols, by_hand)


def seed_mlp(activation: str) -> Example:
    """The seed MLP 10 → 5 → 1 with MSE on 4 rows of random data; by hand: manual.value_and_grad."""
    if activation not in LAYERS:
        raise UsageError(f"seed-mlp's activation must be one of {', '.join(LAYERS)}, got {activation}")
    model = bp_jax.Sequential(bp_jax.Linear(10, 5), LAYERS[activation](), bp_jax.Linear(5, 1))
    params_key, x_key, y_key = jax.random.split(jax.random.key(0), 3)
    params = model.init(params_key)
    x, y = jax.random.normal(x_key, (4, 10)), jax.random.normal(y_key, (4, 1))
    graph = bp_jax.explain(bp_jax.loss_fn(model), params, x, y)
    _, grads = manual.value_and_grad(model)(params, x, y)
    by_hand = dict(zip(jax.tree.leaves(graph.inputs[0]), jax.tree.leaves(grads)))
    return Example(f"seed MLP 10 → 5 → 1 ({activation}), MSE, 4 rows (seed 0)", graph, {}, by_hand)


EXAMPLES = {"neuron": neuron, "tiny-net": tiny_net, "seed-mlp": seed_mlp}


def add_arguments(parser) -> None:
    parser.add_argument("model", choices=MODELS)
    parser.add_argument("--activation", choices=sorted(bp_jax.ACTIVATIONS), default="relu",
                        help="the neuron's or the seed MLP's activation (default relu)")
    parser.add_argument("--out", type=Path, help="a new or empty directory for graph.dot, .svg and .png (default: a "
                                                 "new runs/explain-MODEL-TIME)")


def run(args) -> int:
    title, graph, symbols, by_hand = EXAMPLES[args.model](args.activation)
    difference = {node: f"{float(jnp.max(jnp.abs(node.grad - grad))):.1e}" for node, grad in by_hand.items()}
    columns = ({"document": symbols} if symbols else {}) | {"grad by hand": by_hand, "|difference|": difference}
    out = args.out or folders.create_unique(Path("runs"), f"explain-{args.model}")
    with folders.claimed(out, resumable=False):
        print(f"bp-jax explain: {title}\n")
        print(graph.table(columns))
        written = [folders.write_atomically(out / f"graph{suffix}", graph.save) for suffix in (".dot", ".svg", ".png")]
    print(f"\nwritten: {', '.join(map(str, written))}")
    return 0

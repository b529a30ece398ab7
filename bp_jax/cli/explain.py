"""`bp-jax explain`: the graph jax.grad works on for one of the documents' models, every value and gradient.

Prints `Graph.table()` with, where `bp_jax.manual` derives it by hand, the hand-derived gradient and the
difference beside autodiff's; writes graph.dot, graph.svg and graph.png into --out, a new or empty folder
(default: a new runs/explain-MODEL-TIME), each file atomically (`folders`). `--forward NAME` adds each node's
tangent along the direction 1 on that input (ones for a tensor) and 0 on the others: forward mode, whose
output tangent is the reverse pass's ⟨∂f/∂NAME, direction⟩.
"""

from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

import bp_jax
from bp_jax import documents, draw, manual
from bp_jax.cli import folders, interrupts, options
from bp_jax.cli._args import UsageError

MODELS = ("neuron", "tiny-net", "seed-mlp")


class Example(NamedTuple):
    """A model's graph, the document's symbol for some of its nodes, and the hand-derived gradient of some."""

    title: str
    graph: bp_jax.Graph
    symbols: dict[bp_jax.Node, str]
    by_hand: dict[bp_jax.Node, Any]


def explained(f, *args, forward: str | None) -> bp_jax.Graph:
    """`bp_jax.explain(f, *args)`, with the tangents of the direction 1 on the input named `forward` (ones for
    a tensor) and 0 elsewhere; a name that is not an input is a UsageError naming the inputs."""
    graph = bp_jax.explain(f, *args)
    if forward is None:
        return graph
    names = [node.name for node in jax.tree.leaves(graph.inputs)]
    if forward not in names:
        raise UsageError(f"--forward expects one of the inputs {', '.join(names)}, got {forward!r}")
    direction = lambda node: jnp.ones_like(node.value) if node.name == forward else None
    return bp_jax.explain(f, *args, tangents=jax.tree.map(direction, graph.inputs))


def neuron(activation: str, forward: str | None = None) -> Example:
    """y = a(w·x), L = (y − t)² at the document's w, x, t. By hand dL/dw = 2(y − t)·a'(w·x)·x, and
    dL/dx, the same formula with w and x swapped (w·x is symmetric in them)."""
    w, x, t = documents.NEURON
    graph = explained(documents.neuron_loss(activation), documents.NEURON.params, x, t, forward=forward)
    params, x_node, _ = graph.inputs
    by_hand = {params["w"]: manual.neuron_grad(w, x, t, activation), x_node: manual.neuron_grad(x, w, t, activation)}
    title = f"single neuron y = {activation}(w·x), L = (y − t)², w = {w}, x = {x}, t = {t}"
    return Example(title, graph, {}, by_hand)


def document_symbols(graph: bp_jax.Graph) -> dict[bp_jax.Node, str]:
    """The tiny network's nodes named as the document names them: the inputs by their place in the
    arguments (params["w1"], params["w2"], x, t), then each of `documents.TINY_NET_EQUATIONS` at the first
    node, in forward order, computed from exactly its operands."""
    params, x, t = graph.inputs
    symbols = {params["w1"]: "w1", params["w2"]: "w2", x: "x", t: "t"}
    for node in graph.nodes:
        operands = tuple(symbols.get(source) for source in node.inputs)
        symbol = next(
            (
                symbol
                for symbol, inputs in documents.TINY_NET_EQUATIONS.items()
                if inputs == operands and symbol not in symbols.values()
            ),
            None,
        )
        if node not in symbols and symbol is not None:
            symbols[node] = symbol
    return symbols


def tiny_net(activation: str, forward: str | None = None) -> Example:
    """The document's x → ·w1 → ReLU → ·w2 → y, L = (y − t)², at its x, w1, w2, t."""
    if activation != "relu":
        raise UsageError(
            f"tiny-net is the document's ReLU network; --activation {activation} applies to neuron and seed-mlp"
        )
    net = documents.TINY_NET
    graph = explained(documents.tiny_net_loss, net.params, net.x, net.t, forward=forward)
    steps = manual.tiny_net_backward(net.w1, net.w2, net.x, net.t)
    symbols = document_symbols(graph)
    by_hand = {node: steps[symbol][1] for node, symbol in symbols.items()}
    return Example(
        f"tiny network x → ·w1 → ReLU → ·w2 → y, L = (y − t)², x = {net.x:g}, w1 = {net.w1:g}, "
        f"w2 = {net.w2:g}, t = {net.t:g}",
        graph,
        symbols,
        by_hand,
    )


def seed_mlp(activation: str, forward: str | None = None) -> Example:
    """The seed MLP 10 → 5 → 1 with MSE on 4 rows of random data; by hand: manual.value_and_grad."""
    if activation == "identity":
        raise UsageError(f"seed-mlp's activation must be one of relu, sigmoid, tanh, got {activation}")
    model, params, x, y = documents.seed_problem(jax.random.key(0), rows=4, activation=activation)
    graph = explained(bp_jax.loss_fn(model), params, x, y, forward=forward)
    _, grads = manual.value_and_grad(model)(params, x, y)
    by_hand = dict(zip(jax.tree.leaves(graph.inputs[0]), jax.tree.leaves(grads)))
    return Example(f"seed MLP 10 → 5 → 1 ({activation}), MSE, 4 rows (seed 0)", graph, {}, by_hand)


def forward_and_reverse(graph: bp_jax.Graph, name: str) -> str:
    """One line: f's tangent along the input `name` (forward mode) beside ⟨∂f/∂name, direction⟩ (reverse)."""
    (node,) = [node for node in jax.tree.leaves(graph.inputs) if node.name == name]
    direction = "1" if node.value.ndim == 0 else "ones"
    along, tangent = float(jnp.sum(node.grad * node.tangent)), graph.output.tangent
    assert tangent is not None  # the graph was explained with the direction along `name`
    return (
        f"forward mode along {name} (direction {direction}): tangent of f = {float(tangent):g}; "
        f"reverse mode: ⟨∂f/∂{name}, direction⟩ = {along:g}"
    )


EXAMPLES = {"neuron": neuron, "tiny-net": tiny_net, "seed-mlp": seed_mlp}


def add_arguments(parser) -> None:
    parser.add_argument("model", choices=MODELS)
    parser.add_argument(
        "--activation",
        choices=sorted(bp_jax.ACTIVATIONS),
        default="relu",
        help="the neuron's or the seed MLP's activation (default relu)",
    )
    parser.add_argument(
        "--forward",
        metavar="NAME",
        help="also show each node's tangent along the input NAME (w1, x, [0].weight, …): forward mode",
    )
    options.add_out_folder(parser, holding="graph.dot, .svg and .png", default="a new runs/explain-MODEL-TIME")


def run(args) -> int:
    title, graph, symbols, by_hand = EXAMPLES[args.model](args.activation, args.forward)
    difference = {node: f"{float(jnp.max(jnp.abs(node.grad - grad))):.1e}" for node, grad in by_hand.items()}
    columns = ({"document": symbols} if symbols else {}) | {"grad by hand": by_hand, "|difference|": difference}
    out = args.out or folders.create_unique(Path("runs"), f"explain-{args.model}")
    with folders.claimed(out, resumable=False):
        print(f"bp-jax explain: {title}\n")
        print(graph.table(columns))
        if args.forward is not None:
            print(f"\n{forward_and_reverse(graph, args.forward)}")
        with interrupts.current().writing():  # a signal now lets the three files be written
            written = [
                folders.write_atomically(out / f"graph{suffix}", lambda temporary: draw.save(graph, temporary))
                for suffix in (".dot", ".svg", ".png")
            ]
    print(f"\nwritten: {', '.join(map(str, written))}")
    return 0

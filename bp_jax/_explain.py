"""See the backward pass: the graph `jax.grad` works on, with every value and gradient.

    graph = bp_jax.explain(f, *args)    # f(*args) -> float scalar; args: pytrees of arrays
    graph.nodes                         # forward order: Node(name, op, value, grad, inputs, tangent)
    graph.grads                         # = jax.grad(f, argnums=range(len(args)))(*args)
    graph.table()                       # one row per node; pictures: bp_jax.draw.save(graph, "graph.png")
    bp_jax.explain(f, *args, tangents=v).output.tangent   # = jax.jvp(f, args, v)[1]

The graph is JAX's own: the jaxpr of f (`jax.make_jaxpr`), one node per input leaf (op "input"), per
closed-over constant ("const") and per equation output (op = the primitive's name). `jit` calls are
inlined; `custom_jvp_call` and `custom_vjp_call` (`jax.nn.relu`, …) stay one node named after their
function, so their own derivative rule is the one applied (relu'(0) = 0, as in jax.grad).

Values come from evaluating the equations one at a time. Gradients come from micrograd's `backward()` run
on those equations: seed ∂f/∂f = 1, then visit the equations last to first, and let each one's local
derivative (`jax.vjp` of that one primitive) turn the gradients of its outputs into contributions to its
inputs' gradients, summed where a value is used more than once:

    ∂f/∂v = Σ over each use of v as operand k of an equation e:  vjp_e(∂f/∂outputs(e))[k]

Given `tangents` (one input direction u), forward mode runs on the same equations, first to last: each
input node's tangent is its part of u, and each equation's local derivative (`jax.jvp` of that one
primitive) turns its operands' tangents into its outputs' tangents, the derivative of every node along u:

    ṫ(outputs(e)) = jvp_e(values of operands(e); ṫ(operands(e)))
"""

import inspect
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend.core import Literal

_INLINED = {"jit", "pjit"}  # jit calls (pjit in older jax), shown equation by equation
_CUSTOM = {"custom_jvp_call", "custom_vjp_call"}  # one node each, differentiated by their own rule
_MAX_NAME = 28  # longer expressions refer to their operands as #index


@dataclass(frozen=True, eq=False, repr=False)
class Node:
    """One value of the graph: what computed it, its value, its gradient ∂f/∂value and its tangent.

    Attributes:
      index: its place in `Graph.nodes` (forward order).
      name: the input's pytree path, or the expression that computed it from its operands' names
        (`w1·x`, `relu(z)`; an operand named by its index, `#4`, where the name would grow long).
      op: "input", "const", or the name of the primitive that computed it ("mul", "integer_pow", …).
      value: the value, from evaluating the equations one at a time.
      grad: ∂f/∂value (None for integer and boolean values).
      inputs: the nodes it was computed from, one entry per operand (literals left out).
      tangent: the derivative of value along the input direction given to `explain` (None without one,
        and for integer and boolean values).

    Examples:
      >>> from bp_jax import explain
      >>> graph = explain(lambda w, x: (w * x - 3.0) ** 2, 0.5, 2.0)
      >>> graph.nodes[2]
      Node(#2 mul 'w·x', value=1, grad=-4)
      >>> [node.name for node in graph.nodes[2].inputs]
      ['w', 'x']
    """

    index: int
    name: str
    op: str
    value: jax.Array
    grad: jax.Array | None
    inputs: tuple["Node", ...]
    tangent: jax.Array | None = None

    def __repr__(self):
        tangent = f", tangent={_brief(self.tangent)}" if self.tangent is not None else ""
        return (
            f"Node(#{self.index} {self.op} {self.name!r}, value={_brief(self.value)}, grad={_brief(self.grad)}"
            f"{tangent})"
        )


@dataclass(frozen=True, eq=False)
class Graph:
    """The graph `jax.grad` works on, as `explain` returns it.

    Attributes:
      nodes: every node, in forward order.
      inputs: the input nodes, in the structure of `explain`'s `args`.
      output: the node of f's value.

    Examples:
      >>> from bp_jax import explain
      >>> graph = explain(lambda w, x: (w * x - 3.0) ** 2, 0.5, 2.0)
      >>> len(graph.nodes), graph.output.name, float(graph.output.value)
      (5, '(w·x − 3)²', 4.0)
    """

    nodes: tuple[Node, ...]
    inputs: tuple
    output: Node

    @property
    def grads(self) -> tuple:
        """The input nodes' gradients in the structure of `args`: jax.grad(f, argnums=all)'s answer.

        Examples:
          >>> from bp_jax import explain
          >>> graph = explain(lambda params, x: (params["w"] * x - 3.0) ** 2, {"w": 0.5}, 2.0)
          >>> {"w": float(graph.grads[0]["w"])}, float(graph.grads[1])   # 2(w·x − 3)·x, 2(w·x − 3)·w
          ({'w': -8.0}, -2.0)
        """
        return jax.tree.map(lambda node: node.grad, self.inputs)

    @property
    def has_tangents(self) -> bool:
        """True if `explain` was given tangents: every float node then has one."""
        return self.output.tangent is not None

    def table(self, columns: Mapping[str, Mapping[Node, Any]] | None = None) -> str:
        """A text table, one row per node: #, op, name, value, grad, tangent (if the graph has tangents), extras.

        Tensors show as dtype[shape] and their first numbers.

        Args:
          columns: extra columns after the others, a mapping heading -> {node: text or array} (e.g.
            `{"note": {graph.output: "L"}}`), keyed by this graph's nodes; a node without an entry gets an empty
            cell.

        Returns:
          The table's lines, joined by newlines.

        Raises:
          TypeError: `columns` that is not a mapping of mappings keyed by nodes.
          ValueError: a column keyed by a node of another graph.

        Examples:
          >>> from bp_jax import explain
          >>> graph = explain(lambda w, x: (w * x - 3.0) ** 2, 0.5, 2.0)
          >>> print(graph.table({"note": {graph.output: "L"}}))
          #  op           name        value  grad  note
          -  -----------  ----------  -----  ----  ----
          0  input        w           0.5    -8
          1  input        x           2      -2
          2  mul          w·x         1      -4
          3  sub          w·x − 3     -2     -4
          4  integer_pow  (w·x − 3)²  4      1     L
        """
        if columns is not None and not (
            isinstance(columns, Mapping) and all(isinstance(column, Mapping) for column in columns.values())
        ):
            raise TypeError(
                "table(columns=...) takes extra columns as a mapping heading -> {node: text or array}, "
                f"e.g. {{'note': {{graph.output: 'L'}}}}; got {type(columns).__name__} {columns!r:.60}"
            )
        columns = dict(columns or {})
        ours = {id(node) for node in self.nodes}
        for heading, column in columns.items():
            for key in column:
                if not isinstance(key, Node) or id(key) not in ours:
                    node = isinstance(key, Node)
                    raise (ValueError if node else TypeError)(
                        f"table(columns=...): column {heading!r} is keyed by {key!r:.60}, which is "
                        f"{'a node of another graph' if node else 'not a node'}; key each column by this graph's "
                        f"nodes (graph.nodes, graph.inputs, graph.output)"
                    )
        tangents = ["tangent"] if self.has_tangents else []
        header = ["#", "op", "name", "value", "grad", *tangents, *columns]
        rows = [
            [
                str(node.index),
                node.op,
                node.name,
                _brief(node.value),
                _brief(node.grad),
                *(_brief(node.tangent) for _ in tangents),
                *(_cell(column.get(node, "")) for column in columns.values()),
            ]
            for node in self.nodes
        ]
        widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
        line = lambda row: "  ".join(
            cell.rjust(w) if i == 0 else cell.ljust(w) for i, (cell, w) in enumerate(zip(row, widths))
        ).rstrip()
        return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])


def explain(f: Callable, *args, tangents: tuple | list | None = None) -> Graph:
    """The graph `jax.grad(f)` works on, with every node's value and gradient ∂f/∂node.

    With `tangents`, every node also gets its tangent: its derivative along that input direction (forward
    mode).

    Args:
      f: a function of `args` returning a float scalar.
      *args (Any): pytrees of arrays (or numbers): params, x, y, …
      tangents: None, or one input direction as `jax.jvp` takes it: a tuple with one entry per arg, each
        a pytree of its arg's structure with leaves of its leaves' shapes. None stands for zeros, for a
        whole arg or any subtree of it (`({"w1": 1.0, "w2": None}, None, None)`); integer and boolean
        leaves take None only.

    Returns:
      The Graph: its input nodes' grads equal `jax.grad(f, argnums=range(len(args)))(*args)`; with
        tangents, its output's tangent equals `jax.jvp(f, args, tangents)[1]`.

    Raises:
      TypeError: f not callable, no args, a leaf that is not an array or number, tangents that are not
        a tuple of one entry per arg, or tangents through a `jax.custom_vjp` function (it has no forward-mode
        derivative: jax.jvp refuses it too; a `jax.custom_jvp` one takes its own rule).
      ValueError: f not returning a float scalar, or a tangent of another structure or shape than its arg.

    Examples:
      >>> from bp_jax import explain
      >>> graph = explain(lambda w, x: (w * x - 3.0) ** 2, 0.5, 2.0)
      >>> [(node.name, float(node.value), float(node.grad)) for node in graph.nodes]
      [('w', 0.5, -8.0), ('x', 2.0, -2.0), ('w·x', 1.0, -4.0), ('w·x − 3', -2.0, -4.0), ('(w·x − 3)²', 4.0, 1.0)]
      >>> float(explain(lambda w, x: (w * x - 3.0) ** 2, 0.5, 2.0, tangents=(1.0, None)).output.tangent)
      -8.0

      The documents' tiny network, its gradients at x = 2, w1 = 0.5, w2 = 1.5, t = 3:

      >>> from bp_jax import squared_error, tiny_net
      >>> loss = lambda params, x, t: squared_error(tiny_net().apply(params, x), t)
      >>> graph = explain(loss, {"w1": 0.5, "w2": 1.5}, 2.0, 3.0)
      >>> [(node.name, float(node.grad)) for node in graph.nodes[4:7]]
      [('w1·x', -4.5), ('relu(w1·x)', -4.5), ('w2·relu(w1·x)', -3.0)]
      >>> params_grad, x_grad, t_grad = graph.grads
      >>> {name: float(grad) for name, grad in params_grad.items()}
      {'w1': -9.0, 'w2': -3.0}
    """
    if not callable(f):
        raise TypeError(f"explain expects a function f, got {type(f).__name__}")
    paths, leaves = _check_args(args)
    directions = None if tangents is None else _check_tangents(tangents, args, paths, leaves)
    closed, out_shape = jax.make_jaxpr(f, return_shape=True)(*args)
    _check_scalar(out_shape)

    nodes: list[_Draft] = []
    equations: list[_Equation] = []
    names = _input_names(f, len(args), paths)
    inputs = [_add(nodes, name, "input", jnp.asarray(leaf), []) for name, leaf in zip(names, leaves)]
    (output,) = _evaluate(closed.jaxpr, closed.consts, inputs, nodes, equations)
    if isinstance(output, _Literal):  # f returned a constant
        output = _add(nodes, _literal_text(output.value), "const", output.value, [])
    grads = _backward(nodes, equations, output)
    forward = [None] * len(nodes) if directions is None else _forward(nodes, equations, dict(zip(inputs, directions)))

    built: list[Node] = []
    for index, (draft, grad, tangent) in enumerate(zip(nodes, grads, forward)):
        operands = tuple(built[i] for i in draft.inputs)
        built.append(Node(index, draft.name, draft.op, draft.value, grad, operands, tangent))
    treedef = jax.tree.structure(args)
    return Graph(tuple(built), jax.tree.unflatten(treedef, [built[i] for i in inputs]), built[output])


# --- the reverse pass ---------------------------------------------------------------------------


class _Draft(NamedTuple):
    name: str
    op: str
    value: jax.Array
    inputs: list[int]  # node indices of the operands


class _Equation(NamedTuple):
    """One equation as the reverse and forward passes need it."""

    outputs: list[int]  # node indices of its results
    operands: list[int]  # node indices of its float operands, one per position (a node may repeat)
    vjp: Callable  # cotangents of the outputs -> cotangents of those operands
    jvp: Callable  # tangents of those operands -> tangents of the outputs


def _backward(nodes: list[_Draft], equations: list[_Equation], output: int) -> list:
    """∂f/∂node for every node: seed 1 at f, then the chain rule equation by equation, last to first."""
    grads = [jnp.zeros_like(node.value) if _is_float(node.value) else None for node in nodes]
    seed = grads[output]
    assert seed is not None  # f's output is a float scalar (checked by _check_scalar)
    grads[output] = jnp.ones_like(seed)
    for equation in reversed(equations):
        cotangents = [grads[i] if grads[i] is not None else _float0_zeros(nodes[i].value) for i in equation.outputs]
        for i, contribution in zip(equation.operands, equation.vjp(cotangents)):
            grads[i] = grads[i] + contribution  # summed: a value used twice gets both contributions
    return grads


def _forward(nodes: list[_Draft], equations: list[_Equation], given: dict[int, jax.Array]) -> list:
    """The tangent of every node along the input direction `given` (input node -> its tangent): zero for
    inputs without one and for constants, then the chain rule equation by equation, first to last."""
    tangents = [
        given.get(i, jnp.zeros_like(node.value)) if _is_float(node.value) else None for i, node in enumerate(nodes)
    ]
    for equation in equations:
        first = equation.outputs[0]
        if nodes[first].op == "custom_vjp_call":
            raise TypeError(
                f"explain(..., tangents=...): node #{first} {nodes[first].name} is a jax.custom_vjp function, which "
                "has no forward-mode derivative (jax.jvp refuses it too); explain it without tangents, or define it "
                "with jax.custom_jvp"
            )
        for i, tangent in zip(equation.outputs, equation.jvp([tangents[k] for k in equation.operands])):
            if tangents[i] is not None:  # integer and boolean results keep None (jax.jvp gives float0)
                tangents[i] = tangent
    return tangents


# --- the forward pass ---------------------------------------------------------------------------


class _Literal(NamedTuple):
    value: Any


def _evaluate(jaxpr, consts, arguments: list, nodes: list[_Draft], equations: list[_Equation]) -> list:
    """Run `jaxpr` one equation at a time; an argument or result is a node index or a _Literal."""
    env = {
        var: _add(nodes, f"const{sum(n.op == 'const' for n in nodes)}", "const", jnp.asarray(value), [])
        for var, value in zip(jaxpr.constvars, consts)
    }
    env.update(zip(jaxpr.invars, arguments))
    read = lambda atom: _Literal(atom.val) if isinstance(atom, Literal) else env[atom]
    for eqn in jaxpr.eqns:
        operands = [read(atom) for atom in eqn.invars]
        if eqn.primitive.name in _INLINED:
            inner = eqn.params["jaxpr"]
            results = _evaluate(inner.jaxpr, inner.consts, operands, nodes, equations)
        else:
            results = _apply(eqn, operands, nodes, equations)
        env.update(zip(eqn.outvars, results))
    return [read(atom) for atom in jaxpr.outvars]


def _apply(eqn, operands: list, nodes: list[_Draft], equations: list[_Equation]) -> list[int]:
    """Evaluate one equation, keeping its local derivative: jax.vjp of the primitive in its float operands."""
    values = [x.value if isinstance(x, _Literal) else nodes[x].value for x in operands]
    positions = [k for k, x in enumerate(operands) if not isinstance(x, _Literal) and _is_float(values[k])]

    def primitive(*floats):
        arguments = list(values)
        for k, value in zip(positions, floats):
            arguments[k] = value
        out = eqn.primitive.bind(*arguments, **eqn.primitive.get_bind_params(eqn.params))
        return list(out) if eqn.primitive.multiple_results else [out]

    primals = [values[k] for k in positions]
    results, vjp = jax.vjp(primitive, *primals) if positions else (primitive(), None)
    name = _expression(eqn, [_literal_text(x.value) if isinstance(x, _Literal) else x for x in operands], nodes)
    inputs = [x for x in operands if not isinstance(x, _Literal)]
    outputs = [
        _add(nodes, name if len(results) == 1 else f"{name}[{k}]", eqn.primitive.name, value, inputs)
        for k, value in enumerate(results)
    ]
    if vjp is not None:
        jvp = lambda tangents: jax.jvp(primitive, primals, tangents)[1]
        equations.append(_Equation(outputs, [operands[k] for k in positions], vjp, jvp))
    return outputs


def _add(nodes: list[_Draft], name: str, op: str, value, inputs: list[int]) -> int:
    nodes.append(_Draft(name, op, value, inputs))
    return len(nodes) - 1


def _is_float(value) -> bool:
    return jnp.issubdtype(jnp.result_type(value), jnp.inexact)


def _float0_zeros(value):
    """The cotangent of an integer or boolean result: zeros of dtype float0, as jax.vjp expects."""
    return np.zeros(jnp.shape(value), dtype=jax.dtypes.float0)


# --- checks and names ---------------------------------------------------------------------------


def _check_args(args: tuple) -> tuple[list, list]:
    if not args:
        raise TypeError("explain expects f and at least one argument to differentiate, got none")
    flat = jax.tree_util.tree_flatten_with_path(args)[0]
    paths, leaves = [path for path, _ in flat], [leaf for _, leaf in flat]
    for path, leaf in zip(paths, leaves):
        if not isinstance(leaf, (jax.Array, np.ndarray, np.generic, int, float, complex)):
            raise TypeError(
                f"explain expects args as pytrees of arrays, got {type(leaf).__name__} "
                f"at args{jax.tree_util.keystr(path)}"
            )
    return paths, leaves


def _check_tangents(tangents, args: tuple, paths: list, leaves: list) -> list:
    """The direction's leaves in the order of the args' leaves, each of its leaf's shape and dtype
    (zeros where the direction says None); None for integer and boolean leaves."""
    if not isinstance(tangents, (tuple, list)) or len(tangents) != len(args):
        raise TypeError(
            f"explain expects tangents as a tuple with one entry per arg ({len(args)}), as jax.jvp does, "
            f"got {type(tangents).__name__}{f' of {len(tangents)}' if isinstance(tangents, (tuple, list)) else ''}"
        )
    filled = [
        leaf for index, (tangent, arg) in enumerate(zip(tangents, args)) for leaf in _per_leaf(index, tangent, arg)
    ]
    directions: list[jax.Array | None] = []
    for path, leaf, tangent in zip(paths, leaves, filled):
        value, where = jnp.asarray(leaf), f"args{jax.tree_util.keystr(path)}"
        if not _is_float(value):
            if tangent is not None:
                raise ValueError(f"explain: {where} is {value.dtype}, which has no tangent; give None there")
            directions.append(None)
        elif tangent is None:
            directions.append(jnp.zeros_like(value))
        elif jnp.shape(tangent) != value.shape:
            raise ValueError(f"explain expects the tangent of {where} of shape {value.shape}, got {jnp.shape(tangent)}")
        else:
            directions.append(jnp.asarray(tangent, value.dtype))
    return directions


class _Leaves(list):
    """The tangents of the leaves under one node of a tangent tree (a list subclass: a pytree leaf)."""


def _per_leaf(index: int, tangent, arg) -> list:
    """The tangent of each of arg's leaves, in order: None for those under a None (zeros); a ValueError where
    the tangent's structure is not arg's."""
    is_none = lambda t: t is None

    def under(t, a):
        if t is None:
            return _Leaves([None] * len(jax.tree.leaves(a)))
        if not jax.tree_util.treedef_is_leaf(jax.tree.structure(a)):
            raise ValueError(f"a leaf where args[{index}] has {jax.tree.structure(a)}")
        return _Leaves([t])

    try:
        parts = jax.tree.map(under, tangent, arg, is_leaf=is_none)
    except (TypeError, ValueError):
        raise ValueError(
            f"explain expects tangents[{index}] with the structure of args[{index}], {jax.tree.structure(arg)}, "
            f"or None; got {jax.tree.structure(tangent, is_leaf=is_none)}"
        ) from None
    return [leaf for part in jax.tree.leaves(parts, is_leaf=lambda p: isinstance(p, _Leaves)) for leaf in part]


def _check_scalar(out_shape) -> None:
    leaves = jax.tree.leaves(out_shape)
    if len(leaves) != 1:
        raise ValueError(
            f"explain expects f to return a float scalar, got {type(out_shape).__name__} of {len(leaves)} arrays"
        )
    (out,) = leaves
    if out.shape != () or not jnp.issubdtype(out.dtype, jnp.floating):
        advice = (
            "a complex value has no gradient here: take its jnp.real or jnp.abs"
            if jnp.issubdtype(out.dtype, jnp.complexfloating)
            else "reduce it first, e.g. with jnp.sum or bp_jax.mse"
        )
        raise ValueError(f"explain expects f to return a float scalar, got {out.dtype} of shape {out.shape}; {advice}")


def _input_names(f: Callable, count: int, paths: list) -> list[str]:
    """Each input leaf's pytree path (`w1`, `[0].weight`); the argument's name for a bare array, and as
    a prefix where two leaves would otherwise share a name."""
    try:
        positional = [
            p.name
            for p in inspect.signature(f).parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]
    except (TypeError, ValueError):  # no signature to read, e.g. some builtins
        positional = []
    arguments = (positional + [f"args[{i}]" for i in range(len(positional), count)])[:count]
    short = [_path_text(path[1:]) or arguments[path[0].idx] for path in paths]
    return [
        name if short.count(name) == 1 or len(path) == 1 else _prefixed(arguments[path[0].idx], name)
        for name, path in zip(short, paths)
    ]


def _path_text(path) -> str:
    """`[0]['weight']` -> `[0].weight`, `['w1']` -> `w1`."""
    parts = []
    for key in path:
        if isinstance(key, jax.tree_util.DictKey) and isinstance(key.key, str) and key.key.isidentifier():
            parts.append(f".{key.key}")
        elif isinstance(key, jax.tree_util.GetAttrKey):
            parts.append(f".{key.name}")
        else:
            parts.append(jax.tree_util.keystr((key,)))
    return "".join(parts).removeprefix(".")


def _prefixed(argument: str, name: str) -> str:
    return f"{argument}{name}" if name.startswith("[") else f"{argument}.{name}"


def _literal_text(value) -> str:
    return f"{np.asarray(value).item():g}" if np.size(value) == 1 else f"const{list(np.shape(value))}"


_INFIX = {"add": " + ", "sub": " − ", "mul": "·", "div": " / ", "dot_general": " @ "}
_PREFIX = {"neg": "−"}
_POSTFIX = {"transpose": "ᵀ", "square": "²"}
_FUNCTIONS = {"logistic": "sigmoid", "reduce_sum": "sum", "reduce_max": "max", "reduce_min": "min"}
_SHAPE_ONLY = {"broadcast_in_dim", "convert_element_type", "reshape", "squeeze", "expand_dims", "copy"}
_SUPERSCRIPT = str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹")


def _expression(eqn, operands: list, nodes: list[_Draft]) -> str:
    """A short name for the equation's result, written with its operands' names: `w1·x`, `relu(z)`.
    `operands` are node indices or literal texts; while the name is over _MAX_NAME characters, its
    longest computed operand is named by its index instead, `#4`."""
    names = [x if isinstance(x, str) else nodes[x].name for x in operands]
    computed = sorted(
        {x for x in operands if not isinstance(x, str) and nodes[x].op not in ("input", "const")},
        key=lambda i: -len(nodes[i].name),
    )
    for index in [None, *computed]:
        if index is not None:
            names = [f"#{index}" if x == index else name for x, name in zip(operands, names)]
        name = _format(eqn, names)
        if len(name) <= _MAX_NAME:
            break
    return name


def _format(eqn, names: list[str]) -> str:
    op = eqn.primitive.name
    if op in _SHAPE_ONLY and names:
        return names[0]
    if op in _INFIX and len(names) == 2:
        left, right = names
        tight = op == "mul"  # `·` binds tighter than the spaced operators: wrap spaced operands
        left = _wrap(left) if tight or op in ("div", "dot_general") else left
        right = _wrap(right) if op != "add" else right
        return f"{left}{_INFIX[op]}{right}"
    if op in _PREFIX and len(names) == 1:
        return f"{_PREFIX[op]}{_wrap(names[0], atom=True)}"
    if op in _POSTFIX or op == "integer_pow":
        suffix = _POSTFIX.get(op) or str(eqn.params["y"]).translate(_SUPERSCRIPT)
        return f"{_wrap(names[0], atom=True)}{suffix}"
    function = _FUNCTIONS.get(op, op)
    if op in _CUSTOM:
        function = getattr(getattr(eqn.params["call_jaxpr"].jaxpr, "debug_info", None), "func_name", None) or op
    return f"{function}({', '.join(names)})"


def _wrap(name: str, atom: bool = False) -> str:
    """Parenthesise `name` if it has a spaced operator (or, with `atom`, any operator) outside brackets."""
    depth, outside = 0, []
    for char in name:
        depth -= char in ")]"
        if depth == 0:
            outside.append(char)
        depth += char in "(["
    bare = "".join(outside)
    needs = " " in bare or (atom and re.search(r"[·/−@]", bare) is not None)
    return f"({name})" if needs else name


# --- text ---------------------------------------------------------------------------------------

_DTYPE_SHORT = (("bfloat", "bf"), ("float", "f"), ("uint", "u"), ("int", "i"), ("complex", "c"))


def _brief(value) -> str:
    """A scalar as `-4.5`; a tensor as `f32[4,5] 0.1 -0.3 0.5 …`, its type and first entries."""
    return " ".join(part for part in summary(value) if part)


def summary(value, count: int = 3) -> tuple[str, str]:
    """(type, numbers): ("", "-4.5") for a scalar, ("f32[4,5]", "0.1 -0.3 0.5 …") for a tensor,
    ("key[]", "0 42") for a PRNG key (its key data: keys have no gradient)."""
    if value is None:
        return "", "—"
    if isinstance(value, jax.Array) and jax.dtypes.issubdtype(value.dtype, jax.dtypes.prng_key):
        return f"key[{','.join(map(str, value.shape))}]", _head(np.asarray(jax.random.key_data(value)), count)
    array = np.asarray(value)
    if array.ndim == 0:
        return "", f"{array.item():.6g}"
    dtype = array.dtype.name
    for long, short in _DTYPE_SHORT:
        if dtype.startswith(long):
            dtype = short + dtype.removeprefix(long)
            break
    return f"{dtype}[{','.join(map(str, array.shape))}]", _head(array, count)


def _head(array: np.ndarray, count: int) -> str:
    head = " ".join(f"{v:.4g}" for v in array.ravel()[:count].tolist())
    return f"{head}{' …' if array.size > count else ''}"


def _cell(value) -> str:
    return value if isinstance(value, str) else _brief(value)

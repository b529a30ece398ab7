"""bp_jax.explain(..., tangents=...): forward mode on the explained graph, each equation's own jax.jvp, checked
against jax.jvp (float32 to 1e-5, float64 to 1e-10) and the document's numbers; the table, the pictures and
`bp-jax explain --forward NAME`."""

import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import normal, params_of, run_cli

import bp_jax
import bp_jax.draw
from bp_jax import documents

NET = documents.TINY_NET


def tiny_net_along(name: str):
    """The tiny network's graph with the direction 1 on the input `name` (w1, w2, x or t)."""
    direction = {"w1": None, "w2": None, "x": None, "t": None} | {name: 1.0}
    tangents = ({"w1": direction["w1"], "w2": direction["w2"]}, direction["x"], direction["t"])
    return bp_jax.explain(documents.tiny_net_loss, NET.params, NET.x, NET.t, tangents=tangents)


def test_the_documents_minus_9_reached_forwards():
    graph = tiny_net_along("w1")
    nodes = {node.name: node for node in graph.nodes}
    tangents = {name: float(nodes[name].tangent) for name in ("w1", "w2", "x", "t")}
    assert tangents == {"w1": 1.0, "w2": 0.0, "x": 0.0, "t": 0.0}
    forward = [float(nodes[name].tangent) for name in ("w1·x", "relu(w1·x)", "w2·relu(w1·x)")]
    assert forward == [2.0, 2.0, 3.0]  # z1, a1, y along w1
    assert float(graph.output.tangent) == -9.0 == float(graph.inputs[0]["w1"].grad)


@pytest.mark.parametrize("name", ["w1", "w2", "x", "t"])
def test_each_inputs_direction_gives_its_gradient(name):
    graph = tiny_net_along(name)
    params, x, t = graph.inputs
    node = {"w1": params["w1"], "w2": params["w2"], "x": x, "t": t}[name]
    assert float(graph.output.tangent) == float(node.grad)  # one forward pass per input, one reverse for all
    assert graph.has_tangents


@pytest.mark.slow
def test_every_nodes_tangent_equals_jax_jvp(precision):
    """documents.every_layer_mlp: Linear with and without bias, Tanh, Sigmoid and ReLU in one graph; the
    references by jax.jvp in one jitted program."""
    model = documents.every_layer_mlp()
    params = params_of(model, seed=3)
    x, y = normal(4, 6, 10), normal(5, 6, 3)
    leaves, treedef = jax.tree.flatten(params)
    direction = jax.tree.unflatten(treedef, [normal(6 + i, *leaf.shape) for i, leaf in enumerate(leaves)])
    loss = bp_jax.loss_fn(model)
    graph = bp_jax.explain(loss, params, x, y, tangents=(direction, None, jnp.ones_like(y)))

    @jax.jit
    def references(params, x, y, direction):
        along = jax.jvp(loss, (params, x, y), (direction, jnp.zeros_like(x), jnp.ones_like(y)))
        return along, jax.jvp(lambda p: model.apply(p, x), (params,), (direction,))[1]

    (value, tangent), prediction_tangent = references(params, x, y, direction)
    np.testing.assert_allclose(graph.output.tangent, tangent, rtol=precision, atol=precision)
    np.testing.assert_allclose(graph.output.value, value, rtol=precision, atol=precision)
    # the prediction node's tangent, against jax.jvp of the model alone
    prediction = next(node for node in graph.nodes if node.op == "add" and node.value.shape == (6, 3))
    np.testing.assert_allclose(prediction.tangent, prediction_tangent, rtol=precision, atol=precision)
    for node in graph.nodes:
        assert node.tangent.shape == node.value.shape and node.tangent.dtype == node.value.dtype, node
    chex.assert_trees_all_close(
        jax.tree.map(lambda node: node.tangent, graph.inputs), (direction, jnp.zeros_like(x), jnp.ones_like(y))
    )


def test_reused_values_integer_values_and_jit(precision):
    @jax.jit
    def f(w, i):
        return jnp.sum(w[i] * w + jnp.sin(w) * jax.nn.relu(w))

    w = jnp.array([0.5, -1.0, 2.0])
    graph = bp_jax.explain(f, w, 1, tangents=(jnp.array([1.0, 2.0, -1.0]), None))
    _, expected = jax.jvp(lambda w: f(w, 1), (w,), (jnp.array([1.0, 2.0, -1.0]),))
    np.testing.assert_allclose(graph.output.tangent, expected, rtol=precision, atol=precision)
    integers = [node for node in graph.nodes if not jnp.issubdtype(node.value.dtype, jnp.inexact)]
    assert integers and all(node.tangent is None for node in integers)


def test_without_tangents_nothing_changes():
    graph = bp_jax.explain(documents.tiny_net_loss, NET.params, NET.x, NET.t)
    assert not graph.has_tangents and all(node.tangent is None for node in graph.nodes)
    assert graph.table().splitlines()[0].split() == ["#", "op", "name", "value", "grad"]
    assert "tangent" not in bp_jax.draw.to_dot(graph) and "tangent" not in repr(graph.output)


def test_table_dot_and_repr_show_tangents():
    graph = tiny_net_along("w1")
    lines = graph.table({"note": {graph.output: "L"}}).splitlines()
    assert lines[0].split() == ["#", "op", "name", "value", "grad", "tangent", "note"]
    assert lines[-1].split()[-4:] == ["2.25", "1", "-9", "L"]
    dot = bp_jax.draw.to_dot(graph)
    assert len(re.findall(r">tangent -?[0-9.]+<", dot)) == len(graph.nodes) and "forward mode" in dot
    assert "tangent=-9" in repr(graph.output)


def test_matplotlib_picture_with_tangents(tmp_path):
    pytest.importorskip("matplotlib")
    path = bp_jax.draw.save(tiny_net_along("w1"), tmp_path / "graph.png", engine="matplotlib")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bad_tangents_are_one_clear_error():
    explain = lambda tangents: bp_jax.explain(documents.tiny_net_loss, NET.params, NET.x, NET.t, tangents=tangents)
    with pytest.raises(TypeError, match=r"tangents as a tuple with one entry per arg \(3\).*got dict"):
        explain({"w1": 1.0})
    with pytest.raises(TypeError, match="got list of 2"):
        explain([None, None])
    with pytest.raises(ValueError, match=r"tangents\[0\] with the structure of args\[0\]"):
        explain(({"w1": 1.0}, None, None))
    with pytest.raises(ValueError, match=r"tangent of args\[0\]\['w2'\] of shape \(\), got \(3,\)"):
        explain(({"w1": None, "w2": jnp.ones(3)}, None, None))
    with pytest.raises(ValueError, match=r"args\[1\] is int32, which has no tangent; give None there"):
        bp_jax.explain(lambda w, i: w * i, 1.0, 2, tangents=(1.0, 1))


def test_a_custom_vjp_function_under_tangents_is_one_type_error_naming_it_and_its_gradient_is_shown_without():
    @jax.custom_vjp
    def sine(x):
        return jnp.sin(x)

    sine.defvjp(lambda x: (jnp.sin(x), x), lambda x, g: (2 * g * jnp.cos(x),))  # a rule of its own: twice cos
    f = lambda x: sine(x) ** 2
    with pytest.raises(TypeError, match=r"node #1 sine\(x\) is a jax.custom_vjp function, which has no forward-mode"):
        bp_jax.explain(f, 1.0, tangents=(1.0,))
    with pytest.raises(TypeError):  # jax's own limitation, which the message names
        jax.jvp(f, (1.0,), (1.0,))
    graph = bp_jax.explain(f, 1.0)  # reverse mode takes the function's own rule, as jax.grad does
    assert float(graph.grads[0]) == pytest.approx(float(jax.grad(f)(1.0)), rel=1e-6)


# --- the command ------------------------------------------------------------------------------


def bp_jax_explain(*args):
    """`bp-jax explain ARGS`, run in this process."""
    return run_cli("explain", *args, check=False)


def test_command_forward_w1_prints_the_tangents(tmp_path):
    result = bp_jax_explain("tiny-net", "--forward", "w1", "--out", tmp_path)
    assert result.returncode == 0, result.stderr
    header = next(line for line in result.stdout.splitlines() if line.startswith("#"))
    assert header.split()[:7] == ["#", "op", "name", "value", "grad", "tangent", "document"]
    cells = [re.split(r"\s{2,}", line.strip()) for line in result.stdout.splitlines() if line[:1].isdigit()]
    tangents = {row[6]: row[5] for row in cells}  # document symbol -> tangent
    assert tangents == {
        "w1": "1",
        "w2": "0",
        "x": "0",
        "t": "0",
        "z1": "2",
        "a1": "2",
        "y": "3",
        "y − t": "3",
        "L": "-9",
    }
    assert "forward mode along w1 (direction 1): tangent of f = -9; reverse mode: ⟨∂f/∂w1, direction⟩ = -9" in (
        result.stdout
    )
    assert "tangent " in (tmp_path / "graph.dot").read_text(encoding="utf-8")


def test_command_forward_on_a_tensor_input(tmp_path):
    result = bp_jax_explain("seed-mlp", "--forward", "[0].weight", "--out", tmp_path)
    assert result.returncode == 0, result.stderr
    found = re.search(r"tangent of f = (\S+); reverse mode: ⟨∂f/∂\[0\]\.weight, direction⟩ = (\S+)", result.stdout)
    forward, reverse = map(float, found.groups())
    assert forward == pytest.approx(reverse, rel=1e-5)


def test_command_forward_unknown_input_is_one_line_and_exit_2(tmp_path):
    result = bp_jax_explain("tiny-net", "--forward", "w3", "--out", tmp_path / "out")
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr == "bp-jax explain: error: --forward expects one of the inputs w1, w2, x, t, got 'w3'\n"
    assert not (tmp_path / "out").exists()

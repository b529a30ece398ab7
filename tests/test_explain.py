"""bp_jax.explain: JAX's graph with every value and gradient, checked against jax.grad and bp_jax.manual.

The input nodes' gradients come from explain's own reverse pass over the jaxpr, so comparing them with
`jax.grad` (float32 to 1e-5, float64 to 1e-10) checks that pass; the documents' numbers are checked exactly.
"""

import re
import xml.etree.ElementTree as ElementTree

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import normal, params_of, run_cli, together

import bp_jax
from bp_jax import documents, manual

PNG = b"\x89PNG\r\n\x1a\n"


def all_grads(f, *args):
    """jax.grad of f in every argument, jitted (one compilation, where eager autodiff compiles every op)."""
    return jax.jit(jax.grad(f, argnums=tuple(range(len(args)))))(*args)


NET = documents.TINY_NET
tiny_net_loss = documents.tiny_net_loss


def by_name(graph):
    names = [node.name for node in graph.nodes]
    assert len(set(names)) == len(names), names
    return {node.name: node for node in graph.nodes}


# --- the documents' numbers ---------------------------------------------------------------------


def test_tiny_network_every_number_of_the_document_on_its_node():
    graph = bp_jax.explain(tiny_net_loss, NET.params, NET.x, NET.t)
    nodes = by_name(graph)
    z1, a1, y = nodes["w1·x"], nodes["relu(w1·x)"], nodes["w2·relu(w1·x)"]
    loss = graph.output
    expected = {  # node: (value, dL/dnode), the document's forward values and gradients
        nodes["x"]: (2.0, -2.25),
        nodes["w1"]: (0.5, -9.0),
        nodes["w2"]: (1.5, -3.0),
        z1: (1.0, -4.5),
        a1: (1.0, -4.5),
        y: (1.5, -3.0),
        loss: (2.25, 1.0),
    }
    assert {node.name: (float(node.value), float(node.grad)) for node in expected} == {
        node.name: numbers for node, numbers in expected.items()
    }
    assert (z1.op, a1.op, y.op) == ("mul", "custom_jvp_call", "mul")
    assert z1.inputs == (nodes["w1"], nodes["x"]) and a1.inputs == (z1,) and y.inputs == (nodes["w2"], a1)
    assert loss.name == "(w2·relu(w1·x) − t)²" and loss is graph.nodes[-1]


def test_tiny_network_with_the_documents_own_tensors_of_shape_1():
    w1, w2, x, target = (jnp.array([v]) for v in (NET.w1, NET.w2, NET.x, NET.t))  # torch.tensor([0.5]), …
    with pytest.raises(ValueError, match=r"explain expects f to return a float scalar, got float32 of shape \(1,\)"):
        bp_jax.explain(tiny_net_loss, {"w1": w1, "w2": w2}, x, target)
    graph = bp_jax.explain(lambda p, x, t: tiny_net_loss(p, x, t).sum(), {"w1": w1, "w2": w2}, x, target)
    (params, grad_x, _) = graph.grads
    assert (params["w1"].tolist(), params["w2"].tolist(), grad_x.tolist()) == ([-9.0], [-3.0], [-2.25])
    assert float(graph.output.value) == 2.25


def test_tiny_network_matches_the_hand_derivation_step_by_step():
    graph = bp_jax.explain(tiny_net_loss, NET.params, NET.x, NET.t)
    steps = manual.tiny_net_backward(NET.w1, NET.w2, NET.x, NET.t)
    nodes = by_name(graph)
    symbol = {
        "w1": "w1",
        "w2": "w2",
        "x": "x",
        "t": "t",
        "w1·x": "z1",
        "relu(w1·x)": "a1",
        "w2·relu(w1·x)": "y",
        "w2·relu(w1·x) − t": "y − t",
        "(w2·relu(w1·x) − t)²": "L",
    }
    assert set(nodes) == set(symbol)
    for name, node in nodes.items():
        assert (float(node.value), float(node.grad)) == tuple(map(float, steps[symbol[name]])), name


@pytest.mark.parametrize("activation", sorted(bp_jax.ACTIVATIONS))
def test_neuron_gradient_is_the_documents_formula(activation, precision):
    w, x, t = jnp.asarray(0.7), jnp.asarray(-1.3), jnp.asarray(0.4)

    def loss(params, x, t):
        return bp_jax.squared_error(bp_jax.neuron(activation).apply(params, x), t)

    graph = bp_jax.explain(loss, {"w": w}, x, t)
    params, _, _ = graph.inputs
    by_hand = manual.neuron_grad(w, x, t, activation)
    np.testing.assert_allclose(params["w"].grad, by_hand, rtol=precision, atol=precision)
    chex.assert_trees_all_close(graph.grads, all_grads(loss, {"w": w}, x, t), rtol=precision, atol=precision)


# --- any model: the reverse pass is jax.grad's answer --------------------------------------------


@pytest.mark.slow
def test_mlp_input_gradients_equal_jax_grad_and_the_manual_backward_pass(precision):
    """documents.every_layer_mlp: Linear with and without bias, Tanh, Sigmoid and ReLU in one graph."""
    model = documents.every_layer_mlp()
    params = params_of(model, seed=7)
    x, y = normal(8, 6, 10), normal(9, 6, 3)
    loss = bp_jax.loss_fn(model)
    graph = bp_jax.explain(loss, params, x, y)

    by_jax, (hand_loss, hand_grads) = together(jax.grad(loss, argnums=(0, 1, 2)), manual.value_and_grad(model))(
        params, x, y
    )
    chex.assert_trees_all_close(graph.grads, by_jax, rtol=precision, atol=precision)
    chex.assert_trees_all_close(graph.grads[0], hand_grads, rtol=precision, atol=precision)
    np.testing.assert_allclose(graph.output.value, hand_loss, rtol=precision, atol=precision)
    for node in graph.nodes:
        assert node.grad.shape == node.value.shape and node.grad.dtype == node.value.dtype, node
        assert all(source.index < node.index for source in node.inputs), node


def test_mlp_input_names_are_pytree_paths():
    model = documents.seed_mlp()
    params = model.init(jax.random.key(0))
    graph = bp_jax.explain(bp_jax.loss_fn(model), params, jnp.ones((2, 10)), jnp.ones((2, 1)))
    inputs = [node.name for node in graph.nodes if node.op == "input"]
    assert inputs == ["[0].bias", "[0].weight", "[2].bias", "[2].weight", "x", "y"]
    assert graph.inputs[0][2]["weight"].name == "[2].weight"


def test_leaves_sharing_a_path_are_prefixed_by_their_argument():
    graph = bp_jax.explain(lambda a, b: a["w"] * b["w"] + b["v"], {"w": 2.0}, {"w": 3.0, "v": 1.0})
    assert [node.name for node in graph.nodes] == ["a.w", "v", "b.w", "a.w·b.w", "a.w·b.w + v"]


# --- the reverse pass itself ---------------------------------------------------------------------


def test_a_value_used_twice_sums_its_cotangents(precision):
    f = lambda w: w * w + w  # df/dw = 2w + 1: the product contributes w twice, the sum once
    graph = bp_jax.explain(f, 3.0)
    w, square, total = graph.nodes
    assert square.inputs == (w, w) and total.inputs == (square, w)
    assert (float(w.grad), float(square.grad), float(total.grad)) == (7.0, 1.0, 1.0)
    x = jnp.linspace(-1.0, 2.0, 4)
    g = lambda x: jnp.sum(jnp.sin(x) * x + x**2)
    chex.assert_trees_all_close(bp_jax.explain(g, x).grads, (jax.jit(jax.grad(g))(x),), rtol=precision, atol=precision)


def test_custom_derivative_rules_stay_one_node_and_jit_is_inlined(precision):
    @jax.custom_vjp
    def clipped_identity(x):
        return x

    clipped_identity.defvjp(lambda x: (x, None), lambda _, g: (jnp.clip(g, -0.1, 0.1),))

    @jax.jit
    def f(x):
        return jnp.sum(clipped_identity(x) * jax.nn.relu(x) + jnp.where(x > 0, x, 0.0))

    x = jnp.array([-1.0, 0.0, 2.0])
    graph = bp_jax.explain(f, x)
    ops = [node.op for node in graph.nodes]
    assert "jit" not in ops and "pjit" not in ops
    assert ops.count("custom_vjp_call") == 1 and ops.count("custom_jvp_call") == 1
    assert any(node.name.startswith("clipped_identity(") for node in graph.nodes)
    chex.assert_trees_all_close(graph.grads, all_grads(f, x), rtol=precision, atol=precision)
    assert float(graph.grads[0][1]) == 0.0  # relu'(0) = 0 by jax.nn.relu's own rule, not max's 0.5
    comparison = next(node for node in graph.nodes if node.op == "gt")
    assert comparison.value.dtype == bool and comparison.grad is None


def test_closed_over_arrays_are_const_nodes(precision):
    x, y = jnp.arange(6.0).reshape(3, 2), jnp.ones((3, 1))
    model = bp_jax.Sequential(bp_jax.Linear(2, 1))
    params = model.init(jax.random.key(0))
    f = lambda params: bp_jax.mse(model.apply(params, x), y)
    graph = bp_jax.explain(f, params)
    assert [node.op for node in graph.nodes].count("const") == 2
    chex.assert_trees_all_close(graph.grads, all_grads(f, params), rtol=precision, atol=precision)


def test_an_output_that_is_an_input_or_a_constant():
    graph = bp_jax.explain(lambda w: w, 2.0)
    assert graph.output is graph.nodes[0] and float(graph.output.grad) == 1.0
    graph = bp_jax.explain(lambda w: jnp.float32(5.0), 2.0)
    assert float(graph.output.value) == 5.0 and float(graph.grads[0]) == 0.0


# --- bad input ----------------------------------------------------------------------------------


def test_bad_input_is_one_clear_error():
    with pytest.raises(ValueError, match=r"float scalar, got float32 of shape \(3,\)"):
        bp_jax.explain(lambda w: w * 2, jnp.ones(3))
    with pytest.raises(ValueError, match="float scalar, got tuple of 2 arrays"):
        bp_jax.explain(lambda w: (w, w), 1.0)
    with pytest.raises(ValueError, match=r"float scalar, got int32 of shape \(\)"):
        bp_jax.explain(lambda w: jnp.sum(w > 0).astype(jnp.int32), jnp.ones(3))
    with pytest.raises(TypeError, match=r"args as pytrees of arrays, got str at args\[1\]\['name'\]"):
        bp_jax.explain(lambda w, d: w, 1.0, {"name": "w"})
    with pytest.raises(TypeError, match="explain expects a function f, got float"):
        bp_jax.explain(1.0, 2.0)
    with pytest.raises(TypeError, match="at least one argument"):
        bp_jax.explain(lambda: 1.0)


# --- the table ---------------------------------------------------------------------


def test_table_has_a_row_per_node_and_the_extra_columns():
    graph = bp_jax.explain(tiny_net_loss, NET.params, NET.x, NET.t)
    lines = graph.table({"note": {graph.output: "L"}}).splitlines()
    assert lines[0].split() == ["#", "op", "name", "value", "grad", "note"]
    assert len(lines) == 2 + len(graph.nodes)
    assert lines[-1].split()[-3:] == ["2.25", "1", "L"]
    assert lines[2].split() == ["0", "input", "w1", "0.5", "-9"]
    seed = bp_jax.explain(lambda w: jnp.sum(w**2), jnp.arange(12.0).reshape(3, 4))
    assert "f32[3,4] 0 1 2 …" in seed.table()


def test_a_complex_output_is_refused_not_given_zero_gradients():
    with pytest.raises(ValueError, match=r"float scalar, got complex64 of shape \(\); .*jnp.real"):
        bp_jax.explain(lambda x: x * 1j, 1.0)


@pytest.mark.parametrize("make_key", [lambda: jax.random.key(3), lambda: jax.random.PRNGKey(3)], ids=["typed", "raw"])
def test_prng_keys_show_their_key_data_and_have_no_gradient(make_key):
    key = make_key()
    graph = bp_jax.explain(lambda x, key: x * jax.random.uniform(key), 2.0, key)
    chex.assert_trees_all_close(graph.grads[0], jax.grad(lambda x: x * jax.random.uniform(key))(2.0))
    keys = [node for node in graph.nodes if jax.dtypes.issubdtype(node.value.dtype, jax.dtypes.prng_key)]
    assert keys and all(node.grad is None for node in keys)
    rows = {line.split()[0]: line for line in graph.table().splitlines()[2:]}
    assert all("key[] 0 3" in rows[str(node.index)] for node in keys)
    inside = bp_jax.explain(lambda x: x * jax.random.normal(jax.random.key(0)), 1.0)
    assert "key[] 0 0" in inside.table()


def test_table_columns_must_be_a_mapping_of_columns_keyed_by_the_graphs_nodes():
    graph = bp_jax.explain(lambda w: w * w, 2.0)
    with pytest.raises(TypeError, match=r"mapping heading -> \{node: text or array\}.*got list \['op', 'grad'\]"):
        graph.table(columns=["op", "grad"])
    with pytest.raises(TypeError, match="got dict"):
        graph.table(columns={"note": "L"})
    for key in ("notanode", 0, None):
        with pytest.raises(TypeError, match=rf"column 'h' is keyed by {key!r}, which is not a node; key each"):
            graph.table({"h": {graph.output: "L", key: "x"}})
    other = bp_jax.explain(lambda w: w * w, 2.0)
    with pytest.raises(ValueError, match=r"column 'h' is keyed by Node\(#1 .*, which is a node of another graph"):
        graph.table({"h": {other.output: "L"}})


# --- the command ------------------------------------------------------------------------------


def bp_jax_explain(*args):
    """`bp-jax explain ARGS`, run in this process."""
    return run_cli("explain", *args, check=False)


def test_command_tiny_net_prints_the_documents_numbers_and_writes_the_pictures(tmp_path):
    result = bp_jax_explain("tiny-net", "--out", tmp_path)
    assert result.returncode == 0, result.stderr
    cells = [re.split(r"\s{2,}", line.strip()) for line in result.stdout.splitlines() if line[:1].isdigit()]
    rows = {row[2]: row[3:] for row in cells}  # name -> value, grad, document symbol, grad by hand, |difference|
    expected = {
        "w1": ("0.5", "-9", "w1", "-9"),
        "w2": ("1.5", "-3", "w2", "-3"),
        "x": ("2", "-2.25", "x", "-2.25"),
        "w1·x": ("1", "-4.5", "z1", "-4.5"),
        "relu(w1·x)": ("1", "-4.5", "a1", "-4.5"),
        "w2·relu(w1·x)": ("1.5", "-3", "y", "-3"),
        "(w2·relu(w1·x) − t)²": ("2.25", "1", "L", "1"),
    }
    for name, numbers in expected.items():
        assert rows[name] == [*numbers, "0.0e+00"], rows[name]
    assert (tmp_path / "graph.dot").read_text(encoding="utf-8").startswith("digraph")
    assert (tmp_path / "graph.png").read_bytes()[:8] == PNG
    assert ElementTree.parse(tmp_path / "graph.svg").getroot().tag.endswith("svg")


@pytest.mark.parametrize("args", [("neuron", "--activation", "tanh"), ("seed-mlp", "--activation", "sigmoid")])
@pytest.mark.slow
def test_command_other_models_agree_with_the_hand_derivation(tmp_path, args):
    result = bp_jax_explain(*args, "--out", tmp_path)
    assert result.returncode == 0, result.stderr
    differences = [
        float(match.group(1))
        for line in result.stdout.splitlines()
        if (match := re.search(r" (\d\.\de[+-]\d\d)$", line))
    ]
    assert len(differences) >= 2 and max(differences) < 1e-5
    assert (tmp_path / "graph.png").read_bytes()[:8] == PNG


@pytest.mark.parametrize(
    "args, message",
    [
        (("tiny-net", "--activation", "tanh"), "tiny-net is the document's ReLU network"),
        (("seed-mlp", "--activation", "identity"), "seed-mlp's activation must be one of relu, sigmoid, tanh"),
        (("resnet",), "invalid choice: 'resnet'"),
    ],
)
def test_command_bad_values_are_one_line_and_exit_2(tmp_path, args, message):
    result = bp_jax_explain(*args, "--out", tmp_path / "out")
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and message in result.stderr
    assert not (tmp_path / "out").exists()

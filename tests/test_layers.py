import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import normal, params_of, together

import bp_jax
from bp_jax._contraction import choose

KEY = jax.random.key(0)


def test_linear_matches_x_weight_transpose_plus_bias_over_leading_dims():
    layer = bp_jax.Linear(4, 3)
    params = layer.init(KEY)
    x = np.random.default_rng(1).normal(size=(2, 5, 4)).astype(np.float32)
    expected = np.einsum("bni,oi->bno", x, params["weight"]) + np.asarray(params["bias"])
    np.testing.assert_allclose(layer.apply(params, x), expected, rtol=1e-5, atol=1e-6)


def test_linear_without_bias_has_only_a_weight():
    layer = bp_jax.Linear(4, 3, bias=False)
    params = layer.init(KEY)
    assert set(params) == {"weight"}
    x = jnp.ones((2, 4))
    np.testing.assert_allclose(layer.apply(params, x), x @ params["weight"].T)


def test_linear_init_is_uniform_within_one_over_sqrt_in_like_nn_linear():
    params = bp_jax.Linear(64, 256).init(KEY)
    bound = 1 / 8
    for leaf in (params["weight"], params["bias"]):
        assert float(jnp.abs(leaf).max()) <= bound
    weight = np.asarray(params["weight"]).ravel()
    # U(-b, b) has mean 0 and variance b²/3; 16384 draws pin both to a few percent.
    assert abs(weight.mean()) < 0.05 * bound
    assert weight.var() == pytest.approx(bound**2 / 3, rel=0.05)
    assert float(jnp.abs(weight).max()) > 0.99 * bound
    assert not np.allclose(np.asarray(params["bias"]), weight[:256])  # weight and bias use different keys


def test_dtype_follows_x64_mode():
    assert bp_jax.Linear(3, 2).init(KEY)["weight"].dtype == jnp.float32
    with jax.enable_x64(True):
        assert bp_jax.Linear(3, 2).init(KEY)["weight"].dtype == jnp.float64
        assert bp_jax.neuron("tanh").init(KEY)["w"].dtype == jnp.float64
    assert bp_jax.Linear(3, 2, dtype=jnp.bfloat16).init(KEY)["weight"].dtype == jnp.bfloat16


def test_sequential_splits_the_key_once_per_layer():
    model = bp_jax.Sequential(bp_jax.Linear(3, 3), bp_jax.Linear(3, 3))
    first, second = model.init(KEY)
    assert not np.allclose(first["weight"], second["weight"])
    again = model.init(KEY)
    np.testing.assert_array_equal(first["weight"], again[0]["weight"])


@pytest.mark.parametrize(
    "layer, fn",
    [
        (bp_jax.ReLU(), lambda x: np.maximum(x, 0)),
        (bp_jax.Sigmoid(), lambda x: 1 / (1 + np.exp(-x))),
        (bp_jax.Tanh(), np.tanh),
    ],
)
def test_activation_layers_have_no_params_and_apply_elementwise(layer, fn):
    x = np.linspace(-3, 3, 13, dtype=np.float32)
    assert layer.init(KEY) == {}
    np.testing.assert_allclose(layer.apply({}, x), fn(x), rtol=1e-6, atol=1e-7)


def test_relu_derivative_at_zero_is_zero_like_torch():
    _, backward = bp_jax.ReLU().vjp({}, jnp.zeros(3))
    assert backward(jnp.ones(3))[1].tolist() == [0.0, 0.0, 0.0]
    assert jax.grad(lambda x: bp_jax.ReLU().apply({}, x))(0.0) == 0.0


# --- bad input: clear errors at trace time -----------------------------------------------------


def test_wrong_feature_count_names_expected_and_actual():
    layer = bp_jax.Linear(10, 5)
    with pytest.raises(ValueError, match=r"Linear\(10, 5\) expects x with 10 features.*\(32, 7\)"):
        layer.apply(layer.init(KEY), jnp.ones((32, 7)))
    with pytest.raises(ValueError, match="10 features"):
        jax.jit(layer.apply)(layer.init(KEY), jnp.ones((32, 7)))
    with pytest.raises(ValueError, match=r"got shape \(\)"):
        layer.apply(layer.init(KEY), jnp.float32(1.0))


def test_params_that_do_not_match_the_model_name_the_layer():
    model = bp_jax.Sequential(bp_jax.Linear(10, 5), bp_jax.ReLU(), bp_jax.Linear(5, 1))
    wrong = bp_jax.Sequential(bp_jax.Linear(10, 5), bp_jax.ReLU(), bp_jax.Linear(4, 1)).init(KEY)
    with pytest.raises(
        ValueError, match=r"Sequential layer 2: Linear\(5, 1\) expects weight of shape \(1, 5\), got \(1, 4\)"
    ):
        model.apply(wrong, jnp.ones((2, 10)))
    with pytest.raises(ValueError, match="expects a tuple of 3 params, got 2 entries"):
        model.apply(wrong[:2], jnp.ones((2, 10)))
    with pytest.raises(ValueError, match=r"Sequential layer 1: Relu expects params with keys \[\]"):
        model.apply((wrong[0], {"w": 1.0}, wrong[2]), jnp.ones((2, 10)))
    with pytest.raises(ValueError, match=r"keys \['bias', 'weight'\], got \['weight'\]"):
        model.apply(({"weight": wrong[0]["weight"]}, {}, wrong[2]), jnp.ones((2, 10)))
    with pytest.raises(TypeError, match="expects params as a dict"):
        bp_jax.Linear(2, 2).apply([1, 2], jnp.ones(2))
    with pytest.raises(ValueError, match=r"neuron\('relu'\) expects params with keys \['w'\]"):
        bp_jax.neuron("relu").apply({"w1": 1.0}, 1.0)


def test_neuron_and_tiny_net_take_the_documents_shape_1_weights():
    """The document writes w1 = torch.tensor([0.5]): shape (1,) is accepted beside (), nothing else."""
    one = lambda v: jnp.array([v])
    assert bp_jax.tiny_net().apply({"w1": one(0.5), "w2": one(1.5)}, one(2.0)).tolist() == [1.5]
    assert bp_jax.tiny_net().apply({"w1": one(0.5), "w2": 1.5}, 2.0).tolist() == [1.5]
    assert bp_jax.neuron("relu").apply({"w": one(0.5)}, one(2.0)).tolist() == [1.0]
    with pytest.raises(ValueError, match=r"tiny_net expects w1 of shape \(\) or \(1,\), got \(2,\)"):
        bp_jax.tiny_net().apply({"w1": jnp.ones(2), "w2": 1.5}, 2.0)
    with pytest.raises(ValueError, match=r"neuron\('tanh'\) expects w of shape \(\) or \(1,\), got \(1, 1\)"):
        bp_jax.neuron("tanh").apply({"w": jnp.ones((1, 1))}, 2.0)


def test_unknown_activation_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown activation 'gelu'.*\['identity', 'relu', 'sigmoid', 'tanh'\]"):
        bp_jax.neuron("gelu")


@pytest.mark.parametrize("sizes", [(0, 3), (3, -1), (2.5, 3), (True, 3)])
def test_linear_rejects_non_positive_int_sizes(sizes):
    with pytest.raises(ValueError, match="must be a positive int"):
        bp_jax.Linear(*sizes)


def test_sequential_rejects_non_models():
    with pytest.raises(TypeError, match="Sequential expects one or more Models"):
        bp_jax.Sequential()
    with pytest.raises(TypeError, match="Sequential expects one or more Models"):
        bp_jax.Sequential(bp_jax.Linear(2, 2), jnp.tanh)


@pytest.mark.parametrize("activation", ["relu", "tanh", "sigmoid", "identity"])
def test_mlp_is_the_sequential_written_out_by_hand(activation):
    key, x = jax.random.key(3), normal(4, 7, 10)
    by_hand = bp_jax.Sequential(
        bp_jax.Linear(10, 8),
        bp_jax._layers.elementwise(activation),
        bp_jax.Linear(8, 4),
        bp_jax._layers.elementwise(activation),
        bp_jax.Linear(4, 2),
    )
    built = bp_jax.mlp((10, 8, 4, 2), activation)
    params = built.init(key)
    chex.assert_trees_all_equal(params, by_hand.init(key))
    chex.assert_trees_all_equal(built.apply(params, x), by_hand.apply(params, x))
    assert [layer["weight"].shape if layer else None for layer in params] == [(8, 10), None, (4, 8), None, (2, 4)]


def test_mlp_refuses_too_few_sizes_and_unknown_activations():
    with pytest.raises(ValueError, match=r"at least two sizes.*\(10,\)"):
        bp_jax.mlp((10,))
    with pytest.raises(ValueError, match="unknown activation 'gelu'"):
        bp_jax.mlp((10, 5, 1), "gelu")


def test_a_model_is_named_as_the_call_that_builds_it():
    assert bp_jax.mlp((10, 5, 1), "tanh").name == "Sequential(Linear(10, 5), Tanh(), Linear(5, 1))"
    assert bp_jax.Linear(3, 2, bias=False).name == "Linear(3, 2, bias=False)"
    assert (bp_jax.ReLU().name, bp_jax.Sigmoid().name, bp_jax.neuron("relu").name) == (
        "ReLU()",
        "Sigmoid()",
        "neuron('relu')",
    )
    assert bp_jax.mlp((10, 5, 1), "tanh").name != bp_jax.mlp((10, 5, 1), "relu").name
    unknown = bp_jax.Model(lambda key: {}, lambda params, x: x)
    assert unknown.name is None and bp_jax.Sequential(unknown, bp_jax.ReLU()).name is None


def test_mlp_params_take_the_dtype_asked_for():
    params = bp_jax.mlp((3, 2, 1), dtype=jnp.bfloat16).init(jax.random.key(0))
    assert {leaf.dtype for leaf in jax.tree.leaves(params)} == {jnp.dtype(jnp.bfloat16)}


@pytest.mark.parametrize(
    "contraction, layout",
    [("sum", "rows"), ("dot", "columns"), (("dot", "sum"), "columns"), ("sum", "columns")],
)
@pytest.mark.parametrize("shape", [(5, 4), (4,), (2, 5, 4)])
@pytest.mark.slow
def test_every_contraction_and_layout_is_the_same_function_and_derivatives_as_the_matmul(
    contraction, layout, shape, precision
):
    """contraction="sum" forms x·Wᵀ as products summed, layout="columns" carries the activations as (features,
    rows): each equal to the plain matmul in value, gradient and forward-mode tangent (float rounding only), for one
    row, a batch and leading batch dims, under vmap too. Both models' numbers come from one jitted program."""
    dot = bp_jax.mlp((4, 3, 2), "tanh", contraction="dot")
    other = bp_jax.mlp((4, 3, 2), "tanh", contraction=contraction, layout=layout)
    params = params_of(dot)
    x = normal(1, *shape)
    tangent = jax.tree.map(jnp.ones_like, params)
    members = jax.tree.map(lambda leaf: np.stack([leaf, -leaf, 2 * leaf]), params)  # 3 members' params stacked

    @jax.jit
    def both(params, x, tangent, members):
        def numbers(model):
            loss = lambda p: jnp.sum(model.apply(p, x) ** 2)
            return {
                "value": model.apply(params, x),
                "grad": jax.grad(loss)(params),
                "tangent": jax.jvp(loss, (params,), (tangent,)),
                "vmap": jax.vmap(model.apply, (0, None))(members, x),
            }

        return numbers(other), numbers(dot)

    got, expected = both(params, x, tangent, members)
    chex.assert_trees_all_close(got, expected, rtol=precision, atol=precision)


def test_a_columns_mlp_is_named_checked_and_keeps_the_hand_written_backward(precision):
    model = bp_jax.mlp((4, 3, 2), "tanh", contraction=("dot", "sum"), layout="columns")
    assert model.name == "mlp((4, 3, 2), 'tanh', contraction=('dot', 'sum'), layout='columns')"
    params = params_of(model)
    x, y = normal(1, 5, 4), jnp.ones((5, 2))
    by_hand, by_jax = together(bp_jax.manual.value_and_grad(model), jax.value_and_grad(bp_jax.loss_fn(model)))(
        params, x, y
    )
    chex.assert_trees_all_close(by_hand, by_jax, rtol=precision, atol=precision)
    with pytest.raises(ValueError, match=r"Linear\(4, 3, contraction='dot'\) expects x with 4 features"):
        model.apply(params, jnp.ones((5, 3)))
    with pytest.raises(ValueError, match=r"layout must be one of \('rows', 'columns'\), got 'cols'"):
        bp_jax.mlp((4, 3, 2), layout="cols")


def test_a_contraction_is_named_and_checked():
    assert bp_jax.Linear(3, 2, contraction="sum").name == "Linear(3, 2, contraction='sum')"
    assert bp_jax.Linear(3, 2, contraction="dot").name == "Linear(3, 2, contraction='dot')"
    assert bp_jax.Linear(3, 2).name == "Linear(3, 2)"
    with pytest.raises(ValueError, match=r"contraction must be one of \('auto', 'dot', 'sum'\), got 'einsum'"):
        bp_jax.Linear(3, 2, contraction="einsum")


@pytest.mark.parametrize("layout", ["rows", "columns"])
def test_the_default_contraction_is_the_sum_for_few_products_on_cpu_and_the_matmul_beyond(layout):
    """The "auto" contraction: the sum while rows·in·out ≤ SUM_MAX_PRODUCTS (10 → 5 → 1 on 32 rows: no
    dot_general in the program), the matmul past it (1 100 rows: both layers); the matmul off the CPU."""
    model = bp_jax.mlp((10, 5, 1), layout=layout)
    params = params_of(model)
    dots = lambda rows: str(jax.make_jaxpr(model.apply)(params, jnp.ones((rows, 10)))).count("dot_general")
    assert (dots(32), dots(1100)) == ((0, 2) if jax.default_backend() == "cpu" else (2, 2))
    assert [choose(10, 5, 32, platform=platform) for platform in ("cpu", "gpu", "tpu")] == ["sum", "dot", "dot"]


def test_an_mlp_takes_one_contraction_per_layer():
    model = bp_jax.mlp((4, 3, 2), contraction=("dot", "sum"))
    assert model.name == "Sequential(Linear(4, 3, contraction='dot'), ReLU(), Linear(3, 2, contraction='sum'))"
    with pytest.raises(ValueError, match=r"contraction must be one name or one per Linear layer \(2\), got 3"):
        bp_jax.mlp((4, 3, 2), contraction=("dot", "sum", "sum"))

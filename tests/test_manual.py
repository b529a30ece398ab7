"""Hand-written derivatives (bp_jax.manual) against jax.grad, and both against finite differences."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import normal, params_of, together
from hypothesis import given, settings
from hypothesis import strategies as st

import bp_jax
from bp_jax import documents, manual

ACTIVATIONS = ["identity", "relu", "sigmoid", "tanh"]
finite = st.floats(-3.0, 3.0, allow_nan=False).filter(lambda v: abs(v) > 1e-3)  # keep relu off its kink


@pytest.mark.parametrize("name", ACTIVATIONS)
@settings(max_examples=25, deadline=None)
@given(w=finite, x=finite, t=finite)
@pytest.mark.slow
def test_neuron_formula_equals_jax_grad(name, w, x, t):
    # Negative pre-activations (w·x < 0) are drawn as often as positive ones.
    for dtype, tolerance in ((jnp.float32, 1e-5), (jnp.float64, 1e-10)):
        with jax.enable_x64(dtype == jnp.float64):
            w_, x_, t_ = (jnp.asarray(v, dtype) for v in (w, x, t))
            loss = bp_jax.loss_fn(bp_jax.neuron(name), bp_jax.squared_error)
            expected = jax.grad(loss)({"w": w_}, x_, t_)["w"]
            chex.assert_trees_all_close(manual.neuron_grad(w_, x_, t_, name), expected, rtol=tolerance, atol=tolerance)


@settings(max_examples=50, deadline=None)
@given(w1=finite, w2=finite, x=finite, t=finite)
def test_tiny_net_grads_equal_jax_grad(w1, w2, x, t):
    with jax.enable_x64(True):
        loss = bp_jax.loss_fn(bp_jax.tiny_net(), bp_jax.squared_error)
        grads, grad_x = jax.grad(loss, argnums=(0, 1))({"w1": w1, "w2": w2}, x, t)
        by_hand = manual.tiny_net_grads(w1, w2, x, t)
        chex.assert_trees_all_close(
            by_hand, {"w1": grads["w1"], "w2": grads["w2"], "x": grad_x}, rtol=1e-10, atol=1e-10
        )


MODELS = {
    "seed": documents.seed_mlp,
    "every layer": documents.every_layer_mlp,
    "single linear": lambda: bp_jax.Sequential(bp_jax.Linear(10, 2)),
}


def data(seed, batch_shape, features, outputs):
    return normal(seed, *batch_shape, features), normal(seed + 1, *batch_shape, outputs)


@pytest.mark.parametrize("model_name", MODELS)
@pytest.mark.parametrize("batch_shape", [(1,), (32,), (4, 7)])
@pytest.mark.slow
def test_manual_value_and_grad_equals_jax(model_name, batch_shape, precision):
    """Each model for one example, a batch and leading batch dims, both under jit (one program)."""
    model = MODELS[model_name]()
    params = params_of(model)
    outputs = jax.tree.leaves(params)[-1].shape[0]
    x, y = data(100, batch_shape, 10, outputs)
    got, expected = together(manual.value_and_grad(model), jax.value_and_grad(bp_jax.loss_fn(model)))(params, x, y)
    chex.assert_trees_all_close(got, expected, rtol=precision, atol=precision)
    chex.assert_trees_all_equal_dtypes(got[1], params)


def test_manual_value_and_grad_jits():
    model = MODELS["every layer"]()
    params = params_of(model, seed=5)
    x, y = data(6, (8,), 10, 3)
    expected = jax.value_and_grad(bp_jax.loss_fn(model))(params, x, y)
    chex.assert_trees_all_close(jax.jit(manual.value_and_grad(model))(params, x, y), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("model_name", MODELS)
@pytest.mark.slow
def test_both_gradients_agree_with_finite_differences(model_name):
    with jax.enable_x64(True):
        model = MODELS[model_name]()
        params = params_of(model, seed=7)
        x, y = data(8, (16,), 10, jax.tree.leaves(params)[-1].shape[0])
        loss = jax.jit(bp_jax.loss_fn(model))
        jax.test_util.check_grads(lambda p: loss(p, x, y), (params,), order=1, modes=["rev"])
        manual_grads = jax.jit(manual.value_and_grad(model))(params, x, y)[1]
        # Directional derivative by central differences along a random direction, vs the manual grads.
        leaves, treedef = jax.tree.flatten(params)
        direction = jax.tree.unflatten(treedef, [normal(i, *leaf.shape) for i, leaf in enumerate(leaves)])
        eps = 1e-6
        shifted = lambda s: loss(jax.tree.map(lambda p, d: p + s * d, params, direction), x, y)
        numeric = (shifted(eps) - shifted(-eps)) / (2 * eps)
        analytic = sum(jnp.vdot(g, d) for g, d in zip(jax.tree.leaves(manual_grads), jax.tree.leaves(direction)))
        assert float(analytic) == pytest.approx(float(numeric), rel=1e-6, abs=1e-8)


CLASSIFIERS = {
    "every layer, 3 classes": MODELS["every layer"],
    "single linear, 2 classes": MODELS["single linear"],
    "relu mlp, 5 classes": lambda: bp_jax.mlp((10, 16, 16, 5)),
}


@pytest.mark.parametrize("model_name", CLASSIFIERS)
@pytest.mark.parametrize("batch", [1, 32])
@pytest.mark.slow
def test_manual_cross_entropy_equals_jax(model_name, batch, precision):
    """Each classifier (2, 3 and 5 classes) for one example and a batch, both under jit (one program)."""
    model = CLASSIFIERS[model_name]()
    params = params_of(model)
    classes = jax.tree.leaves(params)[-1].shape[0]
    x = 3 * normal(100, batch, 10)  # logits of a few units: softmax not saturated
    labels = np.random.default_rng(200).integers(classes, size=batch)
    loss = bp_jax.softmax_cross_entropy
    got, expected = together(manual.value_and_grad(model, loss), jax.value_and_grad(bp_jax.loss_fn(model, loss)))(
        params, x, labels
    )
    chex.assert_trees_all_close(got, expected, rtol=precision, atol=precision)
    chex.assert_trees_all_equal_dtypes(got[1], params)


def test_cross_entropy_grad_by_hand_equals_jax_grad_of_the_loss(precision):
    logits = 5 * normal(0, 64, 7)
    labels = np.random.default_rng(1).integers(7, size=64)
    by_hand, by_jax = together(manual.LOSS_GRADS[bp_jax.softmax_cross_entropy], jax.grad(bp_jax.softmax_cross_entropy))(
        logits, labels
    )
    chex.assert_trees_all_close(by_hand, by_jax, rtol=precision, atol=precision)
    chex.assert_trees_all_close(by_hand.sum(axis=1), jnp.zeros(64), atol=precision)  # Σ_j softmax_j − 1 = 0


def test_manual_refuses_models_without_hand_written_derivatives():
    with pytest.raises(TypeError, match="hand-written derivatives"):
        manual.value_and_grad(bp_jax.tiny_net())
    with pytest.raises(
        ValueError,
        match=r"knows the derivatives of \['mse', 'softmax_cross_entropy'\], "
        r"got <function squared_error",
    ):
        manual.value_and_grad(MODELS["seed"](), loss=bp_jax.squared_error)

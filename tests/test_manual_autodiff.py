"""bp_jax.manual beyond one gradient: per-example gradients and the tiny network's Hessian, by hand, against
`jax.vmap(jax.grad)`, `jax.hessian` and PyTorch's `torch.func` (float64 to 1e-10, float32 to 1e-5)."""

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

MODELS = {"seed MLP": (documents.seed_mlp, 1), "every layer": (documents.every_layer_mlp, 3)}  # name: (model, outputs)
LOSSES = {"mse": bp_jax.mse, "softmax cross-entropy": bp_jax.softmax_cross_entropy}


def problem(model_name: str, loss_name: str, batch: int, seed: int = 0):
    """(model, params, x, y): y ~ N(0, 1) of the outputs' shape for mse, integer labels for cross-entropy."""
    build, outputs = MODELS[model_name]
    model = build()
    params = params_of(model, seed)
    x = 2 * normal(seed + 1, batch, 10)
    if loss_name == "mse":
        y = normal(seed + 2, batch, outputs)
    else:
        y = jnp.asarray(np.random.default_rng(seed + 2).integers(outputs, size=batch))
    return model, params, x, y


def cases():
    for model_name, (_, outputs) in MODELS.items():
        for loss_name in LOSSES:
            if loss_name == "mse" or outputs > 1:  # one output is no classifier
                yield model_name, loss_name


# --- per-example gradients ------------------------------------------------------------------------


@pytest.mark.parametrize("model_name, loss_name", list(cases()))
@pytest.mark.parametrize("batch", [1, 7])
@pytest.mark.slow
def test_per_example_grads_equal_vmap_of_grad_on_one_example_batches(model_name, loss_name, batch, precision):
    """Both under jit, in one program."""
    model, params, x, y = problem(model_name, loss_name, batch)
    loss = LOSSES[loss_name]
    one_example = jax.grad(bp_jax.loss_fn(model, loss))
    got, expected = together(
        manual.per_example_grads(model, loss),
        lambda params, x, y: jax.vmap(one_example, (None, 0, 0))(params, x[:, None], y[:, None]),
    )(params, x, y)
    chex.assert_trees_all_close(got, expected, rtol=precision, atol=precision)
    chex.assert_trees_all_equal_dtypes(got, expected)
    for row, leaf in zip(jax.tree.leaves(got), jax.tree.leaves(params)):
        assert row.shape == (batch, *leaf.shape)


@pytest.mark.parametrize("model_name, loss_name", list(cases()))
@pytest.mark.slow
def test_the_mean_of_the_rows_is_the_batch_gradient(model_name, loss_name, precision):
    """The batch loss is the mean of the examples' own losses (mse: B·C elements, C per example), so no 1/B
    sits in a row and their mean is the batch gradient (both under jit, in one program)."""
    model, params, x, y = problem(model_name, loss_name, 16, seed=3)
    rows, (_, batch_grads) = together(
        manual.per_example_grads(model, LOSSES[loss_name]), manual.value_and_grad(model, LOSSES[loss_name])
    )(params, x, y)
    mean = jax.tree.map(lambda leaf: jnp.mean(leaf, axis=0), rows)
    chex.assert_trees_all_close(mean, batch_grads, rtol=precision, atol=precision)


def test_a_linear_layers_row_is_the_outer_product_of_its_backward_signal_and_its_input():
    with jax.enable_x64(True):
        model = bp_jax.Sequential(bp_jax.Linear(4, 3))
        params = model.init(jax.random.key(0))
        x, y = jax.random.normal(jax.random.key(1), (5, 4)), jax.random.normal(jax.random.key(2), (5, 3))
        (rows,) = manual.per_example_grads(model)(params, x, y)
        delta = 2 * (model.apply(params, x) - y) / 3  # example i's dL/dpred: its own mse over 3 outputs
        np.testing.assert_allclose(rows["weight"], delta[:, :, None] * x[:, None, :], rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(rows["bias"], delta, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("model_name, loss_name", list(cases()))
@pytest.mark.slow
def test_per_example_grads_equal_torch_func_vmap_of_grad(model_name, loss_name):
    torch = pytest.importorskip("torch", reason="the torch.func comparison needs PyTorch")
    from torch.func import functional_call, grad, vmap

    with jax.enable_x64(True):
        model, params, x, y = problem(model_name, loss_name, 9, seed=5)
        ours = jax.jit(manual.per_example_grads(model, LOSSES[loss_name]))(params, x, y)
    twin = eval(model.name, vars(torch.nn))  # a model's name is its constructor call, torch.nn's too
    module = bp_jax.to_torch(params, twin.double(), model=model)
    criterion = torch.nn.MSELoss() if loss_name == "mse" else torch.nn.CrossEntropyLoss()
    weights = {name: value.detach() for name, value in module.named_parameters()}

    def own_loss(weights, x_i, y_i):  # the torch.func tutorial's per-sample-gradient recipe
        return criterion(functional_call(module, weights, (x_i[None],)), y_i[None])

    theirs = vmap(grad(own_loss), in_dims=(None, 0, 0))(
        weights, torch.from_numpy(np.array(x)), torch.from_numpy(np.array(y))
    )
    assert set(theirs) == {f"{i}.{kind}" for i, layer in enumerate(ours) for kind in layer}
    for name, value in theirs.items():
        index, kind = name.split(".")
        np.testing.assert_allclose(np.asarray(ours[int(index)][kind]), value.numpy(), rtol=1e-10, atol=1e-10)


def test_per_example_grads_refuse_bad_input():
    model, params, x, y = problem("seed MLP", "mse", 4)
    with pytest.raises(ValueError, match=r"same leading batch axis, got shapes \(4, 10\) and \(3, 1\)"):
        manual.per_example_grads(model)(params, x, y[:3])
    with pytest.raises(TypeError, match="hand-written derivatives"):
        manual.per_example_grads(bp_jax.tiny_net())
    with pytest.raises(ValueError, match="knows the derivatives of"):
        manual.per_example_grads(model, bp_jax.squared_error)


def test_per_example_grads_refuse_labels_the_loss_refuses_and_give_nan_rows_for_traced_ones():
    model = bp_jax.mlp((2, 4, 3))
    params, x = model.init(jax.random.key(0)), jnp.ones((3, 2))
    grads = manual.per_example_grads(model, bp_jax.softmax_cross_entropy)
    for label in (7, -1):  # refused in one line, as value_and_grad and the loss refuse them
        with pytest.raises(ValueError, match=rf"labels must lie in \[0, 3\) .* got label {label} at row 2"):
            grads(params, x, jnp.array([0, 1, label]))
    rows = jax.jit(grads)(params, x, jnp.array([0, 1, 7]))  # traced: nothing can raise; the row is NaN, as its loss
    assert all(bool(jnp.isfinite(leaf[:2]).all()) for leaf in jax.tree.leaves(rows))
    assert all(bool(jnp.isnan(leaf[2]).any()) for leaf in jax.tree.leaves(rows))
    with pytest.raises(TypeError, match="labels must be integer class indices"):
        grads(params, x, jnp.array([0.0, 1.0, 2.0]))


# --- the tiny network's Hessian -------------------------------------------------------------------

away_from_zero = st.floats(-3.0, 3.0, allow_nan=False).filter(lambda v: abs(v) > 1e-2)  # off relu's kink


def tiny_net_loss_of(weights, x, t):
    return documents.tiny_net_loss({"w1": weights[0], "w2": weights[1]}, x, t)


def test_tiny_net_hessian_at_the_documents_point():
    net = documents.TINY_NET
    hessian = manual.tiny_net_hessian(net.w1, net.w2, net.x, net.t)
    assert hessian.tolist() == [[18.0, 0.0], [0.0, 2.0]]


@jax.jit
def hessians(w1, w2, x, t):
    """By hand, by jax.hessian, and the Hessian-vector products along (1, 0) and (0.3, −1.7) by jax.jvp of
    jax.grad (forward over reverse): one program for every draw."""
    weights = jnp.stack([w1, w2])
    gradient = lambda w: jax.grad(tiny_net_loss_of)(w, x, t)
    directions = jnp.array([[1.0, 0.0], [0.3, -1.7]])
    hvps = jnp.stack([jax.jvp(gradient, (weights,), (v,))[1] for v in directions])
    return manual.tiny_net_hessian(w1, w2, x, t), jax.hessian(tiny_net_loss_of)(weights, x, t), directions, hvps


@settings(max_examples=50, deadline=None)
@given(w1=away_from_zero, w2=away_from_zero, x=away_from_zero, t=away_from_zero)
def test_tiny_net_hessian_equals_jax_hessian_and_hessian_vector_products(w1, w2, x, t):
    with jax.enable_x64(True):
        by_hand, hessian, directions, hvps = hessians(w1, w2, x, t)
        np.testing.assert_allclose(by_hand, hessian, rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(hvps, directions @ by_hand.T, rtol=1e-10, atol=1e-10)


def test_tiny_net_hessian_equals_torch_func_hessian():
    torch = pytest.importorskip("torch", reason="the torch.func comparison needs PyTorch")
    from torch.func import hessian

    def loss(weights, x, t):
        return (weights[1] * torch.relu(weights[0] * x) - t) ** 2

    for w1, w2, x, t in ((0.5, 1.5, 2.0, 3.0), (-0.7, 2.1, -1.3, 0.4), (1.2, -0.4, 0.9, -2.0)):
        theirs = hessian(loss)(*(torch.tensor(v, dtype=torch.float64) for v in ([w1, w2], x, t)))
        with jax.enable_x64(True):
            np.testing.assert_allclose(manual.tiny_net_hessian(w1, w2, x, t), theirs.numpy(), rtol=1e-10, atol=1e-10)

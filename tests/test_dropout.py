"""Dropout: the layer, the key through Sequential, loss_fn and manual.value_and_grad (against autodiff and PyTorch
given the same masks, float64 to 1e-10), fit's per-step keys, exports at inference, and the loop of a model without
dropout left as it was."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import normal, params_of, together

import bp_jax
from bp_jax import _fit, _fit_loop, manual
from bp_jax._layers import hash_fold_in

RATE = 0.25
SIZES = (4, 8, 6, 3)
#: the Sequential's layers of mlp(SIZES, "tanh", dropout=RATE): Linear, Tanh, Dropout, Linear, Tanh, Dropout, Linear
DROPOUT_LAYERS = (2, 5)


def model(dropout: float = RATE) -> bp_jax.Model:
    return bp_jax.mlp(SIZES, "tanh", dropout=dropout)


@pytest.mark.parametrize("rate", [-0.1, 1.0, 1.5, math.nan, "0.5", True])
def test_a_rate_outside_0_1_is_refused_naming_it(rate):
    with pytest.raises(ValueError, match=rf"Dropout rate must be a number in \[0, 1\), got {rate!r}"):
        bp_jax.Dropout(rate)
    with pytest.raises(ValueError, match=r"Dropout rate must be a number in \[0, 1\)"):
        bp_jax.mlp(SIZES, dropout=rate)


def test_the_model_says_it_is_stochastic_and_rate_0_adds_nothing():
    assert model().stochastic and bp_jax.Dropout(0.5).stochastic
    assert not bp_jax.Dropout(0).stochastic and not model(0).stochastic and not bp_jax.loss_fn(model(0)).stochastic
    assert model(0).name == bp_jax.mlp(SIZES, "tanh").name
    assert model().name == (
        "Sequential(Linear(4, 8), Tanh(), Dropout(0.25), Linear(8, 6), Tanh(), Dropout(0.25), Linear(6, 3))"
    )
    network = model()
    loss = bp_jax.loss_fn(network)
    assert loss.stochastic and loss == bp_jax.loss_fn(network) and hash(loss) == hash(bp_jax.loss_fn(network))
    with pytest.raises(ValueError, match="dropout needs layout 'rows'"):
        bp_jax.mlp(SIZES, dropout=RATE, layout="columns")


def test_dropout_scales_kept_elements_by_one_over_1_minus_rate_and_no_key_is_the_identity():
    layer, x = bp_jax.Dropout(RATE), normal(0, 400, 5) + 3.0  # no zeros of its own
    np.testing.assert_array_equal(layer.apply({}, x), x)
    key, other = jax.random.key(0), jax.random.key(1)
    y, again, elsewhere = together(
        lambda x: layer.apply({}, x, key=key),
        lambda x: layer.apply({}, x, key=key),
        lambda x: layer.apply({}, x, key=other),
    )(x)
    kept = np.asarray(y) != 0
    np.testing.assert_allclose(np.asarray(y)[kept], np.asarray(x)[kept] / (1 - RATE), rtol=1e-6)
    assert abs((1 - kept.mean()) - RATE) < 0.05  # 2000 draws: the dropped fraction's sd is 0.01
    np.testing.assert_array_equal(y, again)
    assert not np.array_equal(y, elsewhere)
    with pytest.raises(ValueError, match=r"Dropout expects params with keys \[\]"):
        layer.apply({"w": 1.0}, x)


def test_a_sequential_without_a_key_is_the_network_without_dropout_and_a_key_fixes_its_masks():
    with_dropout = model()
    params = params_of(with_dropout)
    plain = tuple(layer for index, layer in enumerate(params) if index not in DROPOUT_LAYERS)
    x, key = normal(1, 16, 4), jax.random.key(2)
    inference, reference, masked, again, other = together(
        lambda p, x: with_dropout.apply(p, x),
        lambda p, x: bp_jax.mlp(SIZES, "tanh").apply(plain, x),
        lambda p, x: with_dropout.apply(p, x, key=key),
        lambda p, x: with_dropout.vjp(p, x, key=key)[0],
        lambda p, x: with_dropout.apply(p, x, key=jax.random.key(3)),
    )(params, x)
    np.testing.assert_array_equal(inference, reference)
    np.testing.assert_array_equal(masked, again)  # vjp draws apply's masks
    assert not np.allclose(masked, inference) and not np.allclose(masked, other)


def test_manual_value_and_grad_equals_autodiff_with_the_same_key():
    """For mse and softmax cross-entropy, in one program."""
    with jax.enable_x64(True):
        network, losses = model(), (bp_jax.mse, bp_jax.softmax_cross_entropy)
        params, x, key = params_of(network), normal(3, 16, 4), jax.random.key(4)
        targets = (normal(4, 16, 3), jnp.asarray(np.arange(16) % 3))
        results = jax.jit(
            lambda p, x, targets: [
                (
                    jax.value_and_grad(bp_jax.loss_fn(network, loss))(p, x, y, key=key),
                    manual.value_and_grad(network, loss)(p, x, y, key=key),
                    bp_jax.loss_fn(network, loss)(p, x, y),
                )
                for loss, y in zip(losses, targets)
            ]
        )(params, x, targets)
    for by_autodiff, by_hand, inference in results:
        chex.assert_trees_all_close(by_hand, by_autodiff, rtol=1e-10, atol=1e-10)
        assert abs(float(by_hand[0]) - float(inference)) > 1e-3  # the key dropped something


@pytest.mark.slow  # imports torch: a parity suite
def test_pytorch_given_the_same_masks_gives_the_same_loss_and_gradients():
    torch = pytest.importorskip("torch")
    nn = torch.nn
    torch.manual_seed(0)
    module = nn.Sequential(
        nn.Linear(4, 8), nn.Tanh(), nn.Dropout(RATE), nn.Linear(8, 6), nn.Tanh(), nn.Dropout(RATE), nn.Linear(6, 3)
    ).double()
    x, y = torch.randn(16, 4, dtype=torch.float64), torch.randn(16, 3, dtype=torch.float64)
    key = jax.random.key(5)
    with jax.enable_x64(True):
        network = model()
        params = bp_jax.from_torch(module, model=network)  # nn.Dropout is Dropout: the names match
        xj, yj = jnp.asarray(x.numpy()), jnp.asarray(y.numpy())
        loss, grads = jax.jit(lambda p: manual.value_and_grad(network)(p, xj, yj, key=key))(params)
        # Sequential hands Dropout layer i the key hash_fold_in(key, i); its m/(1 − rate) on a batch of ones:
        scales = jax.jit(
            lambda: {
                i: bp_jax.Dropout(RATE).apply({}, jnp.ones((16, width)), key=hash_fold_in(key, i))
                for i, width in zip(DROPOUT_LAYERS, SIZES[1:3])
            }
        )()
    h = x
    for index, layer in enumerate(module):
        h = h * torch.from_numpy(np.asarray(scales[index])) if index in DROPOUT_LAYERS else layer(h)
    torch_loss = nn.functional.mse_loss(h, y)
    torch_loss.backward()
    torch_grads = tuple({name: p.grad.numpy() for name, p in layer.named_parameters()} for layer in module)
    np.testing.assert_allclose(float(loss), torch_loss.item(), rtol=1e-10, atol=1e-10)
    chex.assert_trees_all_close(grads, torch_grads, rtol=1e-10, atol=1e-10)


@pytest.fixture(scope="module")
def problem():
    network = model()
    return network, bp_jax.loss_fn(network), params_of(network), normal(6, 40, 4), normal(7, 40, 3)


def test_fit_and_fit_ensemble_need_a_key_for_a_stochastic_loss(problem):
    _, loss, params, x, y = problem
    members = jax.tree.map(lambda leaf: jnp.stack([leaf, leaf]), params)
    for train in (bp_jax.fit, bp_jax.fit_ensemble):
        with pytest.raises(ValueError, match=r"loss_fn is stochastic .* pass key=, .* got None"):
            train(loss, members if train is bp_jax.fit_ensemble else params, x, y, steps=1, lr=0.1)


#: one configuration for every fit below (the hand-written SGD, minibatches of 8): one compiled loop for fit, one for
#: fit_ensemble
TRAINING = {"lr": 0.1, "batch_size": 8}


def test_step_s_draws_its_masks_from_hash_fold_in_noise_s_apart_from_the_minibatch_order(problem):
    _, loss, params, x, y = problem
    key = jax.random.key(8)
    result = bp_jax.fit(loss, params, x, y, steps=2, key=key, **TRAINING)
    rows = bp_jax.minibatch_indices(key, 0, 40, 8)
    noise = _fit.noise_keys(key, None)
    first = jax.jit(lambda p: loss(p, x[rows], y[rows], key=hash_fold_in(noise, 0)))(params)
    np.testing.assert_allclose(result.losses[0], first, rtol=1e-6)
    assert abs(result.losses[0] - float(loss(params, x[rows], y[rows]))) > 1e-3  # not the inference loss


def test_ensemble_members_draw_their_own_masks_the_first_of_a_group_as_fit_does(problem):
    _, loss, params, x, y = problem
    key, twins = jax.random.key(9), jax.tree.map(lambda leaf: jnp.stack([leaf, leaf]), params)
    members = bp_jax.fit_ensemble(loss, twins, x, y, steps=3, key=key, **TRAINING)
    assert not np.allclose(members.losses[:, 0], members.losses[:, 1])  # same params and minibatches, other masks
    alone = bp_jax.fit(loss, params, x, y, steps=3, key=key, **TRAINING)
    np.testing.assert_allclose(members.losses[:, 0], alone.losses, rtol=1e-5, atol=1e-6)


def test_resuming_an_ensemble_with_dropout_is_bit_identical(problem):
    _, loss, params, x, y = problem
    members = jax.tree.map(lambda leaf: jnp.stack([leaf, leaf * 0.5]), params)
    key = jax.random.key(11)
    whole = bp_jax.fit_ensemble(loss, members, x, y, steps=12, key=key, **TRAINING)
    first = bp_jax.fit_ensemble(loss, members, x, y, steps=5, key=key, **TRAINING)
    rest = bp_jax.fit_ensemble(loss, first.params, x, y, steps=7, start_step=5, chunk_size=3, key=key, **TRAINING)
    chex.assert_trees_all_equal(rest.params, whole.params)
    np.testing.assert_array_equal(np.concatenate([first.losses, rest.losses]), whole.losses)


def test_the_loop_hashes_bits_only_for_a_model_with_dropout(problem):
    """A model without dropout compiles the loop it compiled before keys existed: no key, no hashing in its program
    (minibatches in order, so that the order's hash is not there either)."""
    _, loss, params, x, y = problem

    def lowered(loss, params, noise):
        state = _fit_loop.LoopState(params, None, _fit_loop.Divergence(jnp.int32(-1), jnp.int32(0)))
        loop = _fit_loop.compiled_loop(loss, None, 8, None, ensemble=False, key_axis=None, shuffle=False)
        return loop.lower(state, 0.1, None, x, y, None, None, 0, 4, noise).as_text()

    plain = bp_jax.loss_fn(bp_jax.mlp(SIZES, "tanh"))
    plain_params = tuple(layer for index, layer in enumerate(params) if index not in DROPOUT_LAYERS)
    assert "xor" not in lowered(plain, plain_params, None)
    assert "xor" in lowered(loss, params, _fit.noise_keys(jax.random.key(12), None))


def test_exports_are_the_inference_function(tmp_path):
    onnxruntime = pytest.importorskip("onnxruntime")
    network = model()
    params = params_of(network)
    x = np.random.default_rng(13).normal(size=(7, 4)).astype(np.float32)
    with jax.default_matmul_precision("highest"):
        reference = np.asarray(network.apply(params, x))
    exported = bp_jax.to_jax_export(network, params, platforms=("cpu",))
    np.testing.assert_allclose(exported.call(x), reference, rtol=1e-6, atol=1e-6)
    proto = bp_jax.to_onnx(network, params)
    assert [node.op_type for node in proto.graph.node] == ["Gemm", "Tanh", "Gemm", "Tanh", "Gemm", "Identity"]
    session = onnxruntime.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(None, {"x": x})[0], reference, rtol=1e-6, atol=1e-6)

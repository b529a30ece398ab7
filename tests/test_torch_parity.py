"""The documents' PyTorch code, run verbatim beside bp_jax on the same weights (via from_torch) and data.

float64 (torch `.double()`, `jax.enable_x64`) agrees to 1e-10 and float32 to 1e-5, relative and absolute
(the `precision` fixture). JAX matmuls are pinned to "highest" precision, which matters only on GPUs (TF32).
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import together

import bp_jax
from bp_jax import documents, manual

torch = pytest.importorskip("torch", reason="parity tests run the documents' PyTorch code: pip install 'bp_jax[torch]'")
nn = torch.nn
torch.set_num_threads(1)  # tiny matrices: more threads only spin against JAX's (100x slower on 2 busy cores)

#: Architectures as layer specs, built by the same names in both frameworks: (name, *args).
SEED_MLP = (("Linear", 10, 5), ("ReLU",), ("Linear", 5, 1))
DEEP_TANH_SIGMOID = (("Linear", 8, 16), ("Tanh",), ("Linear", 16, 16), ("Sigmoid",), ("Linear", 16, 4))
NO_BIAS = (("Linear", 6, 12, False), ("Sigmoid",), ("Linear", 12, 12, False), ("Tanh",), ("Linear", 12, 3, False))
ARCHITECTURES = {"seed_mlp": SEED_MLP, "deep_tanh_sigmoid": DEEP_TANH_SIGMOID, "no_bias": NO_BIAS}


@pytest.fixture(autouse=True)
def highest_matmul_precision():
    with jax.default_matmul_precision("highest"):
        yield


def torch_dtype():
    """torch's dtype for the precision the test runs in: float64 under jax.enable_x64, float32 otherwise."""
    return torch.float64 if jnp.zeros(()).dtype == jnp.float64 else torch.float32


def to_jax(tensor):
    return jnp.asarray(tensor.detach().numpy())


def build(spec, seed, batch):
    """(torch module, bp_jax model, x, y) for an architecture, weights and data drawn by torch."""
    torch.manual_seed(seed)
    module = nn.Sequential(*(getattr(nn, name)(*args) for name, *args in spec))
    model = bp_jax.Sequential(*(getattr(bp_jax, name)(*args) for name, *args in spec))
    x = torch.randn(batch, spec[0][1])
    y = torch.randn(batch, [layer for layer in spec if layer[0] == "Linear"][-1][2])
    return module.to(torch_dtype()), model, x.to(torch_dtype()), y.to(torch_dtype())  # same draws in both


def torch_grads(module):
    """Each layer's `.grad`s after `loss.backward()`, in bp_jax's params structure."""
    return tuple({name: to_jax(p.grad) for name, p in layer.named_parameters()} for layer in module)


def test_tiny_network_the_documents_code_verbatim():
    # Input and weights (all require gradients)
    x = torch.tensor([2.0], requires_grad=True)
    w1 = torch.tensor([0.5], requires_grad=True)
    w2 = torch.tensor([1.5], requires_grad=True)
    z1 = w1 * x
    a1 = torch.relu(z1)
    y = w2 * a1
    target = torch.tensor([3.0])
    loss = (y - target) ** 2
    loss.backward()  # This does ALL the backpropagation!

    net = documents.TINY_NET
    value, (grads, grad_x) = jax.value_and_grad(documents.tiny_net_loss, argnums=(0, 1))(net.params, net.x, net.t)
    by_hand = manual.tiny_net_grads(net.w1, net.w2, net.x, net.t)
    assert (loss.item(), w1.grad.item(), w2.grad.item(), x.grad.item()) == (2.25, -9.0, -3.0, -2.25)
    assert (value, grads["w1"], grads["w2"], grad_x) == (2.25, -9.0, -3.0, -2.25)
    assert (by_hand["w1"], by_hand["w2"], by_hand["x"]) == (-9.0, -3.0, -2.25)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.slow
def test_tiny_network_at_random_values(seed, precision):
    w1_value, w2_value, x_value, t_value = np.random.default_rng(seed).normal(size=4) * 2
    x, w1, w2 = (torch.tensor([v], dtype=torch_dtype(), requires_grad=True) for v in (x_value, w1_value, w2_value))
    loss = (w2 * torch.relu(w1 * x) - torch.tensor([t_value], dtype=torch_dtype())) ** 2
    loss.backward()

    bp_loss = bp_jax.loss_fn(bp_jax.tiny_net(), bp_jax.squared_error)
    params, x_jax, t_jax = {"w1": jnp.asarray(w1_value), "w2": jnp.asarray(w2_value)}, jnp.asarray(x_value), t_value
    value, (grads, grad_x) = jax.value_and_grad(bp_loss, argnums=(0, 1))(params, x_jax, t_jax)
    expected = {"w1": w1.grad.item(), "w2": w2.grad.item(), "x": x.grad.item()}
    autodiff = {"w1": grads["w1"], "w2": grads["w2"], "x": grad_x}
    by_hand = manual.tiny_net_grads(w1_value, w2_value, x_value, t_value)
    chex.assert_trees_all_close((value, autodiff), (loss.item(), expected), rtol=precision, atol=precision)
    chex.assert_trees_all_close(by_hand, expected, rtol=precision, atol=precision)


SEED_MLP_MODEL = documents.seed_mlp()
#: (loss, grads) by jax.value_and_grad and by bp_jax.manual, one jitted program for every seed of a precision
SEED_MLP_GRADS = together(jax.value_and_grad(bp_jax.loss_fn(SEED_MLP_MODEL)), manual.value_and_grad(SEED_MLP_MODEL))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_seed_mlp_loss_and_grads_the_documents_code(seed, precision):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(10, 5), nn.ReLU(), nn.Linear(5, 1))
    x = torch.randn(32, 10)  # 32 samples, 10 features
    y = torch.randn(32, 1)  # True values
    model, x, y = model.to(torch_dtype()), x.to(torch_dtype()), y.to(torch_dtype())
    predictions = model(x)  # Get predictions
    criterion = nn.MSELoss()
    loss = criterion(predictions, y)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    optimizer.zero_grad()  # Clear previous gradients
    loss.backward()  # Compute gradients (backprop!)

    params = bp_jax.from_torch(model, SEED_MLP_MODEL)
    expected = (loss.item(), torch_grads(model))
    autodiff, by_hand = SEED_MLP_GRADS(params, to_jax(x), to_jax(y))
    chex.assert_trees_all_close(autodiff, expected, rtol=precision, atol=precision)
    chex.assert_trees_all_close(by_hand, expected, rtol=precision, atol=precision)


@pytest.mark.parametrize("batch", [1, 256])
@pytest.mark.parametrize("architecture", ARCHITECTURES)
@pytest.mark.slow
def test_loss_and_grads_of_nn_mseloss_backward(architecture, batch, precision):
    module, model, x, y = build(ARCHITECTURES[architecture], seed=batch, batch=batch)
    loss = nn.MSELoss()(module(x), y)
    loss.backward()

    params = bp_jax.from_torch(module, model)
    expected = (loss.item(), torch_grads(module))
    both = together(jax.value_and_grad(bp_jax.loss_fn(model)), manual.value_and_grad(model))
    for got in both(params, to_jax(x), to_jax(y)):  # by jax.grad, by hand
        chex.assert_trees_all_close(got, expected, rtol=precision, atol=precision)


@pytest.mark.parametrize("batch", [1, 256])
@pytest.mark.parametrize("architecture", ["deep_tanh_sigmoid", "no_bias"])
@pytest.mark.slow
def test_loss_and_grads_of_nn_crossentropyloss_backward(architecture, batch, precision):
    module, model, x, _ = build(ARCHITECTURES[architecture], seed=batch, batch=batch)
    with torch.no_grad():
        for p in module[-1].parameters():
            p.mul_(10)  # logits of several units: a softmax far from uniform
    labels = torch.randint(module[-1].out_features, (batch,))
    loss = nn.CrossEntropyLoss()(module(x), labels)
    loss.backward()

    params = bp_jax.from_torch(module, model)
    expected = (loss.item(), torch_grads(module))
    loss_fn = bp_jax.loss_fn(model, bp_jax.softmax_cross_entropy)
    both = together(jax.value_and_grad(loss_fn), manual.value_and_grad(model, bp_jax.softmax_cross_entropy))
    for got in both(params, to_jax(x), to_jax(labels)):  # by jax.grad, by hand
        chex.assert_trees_all_close(got, expected, rtol=precision, atol=precision)


def run_documents_train_step(model, x, y, optimizer, steps):
    """The documents' `train_step`, verbatim, called `steps` times; returns the loss of every step."""
    criterion = nn.MSELoss()

    def train_step(x, y):
        # 1. Forward pass
        predictions = model(x)

        # 2. Compute loss
        loss = criterion(predictions, y)

        # 3. Backward pass (backpropagation!)
        optimizer.zero_grad()
        loss.backward()

        # 4. Update weights
        optimizer.step()

        return loss.item()

    return [train_step(x, y) for _ in range(steps)]


def run_optax(model, params, x, y, optimizer, steps):
    step = bp_jax.optax_step(bp_jax.loss_fn(model), optimizer)
    opt_state, losses = optimizer.init(params), []
    for _ in range(steps):
        params, opt_state, loss = step(params, opt_state, x, y)
        losses.append(loss)
    return losses, params


@pytest.mark.parametrize(
    ("architecture", "batch", "seed"),
    [
        ("seed_mlp", 32, 0),
        ("seed_mlp", 32, 1),
        ("seed_mlp", 32, 2),
        ("deep_tanh_sigmoid", 1, 3),
        ("deep_tanh_sigmoid", 256, 4),
        ("no_bias", 256, 5),
    ],
)
@pytest.mark.slow
def test_documents_train_step_against_both_bp_jax_steps_over_120_steps(architecture, batch, seed, precision):
    module, model, x_torch, y_torch = build(ARCHITECTURES[architecture], seed, batch)
    x, y = to_jax(x_torch), to_jax(y_torch)
    hand_params, optax_params = bp_jax.from_torch(module, model), bp_jax.from_torch(module, model)  # two copies

    torch_losses = run_documents_train_step(
        module, x_torch, y_torch, torch.optim.SGD(module.parameters(), lr=0.01), steps=120
    )
    hand_step, hand_losses = bp_jax.sgd_step(bp_jax.loss_fn(model), lr=0.01), []
    for _ in range(120):
        hand_params, loss = hand_step(hand_params, x, y)
        hand_losses.append(loss)
    optax_losses, optax_params = run_optax(model, optax_params, x, y, optax.sgd(0.01), steps=120)

    expected = (np.array(torch_losses), bp_jax.from_torch(module))
    chex.assert_trees_all_close((np.array(hand_losses), hand_params), expected, rtol=precision, atol=precision)
    chex.assert_trees_all_close((np.array(optax_losses), optax_params), expected, rtol=precision, atol=precision)
    assert torch_losses[-1] < torch_losses[0]


def optax_like_torch_sgd(lr, momentum=0.0, weight_decay=0.0, nesterov=False):
    """torch.optim.SGD(lr, momentum, weight_decay, nesterov) with dampening 0, as optax: coupled L2 first."""
    return optax.chain(
        optax.add_decayed_weights(weight_decay), optax.sgd(lr, momentum=momentum or None, nesterov=nesterov)
    )


@pytest.mark.parametrize(
    "config",
    [
        {"momentum": 0.9},
        {"momentum": 0.9, "nesterov": True},
        {"weight_decay": 0.05},
        {"momentum": 0.5, "weight_decay": 0.1},
        {"momentum": 0.9, "weight_decay": 0.01, "nesterov": True},
    ],
    ids=lambda config: "-".join(f"{k}={v}" for k, v in config.items()),
)
@pytest.mark.slow
def test_torch_sgd_variants_against_their_optax_equivalent(config, precision):
    module, model, x_torch, y_torch = build(DEEP_TANH_SIGMOID, seed=7, batch=32)
    params = bp_jax.from_torch(module, model)
    torch_losses = run_documents_train_step(
        module, x_torch, y_torch, torch.optim.SGD(module.parameters(), lr=0.01, **config), steps=100
    )
    losses, params = run_optax(
        model, params, to_jax(x_torch), to_jax(y_torch), optax_like_torch_sgd(0.01, **config), steps=100
    )
    chex.assert_trees_all_close(
        (np.array(losses), params), (np.array(torch_losses), bp_jax.from_torch(module)), rtol=precision, atol=precision
    )


def test_dampening_has_no_optax_sgd_equivalent():
    """torch: b ← μ·b + (1 − d)·g, except b = g on the first step; optax.sgd's trace has no d."""
    module, model, x_torch, y_torch = build(SEED_MLP, seed=8, batch=32)
    params = bp_jax.from_torch(module, model)
    optimizer = torch.optim.SGD(module.parameters(), lr=0.1, momentum=0.9, dampening=0.5)
    run_documents_train_step(module, x_torch, y_torch, optimizer, steps=1)
    after_one = bp_jax.from_torch(module)
    run_documents_train_step(module, x_torch, y_torch, optimizer, steps=1)
    after_two = bp_jax.from_torch(module)

    step_params = []
    for steps in (1, 2):
        _, optax_params = run_optax(
            model,
            jax.tree.map(jnp.array, params),
            to_jax(x_torch),
            to_jax(y_torch),
            optax.sgd(0.1, momentum=0.9),
            steps,
        )
        step_params.append(optax_params)
    chex.assert_trees_all_close(step_params[0], after_one, rtol=1e-5, atol=1e-5)  # b = g: dampening unused
    gap = max(jax.tree.leaves(jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), step_params[1], after_two)))
    assert gap > 1e-3

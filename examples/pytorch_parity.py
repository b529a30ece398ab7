"""The documents' PyTorch code beside bp_jax, on the same weights (bp_jax.from_torch) and the same data.

One table per quantity group: PyTorch's value, bp_jax's, and the largest absolute difference. Arrays show
their 2-norm in the value columns; the difference column is always max |PyTorch − bp_jax| over all entries.
Needs torch: pip install 'bp_jax[torch]'.
"""

import jax
import jax.numpy as jnp
import numpy as np
import torch
from torch import nn

import bp_jax

jax.config.update("jax_default_matmul_precision", "highest")  # no TF32 on GPUs, as torch's default
torch.set_num_threads(1)  # tiny matrices: more threads only spin against JAX's

STEPS = 200


def print_table(title, rows):
    """rows: (quantity, PyTorch value, bp_jax value)."""
    print(f"\n{title}\n{'quantity':<22} {'PyTorch':>18} {'bp_jax':>18} {'max |diff|':>11}")
    for name, theirs, ours in rows:
        theirs, ours = np.asarray(theirs, np.float64), np.asarray(ours, np.float64)
        shown = (theirs.item(), ours.item()) if theirs.size == 1 else (np.linalg.norm(theirs), np.linalg.norm(ours))
        print(f"{name:<22} {shown[0]:>18.12f} {shown[1]:>18.12f} {np.max(np.abs(theirs - ours)):>11.2e}")


def to_jax(tensor):
    return jnp.asarray(tensor.detach().numpy())


def tiny_network():
    # The document's code, verbatim.
    x = torch.tensor([2.0], requires_grad=True)
    w1 = torch.tensor([0.5], requires_grad=True)
    w2 = torch.tensor([1.5], requires_grad=True)
    z1 = w1 * x
    a1 = torch.relu(z1)
    y = w2 * a1
    target = torch.tensor([3.0])
    loss = (y - target) ** 2
    loss.backward()

    bp_loss = bp_jax.loss_fn(bp_jax.tiny_net(), bp_jax.squared_error)
    value, (grads, grad_x) = jax.value_and_grad(bp_loss, argnums=(0, 1))({"w1": 0.5, "w2": 1.5}, 2.0, 3.0)
    print_table(
        "tiny network x → ·w1 → ReLU → ·w2 → y (float32)",
        [
            ("loss", loss.item(), value),
            ("dL/dw1", w1.grad.item(), grads["w1"]),
            ("dL/dw2", w2.grad.item(), grads["w2"]),
            ("dL/dx", x.grad.item(), grad_x),
        ],
    )


def seed_mlp(dtype):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 5), nn.ReLU(), nn.Linear(5, 1))
    x = torch.randn(32, 10)  # 32 samples, 10 features
    y = torch.randn(32, 1)  # true values
    model, x, y = model.to(dtype), x.to(dtype), y.to(dtype)  # the same draws in both precisions
    criterion = nn.MSELoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)

    bp_model = bp_jax.mlp((10, 5, 1), "relu")
    params = bp_jax.from_torch(model, bp_model)  # identical weights: the two RNG streams differ
    bp_x, bp_y = to_jax(x), to_jax(y)
    precision = "float64" if dtype == torch.float64 else "float32"

    loss = criterion(model(x), y)
    loss.backward()
    value, grads = jax.value_and_grad(bp_jax.loss_fn(bp_model))(params, bp_x, bp_y)
    print_table(
        f"seed MLP, loss.backward() vs jax.value_and_grad ({precision})",
        [("loss", loss.item(), value)]
        + [
            (f"grad {index}.{name}", tensor.grad.detach().numpy(), grads[index][name])
            for index, layer in enumerate(model)
            for name, tensor in layer.named_parameters()
        ],
    )

    def train_step(x, y):  # the document's, verbatim
        predictions = model(x)
        loss = criterion(predictions, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return loss.item()

    step = bp_jax.sgd_step(bp_jax.loss_fn(bp_model), lr=0.01)
    rows = []
    for number in range(1, STEPS + 1):
        torch_loss = train_step(x, y)
        params, bp_loss = step(params, bp_x, bp_y)
        if number == 1 or number % 50 == 0:
            rows.append((f"loss at step {number}", torch_loss, bp_loss))
    rows += [
        (f"final {index}.{name}", tensor.detach().numpy(), params[index][name])
        for index, layer in enumerate(model)
        for name, tensor in layer.named_parameters()
    ]
    print_table(f"seed MLP, {STEPS} steps of train_step vs bp_jax.sgd_step ({precision})", rows)


tiny_network()
seed_mlp(torch.float32)
with jax.enable_x64(True):
    seed_mlp(torch.float64)

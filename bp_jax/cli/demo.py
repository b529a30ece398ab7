"""`bp-jax demo`: the documents' three examples in the terminal, manual value beside autodiff's."""

import jax
import jax.numpy as jnp
import optax
from rich.console import Console
from rich.table import Table

import bp_jax
from bp_jax import documents, manual


def _table(title: str, *columns: str) -> Table:
    table = Table(title=title, title_justify="left")
    for column in columns:
        table.add_column(column, justify="left" if column == columns[0] else "right")
    return table


def _row(table: Table, name: str, by_hand, by_autodiff) -> None:
    difference = float(jnp.max(jnp.abs(jnp.asarray(by_hand) - jnp.asarray(by_autodiff))))
    table.add_row(
        name,
        f"{float(jnp.ravel(jnp.asarray(by_hand))[0]):.6f}",
        f"{float(jnp.ravel(jnp.asarray(by_autodiff))[0]):.6f}",
        f"{difference:.1e}",
    )


def single_neuron() -> Table:
    """dL/dw = 2(y − t)·a'(w·x)·x beside jax.grad, at the document's w, x, t."""
    w, x, t = documents.NEURON
    table = _table(
        f"1. Single neuron y = a(w·x), L = (y − t)², w = {w}, x = {x}, t = {t}",
        "dL/dw",
        "2(y − t)·a'(w·x)·x",
        "jax.grad",
        "|difference|",
    )
    for name in bp_jax.ACTIVATIONS:
        grad = jax.grad(documents.neuron_loss(name))(documents.NEURON.params, x, t)["w"]
        _row(table, name, manual.neuron_grad(w, x, t, name), grad)
    return table


def tiny_network() -> Table:
    """The tiny network's forward values, loss and gradients at the document's x, w1, w2, t."""
    net = documents.TINY_NET
    params, x, t, loss = net.params, net.x, net.t, documents.tiny_net_loss
    z1 = params["w1"] * x
    grads, grad_x = jax.grad(loss, argnums=(0, 1))(params, x, t)
    by_hand = manual.tiny_net_grads(params["w1"], params["w2"], x, t)
    table = _table(
        f"2. Tiny network x → ·w1 → ReLU → ·w2 → y, x = {x:g}, w1 = {net.w1:g}, w2 = {net.w2:g}, t = {t:g}",
        "quantity",
        "by hand",
        "jax",
        "|difference|",
    )
    _row(table, "z1 = w1·x", z1, z1)
    _row(table, "a1 = relu(z1)", max(z1, 0.0), jax.nn.relu(z1))
    _row(table, "y = w2·a1", params["w2"] * max(z1, 0.0), bp_jax.tiny_net().apply(params, x))
    _row(table, f"L = (y − {t:g})²", (params["w2"] * max(z1, 0.0) - t) ** 2, loss(params, x, t))
    for name, autodiff in (("w1", grads["w1"]), ("w2", grads["w2"]), ("x", grad_x)):
        _row(table, f"dL/d{name}", by_hand[name], autodiff)
    return table


def seed_mlp_step() -> Table:
    """One training step of the seed MLP: manual backward vs jax.grad, hand SGD vs optax.sgd."""
    model, params, x, y = documents.seed_problem(jax.random.key(0))
    loss, lr = bp_jax.loss_fn(model), documents.SEED_LR
    auto_loss, auto_grads = jax.value_and_grad(loss)(params, x, y)
    hand_loss, hand_grads = manual.value_and_grad(model)(params, x, y)
    table = _table(
        f"3. Seed MLP 10 → 5 → 1, MSE, batch {len(x)} (tensors: first entry shown, max |difference|)",
        "quantity",
        "manual / hand step",
        "jax.grad / optax",
        "|difference|",
    )
    _row(table, "loss", hand_loss, auto_loss)
    for index, name in ((0, "weight"), (0, "bias"), (2, "weight"), (2, "bias")):
        _row(table, f"dL/d model[{index}].{name}", hand_grads[index][name], auto_grads[index][name])
    optimizer = optax.sgd(lr)
    copy = lambda tree: jax.tree.map(jnp.array, tree)
    hand_params, _ = bp_jax.sgd_step(loss, lr)(copy(params), x, y)
    optax_params, _, _ = bp_jax.optax_step(loss, optimizer)(copy(params), optimizer.init(params), x, y)
    _row(table, "model[0].weight after one SGD step", hand_params[0]["weight"], optax_params[0]["weight"])
    _row(table, "loss after the step", loss(hand_params, x, y), loss(optax_params, x, y))
    return table


def add_arguments(parser) -> None:
    """demo takes no options."""


def run(args) -> int:
    console = Console()
    for table in (single_neuron(), tiny_network(), seed_mlp_step()):
        console.print(table)
        console.print()
    return 0

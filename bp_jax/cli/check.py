"""`bp-jax check`: the parity checks on every backend JAX sees (cpu, gpu, tpu), and their agreement.

Each check compares two independent computations of the same numbers on one device, under
`jax.default_matmul_precision("highest")` (GPUs otherwise run float32 matmuls in TF32): the documents'
values, `manual` against `jax.grad` (neuron, tiny net, MLPs), the hand-written SGD step against optax.
Float32 checks pass within 1e-5, float64 ones (not on TPU, which has no float64) within 1e-10.
"""

import contextlib
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

import bp_jax
from bp_jax import documents, manual

PLATFORMS = ("cpu", "gpu", "tpu")
TOLERANCE = {"float32": 1e-5, "float64": 1e-10}


class CheckResult(NamedTuple):
    backend: str
    device: str
    check: str
    max_abs_error: float
    tolerance: float

    @property
    def passed(self) -> bool:
        return self.max_abs_error <= self.tolerance  # False for NaN


def devices() -> dict[str, jax.Device]:
    """The first device of each platform in PLATFORMS that JAX sees."""
    found = {}
    for platform in PLATFORMS:
        with contextlib.suppress(RuntimeError):  # no such backend installed or initialised
            found[platform] = jax.devices(platform)[0]
    return found


def _max_abs_error(got, expected) -> float:
    return max(
        float(jnp.max(jnp.abs(jnp.asarray(a) - jnp.asarray(b))))
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(expected), strict=True)
    )


def _documents_numbers():
    """y, L and the gradients of the tiny network, by jax.grad and by hand, against the document's numbers."""
    net, values, grads_expected = documents.TINY_NET, documents.TINY_NET_VALUES, documents.TINY_NET_GRADS
    grads, grad_x = jax.grad(documents.tiny_net_loss, argnums=(0, 1))(net.params, net.x, net.t)
    by_hand = manual.tiny_net_grads(net.w1, net.w2, net.x, net.t)
    got = [
        bp_jax.tiny_net().apply(net.params, net.x),
        documents.tiny_net_loss(net.params, net.x, net.t),
        {"w1": grads["w1"], "w2": grads["w2"], "x": grad_x},
        by_hand,
    ]
    return got, [values["y"], values["L"], grads_expected, grads_expected]


def _neuron():
    w, x, t = jax.random.uniform(jax.random.key(0), (3, 64), minval=-3.0, maxval=3.0)
    got, expected = [], []
    for name in bp_jax.ACTIVATIONS:
        loss = bp_jax.loss_fn(bp_jax.neuron(name), bp_jax.squared_error)
        got.append(manual.neuron_grad(w, x, t, name))
        expected.append(jax.vmap(lambda w, x, t, loss=loss: jax.grad(loss)({"w": w}, x, t)["w"])(w, x, t))
    return got, expected


def _tiny_net():
    w1, w2, x, t = jax.random.uniform(jax.random.key(1), (4, 64), minval=-3.0, maxval=3.0)
    loss = bp_jax.loss_fn(bp_jax.tiny_net(), bp_jax.squared_error)
    grads, grad_x = jax.vmap(jax.grad(loss, argnums=(0, 1)))({"w1": w1, "w2": w2}, x, t)
    return manual.tiny_net_grads(w1, w2, x, t), {"w1": grads["w1"], "w2": grads["w2"], "x": grad_x}


def _mlp(model: bp_jax.Model, outputs: int):
    params_key, x_key, y_key = jax.random.split(jax.random.key(2), 3)
    params = model.init(params_key)
    x, y = (
        jax.random.normal(x_key, (documents.SEED_BATCH, 10)),
        jax.random.normal(y_key, (documents.SEED_BATCH, outputs)),
    )
    return (
        jax.jit(manual.value_and_grad(model))(params, x, y),
        jax.jit(jax.value_and_grad(bp_jax.loss_fn(model)))(params, x, y),
    )


def _hand_vs_optax_sgd(steps: int = 150):
    model, params, x, y = documents.seed_problem(jax.random.key(3))
    optimizer = optax.sgd(documents.SEED_LR)
    hand = bp_jax.fit(bp_jax.loss_fn(model), params, x, y, steps=steps, lr=documents.SEED_LR)
    by_optax = bp_jax.fit(bp_jax.loss_fn(model), params, x, y, steps=steps, optimizer=optimizer)
    return (hand.params, hand.losses), (by_optax.params, by_optax.losses)


CHECKS: dict[str, Callable] = {
    "documents' tiny-network numbers": _documents_numbers,
    "neuron: manual vs jax.grad": _neuron,
    "tiny net: manual vs jax.grad": _tiny_net,
    "seed MLP: manual vs jax.grad": lambda: _mlp(documents.seed_mlp(), 1),
    "5-layer MLP: manual vs jax.grad": lambda: _mlp(documents.every_layer_mlp(), 3),
    "hand SGD vs optax.sgd, 150 steps": _hand_vs_optax_sgd,
}


def parity_checks(device: jax.Device) -> list[CheckResult]:
    """Every check in CHECKS on `device`, in float32 and (except on TPU) float64, at 'highest' precision."""
    dtypes = ["float32"] if device.platform == "tpu" else ["float32", "float64"]
    results = []
    for dtype in dtypes:
        with jax.default_device(device), jax.enable_x64(dtype == "float64"), jax.default_matmul_precision("highest"):
            for name, check in CHECKS.items():
                got, expected = check()
                results.append(
                    CheckResult(
                        device.platform,
                        device.device_kind,
                        f"{name} ({dtype})",
                        _max_abs_error(got, expected),
                        TOLERANCE[dtype],
                    )
                )
    return results


def training_run(device: jax.Device, steps: int = 300):
    """Params and losses of the seed MLP trained with minibatch SGD on `device`, in float32 at 'highest'."""
    with jax.default_device(device), jax.default_matmul_precision("highest"):
        model = documents.seed_mlp()
        params_key, x_key, y_key = jax.random.split(jax.random.key(4), 3)
        x, y = jax.random.normal(x_key, (256, 10)), jax.random.normal(y_key, (256, 1))
        result = bp_jax.fit(
            bp_jax.loss_fn(model),
            model.init(params_key),
            x,
            y,
            steps=steps,
            batch_size=documents.SEED_BATCH,
            lr=0.05,
            key=jax.random.key(5),
        )
        return jax.device_get((result.params, result.losses))


def agreement(reference: jax.Device, device: jax.Device, tolerance: float = 1e-4) -> CheckResult:
    """The same training run on `device` and on `reference`: how far its params and losses end apart."""
    return CheckResult(
        f"{device.platform} vs {reference.platform}",
        device.device_kind,
        "seed MLP, 300 SGD steps: params and losses (float32)",
        _max_abs_error(training_run(device), training_run(reference)),
        tolerance,
    )


def add_arguments(parser) -> None:
    """check takes no options."""


def run(args) -> int:
    """Print the table of every backend's checks (and each accelerator against the CPU); 1 if any failed."""
    from rich.console import Console
    from rich.table import Table

    found = devices()
    results = [result for device in found.values() for result in parity_checks(device)]
    results += [agreement(found["cpu"], device) for platform, device in found.items() if platform != "cpu"]
    table = Table(
        title=f"bp-jax check: jax {jax.__version__}, backends {', '.join(found)}; "
        f"not present: {', '.join(p for p in PLATFORMS if p not in found) or 'none'}"
    )
    for column in ("backend", "device", "check", "max abs error", "tolerance", "result"):
        table.add_column(column, justify="right" if column in ("max abs error", "tolerance") else "left")
    for r in results:
        table.add_row(
            r.backend, r.device, r.check, f"{r.max_abs_error:.1e}", f"{r.tolerance:.0e}", "pass" if r.passed else "FAIL"
        )
    Console(width=max(Console().width, 120)).print(table)
    failed = sum(not r.passed for r in results)
    print(f"{len(results) - failed} of {len(results)} checks passed" + (f"; {failed} FAILED" if failed else ""))
    return 1 if failed else 0

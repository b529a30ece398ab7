"""Per-example gradient clipping, the step of DP-SGD (Abadi et al., 2016), on the seed MLP.

A use of per-example gradients, not a privacy library: no privacy accounting, no secure noise. Each step
takes every example's own gradient g_i (`bp_jax.manual.per_example_grads`, by hand), clips it to norm at most
C, averages, and adds Gaussian noise of scale σ·C to the sum:

    c_i = g_i · min(1, C / ‖g_i‖),    θ ← θ − lr · (Σ_i c_i + σ·C·ξ) / B,    ξ ~ N(0, I)

Clipping bounds how far one example can move the params; the noise hides what is left. A mean of per-example
gradients cannot be had from `jax.grad` of the batch loss (it sums before anything could clip).
"""

import jax
import jax.numpy as jnp

import bp_jax
from bp_jax import manual

CLIP, LR, STEPS, BATCH = 1.0, 0.1, 200, 64

model = bp_jax.mlp((10, 5, 1), "relu")  # the documents' seed MLP
params_key, x_key, noise_key, step_key = jax.random.split(jax.random.key(0), 4)
x = jax.random.normal(x_key, (BATCH, 10))
y = jnp.sin(x[:, :1]) + 0.5 * x[:, 1:2] + 0.1 * jax.random.normal(noise_key, (BATCH, 1))  # learnable
loss = bp_jax.loss_fn(model)
per_example = manual.per_example_grads(model)


def norms(rows):
    """‖g_i‖ over all params, one per example."""
    return jnp.sqrt(sum(jnp.sum(leaf.reshape(leaf.shape[0], -1) ** 2, axis=1) for leaf in jax.tree.leaves(rows)))


def clip(rows):
    scale = jnp.minimum(1.0, CLIP / norms(rows))  # ‖g_i‖ = 0 gives inf, then 1
    return jax.tree.map(lambda leaf: scale.reshape(-1, *[1] * (leaf.ndim - 1)) * leaf, rows)


@jax.jit
def dp_sgd_step(params, key, noise_multiplier):
    clipped = clip(per_example(params, x, y))
    leaves, treedef = jax.tree.flatten(clipped)
    noise = [
        noise_multiplier * CLIP * jax.random.normal(k, leaf.shape[1:])
        for k, leaf in zip(jax.random.split(key, len(leaves)), leaves)
    ]
    update = [(leaf.sum(axis=0) + xi) / BATCH for leaf, xi in zip(leaves, noise)]
    return jax.tree.map(lambda p, g: p - LR * g, params, jax.tree.unflatten(treedef, update))


@jax.jit
def sgd_step(params):
    return jax.tree.map(lambda p, g: p - LR * g, params, jax.grad(loss)(params, x, y))


params = model.init(params_key)
rows = per_example(params, x, y)
reference = jax.vmap(jax.grad(loss), (None, 0, 0))(params, x[:, None], y[:, None])
difference = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(jax.tree.leaves(rows), jax.tree.leaves(reference)))
print(f"per-example gradients of {BATCH} examples, by hand vs jax.vmap(jax.grad): max |difference| {difference:.2e}")
before, after = norms(rows), norms(clip(rows))
print(f"\n{'example':>7} {'‖g_i‖':>8} {'clipped':>8}")
for i in range(8):
    print(f"{i:>7} {before[i]:>8.4f} {after[i]:>8.4f}")
print(
    f"clipped to C = {CLIP}: {int(jnp.sum(before > CLIP))} of {BATCH} norms were above C; "
    f"largest after {float(after.max()):.4f}"
)

runs = {"sgd": params, "clipped, σ = 0": params, "clipped, σ = 1": params}
print(f"\n{'step':>5} " + " ".join(f"{name:>15}" for name in runs))
for step in range(STEPS + 1):
    if step % 50 == 0:
        print(f"{step:>5} " + " ".join(f"{float(loss(p, x, y)):>15.4f}" for p in runs.values()))
    key = jax.random.fold_in(step_key, step)
    runs = {
        "sgd": sgd_step(runs["sgd"]),
        "clipped, σ = 0": dp_sgd_step(runs["clipped, σ = 0"], key, 0.0),
        "clipped, σ = 1": dp_sgd_step(runs["clipped, σ = 1"], key, 1.0),
    }

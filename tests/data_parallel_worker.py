"""Run by tests/test_distributed.py in a process with JAX_NUM_CPU_DEVICES=8: sharded fits (one with a stop rule)
and steps against one device. Prints one JSON object: the max abs difference of each comparison, the errors
raised."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec

import bp_jax
from bp_jax import documents

assert jax.device_count() == 8, jax.devices()
model, params, x, y = documents.seed_problem(jax.random.key(0), 64)
loss, key = bp_jax.loss_fn(model), jax.random.key(1)


def max_abs_difference(a, b) -> float:
    """In numpy: eagerly, jax would compile a subtraction, abs and max for every leaf's shape and sharding."""
    return max(
        float(np.max(np.abs(np.asarray(p) - np.asarray(q))))
        for p, q in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )


def fit(batch_size, optimizer, mesh=None, stop_rule=None):
    update = {"lr": 0.05} if optimizer == "sgd" else {"optimizer": optax.adam(1e-2)}
    return bp_jax.fit(
        loss, params, x, y, steps=40, batch_size=batch_size, key=key, chunk_size=40, mesh=mesh, stop_rule=stop_rule,
        **update,
    )  # fmt: skip


report = {"fit": {}, "replicated": True}
for devices, batch_size, optimizer in [
    (8, None, "sgd"),
    (8, 16, "sgd"),
    (8, None, "adam"),
    (8, 16, "adam"),
    (4, 16, "adam"),
    (2, None, "sgd"),
]:
    single, sharded = fit(batch_size, optimizer), fit(batch_size, optimizer, bp_jax.data_parallel_mesh(devices))
    report["fit"][f"{devices} devices, batch {batch_size or 'full'}, {optimizer}"] = max_abs_difference(
        (single.params, single.opt_state, single.losses), (sharded.params, sharded.opt_state, sharded.losses)
    )
    report["replicated"] &= all(
        leaf.sharding.is_fully_replicated and len(leaf.sharding.device_set) == devices
        for leaf in jax.tree.leaves(sharded.params)
    )

# A stop rule (a loss below a threshold, the rule's state) ends the sharded loop where it ends one device's.
threshold = float(fit(16, "adam").losses[20]) * (1 + 1e-6)
below = bp_jax.StopRule(lambda threshold, step, loss: (threshold, loss < threshold), jnp.float32(threshold))
single = fit(16, "adam", stop_rule=below)
sharded = fit(16, "adam", bp_jax.data_parallel_mesh(8), stop_rule=below)
report["stop_rule"] = {
    "stopped_at": [single.stopped_at, sharded.stopped_at],
    "step": [single.step, sharded.step],
    "difference": max_abs_difference(
        (single.params, single.opt_state, single.losses), (sharded.params, sharded.opt_state, sharded.losses)
    ),
}

# shard_rows: device d draws its minibatch share from its own block (block_rows[d] real rows, the rest NaN padding),
# as sgd_step on minibatch_indices(fold_in(key, d), step, block_rows[d], 16 / 4) of each block, in a Python loop.
block_rows, block = np.array([13, 16, 9, 12]), 16
blocks_x, blocks_y = np.full((64, x.shape[1]), np.nan, np.float32), np.full((64, y.shape[1]), np.nan, np.float32)
for d, count in enumerate(block_rows):
    blocks_x[d * block : d * block + count], blocks_y[d * block : d * block + count] = x[:count], y[d : d + count]
sharded = bp_jax.fit(
    loss, params, blocks_x, blocks_y, steps=5, batch_size=16, lr=0.05, key=key, mesh=bp_jax.data_parallel_mesh(4),
    shard_rows=block_rows,
)  # fmt: skip
looped, sgd = jax.tree.map(jnp.copy, params), bp_jax.sgd_step(loss, 0.05)  # sgd_step donates its params
for step in range(5):
    rows = np.concatenate(
        [d * block + np.asarray(bp_jax.minibatch_indices(jax.random.fold_in(key, d), step, int(n), 4))
         for d, n in enumerate(block_rows)]
    )  # fmt: skip
    looped, _ = sgd(looped, blocks_x[rows], blocks_y[rows])
report["shard_rows"] = max_abs_difference(sharded.params, looped)

# The steps take sharded inputs as they are: jit propagates the shardings and reduces the gradients.
mesh = bp_jax.data_parallel_mesh(8)
replicate = lambda tree: jax.device_put(tree, NamedSharding(mesh, PartitionSpec()))
split = lambda array: jax.device_put(array, NamedSharding(mesh, PartitionSpec("data")))
copy = lambda tree: jax.tree.map(jnp.copy, tree)
optimizer = optax.sgd(0.05, momentum=0.9)
sgd_single = bp_jax.sgd_step(loss, 0.05)(copy(params), x, y)
sgd_sharded = bp_jax.sgd_step(loss, 0.05)(replicate(copy(params)), split(x), split(y))
optax_single = bp_jax.optax_step(loss, optimizer)(copy(params), optimizer.init(params), x, y)
optax_sharded = bp_jax.optax_step(loss, optimizer)(
    replicate(copy(params)), replicate(optimizer.init(params)), split(x), split(y)
)
report["steps"] = {
    "sgd_step": max_abs_difference(sgd_single, sgd_sharded),
    "optax_step": max_abs_difference(optax_single, optax_sharded),
}
report["step_output_devices"] = len(sgd_sharded[0][0]["weight"].sharding.device_set)
# Split batches mean the compiler sums the gradients across devices: an all-reduce in both programs.
step_program = bp_jax.sgd_step(loss, 0.05).lower(replicate(params), split(x), split(y)).compile().as_text()
divergence = bp_jax._fit_loop.Divergence(replicate(jnp.asarray(-1, jnp.int32)), replicate(jnp.asarray(0, jnp.int32)))
state = bp_jax._fit_loop.LoopState(replicate(params), None, divergence)
fit_program = (
    bp_jax._fit_loop.compiled_loop(loss, None, 16, mesh, ensemble=False, key_axis=None)
    .lower(state, 0.05, replicate(key), replicate(x), replicate(y), None, None, 0, 40)
    .compile()
    .as_text()
)
report["all_reduce"] = {"sgd_step": "all-reduce" in step_program, "fit": "all-reduce" in fit_program}

report["errors"] = {}
for name, call in {
    "indivisible batch": lambda: fit(12, "sgd", mesh),
    "indivisible full batch": lambda: bp_jax.fit(loss, params, x[:60], y[:60], steps=1, lr=0.1, mesh=mesh),
    "too many devices": lambda: bp_jax.data_parallel_mesh(16),
}.items():
    try:
        call()
        report["errors"][name] = None
    except ValueError as err:
        report["errors"][name] = str(err)
print(json.dumps(report))

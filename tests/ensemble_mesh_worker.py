"""Run by tests/test_ensemble.py with JAX_NUM_CPU_DEVICES=8: 16 members over a "models" mesh of 8 devices
against the same ensemble on one device, also with each member on its own rows (row counts of LARGE_DOMAIN
or more: the data order's fixed rounds) and a stop rule (each member stops once its loss falls below its own
threshold), and in 4 groups of 4 sharing a key and rows (counts below it too: the rounds counted in the
program). Prints a JSON report."""

import json

import jax
import jax.numpy as jnp
import numpy as np

import bp_jax
from bp_jax._order import LARGE_DOMAIN

model = bp_jax.Sequential(bp_jax.Linear(5, 8), bp_jax.ReLU(), bp_jax.Linear(8, 1))
keys = jax.random.split(jax.random.key(0), 3)
params = jax.vmap(model.init)(jax.random.split(keys[0], 16))
x, y = jax.random.normal(keys[1], (80, 5)), jax.random.normal(keys[2], (80, 1))
lrs = jnp.geomspace(1e-3, 1e36, 16)  # the last members diverge
arguments = dict(steps=60, lr=lrs, batch_size=8, key=jax.random.split(jax.random.key(1), 16))
loss = bp_jax.loss_fn(model)
one = bp_jax.fit_ensemble(loss, params, x, 1e3 * y, **arguments)
split = bp_jax.fit_ensemble(loss, params, x, 1e3 * y, mesh=bp_jax.ensemble_mesh(8), **arguments)
try:
    bp_jax.fit_ensemble(
        loss, jax.tree.map(lambda leaf: leaf[:12], params), x, y, steps=1, lr=0.1, mesh=bp_jax.ensemble_mesh(8)
    )
    indivisible = None
except ValueError as err:
    indivisible = str(err)
below = bp_jax.StopRule(  # thresholds below most minibatch losses: some members stop, most train all their steps
    lambda threshold, step, loss: (threshold, loss < threshold), np.linspace(0.2, 0.5, 16).astype(np.float32)
)
own_rows = dict(
    steps=20,
    lr=0.01,
    batch_size=8,
    key=jax.random.split(jax.random.key(2), 16),
    rows=np.stack([np.roll(np.arange(80), 3 * member) for member in range(16)]),
    row_counts=LARGE_DOMAIN + np.arange(16) % 8,
)
own_one = bp_jax.fit_ensemble(loss, params, x, y, stop_rule=below, **own_rows)
own_split = bp_jax.fit_ensemble(loss, params, x, y, stop_rule=below, mesh=bp_jax.ensemble_mesh(8), **own_rows)
grouped = own_rows | dict(
    key=jax.random.split(jax.random.key(3), 4),
    rows=np.stack([np.roll(np.arange(40), 7 * group) for group in range(4)]),
    row_counts=np.array([20, 27, 33, 40]),
)
grouped_one = bp_jax.fit_ensemble(loss, params, x, y, **grouped)
grouped_split = bp_jax.fit_ensemble(loss, params, x, y, mesh=bp_jax.ensemble_mesh(8), **grouped)
difference, own_rows_difference, grouped_difference = (
    max(
        float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
        for a, b in zip(jax.tree.leaves(first.params), jax.tree.leaves(second.params))
    )
    for first, second in ((one, split), (own_one, own_split), (grouped_one, grouped_split))
)
print(
    json.dumps(
        {
            "devices_holding_params": len(split.params[0]["weight"].sharding.device_set),
            "max_abs_difference": difference,
            "own_rows_max_abs_difference": own_rows_difference,
            "grouped_max_abs_difference": grouped_difference,
            "stopped_at": own_split.stopped_at.tolist(),
            "stopped_at_one_device": own_one.stopped_at.tolist(),
            "diverged": split.diverged.tolist(),
            "diverged_one_device": one.diverged.tolist(),
            "indivisible": indivisible,
        }
    )
)

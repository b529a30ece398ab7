"""Run by tests/test_fit.py in a fresh process (under the machine's default ISA and under
XLA_FLAGS=--xla_cpu_max_isa=AVX2): fits stopped and resumed anywhere, with any chunk size, must end with
the bits of one uninterrupted run. Prints one line per configuration; exits 1 on the first difference."""

import sys

import jax
import numpy as np
import optax

import bp_jax

CUTS, CHUNKS, STEPS = (1, 7, 110, 249), (3, 64, 97, 1000), 250


def check(name, loss, params, x, y, **method):
    reference = bp_jax.fit(loss, params, x, y, steps=STEPS, **method)
    reference_leaves = jax.tree.leaves((reference.params, reference.opt_state))
    compared = 0
    for chunk in CHUNKS:
        runs = [[bp_jax.fit(loss, params, x, y, steps=STEPS, chunk_size=chunk, **method)]]
        for cut in CUTS:
            first = bp_jax.fit(loss, params, x, y, steps=cut, chunk_size=chunk, **method)
            rest = bp_jax.fit(
                loss,
                first.params,
                x,
                y,
                steps=STEPS - cut,
                start_step=cut,
                chunk_size=chunk,
                opt_state=first.opt_state,
                **method,
            )
            runs.append([first, rest])
        for parts in runs:
            leaves = jax.tree.leaves((parts[-1].params, parts[-1].opt_state))
            losses = np.concatenate([part.losses for part in parts])
            same = all(np.array_equal(a, b) for a, b in zip(leaves, reference_leaves))
            if not (same and np.array_equal(losses, reference.losses)):
                steps = [part.step for part in parts]
                sys.exit(f"{name}: chunk {chunk}, stopped at {steps[:-1]}: not bit-identical to one run")
            compared += 1
    print(f"{name}: {compared} stopped-and-resumed runs bit-identical to one run")


model = bp_jax.Sequential(
    bp_jax.Linear(10, 16), bp_jax.Tanh(), bp_jax.Linear(16, 5), bp_jax.ReLU(), bp_jax.Linear(5, 1)
)
rng = np.random.default_rng(0)  # numpy's draws: eagerly, each jax.random op would compile a program of its own
params = model.init(jax.random.key(0))
x, y = rng.standard_normal((200, 10), np.float32), rng.standard_normal((200, 1), np.float32)
loss = bp_jax.loss_fn(model)
check(
    "momentum, minibatch 16",
    loss,
    params,
    x,
    y,
    batch_size=16,
    key=jax.random.key(1),
    optimizer=optax.sgd(0.02, momentum=0.9),
)
check("hand-written sgd, minibatch 7", loss, params, x, y, batch_size=7, key=jax.random.key(2), lr=0.03)
check("adam, full batch", loss, params, x, y, optimizer=optax.adam(1e-3))
dropout = bp_jax.mlp((10, 16, 5, 1), "tanh", dropout=0.25)  # a key per step: hash_fold_in(noise, step)
check(
    "dropout, hand-written sgd, minibatch 16",
    bp_jax.loss_fn(dropout),
    dropout.init(jax.random.key(0)),
    x,
    y,
    batch_size=16,
    key=jax.random.key(3),
    lr=0.03,
)

"""Run by tests/test_ensemble_parts.py in a fresh process under XLA_FLAGS=--xla_cpu_max_isa=AVX2: an ensemble run in
parts, stopped and resumed with other chunk sizes, must end with the bits of one uninterrupted run. Prints one line;
exits 1 on a difference."""

import sys

import jax
import numpy as np
import optax

import bp_jax
from bp_jax import _fit, _fit_loop

_fit.core_count = lambda: 2  # every ensemble in 2 parts
_fit_loop.MIN_PART_STEP_WORK = _fit_loop.MIN_PART_CALL_WORK = 0
chosen = []
_fit.member_parts = lambda *args: chosen.append(_fit_loop.member_parts(*args)) or chosen[-1]

model = bp_jax.mlp((6, 8, 1), "tanh")
rng = np.random.default_rng(0)  # numpy's draws: eagerly, each jax.random op would compile a program of its own
x, y = rng.standard_normal((48, 6), np.float32), rng.standard_normal((48, 1), np.float32)
params = jax.vmap(model.init)(jax.random.split(jax.random.key(0), 5))  # 5 members: parts of 3, the last padded
keys = jax.random.split(jax.random.key(1), 5)
fit = lambda params, steps, **kwargs: bp_jax.fit_ensemble(
    bp_jax.loss_fn(model), params, x, y, steps=steps, optimizer=optax.adam(0.01), batch_size=8, key=keys, **kwargs
)
whole = fit(params, 90)
first = fit(params, 31, chunk_size=7)
rest = fit(first.params, 59, opt_state=first.opt_state, start_step=first.step, chunk_size=10)
same = all(
    np.array_equal(a, b)
    for a, b in zip(jax.tree.leaves((rest.params, rest.opt_state)), jax.tree.leaves((whole.params, whole.opt_state)))
)
if set(chosen) != {2} or not same or not np.array_equal(np.concatenate([first.losses, rest.losses]), whole.losses):
    sys.exit(f"parts {chosen}: the resumed ensemble is not bit-identical to one run")
print("an ensemble in 2 parts (the last padded), stopped and resumed: bit-identical to one run")

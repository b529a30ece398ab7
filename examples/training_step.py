"""The documents' complete training step on the seed MLP, the hand-written SGD step beside optax's.

PyTorch: nn.Sequential(nn.Linear(10, 5), nn.ReLU(), nn.Linear(5, 1)), nn.MSELoss(), SGD(lr=0.01).
"""

import jax
import optax

import bp_jax

model = bp_jax.mlp((10, 5, 1), "relu")  # Linear(10, 5), ReLU, Linear(5, 1)
params_key, x_key, y_key = jax.random.split(jax.random.key(0), 3)
x = jax.random.normal(x_key, (32, 10))  # 32 samples, 10 features
y = jax.random.normal(y_key, (32, 1))  # true values

loss = bp_jax.loss_fn(model, bp_jax.mse)
optimizer = optax.sgd(learning_rate=0.01)

# Both steps donate their params, so each gets its own copy of the same initial weights.
hand_params = model.init(params_key)
optax_params = model.init(params_key)
opt_state = optimizer.init(optax_params)
hand_step = bp_jax.sgd_step(loss, lr=0.01)
optax_step = bp_jax.optax_step(loss, optimizer)

print(f"{'step':>5} {'hand-written sgd':>17} {'optax.sgd':>10}")
for step in range(1, 201):
    hand_params, hand_loss = hand_step(hand_params, x, y)
    optax_params, opt_state, optax_loss = optax_step(optax_params, opt_state, x, y)
    if step == 1 or step % 40 == 0:
        print(f"{step:>5} {hand_loss:>17.4f} {optax_loss:>10.4f}")

final = bp_jax.mse(model.apply(hand_params, x), y)
print(f"Loss: {final:.4f} after 200 steps (first step {loss(model.init(params_key), x, y):.4f})")
gap = max(jax.tree.leaves(jax.tree.map(lambda a, b: float(abs(a - b).max()), hand_params, optax_params)))
print(f"max |hand - optax| over all params: {gap:.2e}")

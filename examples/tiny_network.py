"""The documents' tiny network x → ·w1 → ReLU → ·w2 → y, with x = 2.0, w1 = 0.5, w2 = 1.5, target 3.0.

Forward values, the loss and every gradient, jax.grad beside the hand-derived chain rule.
"""

import jax

import bp_jax
from bp_jax import manual

x, target = 2.0, 3.0
params = {"w1": 0.5, "w2": 1.5}

# Forward pass, step by step as in the document.
z1 = params["w1"] * x
a1 = jax.nn.relu(z1)
y = params["w2"] * a1
print(f"After w1: {z1}")
print(f"After ReLU: {a1}")
print(f"Final output: {y}")

model = bp_jax.tiny_net()
loss = bp_jax.loss_fn(model, bp_jax.squared_error)
print(f"Loss: {loss(params, x, target)}")

# Backward pass: jax.grad w.r.t. the weights and x (the document sets requires_grad on all three).
grads = jax.grad(loss)(params, x, target)
grad_x = jax.grad(loss, argnums=1)(params, x, target)
autodiff = {"w1": grads["w1"], "w2": grads["w2"], "x": grad_x}
by_hand = manual.tiny_net_grads(params["w1"], params["w2"], x, target)

print(f"\n{'gradient':<8} {'jax.grad':>10} {'manual':>10} {'difference':>11}")
for name in ("w1", "w2", "x"):
    print(f"dL/d{name:<4} {autodiff[name]:>10.4f} {by_hand[name]:>10.4f} {abs(autodiff[name] - by_hand[name]):>11.2e}")

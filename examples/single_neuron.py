"""The single neuron y = a(w·x), L = (y − t)²: the documents' dL/dw formula beside jax.grad.

dL/dw = dL/dy · dy/dw = 2(y − t) · a'(w·x) · x
"""

import jax

import bp_jax
from bp_jax import manual

w, x, t = 0.8, 1.5, 0.5
print(f"w = {w}, x = {x}, t = {t}")
print(f"{'activation':<10} {'y':>10} {'L':>10} {'dL/dw formula':>15} {'dL/dw jax.grad':>15} {'difference':>11}")
for name in bp_jax.ACTIVATIONS:
    model = bp_jax.neuron(name)
    loss = bp_jax.loss_fn(model, bp_jax.squared_error)
    params = {"w": w}
    y = model.apply(params, x)
    by_formula = manual.neuron_grad(w, x, t, name)
    by_autodiff = jax.grad(loss)(params, x, t)["w"]
    print(
        f"{name:<10} {y:>10.6f} {loss(params, x, t):>10.6f} {by_formula:>15.6f} {by_autodiff:>15.6f} "
        f"{abs(by_formula - by_autodiff):>11.2e}"
    )

lr = 0.1
grad = manual.neuron_grad(w, x, t, "sigmoid")
print(f"\nOne update, sigmoid: w = w - lr * dL/dw = {w} - {lr} * {grad:.6f} = {w - lr * grad:.6f}")

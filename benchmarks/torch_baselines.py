"""The PyTorch side: the documents' train_step verbatim (also on rows sampled per step), torch.compile,
CUDA-graph replay, and a torch.func ensemble.

Every builder returns `step()`, which runs one training step; `sync(out)` waits for the device.
Importing this module needs torch; the suites record a skip with the reason where it is missing.
"""

import itertools
from collections.abc import Callable
from contextlib import contextmanager

import torch
from torch import nn


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def sync(_out=None) -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


@contextmanager
def threads(count: int | None):
    """torch's intra-op thread count set to `count` inside the block (None: left as it is)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(count or previous)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def mlp_problem(sizes: tuple[int, ...], batch: int, dtype=torch.float32, seed: int = 0):
    """nn.Sequential of Linear layers with ReLU between, MSELoss, SGD(lr=0.01), and random x, y."""
    torch.manual_seed(seed)
    layers = [nn.Linear(sizes[0], sizes[1])]
    for fan_in, fan_out in itertools.pairwise(sizes[1:]):
        layers += [nn.ReLU(), nn.Linear(fan_in, fan_out)]
    model = nn.Sequential(*layers).to(device(), dtype)
    x = torch.randn(batch, sizes[0], device=device(), dtype=dtype)
    y = torch.randn(batch, sizes[-1], device=device(), dtype=dtype)
    return model, nn.MSELoss(), torch.optim.SGD(model.parameters(), lr=0.01), x, y


def documents_train_step(item: bool = True, sizes=(10, 5, 1), batch=32, dtype=torch.float32) -> Callable:
    """The documents' train_step, verbatim; with item=False it returns the loss tensor (no host sync)."""
    model, criterion, optimizer, x, y = mlp_problem(sizes, batch, dtype)

    def train_step(x, y):
        # 1. Forward pass
        predictions = model(x)

        # 2. Compute loss
        loss = criterion(predictions, y)

        # 3. Backward pass (backpropagation!)
        optimizer.zero_grad()
        loss.backward()

        # 4. Update weights
        optimizer.step()

        return loss.item()

    def train_step_without_item(x, y):
        predictions = model(x)
        loss = criterion(predictions, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return loss

    return train_step if item else train_step_without_item, x, y


def eager_step(**problem) -> Callable:
    """One call of the documents' train_step (with `.item()` unless item=False)."""
    train_step, x, y = documents_train_step(**problem)
    return lambda: train_step(x, y)


def compiled_step(**problem) -> Callable:
    """torch.compile of the train_step without `.item()` (which would break the graph)."""
    train_step, x, y = documents_train_step(item=False, **problem)
    compiled = torch.compile(train_step)
    return lambda: compiled(x, y)


def cuda_graph_step(sizes=(10, 5, 1), batch=32, dtype=torch.float32) -> Callable:
    """The whole step (forward, backward, SGD update) captured once as a CUDA graph and replayed.

    Follows PyTorch's "whole network capture" recipe: warm up on a side stream, then capture.
    """
    model, criterion, optimizer, x, y = mlp_problem(sizes, batch, dtype)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            optimizer.zero_grad(set_to_none=True)
            criterion(model(x), y).backward()
            optimizer.step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    optimizer.zero_grad(set_to_none=True)
    with torch.cuda.graph(graph):
        loss = criterion(model(x), y)
        loss.backward()
        optimizer.step()
    return graph.replay


def sampled_step(x, y, batch: int = 32) -> Callable:
    """The documents' train_step on `batch` rows of the numpy arrays (x, y) drawn per step by
    `torch.randint` (what a PyTorch user writes instead of a DataLoader for tensors already in memory)."""
    train_step, _, _ = documents_train_step(batch=batch)
    x, y = torch.from_numpy(x).to(device()), torch.from_numpy(y).to(device())

    def step():
        rows = torch.randint(len(x), (batch,), device=x.device)
        return train_step(x[rows], y[rows])

    return step


def vmap_ensemble_step(lrs, sizes=(10, 5, 1), batch=32, dtype=torch.float32) -> Callable:
    """PyTorch's own ensemble of len(lrs) MLPs, one step per call: parameters stacked by
    `torch.func.stack_module_state`, loss and gradient of every member at once by `torch.func.vmap` of
    `torch.func.grad_and_value` of a `functional_call`, and the SGD update params − lr·g with one lr per
    member; x, y shared. Returns the members' losses (no host sync)."""
    from torch.func import functional_call, grad_and_value, stack_module_state, vmap

    models = [mlp_problem(sizes, batch, dtype, seed)[0] for seed in range(len(lrs))]
    _, criterion, _, x, y = mlp_problem(sizes, batch, dtype)
    params, buffers = stack_module_state(models)
    params = {name: value.detach() for name, value in params.items()}
    lr = torch.as_tensor(lrs, dtype=dtype, device=device())
    gradient = vmap(
        grad_and_value(lambda params, buffers, x, y: criterion(functional_call(models[0], (params, buffers), (x,)), y)),
        in_dims=(0, 0, None, None),
    )

    def step():
        nonlocal params
        grads, losses = gradient(params, buffers, x, y)
        params = {name: value - lr.view(-1, *[1] * (value.dim() - 1)) * grads[name] for name, value in params.items()}
        return losses

    return step


def per_example_grads_func(sizes=(10, 5, 1), batch=32, dtype=torch.float32) -> Callable:
    """Per-example gradients by PyTorch's own recipe: `torch.func.vmap` of `torch.func.grad` of the loss of a
    `functional_call` on one example (a batch of 1). Returns the dict of gradients with a leading batch axis."""
    from torch.func import functional_call, grad, vmap

    model, criterion, _, x, y = mlp_problem(sizes, batch, dtype)
    weights = {name: value.detach() for name, value in model.named_parameters()}

    def own_loss(weights, x_i, y_i):
        return criterion(functional_call(model, weights, (x_i[None],)), y_i[None])

    gradients = vmap(grad(own_loss), in_dims=(None, 0, 0))
    return lambda: gradients(weights, x, y)


def per_example_grads_loop(sizes=(10, 5, 1), batch=32, dtype=torch.float32) -> Callable:
    """Per-example gradients the documents' way: for each example, zero_grad, its own loss, `loss.backward()`,
    and a copy of every `.grad`; stacked at the end."""
    model, criterion, _, x, y = mlp_problem(sizes, batch, dtype)
    parameters = list(model.parameters())

    def loop():
        rows = []
        for i in range(batch):
            model.zero_grad()
            criterion(model(x[i : i + 1]), y[i : i + 1]).backward()
            rows.append([p.grad.clone() for p in parameters])
        return [torch.stack(column) for column in zip(*rows)]

    return loop

"""Regression data for the `bp-jax` command: a train/held-out split, standardised with training statistics."""

from typing import NamedTuple

import numpy as np

NAMES = ("diabetes", "synthetic")


class Split(NamedTuple):
    """Standardised float32 arrays; targets have shape (n, 1), like the documents' y = randn(32, 1)."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def load(name: str, *, seed: int = 0, test_fraction: float = 0.2) -> Split:
    """`diabetes`: scikit-learn's 442 patients × 10 features (shipped inside the package, no download).
    `synthetic`: 1000 rows of x ~ N(0, 1)¹⁰, y = sin(x·a) + 0.5·(x·b)² / 10 + noise, seeded."""
    if name == "diabetes":
        from sklearn.datasets import load_diabetes

        x, y = load_diabetes(return_X_y=True)
    elif name == "synthetic":
        rng = np.random.default_rng(seed)
        x = rng.standard_normal((1000, 10))
        a, b = rng.standard_normal(10) / 3, rng.standard_normal(10) / 3
        y = np.sin(x @ a) + 0.05 * (x @ b) ** 2 + 0.1 * rng.standard_normal(1000)
    else:
        raise ValueError(f"unknown dataset {name!r}; expected one of {list(NAMES)}")
    order = np.random.default_rng(seed).permutation(len(x))
    n_test = int(round(len(x) * test_fraction))
    test, train = order[:n_test], order[n_test:]
    x_mean, x_std = x[train].mean(0), x[train].std(0)
    y_mean, y_std = y[train].mean(), y[train].std()
    standard_x = lambda rows: ((x[rows] - x_mean) / x_std).astype(np.float32)
    standard_y = lambda rows: ((y[rows] - y_mean) / y_std).astype(np.float32)[:, None]
    return Split(standard_x(train), standard_y(train), standard_x(test), standard_y(test))

"""Figures the commands write: matplotlib without a display, saved atomically as PNG.

    with figure(path, title=..., xlabel=..., ylabel=...) as axes:   # one axes, saved on leaving the block
        plot_losses(axes, history, label="…")                        # a raw curve and its running mean

`loss_curve` is train's figure; commands comparing runs draw several `plot_losses` on one `figure`.
"""

from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from bp_jax.cli.runs import write_atomically


@contextmanager
def figure(path: Path, *, title: str, xlabel: str, ylabel: str, yscale: str = "linear", size=(7, 4)):
    """Yield one matplotlib Axes; on leaving, add a legend and grid and write the PNG to `path`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    canvas, axes = plt.subplots(figsize=size, dpi=120)
    try:
        yield axes
        axes.set(title=title, xlabel=xlabel, ylabel=ylabel, yscale=yscale)
        if axes.get_legend_handles_labels()[0]:
            axes.legend()
        axes.grid(alpha=0.3)
        canvas.tight_layout()
        write_atomically(path, lambda temporary: canvas.savefig(temporary, format="png"))
    finally:
        plt.close(canvas)


def plot_losses(axes, history: Sequence, *, label: str, color: str = "tab:blue") -> None:
    """[step, loss] pairs (None or non-finite losses left out) as a faint raw curve and a bold running mean
    over a fiftieth of the points."""
    if not len(history):
        return
    steps, losses = np.asarray(history, dtype=float).T
    kept = np.isfinite(losses)
    steps, losses = steps[kept], losses[kept]
    if not len(losses):
        return
    window = max(1, len(losses) // 50)
    smooth = np.convolve(losses, np.ones(window) / window, mode="valid")
    axes.plot(steps, losses, lw=0.6, alpha=0.35, color=color, label=label)
    axes.plot(steps[window - 1:], smooth, lw=2, color=color, label=f"running mean of {window} steps")


def loss_curve(path: Path, history: Sequence, *, title: str, levels: dict[str, float]) -> None:
    """`bp-jax train`'s figure: the training loss by step, and horizontal lines at `levels` (label: value,
    e.g. the held-out MSE and the mean predictor's), on a log scale."""
    with figure(path, title=title, xlabel="step", ylabel="MSE (standardised target)", yscale="log") as axes:
        plot_losses(axes, history, label="training loss (minibatch MSE)")
        for (label, value), (color, style) in zip(levels.items(), [("tab:green", "--"), ("tab:red", ":")] * 4):
            if value is not None and np.isfinite(value):
                axes.axhline(value, color=color, ls=style, label=label)

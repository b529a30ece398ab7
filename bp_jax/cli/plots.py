"""Figures the commands write: matplotlib without a display, saved atomically as PNG.

    with figure(path, title=..., xlabel=..., ylabel=...) as axes:   # one axes, saved on leaving the block
        plot_losses(axes, history, label="…")                        # a raw curve and its running mean
    with panels(path, 2, title=...) as (left, right): ...           # several axes side by side

`loss_curve` is train's figure, `panels` serves sweep's.

    with drawing() as painter:                          # a second Python imports matplotlib now, on another core
        ...                                             # load, train
        painter.draw("loss_curve", path, history, ...)  # drawn there
        painter.wait()                                  # the file is written (also on leaving the block)

matplotlib's import and the drawing cost a command about half a second; a `Painter` moves both into a second
process started as the command starts, so on a machine with a free core they cost no wall time. Where
matplotlib is loaded already (a test, a notebook) the figure is drawn in this process.
"""

import contextlib
import pickle
import subprocess
import sys
import typing
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from bp_jax.cli.folders import write_atomically


@contextlib.contextmanager
def panels(path: Path, count: int, *, title: str, size=None, replace: bool = False):
    """Yield `count` matplotlib Axes side by side; on leaving, add legends and grids and write the PNG to
    `path` atomically (`folders.write_atomically`: a new file, unless `replace`). A bare Figure, drawn by
    Agg when saved: no pyplot (its import and global figure list cost a command's start-up time)."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import LogFormatter

    class PlainLogLabels(LogFormatter):  # 0.5, 1.35, 1e-05: mathtext's 5 × 10⁻¹ would take most of the drawing time
        def _num_to_string(self, x, vmin, vmax):
            return f"{x:g}"

    canvas = Figure(figsize=size or (7 * count, 4), dpi=120)
    axes = canvas.subplots(1, count, squeeze=False)[0]
    yield tuple(axes)
    for axis in (axis for each in canvas.axes for axis in (each.xaxis, each.yaxis) if axis.get_scale() == "log"):
        axis.set_major_formatter(PlainLogLabels())
        axis.set_minor_formatter(PlainLogLabels(labelOnlyBase=False))
    for each in axes:
        if each.get_legend_handles_labels()[0]:
            each.legend(fontsize="small")
        each.grid(alpha=0.3)
    canvas.suptitle(title) if count > 1 else axes[0].set_title(title)
    canvas.tight_layout()
    write_atomically(path, lambda temporary: canvas.savefig(temporary, format="png"), replace=replace)


@contextlib.contextmanager
def figure(
    path: Path, *, title: str, xlabel: str, ylabel: str, yscale: str = "linear", size=(7, 4), replace: bool = False
):
    """`panels` with one Axes, labelled."""
    with panels(path, 1, title=title, size=size, replace=replace) as (axes,):
        yield axes
        axes.set(xlabel=xlabel, ylabel=ylabel, yscale=yscale)


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
    axes.plot(steps[window - 1 :], smooth, lw=2, color=color, label=f"running mean of {window} steps")


def loss_curve(
    path: Path,
    history: Sequence,
    *,
    title: str,
    levels: dict[str, float],
    loss: str = "MSE",
    accuracy: dict[str, float] | None = None,
    validation: Sequence = (),
    replace: bool = False,
    spread: Sequence | None = None,
) -> None:
    """`bp-jax train`'s figure: the training loss by step, the `validation` loss ([step, loss] pairs, one an
    epoch, with early stopping) and its lowest point, and horizontal lines at `levels` (label: value, e.g. the
    held-out MSE and the mean predictor's), on a log scale; for a classifier, `accuracy` levels (the held-out
    accuracy and the majority class's) on a second axis, from 0 to 1. An ensemble's `history` is its members'
    mean loss, `spread` their [step, lowest, highest] loss, drawn as a band."""
    unit = "MSE (standardised target)" if loss == "MSE" else loss
    with figure(path, title=title, xlabel="step", ylabel=unit, yscale="log", replace=replace) as axes:
        if spread:
            steps, low, high = np.asarray(spread, dtype=float).T
            axes.fill_between(steps, low, high, color="tab:blue", alpha=0.15, lw=0, label="members' range")
        mean = ", members' mean" if spread else ""
        plot_losses(axes, history, label=f"training loss (minibatch {loss}{mean})")
        steps, losses = np.asarray(validation, dtype=float).reshape(-1, 2).T
        if np.isfinite(losses).any():
            axes.plot(steps, losses, lw=1.5, color="tab:orange", label=f"validation {loss}, per epoch")
            best = np.nanargmin(losses)
            axes.plot(steps[best], losses[best], "o", color="tab:orange", label=f"best epoch ({losses[best]:.4g})")
        for (label, value), (color, style) in zip(levels.items(), [("tab:green", "--"), ("tab:red", ":")] * 4):
            if value is not None and np.isfinite(value):
                axes.axhline(value, color=color, ls=style, label=label)
        if accuracy:
            right = axes.twinx()
            for (label, value), (color, style) in zip(accuracy.items(), [("tab:purple", "-."), ("tab:gray", ":")] * 4):
                right.axhline(value, color=color, ls=style, label=f"{label}: accuracy {value:.1%}")
            right.set(ylabel="accuracy", ylim=(0, 1.02))
            right.legend(fontsize="small", loc="center right")


class Painter:
    """Draws this module's figure functions by name in a second process started with it (`python -P -c`, this
    process's sys.path), unless matplotlib is loaded in this one already or `second_process` is False (a
    process that draws nothing): then here and now."""

    def __init__(self, second_process: bool = True):
        self._process = None
        if second_process and "matplotlib.figure" not in sys.modules:
            self._process = subprocess.Popen(
                [sys.executable, "-P", "-c", f"import sys; sys.path[:] = {sys.path!r}; {_PAINTER}"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                start_new_session=True,  # a Ctrl-C at the terminal is this process's to answer, not the painter's
            )

    def draw(self, name: str, *args, **kwargs) -> None:
        """`name(*args, **kwargs)`: drawn now, or queued to the second process."""
        if self._process is None:
            globals()[name](*args, **kwargs)
            return
        with contextlib.suppress(BrokenPipeError):  # the painter ended already; wait says why
            pickle.dump((name, args, kwargs), typing.cast(typing.IO[bytes], self._process.stdin))  # a PIPE

    def wait(self) -> None:
        """Wait until every figure is written; raise what a figure function raised (an OSError for a failed
        write, ModuleNotFoundError without matplotlib)."""
        if self._process is None:
            return
        process, self._process = self._process, None
        reply, _ = process.communicate()  # closes its stdin: nothing more to draw
        if reply:
            raise pickle.loads(reply)
        if process.returncode:
            raise OSError(f"the process drawing the figures ended with status {process.returncode}")

    def stop(self) -> None:
        """End the second process, whatever it was drawing."""
        if self._process is not None:
            self._process.kill()
            self._process.wait()
            self._process = None


@contextlib.contextmanager
def drawing(second_process: bool = True):
    """A Painter for the block: waited for at its end, stopped if the block raises."""
    painter = Painter(second_process)
    try:
        yield painter
        painter.wait()
    finally:
        painter.stop()


_PAINTER = "from bp_jax.cli.plots import serve; serve(sys.stdin.buffer, sys.stdout.buffer)"


def serve(requests, replies) -> None:
    """The painter `drawing` starts: matplotlib imported while the command works, then each (name, args,
    kwargs) read from `requests` drawn; the first exception, pickled to `replies`, ends it."""
    try:
        import matplotlib.backends.backend_agg  # what savefig draws with
        import matplotlib.figure  # noqa: F401  (what the figure functions draw on)

        while True:
            try:
                name, args, kwargs = pickle.load(requests)
            except EOFError:
                return
            globals()[name](*args, **kwargs)
    except Exception as err:
        try:
            reply = pickle.dumps(err)
        except Exception:  # an exception that does not pickle: its type and words
            reply = pickle.dumps(RuntimeError(f"{type(err).__name__}: {err}"))
        replies.write(reply)

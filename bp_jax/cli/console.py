"""What the commands show in the terminal: a progress bar, tables, and the device they ran on.

rich is imported inside the functions that draw, so a command that shows nothing yet starts without it.
"""

from collections.abc import Iterable, Sequence
from contextlib import contextmanager

import jax


@contextmanager
def progress_bar(label: str):
    """A rich progress bar on a terminal (process 0 only); yields `progress(step, total, loss)`."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (
        TextColumn(label),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}"),
        TextColumn("{task.fields[rate]} steps/s"),
        TimeElapsedColumn(),
    )
    console = Console(stderr=True)
    with Progress(*columns, console=console, disable=not (console.is_terminal and jax.process_index() == 0)) as bar:
        task = bar.add_task(label, total=None, loss="…", rate="…")

        def progress(step, total, loss):
            bar.update(task, completed=step, total=total, loss=f"{loss:.4f}")
            speed = bar.tasks[0].speed
            bar.update(task, rate=f"{speed:,.0f}" if speed else "…")

        yield progress


def print_table(title: str, columns: Sequence[str], rows: Iterable[Sequence[str]]) -> None:
    """A table on stdout: the first column left-aligned (the row's name), the others right-aligned."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for column in columns:
        table.add_column(column, justify="left" if column == columns[0] else "right")
    for row in rows:
        table.add_row(*row)
    Console().print(table)


def device_description() -> str:
    """The first device: its platform, and its kind where that says more ("gpu: NVIDIA H200")."""
    device = jax.devices()[0]
    return device.platform if device.device_kind == device.platform else f"{device.platform}: {device.device_kind}"

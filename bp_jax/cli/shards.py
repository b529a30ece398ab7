"""Each process reads only its rows (`bp-jax train --shard-data`): a .parquet or .csv table cut into one block of
rows per device of the data-parallel mesh, each process reading the blocks of its own devices, and everything the
run needs from the whole table (row numbers, held-out rows, standardisation, fingerprint) agreed by small
all-gathers of per-block numbers.

    config, split, rows = load(config, mesh)    # split: this process's rows; rows: what `fit` reads
    result = fit(loss, params, rows.x, rows.y, mesh=mesh, shard_rows=rows.counts, batch_size=b, …)
    metrics = scores(model, split, rows)(params)  # over every process's rows

The definitions (docs/guides/devices.md), for D devices in mesh order and N rows numbered g = 0 … N − 1 in file
order:

- Blocks (`row_group_blocks`, `byte_ranges`): a parquet file's row groups in D contiguous runs, block d ending at
  the row-group boundary nearest (d + 1)·N/D, each at least one group (fewer row groups than devices: refused); a
  CSV's bytes after its header in D equal ranges, a block holding the lines that begin in its range (a cell may
  not hold a line break). A block's first row number is the sum of the earlier blocks' row counts (gathered).
- Held out (`held_out`): row g iff splitmix64(g + (s + 1)·φ) < f·2⁶⁴ (s the split seed, f = 0.2, φ = 0x9E37…15):
  each row's own draw, so any layout, one process or many, holds out the same rows.
- Standardisation (`combined`): each block's training rows give per column (n_d, mean_d, M2_d = Σ(v − mean_d)²),
  all-gathered and combined in block order: n = Σ n_d, mean = Σ n_d·mean_d / n, M2 = Σ M2_d + n_d·(mean_d − mean)²,
  std = √(M2 / n) (1 where 0), the training rows' population statistics, as `data.load` computes them.
- Fingerprint: sha256 of the blocks' sha256 (their used cells as float64) in block order, then the column names:
  a run resumes on the same file and the same number of devices.
- Scope: numeric features and a numeric (regression) target, `--missing error` or `drop`, minibatches; each
  block needs at least b/D training rows.
"""

import dataclasses
import hashlib
import io
import itertools
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import NamedTuple

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec

import bp_jax
from bp_jax.cli import data, runs
from bp_jax.cli._args import UsageError

#: the held-out share of the rows, as `data.load`'s test_fraction
TEST_FRACTION = 0.2
GOLDEN = 0x9E3779B97F4A7C15  # 2⁶⁴/φ: splitmix64's increment


class Rows(NamedTuple):
    """A sharded run's training rows as `fit` reads them: x and y in D blocks along the "data" axis (block d on
    the mesh's d-th device, padded with zeros to the longest), each block's real rows (`fit`'s shard_rows), and
    the training and held-out rows of all the blocks."""

    x: jax.Array
    y: jax.Array
    counts: np.ndarray
    train: int
    held_out: int


def row_group_blocks(sizes: Sequence[int], blocks: int, source: str = "the file") -> list[range]:
    """The row groups (of `sizes` rows each) in `blocks` contiguous runs, block d ending at the boundary nearest
    (d + 1)·N/D, each at least one group; DataError when there are fewer groups than blocks."""
    if len(sizes) < blocks:
        raise data.DataError(
            f"{source}: {len(sizes)} row group(s), fewer than the {blocks} devices that share its rows; write it "
            f"with at least {blocks} (pyarrow.parquet.write_table's row_group_size), or leave out --shard-data"
        )
    ends, cuts = np.cumsum(sizes), [0]
    for block in range(1, blocks):  # the cut after group j leaves ends[j − 1] rows before it
        low, high = cuts[-1] + 1, len(sizes) - (blocks - block)
        cuts.append(low + int(np.argmin(np.abs(ends[low - 1 : high] - block * ends[-1] / blocks))))
    return [range(first, end) for first, end in itertools.pairwise([*cuts, len(sizes)])]


def byte_ranges(start: int, size: int, blocks: int) -> list[tuple[int, int]]:
    """[start, size) in `blocks` ranges as equal as bytes allow."""
    bounds = [start + (size - start) * block // blocks for block in range(blocks + 1)]
    return list(itertools.pairwise(bounds))


def lines_in(path: Path, first: int, end: int, body: int) -> bytes:
    """The lines of `path` that begin in [first, end) (`body`: where the first line after the header begins)."""
    with open(path, "rb") as file:
        file.seek(first)
        if first > body:
            file.seek(first - 1)
            file.readline()  # the rest of the line begun before `first` (or the newline just before it)
        begin = file.tell()
        if begin >= end:
            return b""
        text = file.read(end - begin)
        return text if text.endswith(b"\n") else text + file.readline()


def held_out(rows: np.ndarray, seed: int, fraction: float = TEST_FRACTION) -> np.ndarray:
    """Whether each row number g is held out: splitmix64(g + (seed + 1)·GOLDEN) < fraction·2⁶⁴."""
    z = rows.astype(np.uint64) + np.uint64((seed + 1) * GOLDEN % 2**64)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return (z ^ (z >> np.uint64(31))) < np.uint64(int(fraction * 2.0**64))


def moments(values: np.ndarray) -> np.ndarray:
    """(n, mean, M2) of each column of `values` (rows × columns), float64 of shape (3, columns); zeros for no rows."""
    if not len(values):
        return np.zeros((3, values.shape[1]))
    mean = values.mean(0)
    return np.stack([np.full(values.shape[1], float(len(values))), mean, ((values - mean) ** 2).sum(0)])


def combined(blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean, population std) of the union of blocks (D, 3, columns) of `moments`, combined in block order (Chan et
    al.): mean = Σ n_d·mean_d / n, M2 = Σ M2_d + n_d·(mean_d − mean)²; a deviation of 0 counts as 1."""
    n, means, m2 = blocks[:, 0], blocks[:, 1], blocks[:, 2]
    total = n.sum(0)
    mean = (n * means).sum(0) / total
    deviation = np.sqrt((m2 + n * (means - mean) ** 2).sum(0) / total)
    return mean, np.where(deviation == 0, 1.0, deviation)


def mine(mesh: jax.sharding.Mesh) -> list[int]:
    """The places in `mesh` (its devices in order) of this process's devices."""
    return [place for place, device in enumerate(mesh.devices.flat) if device.process_index == jax.process_index()]


def _gathered(mesh, source: str, compute: Callable[[], dict], empty: dict) -> dict:
    """What `compute` gives in every process (a dict of arrays with a leading axis of this process's blocks),
    gathered in one all-gather into arrays of all the blocks in mesh order; where any process's `compute` raised a
    UsageError, every process raises: that error where it was raised, a line naming the process elsewhere."""
    try:
        local, error = compute(), None
    except UsageError as err:
        local, error = empty, err
    with jax.enable_x64(True):  # counts and moments stay int64 and float64
        everyone = multihost_utils.process_allgather({"ok": np.int64(error is None), **local})
    if error is not None:
        raise error
    failed = np.flatnonzero(np.asarray(everyone["ok"]).reshape(-1) == 0)
    if len(failed):
        raise data.DataError(f"{source}: process {failed[0]} cannot use its rows (its own message says why)")
    owners = [device.process_index for device in mesh.devices.flat]
    places = [(owner, owners[:place].count(owner)) for place, owner in enumerate(owners)]  # (process, its block)
    return {name: np.stack([np.asarray(everyone[name])[p][i] for p, i in places]) for name in local}


def _columns(source: str, config: runs.Config) -> tuple[tuple[str, ...], str]:
    """(the features, the target) from the table's header or schema alone."""
    import pandas as pd

    path = Path(source)
    if path.suffix.lower() == ".parquet":
        import pyarrow.parquet as pq

        names = list(pq.ParquetFile(path).schema_arrow.names)
    else:
        names = list(pd.read_csv(path, nrows=0).columns)
        if names and names[0].startswith("Unnamed: 0"):  # a row index, as `data.read` leaves it out
            names = names[1:]
    _, features, target = data._choose(pd.DataFrame(columns=names), source, config.target, config.features)
    return features, target


def _read_block(source: str, block, used: list[str]):
    """One block's used columns as a DataFrame: row groups of a parquet file, or a CSV's byte range."""
    import pandas as pd

    path = Path(source)
    if path.suffix.lower() == ".parquet":
        import pyarrow.parquet as pq

        return pq.ParquetFile(path).read_row_groups(list(block), columns=used).to_pandas()
    header, first, end = block
    text = lines_in(path, first, end, len(header))
    return pd.read_csv(io.BytesIO(header + text), usecols=used)[used] if text else pd.DataFrame(columns=used)


def _blocks(source: str, devices: int) -> list:
    """Each block's part of the file: its row groups, or (header line, first byte, end byte)."""
    path = Path(source)
    if path.suffix.lower() == ".parquet":
        import pyarrow.parquet as pq

        metadata = pq.ParquetFile(path).metadata
        sizes = [metadata.row_group(group).num_rows for group in range(metadata.num_row_groups)]
        return row_group_blocks(sizes, devices, source)
    with open(path, "rb") as file:
        header = file.readline()
    return [(header, first, end) for first, end in byte_ranges(len(header), path.stat().st_size, devices)]


def _values(frame, source: str, names: list[str], first_row: int) -> np.ndarray:
    """The used columns as float64 (rows × columns), empty cells NaN; DataError for a column that is not numbers."""
    import pandas as pd

    text = [name for name in names if not pd.api.types.is_numeric_dtype(frame[name])]
    if text:
        raise data.DataError(
            f"{source}: column(s) {', '.join(map(repr, text))} hold text (rows {first_row + 1} on); --shard-data "
            f"reads numeric features and a numeric target (a regression): leave them out with --features"
        )
    return frame.to_numpy(np.float64, na_value=np.nan)


def check(config: runs.Config, source: str) -> None:
    """UsageError for what a sharded run does not do (yet): a built-in data set or an .npz, the full batch, an
    ensemble, early stopping, weights, imputing, a class target."""
    refused = {
        "a .parquet or .csv file (--data)": not data.is_file(source) or Path(source).suffix.lower() == ".npz",
        "minibatches (a --batch-size)": config.batch_size is None,
        "one model (no --ensemble)": config.ensemble > 1,
        "no --early-stopping": config.early_stopping,
        "no --sample-weight or --class-weight": config.sample_weight is not None or config.class_weight is not None,
        "--missing error or drop": config.missing == "impute",
        "a regression (--task regression or auto)": config.task == "classification",
    }
    wanted = [what for what, bad in refused.items() if bad]
    if wanted:
        raise UsageError(f"--shard-data trains on {', '.join(wanted)}")


def load(config: runs.Config, mesh: jax.sharding.Mesh) -> tuple[runs.Config, data.Split, Rows]:
    """(config with its target, features and task resolved; this process's rows as a `data.Split`, standardised
    with the statistics of every block's training rows; the training rows laid out for `fit`), reading only the
    blocks of this process's devices (the module docstring has the definitions)."""
    source = config.dataset
    check(config, source)
    batch, seed = config.batch_size, config.split_seed
    assert batch is not None and seed is not None  # `check`, Config.__post_init__
    features, target = _columns(source, config)
    used, devices, places = [*features, target], mesh.devices.size, mine(mesh)
    frames: list = []

    def read() -> dict:
        plan = _blocks(source, devices)
        frames.extend(_read_block(source, plan[place], used) for place in places)
        return {"rows": np.asarray([len(frame) for frame in frames], np.int64)}

    counts = _gathered(mesh, source, read, {"rows": np.zeros(len(places), np.int64)})["rows"]
    firsts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    blocks: list = []

    def summarise() -> dict:
        stats, digests, sizes = [], [], []
        for frame, place in zip(frames, places):
            values, rows = _values(frame, source, used, int(firsts[place])), firsts[place] + np.arange(len(frame))
            digests.append(np.frombuffer(hashlib.sha256(values.tobytes()).digest(), np.uint8))
            empty = np.isnan(values)
            if empty.any() and config.missing == "error":
                column = int(np.flatnonzero(empty.any(0))[0])
                raise data.DataError(
                    f"{source}: column {used[column]!r} has empty cells (the first in row "
                    f"{rows[np.flatnonzero(empty[:, column])[0]] + 1}); pass --missing drop to leave those rows out"
                )
            keep = ~empty.any(1)
            values, rows = _checked(values[keep], used, rows[keep], source), rows[keep]
            test = held_out(rows, seed)
            blocks.append((values[~test], rows[~test], values[test], rows[test]))
            stats.append(moments(values[~test]))
            sizes.append([(~test).sum(), test.sum(), (~keep).sum()])
        return {"moments": np.asarray(stats), "digests": np.asarray(digests), "sizes": np.asarray(sizes, np.int64)}

    empty = {
        "moments": np.zeros((len(places), 3, len(used))),
        "digests": np.zeros((len(places), 32), np.uint8),
        "sizes": np.zeros((len(places), 3), np.int64),
    }
    agreed = _gathered(mesh, source, summarise, empty)
    mean, std = combined(agreed["moments"])
    scaling = data.Scaling(
        features, target, tuple(mean[:-1].tolist()), tuple(std[:-1].tolist()), float(mean[-1]), float(std[-1])
    )
    share, sizes = batch // devices, agreed["sizes"]
    if sizes[:, 0].min() < share:
        raise UsageError(
            f"{source}: block {int(sizes[:, 0].argmin())} of {devices} holds {sizes[:, 0].min()} training rows, fewer "
            f"than a device's share of the batch ({config.batch_size} / {devices}); use a smaller --batch-size"
        )
    if sizes[:, 1].sum() == 0:
        raise data.DataError(f"{source}: no row is held out ({int(sizes[:, 0].sum())} rows); need at least one")
    fingerprint = hashlib.sha256(agreed["digests"].tobytes() + repr((features, target, "shards")).encode())
    prepared: list = []

    def standardise() -> dict:  # a cell whose standardised value float32 cannot hold: refused everywhere
        for x_train, rows_train, x_test, rows_test in blocks:
            prepared.append(
                [
                    (scaling.standardise(x[:, :-1], source, rows + 1), scaling.target(x[:, -1], source, rows + 1))
                    for x, rows in ((x_train, rows_train), (x_test, rows_test))
                ]
            )
        return {}

    _gathered(mesh, source, standardise, {})
    left_out = int(sizes[:, 2].sum())
    notes = (f"{source}: left out {left_out} row(s) with an empty cell (--missing drop)",) * bool(left_out)
    print(*(f"bp-jax: note: {note}\n" for note in notes), sep="", end="", file=sys.stderr)
    local = lambda part, which: np.concatenate([block[part][which] for block in prepared])
    split = data.Split(
        local(0, 0), local(0, 1), local(1, 0), local(1, 1), scaling, fingerprint.hexdigest(), notes,
        MappingProxyType({"no_target": 0, "empty_feature": left_out}),
    )  # fmt: skip
    length = int(sizes[:, 0].max())
    rows = Rows(
        _laid_out([block[0][0] for block in prepared], mesh, length),
        _laid_out([block[0][1] for block in prepared], mesh, length),
        sizes[:, 0].astype(np.int32),
        int(sizes[:, 0].sum()),
        int(sizes[:, 1].sum()),
    )
    return dataclasses.replace(config, target=target, features=features, task="regression"), split, rows


def _checked(values: np.ndarray, names: list[str], rows: np.ndarray, source: str) -> np.ndarray:
    """`values`; DataError naming the first cell that is not a number float32 holds (finite, |x| ≤ 3.4e38)."""
    bad = np.argwhere(~(np.abs(values) <= data.FLOAT32_MAX))
    if len(bad):
        row, column = bad[0]
        number = values[row, column]
        what = "not a finite number" if np.isinf(number) else f"beyond float32's range (±{data.FLOAT32_MAX:.3g})"
        raise data.DataError(
            f"{source}: column {names[column]!r}, row {rows[row] + 1}: the cell holds {number}, {what}"
        )
    return values


def _laid_out(blocks: list[np.ndarray], mesh: jax.sharding.Mesh, length: int) -> jax.Array:
    """This process's blocks, each padded with zeros to `length` rows, as one array split over the mesh's axis:
    block d on its d-th device."""
    devices, places = list(mesh.devices.flat), mine(mesh)
    pad = lambda block: np.concatenate([block, np.zeros((length - len(block), *block.shape[1:]), block.dtype)])
    pieces = [jax.device_put(pad(block), devices[place]) for block, place in zip(blocks, places)]
    shape = (len(devices) * length, *blocks[0].shape[1:])
    return jax.make_array_from_single_device_arrays(
        shape, NamedSharding(mesh, PartitionSpec(mesh.axis_names[0])), pieces
    )


def scores(model: bp_jax.Model, split: data.Split, rows: Rows) -> Callable:
    """`params -> metrics` over every process's rows: train_mse, held_out_mse and baseline_held_out_mse (the
    held-out MSE of the training rows' mean target, ȳ = Σy/n: Σ(y − ȳ)² = Σy² − 2ȳΣy + n·ȳ²), from per-process sums
    gathered in one all-gather."""
    measured = runs.scores(model, split)

    def on_host(params) -> dict:
        local = measured(params) if len(split.y_test) else {"train_mse": 0.0, "held_out_mse": 0.0}
        y, y_train = split.y_test.astype(np.float64), split.y_train.astype(np.float64)
        sums = np.asarray(
            [
                float(local["train_mse"]) * len(y_train),
                float(local["held_out_mse"]) * len(y),
                y_train.sum(),
                y.sum(),
                (y**2).sum(),
            ]
        )
        with jax.enable_x64(True):
            train_se, test_se, train_y, test_y, test_y2 = (
                np.asarray(multihost_utils.process_allgather(sums)).reshape(-1, 5).sum(0)
            )
        mean = train_y / rows.train
        baseline = (test_y2 - 2 * mean * test_y + rows.held_out * mean**2) / rows.held_out
        return {
            "train_mse": train_se / rows.train,
            "held_out_mse": test_se / rows.held_out,
            "baseline_held_out_mse": baseline,
        }

    return on_host

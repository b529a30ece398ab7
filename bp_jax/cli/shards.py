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
- Fingerprint (`row_sum`): sha256 of Σ_g h(g, row g's used cells) mod 2⁶⁴ (a sum of every block's sums) and the
  column names: the same for any layout, a parquet file or a CSV of the same numbers.
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


def splitmix64(z: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser of z + GOLDEN (uint64, wrapping): a 64-bit hash of each value."""
    z = z.astype(np.uint64) + np.uint64(GOLDEN)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def held_out(rows: np.ndarray, seed: int, fraction: float = TEST_FRACTION) -> np.ndarray:
    """Whether each row number g is held out: splitmix64(g + (seed + 1)·GOLDEN) < fraction·2⁶⁴."""
    return splitmix64(rows.astype(np.uint64) + np.uint64(seed * GOLDEN % 2**64)) < np.uint64(int(fraction * 2.0**64))


def row_sum(values: np.ndarray, first: int) -> np.uint64:
    """Σ over the rows (mod 2⁶⁴) of h(g, cells), g = first, first + 1, … the rows' numbers: h = splitmix64 of g,
    then of h ⊕ each cell's float64 bits (every NaN one NaN). Any cut of the table into blocks gives the same total
    of their sums: the data's fingerprint, whatever the layout."""
    total = np.zeros((), np.uint64)  # an array: its sums wrap silently, a numpy scalar's warn
    for start, end in _chunks(len(values)):
        h = splitmix64(np.arange(first + start, first + end, dtype=np.uint64))
        for column in values[start:end].T:
            h = splitmix64(h ^ np.where(np.isnan(column), np.nan, column).view(np.uint64))
        total += h.sum(dtype=np.uint64)
    return np.uint64(total)


def moments(values: np.ndarray, where: np.ndarray) -> np.ndarray:
    """(n, mean, M2 = Σ(v − mean)²) of each column of values[where] (rows × columns), float64 of shape
    (3, columns), a column at a time; zeros for no rows."""
    result = np.zeros((3, values.shape[1]))
    result[0] = where.sum()
    for index in range(values.shape[1]) if where.any() else ():
        column = values[where, index]
        result[1, index] = column.mean()
        result[2, index] = np.square(column - result[1, index]).sum()
    return result


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


def _columns(source: str, config: runs.Config) -> list[str]:
    """The features, then the target, from the table's header or schema alone."""
    import pandas as pd

    path = Path(source)
    if path.suffix.lower() == ".parquet":
        import pyarrow.parquet as pq

        names = list(pq.ParquetFile(path).schema_arrow.names)
    else:
        names = list(pd.read_csv(path, nrows=0).columns)
        if names and names[0].startswith("Unnamed: 0"):  # a row index, as `data.read` leaves it out
            names = names[1:]
    features, target = data._choose(names, source, config.target, config.features)
    return [*features, target]


def _read_block(source: str, block, used: list[str]) -> np.ndarray:
    """One block's used columns as float64, rows × columns, empty cells NaN: row groups of a parquet file (read one
    at a time into the block's array), or the lines of a CSV's byte range; DataError naming the columns that are not
    numbers."""
    import pandas as pd

    path = Path(source)
    if path.suffix.lower() == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        file = pq.ParquetFile(path)
        number = lambda kind: pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind)
        _refuse_text(source, [name for name in used if not number(file.schema_arrow.field(name).type)])
        sizes = [file.metadata.row_group(group).num_rows for group in block]
        values = np.empty((sum(sizes), len(used)))
        for group, first in zip(block, np.cumsum([0, *sizes[:-1]])):  # a row group at a time: its copy beside them
            table = file.read_row_group(group, columns=used)
            for column, name in enumerate(used):
                values[first : first + table.num_rows, column] = table.column(name).cast(pa.float64()).to_numpy()
            del table
            pa.default_memory_pool().release_unused()  # the row group's buffers, which the pool would keep
        return values
    header, first, end = block  # a chunk of rows at a time: the block's text, its numbers and one chunk's frame
    text = lines_in(path, first, end, len(header))
    if not text:
        return np.zeros((0, len(used)))
    parts = []
    for frame in pd.read_csv(io.BytesIO(header + text), usecols=used, chunksize=CHUNK):
        _refuse_text(source, [name for name in used if not pd.api.types.is_numeric_dtype(frame[name])])
        parts.append(frame[used].to_numpy(np.float64, na_value=np.nan))
    return np.concatenate(parts)


def _refuse_text(source: str, text: list[str]) -> None:
    if text:
        raise data.DataError(
            f"{source}: column(s) {', '.join(map(repr, text))} hold text; --shard-data reads numeric features and a "
            f"numeric target (a regression): leave them out with --features"
        )


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
    devices, places = mesh.devices.size, mine(mesh)
    used: list[str] = []  # the features, then the target
    values: list = []  # this process's blocks, float64 rows × used columns; None once standardised

    def read() -> dict:  # a file this host cannot read stops every process, not only this one
        try:
            used.extend(_columns(source, config))
            plan = _blocks(source, devices)
            values.extend(_read_block(source, plan[place], used) for place in places)
        except UsageError:
            raise
        except (OSError, ValueError) as err:  # missing, unreadable, not parquet or CSV, unparsable
            raise data.DataError(f"{source}: cannot be read: {str(err).strip().splitlines()[0]}") from None
        return {"rows": np.asarray([len(block) for block in values], np.int64)}

    counts = _gathered(mesh, source, read, {"rows": np.zeros(len(places), np.int64)})["rows"]
    features, target = tuple(used[:-1]), used[-1]
    firsts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    numbered: list = []  # each block's (row numbers of its positions, held out)

    def summarise() -> dict:
        stats, digests, sizes = [], [], []
        for index, place in enumerate(places):
            block, first = values[index], int(firsts[place])
            digests.append(row_sum(block, first))
            keep = _kept(block, used, first, source, config.missing)
            kept = None if keep.all() else np.flatnonzero(keep)
            if kept is not None:
                block = values[index] = block[kept]
            number = _numbering(first, kept)
            _check_cells(block, used, number, source)
            test = np.zeros(len(block), bool)
            for start, end in _chunks(len(block)):
                test[start:end] = held_out(number(np.arange(start, end)), seed)
            numbered.append((number, test))
            stats.append(moments(block, ~test))
            sizes.append([(~test).sum(), test.sum(), (~keep).sum()])
        return {
            "moments": np.asarray(stats),
            "digests": np.asarray(digests, np.uint64),
            "sizes": np.asarray(sizes, np.int64),
        }

    empty = {
        "moments": np.zeros((len(places), 3, len(used))),
        "digests": np.zeros(len(places), np.uint64),
        "sizes": np.zeros((len(places), 3), np.int64),
    }
    agreed = _gathered(mesh, source, summarise, empty)
    mean, std = combined(agreed["moments"])
    scaling = data.Scaling(
        features, target, tuple(mean[:-1].tolist()), tuple(std[:-1].tolist()), float(mean[-1]), float(std[-1])
    )
    sizes = agreed["sizes"]
    if sizes[:, 0].min() < batch // devices:
        raise UsageError(
            f"{source}: block {int(sizes[:, 0].argmin())} of {devices} holds {sizes[:, 0].min()} training rows, fewer "
            f"than a device's share of the batch ({batch} / {devices}); use a smaller --batch-size"
        )
    if sizes[:, 1].sum() == 0:
        raise data.DataError(f"{source}: no row is held out ({int(sizes[:, 0].sum())} rows); need at least one")
    digest = np.sum(agreed["digests"], dtype=np.uint64)  # the rows' hashes summed over every block
    fingerprint = hashlib.sha256(digest.tobytes() + repr((features, target, "shards")).encode())
    length, inputs = int(sizes[:, 0].max()), len(features)
    prepared: list = []  # each block's (x, y) of its training rows padded to `length`, and of its held-out rows

    def standardise() -> dict:  # a cell whose standardised value float32 cannot hold: refused in every process
        for index, (number, test) in enumerate(numbered):
            train, held = np.flatnonzero(~test), np.flatnonzero(test)
            arrays = [np.zeros((length, inputs), np.float32), np.zeros((length, 1), np.float32)]
            arrays += [np.empty((len(held), inputs), np.float32), np.empty((len(held), 1), np.float32)]
            _standardise_into(arrays[:2], values[index], train, number, scaling, source)
            _standardise_into(arrays[2:], values[index], held, number, scaling, source)
            values[index] = None
            prepared.append(arrays)
        return {}

    _gathered(mesh, source, standardise, {})
    left_out = int(sizes[:, 2].sum())
    notes = (f"{source}: left out {left_out} row(s) with an empty cell (--missing drop)",) * bool(left_out)
    print(*(f"bp-jax: note: {note}\n" for note in notes), sep="", end="", file=sys.stderr)
    trained = [int((~test).sum()) for _, test in numbered]
    joined = lambda parts: parts[0] if len(parts) == 1 else np.concatenate(parts)  # one block: no copy
    split = data.Split(
        joined([arrays[0][:n] for arrays, n in zip(prepared, trained)]),
        joined([arrays[1][:n] for arrays, n in zip(prepared, trained)]),
        joined([arrays[2] for arrays in prepared]),
        joined([arrays[3] for arrays in prepared]),
        scaling,
        fingerprint.hexdigest(),
        notes,
        MappingProxyType({"no_target": 0, "empty_feature": left_out}),
    )
    rows = Rows(
        _laid_out([arrays[0] for arrays in prepared], mesh),
        _laid_out([arrays[1] for arrays in prepared], mesh),
        sizes[:, 0].astype(np.int32),
        int(sizes[:, 0].sum()),
        int(sizes[:, 1].sum()),
    )
    return dataclasses.replace(config, target=target, features=features, task="regression"), split, rows


#: rows checked, drawn or standardised at a time: the temporaries stay small beside the block
CHUNK = 16384


def _chunks(rows: int):
    """(start, end) of each CHUNK of `rows` rows."""
    return ((start, min(start + CHUNK, rows)) for start in range(0, rows, CHUNK))


def _numbering(first: int, kept: np.ndarray | None) -> Callable[[np.ndarray], np.ndarray]:
    """`positions -> row numbers` in the file (from 0) of a block whose first row is row `first`, of which the rows
    `kept` (None: all) are left."""
    return lambda positions: first + (positions if kept is None else kept[positions])


def _kept(block: np.ndarray, names: list[str], first: int, source: str, missing: str) -> np.ndarray:
    """Which rows have every cell (`missing` "drop" keeps those); DataError for any empty cell under "error"."""
    keep = np.empty(len(block), bool)
    for start, end in _chunks(len(block)):
        keep[start:end] = ~np.isnan(block[start:end]).any(1)
    if missing == "error" and not keep.all():
        row = int(np.flatnonzero(~keep)[0])
        column = int(np.flatnonzero(np.isnan(block[row]))[0])
        raise data.DataError(
            f"{source}: column {names[column]!r}, row {first + row + 1}: the cell is empty or NaN; pass --missing drop "
            "to leave the rows with empty cells out"
        )
    return keep


def _check_cells(block: np.ndarray, names: list[str], number: Callable, source: str) -> None:
    """DataError naming the first cell that is not a number float32 holds (finite, |x| ≤ 3.4e38) by its row
    (`number`: positions → row numbers)."""
    for start, end in _chunks(len(block)):
        bad = np.argwhere(~(np.abs(block[start:end]) <= data.FLOAT32_MAX))
        if len(bad):
            row, column = bad[0]
            cell = block[start + row, column]
            what = "not a finite number" if np.isinf(cell) else f"beyond float32's range (±{data.FLOAT32_MAX:.3g})"
            raise data.DataError(
                f"{source}: column {names[column]!r}, row {number(start + row) + 1}: the cell holds {cell}, {what}"
            )


def _standardise_into(
    out: Sequence[np.ndarray], block: np.ndarray, which: np.ndarray, number: Callable, scaling, source: str
):
    """out = (x, y): the block's rows `which`, standardised by `scaling` (`Scaling.standardise`, `Scaling.target`),
    CHUNK rows at a time, into the first len(which) rows of x and y."""
    x, y = out
    for start, end in _chunks(len(which)):
        part = which[start:end]
        x[start:end] = scaling.standardise(block[part, :-1], source, number(part) + 1)
        y[start:end] = scaling.target(block[part, -1], source, number(part) + 1)


def _laid_out(blocks: list[np.ndarray], mesh: jax.sharding.Mesh) -> jax.Array:
    """This process's blocks (of one shape) as one array split over the mesh's axis: block d on its d-th device."""
    devices = list(mesh.devices.flat)
    pieces = [jax.device_put(block, devices[place]) for block, place in zip(blocks, mine(mesh))]
    shape = (len(devices) * len(blocks[0]), *blocks[0].shape[1:])
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

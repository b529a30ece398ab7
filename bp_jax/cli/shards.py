"""Each process reads only its rows (`bp-jax train --shard-data`): a .parquet or .csv table cut into one block of
rows per device of the data-parallel mesh, each process reading the blocks of its own devices, and everything the
run needs from the whole table (row numbers, held-out rows, classes, categories, fills, class counts,
standardisation, fingerprint) agreed by small all-gathers of per-block summaries.

    config, split, rows = load(config, mesh)    # split: this process's rows; rows: what `fit` reads
    result = fit(loss, params, rows.x, rows.y, mesh=mesh, shard_rows=rows.counts, batch_size=b, …)
    metrics = scores(model, split, rows)(params)  # over every process's rows

The definitions (docs/guides/devices.md), for D devices in mesh order and N rows numbered g = 0 … N − 1 in file
order; each agreed quantity is the one `data.load` finds in the whole table from the same training rows:

- Blocks (`row_group_blocks`, `byte_ranges`): a parquet file's row groups in D contiguous runs, block d ending at
  the row-group boundary nearest (d + 1)·N/D, each at least one group (fewer row groups than devices: refused); a
  CSV's bytes after its header in D equal ranges, a block holding the lines that begin in its range (a cell
  holding a line break: refused, `unbroken`). A block's first row number is the sum of the earlier blocks' row
  counts (gathered).
- Types and kinds (`read_block`, `agreed_types`, `agreed_kinds`): a column is read as numbers, or as cells coded
  by `pandas.factorize`; one read as text in any block is text in all (a CSV block reads it again as str, as
  pandas reads the whole file), and a text column's kind is `data.text_kind` of the blocks' summed counts (numbers,
  filled cells; dates where every block's are): mostly numbers are numbers, dates and free text are refused.
- Held out (`held_out`): row g iff splitmix64(g + (s + 1)·φ) < f·2⁶⁴ (s the split seed, f = 0.2, φ = 0x9E37…15):
  each row's own draw, so any layout, one process or many, holds out the same rows. With --early-stopping a
  training row is a validation row by the same draw with seed s + 2³² and f the --validation-fraction
  (`validation`); the validation rows are laid out over the devices as the training rows, padded with rows of
  weight 0, and scored in the loop by their `runs.Weighted` mean loss: a mean over every process's rows.
- Classes, categories, fills (`summary`, `agree`): each block gives its distinct class labels (`data._label`) and
  text cells with their training and held-out counts, summed over the blocks: the classes are the labels spelled
  as the whole column reads them (integers where every block's are) and sorted (`data.class_set`); a text
  feature's categories those of its training rows (`data.trained_categories`); under --missing impute a text
  feature's fill its most frequent training category (`data.most_frequent`), a numeric one's the mean
  Σ_d sum_d / Σ_d n_d of its filled training cells. Encoding is `data`'s: `data._category_index`, one-hot by
  `data._standardised_inputs`.
- Weights: a row's --sample-weight cell times, with --class-weight balanced, n / (k·n_c) for its class c from the
  summed class counts (`runs.balanced`).
- Standardisation (`combined`): each block's training rows give per numeric input (filled) and a regression target
  (n_d, mean_d, M2_d = Σ(v − mean_d)²), all-gathered and combined in block order: n = Σ n_d,
  mean = Σ n_d·mean_d / n, M2 = Σ M2_d + n_d·(mean_d − mean)², std = √(M2 / n) (1 where 0).
- Fingerprint (`row_sum`): sha256 of Σ_g h(g, row g's used cells) mod 2⁶⁴ (a number's float64 bits, a text's pandas
  hash; a sum of every block's sums) and the column names: the same for any layout, a parquet file or a CSV.
- Scope: minibatches, one model (no --ensemble); each block needs at least b/D training rows.
- Memory (`_rows_of`): a process whose blocks would not fit in its memory (`data.refuse_too_big`) is refused before
  it reads them.
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
from bp_jax.cli import data, distributed, runs
from bp_jax.cli._args import UsageError

#: the held-out share of the rows, as `data.load`'s test_fraction
TEST_FRACTION = 0.2
GOLDEN = 0x9E3779B97F4A7C15  # 2⁶⁴/φ: splitmix64's increment


class Rows(NamedTuple):
    """A sharded run's training rows as `fit` reads them: x and y (or {"target": y, "weight": w}) in D blocks along
    the "data" axis (block d on the mesh's d-th device, padded to the longest with copies of its first row, which
    are never drawn), each block's real rows (`fit`'s shard_rows), the training and held-out rows of all the blocks,
    for metrics.json the rows per class (`runs.class_counts`'s form) and the weights' record
    (`runs.weights_record`'s), each of every block; with --early-stopping the validation rows (x_val,
    {"target": y_val, "weight": 1, 0 for the padding}), laid out as x, and their number."""

    x: jax.Array
    y: jax.Array | dict
    counts: np.ndarray
    train: int
    held_out: int
    classes: dict | None = None
    weights: dict | None = None
    validation: tuple | None = None
    validation_rows: int = 0


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


def unbroken(text: bytes, source: str) -> None:
    """DataError where a quoted cell of a CSV block's `text` holds a line break: a newline with an odd count of
    `"` before it (a doubled quote inside a cell counts two), which cutting the bytes at line ends would split."""
    if b'"' not in text:
        return
    chars = np.frombuffer(text, np.uint8)
    newlines = np.flatnonzero(chars == ord("\n"))
    inside = np.searchsorted(np.flatnonzero(chars == ord('"')), newlines) % 2 == 1
    if inside.any():
        at = newlines[np.argmax(inside)]
        begun = text.rfind(b"\n", 0, at) + 1
        raise data.DataError(
            f"{source}: a quoted cell holds a line break (in the line {text[begun:at][:40].decode(errors='replace')!r}"
            "); --shard-data cuts a CSV at line ends: remove the line breaks, write the table as .parquet, or leave "
            "out --shard-data"
        )


def splitmix64(z: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser of z + GOLDEN (uint64, wrapping): a 64-bit hash of each value."""
    z = z.astype(np.uint64) + np.uint64(GOLDEN)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def held_out(rows: np.ndarray, seed: int, fraction: float = TEST_FRACTION) -> np.ndarray:
    """Whether each row number g is held out: splitmix64(g + (seed + 1)·GOLDEN) < fraction·2⁶⁴."""
    return splitmix64(rows.astype(np.uint64) + np.uint64(seed * GOLDEN % 2**64)) < np.uint64(int(fraction * 2.0**64))


def validation(rows: np.ndarray, seed: int, fraction: float) -> np.ndarray:
    """Whether each training row number g is a validation row (--early-stopping): `held_out`'s draw with the seed
    s + 2³², a stream of its own."""
    return held_out(rows, seed + 2**32, fraction)


def row_sum(columns: Sequence[np.ndarray], first: int) -> np.uint64:
    """Σ over the rows (mod 2⁶⁴) of h(g, cells), g = first, first + 1, … the rows' numbers: h = splitmix64 of g,
    then of h ⊕ each cell's 64 bits (`columns`: float64 numbers, their bits with every NaN one NaN, or uint64 bits
    as `cell_bits` gives a text's). Any cut of the table into blocks gives the same total of their sums: the data's
    fingerprint, whatever the layout."""
    total = np.zeros((), np.uint64)  # an array: its sums wrap silently, a numpy scalar's warn
    bits = lambda cells: np.where(np.isnan(cells), np.nan, cells).view(np.uint64) if cells.dtype.kind == "f" else cells
    for start, end in _chunks(len(columns[0])):
        h = splitmix64(np.arange(first + start, first + end, dtype=np.uint64))
        for column in columns:
            h = splitmix64(h ^ bits(column[start:end]))
        total += h.sum(dtype=np.uint64)
    return np.uint64(total)


def moments(columns: Sequence[np.ndarray], where: np.ndarray) -> np.ndarray:
    """(n, mean, M2 = Σ(v − mean)²) of each column's cells `where`, float64 of shape (3, columns); zeros for no
    rows."""
    result = np.zeros((3, len(columns)))
    result[0] = where.sum()
    for index, column in enumerate(columns) if where.any() else ():
        cells = column[where]
        result[1, index] = cells.mean()
        result[2, index] = np.square(cells - result[1, index]).sum()
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


def _gathered(mesh, source: str, compute: Callable[[], list]) -> list:
    """What `compute` gives in every process (a list of one JSON value per block of this process, in mesh order),
    gathered into the list of every block's value in mesh order (`distributed.gathered_json`); where any process's
    `compute` raised a UsageError, every process raises: that error where it was raised, a line naming the process
    elsewhere."""
    try:
        local, error = compute(), None
    except UsageError as err:
        local, error = None, err
    values = distributed.gathered_json(local)
    if error is not None:
        raise error
    failed = [process for process, value in enumerate(values) if value is None]
    if failed:
        raise data.DataError(f"{source}: process {failed[0]} cannot use its rows (its own message says why)")
    owners = [device.process_index for device in mesh.devices.flat]
    return [values[owner][owners[:place].count(owner)] for place, owner in enumerate(owners)]


def _columns(source: str, config: runs.Config) -> list[str]:
    """The features, then the target, then the --sample-weight column if any, from the header or schema alone."""
    import pandas as pd

    path = Path(source)
    if path.suffix.lower() == ".parquet":
        import pyarrow.parquet as pq

        names = list(pq.ParquetFile(path).schema_arrow.names)
    else:
        names = list(pd.read_csv(path, nrows=0).columns)
        if names and names[0].startswith("Unnamed: 0"):  # a row index, as `data.read` leaves it out
            names = names[1:]
    features, target = data._choose(names, source, config.target, config.features, config.sample_weight)
    return [*features, target, *([config.sample_weight] if config.sample_weight else [])]


class Coded(NamedTuple):
    """A column of cells that are not numbers, as `pandas.factorize` codes them: each cell's index in `distinct`
    (−1: empty), and the distinct cells (a feature's as text, `data._text`; a class target's as they are)."""

    codes: np.ndarray
    distinct: list


class Block(NamedTuple):
    """One block's used columns as read: `columns`, each a float64 array (empty cells NaN) or `Coded`; `types`,
    each column's type as read ("i", "f", "b": integers, floats or booleans, read as numbers; "t": anything else);
    `kinds`, each column's (numbers, filled cells, whether all are dates, the first filled cell as text): what
    `data.text_kind` decides by, summed over the blocks."""

    columns: dict
    types: dict
    kinds: dict


def read_block(source: str, part, used: Sequence[str], labels: str | None = None) -> Block:
    """The `used` columns of one block of `source` (`part`: its row groups, or a CSV's (header line, first byte,
    end byte)): a parquet file's row groups read one at a time (its numbers into one float64 array), or the lines
    of a CSV's byte range a chunk of rows at a time; `labels`: the column coded as it is (a class target)."""
    path = Path(source)
    if path.suffix.lower() != ".parquet":
        header, first, end = part
        text = lines_in(path, first, end, len(header))
        if not text:
            return Block({name: np.zeros(0) for name in used}, {}, {})
        unbroken(text, source)
        return _block(*_read_csv(header + text, used), labels)
    import pyarrow as pa
    import pyarrow.parquet as pq

    file = pq.ParquetFile(path)
    types = {name: _arrow_type(file.schema_arrow.field(name).type) for name in used}
    numeric = [name for name in used if types[name] != "t"]
    sizes = [file.metadata.row_group(group).num_rows for group in part]
    values = np.empty((sum(sizes), len(numeric)), order="F")  # a column's cells side by side
    chunks: dict = {name: [] for name in used if types[name] == "t"}
    for group, first in zip(part, np.cumsum([0, *sizes[:-1]]), strict=True):  # a row group at a time
        table = file.read_row_group(group, columns=list(used))
        for column, name in enumerate(numeric):
            values[first : first + table.num_rows, column] = table.column(name).cast(pa.float64()).to_numpy()
        for name, kept in chunks.items():
            kept.extend(table.column(name).chunks)
        del table
        pa.default_memory_pool().release_unused()  # the row group's buffers, which the pool would keep
    cells = {
        name: pa.chunked_array(kept, file.schema_arrow.field(name).type).to_pandas() for name, kept in chunks.items()
    }
    return _block({name: values[:, column] for column, name in enumerate(numeric)}, cells, types, labels)


def _arrow_type(kind) -> str:
    """A parquet column's type as `Block.types` names it."""
    import pyarrow as pa

    if pa.types.is_boolean(kind):
        return "b"
    return "i" if pa.types.is_integer(kind) else "f" if pa.types.is_floating(kind) else "t"


def _read_csv(text: bytes, used: Sequence[str]) -> tuple[dict, dict, dict]:
    """(numbers, cells, types) of a CSV's text (its header line first): a column read as numbers in every chunk of
    rows as float64, else as text (read again as str where some chunk read numbers)."""
    import pandas as pd

    numbers: dict = {name: [] for name in used}
    cells: dict = {name: [] for name in used}
    types: dict = {name: set() for name in used}
    for frame in pd.read_csv(io.BytesIO(text), usecols=list(used), chunksize=CHUNK):
        for name in used:
            column = frame[name]
            if data._typed_numeric(column):
                types[name].add("b" if pd.api.types.is_bool_dtype(column) else "f" if column.dtype.kind == "f" else "i")
                numbers[name].append(column.to_numpy(np.float64, na_value=np.nan))
            else:
                types[name].add("t")
                cells[name].append(column)
    merged = {name: _merged(kinds) for name, kinds in types.items()}
    text_columns = [name for name in used if merged[name] == "t"]
    mixed = [name for name in text_columns if numbers[name]]
    again = _csv_text(text, mixed) if mixed else {}
    return (
        {name: np.concatenate(numbers[name]) for name in used if merged[name] != "t"},
        {name: again[name] if name in again else pd.concat(cells[name]) for name in text_columns},
        merged,
    )


def _csv_text(text: bytes, names: Sequence[str]) -> dict:
    """The columns `names` of a CSV's text read as str (empty cells NaN)."""
    import pandas as pd

    frame = pd.read_csv(io.BytesIO(text), usecols=list(names), dtype=str)
    return {name: frame[name].reset_index(drop=True) for name in names}


def _merged(types) -> str:
    """One type for a column read as `types` in several parts: text where any part read text, the one type where
    all agree, else floats."""
    types = set(types)
    return "t" if "t" in types else types.pop() if len(types) == 1 else "f"


def _block(numbers: dict, cells: dict, types: dict, labels: str | None) -> Block:
    """A Block of the columns read as numbers and those read as cells (coded: a feature's as text)."""
    import pandas as pd

    kinds = {}
    for name, values in numbers.items():
        filled = int((~np.isnan(values)).sum())
        kinds[name] = (filled, filled, False, "")
        if types[name] == "i" and filled < len(values):  # an integer column with gaps reads as floats
            types = {**types, name: "f"}
    for name, column in cells.items():
        filled = column.dropna()
        example = str(filled.iloc[0]) if len(filled) else ""
        if pd.api.types.is_datetime64_any_dtype(column) or isinstance(column.dtype, pd.PeriodDtype):
            kinds[name] = (0, len(filled), True, example)
        else:
            kinds[name] = (*data.text_counts(filled), example)
    coded = {}
    for name, column in cells.items():
        codes, distinct = pd.factorize(column if name == labels else data._text(column))
        coded[name] = Coded(np.asarray(codes, np.int64), list(distinct))
    return Block({**numbers, **coded}, types, kinds)


def agreed_types(types: Sequence[dict]) -> dict:
    """Each column's type over the blocks' `types` (an empty block has none): `_merged`."""
    seen: dict = {}
    for block in types:
        for name, kind in block.items():
            seen.setdefault(name, set()).add(kind)
    return {name: _merged(kinds) for name, kinds in seen.items()}


def agreed_kinds(kinds: Sequence[dict]) -> dict:
    """Each column's (kind, filled cells, first filled cell) over the blocks' `kinds`: `data.text_kind` of the
    summed counts."""
    names = {name for block in kinds for name in block}
    result = {}
    for name in names:
        parts = [block[name] for block in kinds if name in block]
        numbers, cells = sum(part[0] for part in parts), sum(part[1] for part in parts)
        example = next((part[3] for part in parts if part[3]), "")
        result[name] = (data.text_kind(numbers, cells, all(part[2] for part in parts)), cells, example)
    return result


def _task(task: str, kind: str, kind_of_cells: str) -> str:
    """The task of a target read as `kind` ("t": cells of the kind `kind_of_cells`): as given, or under auto
    classification for booleans or text, as `data._task` decides."""
    if task != "auto":
        return task
    return "classification" if kind == "b" or (kind == "t" and kind_of_cells == "text") else "regression"


def as_used(block: Block, agreed: dict, kinds: dict, text, rows: np.ndarray, source: str, classes: str | None,
            numeric: Sequence[str] = ()):  # fmt: skip
    """The block with each column as the run reads it: text read again where another block read text (`text(names)`:
    the block's columns `names` as str), a column of text whose cells are mostly numbers, or one of `numeric` (a
    regression target, the weights), as float64 (DataError naming a cell that is not a number, by its row: `rows`,
    the block's row numbers), and the `classes` column coded whatever its type."""
    import pandas as pd

    again = [name for name, kind in agreed.items() if kind == "t" and block.types.get(name, "t") != "t"]
    columns = dict(block.columns)
    if again and len(rows):
        read = text(again)
        columns.update({name: _block({}, {name: read[name]}, {}, classes).columns[name] for name in again})
    for name, column in columns.items():
        if isinstance(column, Coded) and name != classes and (kinds[name][0] == "numeric" or name in numeric):
            distinct = pd.Series(column.distinct, dtype=object)
            numbers = pd.to_numeric(distinct, errors="coerce").to_numpy(np.float64, na_value=np.nan)
            columns[name] = np.append(numbers, np.nan)[column.codes]  # an empty cell (−1): the NaN after them
            bad = np.flatnonzero(np.isnan(columns[name]) & (column.codes >= 0))
            if len(bad):  # data._numbers' own words for its first cell
                data._numbers(pd.Series([distinct[column.codes[bad[0]]]], index=[rows[bad[0]]]), name, source)
        elif name == classes and not isinstance(column, Coded):
            codes, distinct = pd.factorize(column)
            columns[name] = Coded(np.asarray(codes, np.int64), list(distinct))
    return block._replace(columns=columns)


def integral_classes(kind: str, source: str, text: Callable) -> bool:
    """Whether a block's classes of the type `kind` are integers: read as integers, or a CSV's read as floats (for
    empty cells) and written as integers (`text()`: the block's class column as str), as `data.load` reads the
    whole file."""
    if kind == "f" and Path(source).suffix.lower() == ".csv":
        return data.written_as_integers(text())
    return kind == "i"


def _empty(column) -> np.ndarray:
    return column.codes < 0 if isinstance(column, Coded) else np.isnan(column)


def kept(block: Block, names: Sequence[str], first: int, source: str, missing: str) -> np.ndarray:
    """Which rows to use: those with every cell of `names` (the features and the target) under "drop", those with
    a target under "impute"; DataError for the first empty cell (by row, then column) under "error"."""
    target = _empty(block.columns[names[-1]])
    if missing == "impute":
        return ~target
    empty = target.copy()
    for name in names[:-1]:
        empty |= _empty(block.columns[name])
    if missing == "error" and empty.any():
        row = int(np.flatnonzero(empty)[0])
        column = next(name for name in names if _empty(block.columns[name])[row])
        raise data.DataError(
            f"{source}: column {column!r}, row {first + row + 1}: the cell is empty or NaN; pass --missing drop "
            "to leave the rows with empty cells out"
        )
    return ~empty


def only(block: Block, keep: np.ndarray) -> Block:
    """The block's rows `keep` (positions)."""
    pick = lambda column: Coded(column.codes[keep], column.distinct) if isinstance(column, Coded) else column[keep]
    return block._replace(columns={name: pick(column) for name, column in block.columns.items()})


def cell_bits(column) -> np.ndarray:
    """A column for `row_sum`: numbers as they are, text as each cell's pandas hash (an empty cell NaN's bits)."""
    import pandas as pd

    if not isinstance(column, Coded):
        return column
    hashes = pd.util.hash_array(np.asarray([str(cell) for cell in column.distinct], dtype=object))
    return np.append(hashes, np.asarray(np.nan).view(np.uint64))[column.codes]  # an empty cell (−1): NaN's bits


def summary(block: Block, test: np.ndarray, features: Sequence[str], target: str, weight: str | None, *,
            classify: bool, fill: bool, validation: np.ndarray | None = None) -> dict:  # fmt: skip
    """What the run agrees from a block of the rows it uses (`test`: which are held out): each text feature's
    distinct cells (None past MAX_CATEGORIES: free text) and their training and held-out counts, the class labels
    (`data._label`; None past MAX_CLASSES) and theirs (the training rows less the `validation` rows, as
    `runs.validation_split` leaves them), with `fill` each numeric feature's training (sum, count) of filled
    cells, and the training rows' weight."""
    train = ~test
    counted = lambda codes, width: [np.bincount(codes[part & (codes >= 0)], minlength=width) for part in (train, test)]
    result: dict = {"text": {}, "sums": {}, "labels": None, "weight": 0.0}
    for name in features:
        column = block.columns[name]
        if isinstance(column, Coded):
            width = len(column.distinct)
            parts = counted(column.codes, width) if width <= data.MAX_CATEGORIES else [np.zeros(0, np.int64)] * 2
            listed = [str(cell) for cell in column.distinct] if width <= data.MAX_CATEGORIES else None
            result["text"][name] = {"distinct": listed, "train": parts[0], "held": parts[1]}
        elif fill:
            filled = column[train & ~np.isnan(column)]
            result["sums"][name] = [float(filled.sum()), len(filled)]
    if classify:
        labels = block.columns[target]
        width = len(labels.distinct)
        if width <= data.MAX_CLASSES:
            train_counts, held_counts = counted(labels.codes, width)
            if validation is not None:
                train_counts -= np.bincount(labels.codes[validation], minlength=width)
            spelled = [data._label(label) for label in labels.distinct]
            result["labels"] = {"distinct": spelled, "train": train_counts, "held": held_counts}
    if weight is not None:
        result["weight"] = float(block.columns[weight][train].sum())
    return result


class Agreed(NamedTuple):
    """What every process takes from the blocks' summaries: the Scaling without its statistics (task, classes,
    categories, fills), the rows per class (training, held out; None for a regression) and notes."""

    scaling: data.Scaling
    class_counts: np.ndarray | None
    notes: tuple[str, ...]


def agree(summaries: Sequence[dict], kinds: dict, types: dict, *, source: str, features: tuple[str, ...],
          target: str, task: str, missing: str) -> Agreed:  # fmt: skip
    """The blocks' `summary`s combined, in block order: a text feature's categories are its distinct cells in the
    training rows, sorted (`data.trained_categories`); with --missing impute a text feature's fill is its most
    frequent training category (`data.most_frequent`), a numeric one's the mean Σ sums / Σ counts of its filled
    training cells; the classes are the distinct labels spelled as the whole column reads them (integers where every
    block's are, `data.class_set`). DataError for dates, free text (`data.free_text`), a feature without a
    training value to impute from, or too few or many classes."""
    unusable, categories, notes = {}, {}, []
    fill: dict[str, float | str] = {}
    for name in features:
        kind, cells, example = kinds[name]
        if types[name] == "t" and kind == "date":
            unusable[name] = f"dates or times (such as {example!r})"
        if types[name] != "t" or kind != "text":
            continue
        parts = [each["text"][name] for each in summaries if name in each["text"]]
        if any(part["distinct"] is None for part in parts):
            unusable[name] = f"free text (over {data.MAX_CATEGORIES} distinct values in {cells} cells)"
            continue
        distinct, train, held = _union(parts)
        if data.free_text(len(distinct), cells):
            unusable[name] = f"free text ({len(distinct)} distinct values in {cells} cells)"
        categories[name] = data.trained_categories(distinct, train)
        notes += data.unseen_note(source, name, distinct, train, held)
        if missing == "impute":
            fill[name], count = data.most_frequent(distinct, train)
            if not count:
                raise data.DataError(f"{source}: column {name!r} has no value in the training rows to impute from")
    data.refuse_unusable(source, features, unusable)
    for name in features if missing == "impute" else ():
        if name not in categories:
            total, count = np.sum([each["sums"][name] for each in summaries], axis=0)
            if not count:
                raise data.DataError(f"{source}: column {name!r} has no value in the training rows to impute from")
            fill[name] = float(total / count)
    scaling = data.Scaling(features, target, (), (), 0.0, 1.0, task)
    scaling = scaling._replace(categories=MappingProxyType(categories), fill=MappingProxyType(fill))
    if task != "classification":
        return Agreed(scaling, None, tuple(notes))
    parts = [each["labels"] for each in summaries]
    if any(part is None for part in parts):
        raise data.DataError(
            f"{source}: the target {target!r} has over {data.MAX_CLASSES} distinct values; classification needs "
            f"between 2 and {data.MAX_CLASSES}; use --task regression"
        )
    distinct, train, held = _union(parts)
    integers = types[target] == "i" or (types[target] == "f" and all(each.get("integral") for each in summaries))
    spell = bool if types[target] == "b" else int if integers else float if types[target] == "f" else data._label
    spelled = [spell(label) for label in distinct]
    classes = data.class_set(spelled, source, target)
    position = [classes.index(label) for label in spelled]
    counts = np.zeros((2, len(classes)), np.int64)
    np.add.at(counts, (0, position), train)
    np.add.at(counts, (1, position), held)
    return Agreed(scaling._replace(classes=classes), counts, tuple(notes))


def _union(parts: Sequence[dict]) -> tuple[list, np.ndarray, np.ndarray]:
    """(the distinct values of all the parts in order of first appearance, their summed training and held-out
    counts)."""
    distinct: dict = {}
    for part in parts:
        for value in part["distinct"]:
            distinct.setdefault((type(value), value), len(distinct))
    train, held = np.zeros(len(distinct), np.int64), np.zeros(len(distinct), np.int64)
    for part in parts:
        where = [distinct[(type(value), value)] for value in part["distinct"]]
        np.add.at(train, where, np.asarray(part["train"], np.int64))
        np.add.at(held, where, np.asarray(part["held"], np.int64))
    return [value for _, value in distinct], train, held


def encoded(block: Block, scaling: data.Scaling) -> dict:
    """Each feature's values as `data._standardised_inputs` reads them: a numeric one's float64 cells (empty ones
    filled), a text one's category index (`data._category_index`: −1 for none, an empty cell its fill's)."""
    import pandas as pd

    values = {}
    for name in scaling.feature_names:
        column = block.columns[name]
        if not isinstance(column, Coded):
            if name in scaling.fill:  # in place: the block's own column
                column[np.isnan(column)] = scaling.fill[name]
            values[name] = column
            continue
        known = scaling.categories[name]
        text = pd.Series(column.distinct, dtype="str")
        lookup = data._category_index(text, known) if len(text) else np.zeros(0, np.int64)
        empty = known.index(scaling.fill[name]) if name in scaling.fill else -1
        values[name] = np.append(lookup, empty)[column.codes]  # an empty cell (−1): its fill's, or none
    return values


class Columns(NamedTuple):
    """The roles of the used columns: the features, the target, the --sample-weight column (or None), and whether
    the target's values are classes."""

    features: tuple[str, ...]
    target: str
    weight: str | None
    classify: bool


def load(config: runs.Config, mesh: jax.sharding.Mesh, given=None) -> tuple[runs.Config, data.Split, Rows]:
    """(config with its target, features and task resolved (`runs.resolved`, `given`: a new run's command-line
    names); this process's rows as a `data.Split`, encoded and standardised with what every block's training rows
    give; the training rows laid out for `fit`), reading only the blocks of this process's devices, in four
    all-gathers: the blocks' rows, types and kinds; their `summary`s (agreed by `agree`); the numeric inputs'
    `moments`; the weights' sums (and every block's go-ahead). The module docstring has the definitions."""
    source = config.dataset
    check(config, source)
    batch, seed = config.batch_size, config.split_seed
    assert batch is not None and seed is not None  # `check`, Config.__post_init__
    devices, places = mesh.devices.size, mine(mesh)
    used: list[str] = []  # the features, the target, the weight column
    blocks: list = []  # this process's blocks; None once standardised
    plan: list = []

    def read() -> list:  # a file this host cannot read stops every process, not only this one
        try:
            used.extend(_columns(source, config))
            plan.extend(_blocks(source, devices))
            data.refuse_too_big(
                source, _rows_of(source, [plan[place] for place in places]), len(used),
                what="this process's blocks are", advice="more processes (--num-processes)",
            )  # fmt: skip
            target = used[len(used) - 1 - bool(config.sample_weight)]
            blocks.extend(read_block(source, plan[place], used, target) for place in places)
        except UsageError:
            raise
        except (OSError, ValueError) as err:  # missing, unreadable, not parquet or CSV, unparsable
            raise data.DataError(f"{source}: cannot be read: {str(err).strip().splitlines()[0]}") from None
        return [{"rows": len(block.columns[used[0]]), "types": block.types, "kinds": block.kinds} for block in blocks]

    read_ = _gathered(mesh, source, read)
    weight = config.sample_weight
    features, target = tuple(used[: len(used) - 1 - bool(weight)]), used[len(used) - 1 - bool(weight)]
    counts = np.asarray([each["rows"] for each in read_], np.int64)
    firsts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    types = agreed_types([each["types"] for each in read_])
    kinds = agreed_kinds([each["kinds"] for each in read_])
    task = _task(config.task, types[target], kinds[target][0])
    roles = Columns(features, target, weight, task == "classification")
    if config.class_weight is not None and not roles.classify:
        runs.resolved(config, data.Scaling(features, target, (), (), 0.0, 1.0, task))  # its UsageError
    numbered: list = []  # each block's (row numbers of its positions, held out, validation rows)
    numbers = [target] * (not roles.classify) + ([weight] if weight else [])  # read as numbers whatever their kind

    def summarise() -> list:
        results = []
        for index, place in enumerate(places):
            text = lambda names, place=place: _csv_text(_text_of(source, plan[place]), names)
            rows = firsts[place] + np.arange(counts[place])
            block = as_used(
                blocks[index], types, kinds, text, rows, source, target if roles.classify else None, numbers
            )
            blocks[index], number, test, val, result = _summarised(block, int(firsts[place]), used, roles, config)
            integral = roles.classify and integral_classes(
                types[target], source, lambda text=text: text([target])[target]
            )
            numbered.append((number, test, val))
            results.append({**result, "integral": integral})
        return results

    summaries = _gathered(mesh, source, summarise)
    agreed = agree(summaries, kinds, types, source=source, features=features, target=target, task=task,
                   missing=config.missing)  # fmt: skip
    sizes = np.asarray([each["sizes"] for each in summaries], np.int64)
    _check_sizes(sizes, summaries, batch, devices, source, config)
    digest = np.sum(np.asarray([each["digest"] for each in summaries], np.uint64), dtype=np.uint64)
    fingerprint = hashlib.sha256(digest.tobytes() + repr((features, target, "shards")).encode())
    numeric = [name for name in features if name not in agreed.scaling.categories]
    values: list = []  # each block's features as `data._standardised_inputs` reads them

    def measure() -> list:
        stats = []
        for index, (number, test, _) in enumerate(numbered):
            values.append(encoded(blocks[index], agreed.scaling))
            stats.append(_measured(blocks[index], values[index], numeric, roles, number, test, source))
        return stats

    scaling = _standardising(agreed.scaling, numeric, np.asarray(_gathered(mesh, source, measure)), roles.classify)
    counted = agreed.class_counts
    class_weights = None if config.class_weight is None or counted is None else runs.balanced(counted[0])
    lengths = (int(sizes[:, 0].max()), int(sizes[:, 4].max()))  # the training and validation rows of a block
    trained = [int((~test & ~val).sum()) for _, test, val in numbered]
    prepared: list = []  # each block's `Prepared`

    def standardise() -> list:  # a value float32 cannot hold: refused in every process
        for index, (number, test, val) in enumerate(numbered):
            prepared.append(_standardised(blocks[index], values[index], scaling, roles, class_weights, number,
                                          (test, val), lengths, source))  # fmt: skip
            blocks[index] = values[index] = None
        return [
            0.0 if part.w is None else float(part.w[:n].sum(dtype=np.float64)) for part, n in zip(prepared, trained)
        ]

    weight_sums = _gathered(mesh, source, standardise)
    no_target, empty_feature = int(sizes[:, 2].sum()), int(sizes[:, 3].sum())
    notes = (
        *agreed.notes,
        *(f"{source}: left out {no_target} row(s) without a target ({target!r})",) * bool(no_target),
        *(f"{source}: left out {empty_feature} row(s) with an empty feature cell (--missing drop)",)
        * bool(empty_feature),
    )  # as data.load's
    print(*(f"bp-jax: note: {note}\n" for note in notes), sep="", end="", file=sys.stderr)
    joined = lambda parts: parts[0] if len(parts) == 1 else np.concatenate(parts)  # one block: no copy
    split = data.Split(
        joined([part.x[:n] for part, n in zip(prepared, trained, strict=True)]),
        joined([part.y[:n] for part, n in zip(prepared, trained, strict=True)]),
        joined([part.x_test for part in prepared]),
        joined([part.y_test for part in prepared]),
        scaling,
        fingerprint.hexdigest(),
        notes,
        MappingProxyType({"no_target": no_target, "empty_feature": empty_feature}),
        None if weight is None else joined([part.sample for part in prepared]),
    )
    laid_out = lambda name: _laid_out([getattr(part, name) for part in prepared], mesh)
    weighed = prepared[0].w is not None
    validating = lambda: (laid_out("x_val"), {"target": laid_out("y_val"), "weight": laid_out("mask")})
    rows = Rows(
        laid_out("x"),
        {"target": laid_out("y"), "weight": laid_out("w")} if weighed else laid_out("y"),
        sizes[:, 0].astype(np.int32),
        int(sizes[:, 0].sum()),
        int(sizes[:, 1].sum()),
        None if counted is None else _class_record(scaling.classes, counted),
        None if not weighed else _weights_record(scaling.classes, class_weights, weight, sum(weight_sums)),
        validating() if config.early_stopping else None,
        int(sizes[:, 4].sum()),
    )
    config = dataclasses.replace(config, target=target, features=features)
    return runs.resolved(config, scaling, given), split, rows


def _summarised(block: Block, first: int, used: Sequence[str], roles: Columns, config: runs.Config):
    """(the block's rows to use, `positions -> row numbers`, which are held out, which are validation rows, its
    `summary` with its fingerprint's part and sizes (training rows less validation rows, held out, left out without
    a target, left out for an empty feature cell, validation rows)): the rows `kept`, weights checked
    (`data._row_weights`)."""
    import pandas as pd

    features, target, weight, classify = roles
    digest = row_sum([cell_bits(block.columns[name]) for name in used], first)
    no_target = int(_empty(block.columns[target]).sum())
    keep = kept(block, [*features, target], first, config.dataset, config.missing)
    chosen = None if keep.all() else np.flatnonzero(keep)
    block = block if chosen is None else only(block, chosen)
    number = _numbering(first, chosen)
    test = np.zeros(len(keep) if chosen is None else len(chosen), bool)
    for start, end in _chunks(len(test)):
        test[start:end] = held_out(number(np.arange(start, end)), config.split_seed or 0)
    val = np.zeros(len(test), bool)
    for start, end in _chunks(len(test)) if config.early_stopping else ():
        drawn = validation(number(np.arange(start, end)), config.split_seed or 0, config.validation_fraction)
        val[start:end] = drawn & ~test[start:end]
    if weight is not None:  # data._row_weights' refusals, by row
        cells = pd.Series(block.columns[weight], index=number(np.arange(len(test))))
        block.columns[weight] = data._row_weights(cells, config.dataset, weight)
    result = summary(block, test, features, target, weight, classify=classify, fill=config.missing == "impute",
                     validation=val)  # fmt: skip
    sizes = [int((~test & ~val).sum()), int(test.sum()), no_target, len(keep) - len(test) - no_target, int(val.sum())]
    return block, number, test, val, {**result, "digest": int(digest), "sizes": sizes}


def _check_sizes(sizes: np.ndarray, summaries: Sequence[dict], batch: int, devices: int, source: str,
                 config: runs.Config) -> None:  # fmt: skip
    """UsageError for a block of fewer training rows than a device's share of the batch, or validation rows
    fewer than a batch; DataError for no held-out row, or weights of 0 in every training row."""
    weight, early_stopping, fraction = config.sample_weight, config.early_stopping, config.validation_fraction
    if sizes[:, 0].min() < batch // devices:
        raise UsageError(
            f"{source}: block {int(sizes[:, 0].argmin())} of {devices} holds {sizes[:, 0].min()} training rows, fewer "
            f"than a device's share of the batch ({batch} / {devices}); use a smaller --batch-size"
        )
    if sizes[:, 1].sum() == 0:
        raise data.DataError(f"{source}: no row is held out ({int(sizes[:, 0].sum())} rows); need at least one")
    if early_stopping and sizes[:, 4].sum() < batch:
        raise UsageError(
            f"--validation-fraction {fraction} leaves {int(sizes[:, 4].sum())} validation rows of "
            f"{int(sizes[:, [0, 4]].sum())}; they need at least a batch ({batch} rows): change the fraction or "
            f"--batch-size"
        )
    if weight is not None and not sum(each["weight"] for each in summaries) > 0:
        raise data.DataError(
            f"{source}: column {weight!r} weighs 0 in every training row; --sample-weight needs a weight > 0"
        )


def _measured(block: Block, values: dict, numeric: Sequence[str], roles: Columns, number, test, source: str):
    """The `moments` of the block's numeric features (filled) and a regression's target over its training rows;
    DataError for a cell float32 cannot hold or an infinite class."""
    columns = [values[name] for name in numeric] + [block.columns[roles.target]] * (not roles.classify)
    _check_cells(columns, [*numeric, *[roles.target] * (not roles.classify)], number, source)
    labels = block.columns[roles.target]
    infinite = [code for code, label in enumerate(labels.distinct) if _infinite(label)] if roles.classify else []
    if infinite:
        row = int(np.flatnonzero(np.isin(labels.codes, infinite))[0])
        raise data.not_a_class(source, roles.target, int(number(row)), labels.distinct[labels.codes[row]])
    return moments(columns, ~test)


def _standardising(scaling: data.Scaling, numeric: Sequence[str], blocks: np.ndarray, classify: bool) -> data.Scaling:
    """`scaling` with the `combined` statistics of the blocks' `moments`: the numeric inputs' and a regression
    target's (a one-hot input: mean 0, deviation 1)."""
    mean, std = combined(blocks)
    inputs = scaling.feature_inputs
    x_mean, x_std = [0.0] * len(scaling.input_names), [1.0] * len(scaling.input_names)
    for column, name in enumerate(numeric):
        x_mean[inputs[name][0]], x_std[inputs[name][0]] = float(mean[column]), float(std[column])
    scaling = scaling._replace(x_mean=tuple(x_mean), x_std=tuple(x_std))
    return scaling if classify else scaling._replace(y_mean=float(mean[-1]), y_std=float(std[-1]))


class Prepared(NamedTuple):
    """A block's model rows: its training rows' x, y and weights (None without) padded to the longest block's
    (with copies of its first row, never drawn), its held-out rows' x and y, its training rows' sample weights
    (None without), and its validation rows' x, y and mask (1; 0 for the padding to the longest block's)."""

    x: np.ndarray
    y: np.ndarray
    w: np.ndarray | None
    x_test: np.ndarray
    y_test: np.ndarray
    sample: np.ndarray | None
    x_val: np.ndarray
    y_val: np.ndarray
    mask: np.ndarray


def _standardised(block: Block, values: dict, scaling: data.Scaling, roles: Columns, class_weights, number, parts,
                  lengths: tuple[int, int], source: str) -> Prepared:  # fmt: skip
    """The block's `Prepared` rows (`parts`: which are held out, which are validation rows; `lengths`: the
    training and validation rows to pad to): x by `data._standardised_inputs`, y by `Scaling.target`, weights the
    --sample-weight cell times the class's `runs.balanced` weight (float32)."""
    test, val = parts
    train, held, validating = np.flatnonzero(~test & ~val), np.flatnonzero(test), np.flatnonzero(val)
    pad = lambda rows, length: np.concatenate([rows, np.zeros(length - len(rows), np.int64)])
    padded, padded_val = pad(train, lengths[0]), pad(validating, lengths[1])
    inputs = scaling.feature_inputs
    columns = ((name, values[name], inputs[name][1]) for name in scaling.feature_names)
    statistics = lambda name, _: (scaling.x_mean[inputs[name][0]], scaling.x_std[inputs[name][0]])
    rows = number(np.arange(len(test)))
    width = len(scaling.x_mean)
    x = data._standardised_inputs(columns, statistics, width, (padded, held, padded_val), len(test), source, rows)
    labels = block.columns[roles.target]
    if roles.classify:
        y = scaling.target(np.asarray(labels.distinct, dtype=object), source)[labels.codes]
    else:
        y = scaling.target(labels, source, rows)
    sample = None if roles.weight is None else block.columns[roles.weight]
    weights = None
    if sample is not None or class_weights is not None:
        weights = np.ones(len(test)) if sample is None else sample
        weights = (weights if class_weights is None else weights * class_weights[y]).astype(np.float32)[padded]
    mask = (np.arange(lengths[1]) < len(validating)).astype(np.float32)
    trained = None if sample is None else sample[train]
    return Prepared(x[0], y[padded], weights, x[1], y[held], trained, x[2], y[padded_val], mask)


def _weights_record(classes: tuple, class_weights, weight: str | None, total: float) -> dict:
    """metrics.json's account of the weights, as `runs.weights_record`'s, of every block's training rows."""
    by_class = None if class_weights is None else dict(zip(map(str, classes), class_weights.tolist(), strict=True))
    return {"class_weight": by_class, "sample_weight": weight, "train_sum": float(total)}


def _class_record(classes: tuple, counts: np.ndarray) -> dict:
    """Rows per class, training and held out, keyed by the class as text (as `runs.class_counts`)."""
    return {
        part: dict(zip(map(str, classes), row.tolist(), strict=True))
        for part, row in zip(("train", "held_out"), counts, strict=True)
    }


def _infinite(label) -> bool:
    return isinstance(label, float | np.floating) and bool(np.isinf(label))


def _text_of(source: str, part) -> bytes:
    """A CSV block's text, its header line first."""
    header, first, end = part
    return header + lines_in(Path(source), first, end, len(header))


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


def _rows_of(source: str, parts: Sequence) -> int:
    """The rows of these blocks: their row groups' as the parquet file records them, or a CSV's rows estimated by
    the blocks' share of its bytes after the header (`data.estimated_rows`)."""
    path = Path(source)
    if path.suffix.lower() == ".parquet":
        import pyarrow.parquet as pq

        metadata = pq.ParquetFile(path).metadata
        return sum(metadata.row_group(group).num_rows for part in parts for group in part)
    body = path.stat().st_size - len(parts[0][0]) if parts else 0
    return round(data.estimated_rows(path) * sum(end - first for _, first, end in parts) / max(body, 1))


def check(config: runs.Config, source: str) -> None:
    """UsageError for what a sharded run does not do (yet): a built-in data set or an .npz, the full batch, an
    ensemble."""
    refused = {
        "a .parquet or .csv file (--data)": not data.is_file(source) or Path(source).suffix.lower() == ".npz",
        "minibatches (a --batch-size)": config.batch_size is None,
        "one model (no --ensemble)": config.ensemble > 1,
    }
    wanted = [what for what, bad in refused.items() if bad]
    if wanted:
        raise UsageError(f"--shard-data trains on {', '.join(wanted)}")


#: rows checked, drawn or standardised at a time: the temporaries stay small beside the block
CHUNK = 16384


def _chunks(rows: int):
    """(start, end) of each CHUNK of `rows` rows."""
    return ((start, min(start + CHUNK, rows)) for start in range(0, rows, CHUNK))


def _numbering(first: int, kept: np.ndarray | None) -> Callable[[np.ndarray], np.ndarray]:
    """`positions -> row numbers` in the file (from 0) of a block whose first row is row `first`, of which the rows
    `kept` (None: all) are left."""
    return lambda positions: first + (positions if kept is None else kept[positions])


def _check_cells(columns: Sequence[np.ndarray], names: Sequence[str], number: Callable, source: str) -> None:
    """DataError naming the first cell (by row, then column) that is not a number float32 holds (finite,
    |x| ≤ 3.4e38) by its row (`number`: positions → row numbers)."""
    rows = len(columns[0]) if len(columns) else 0
    for start, end in _chunks(rows):
        bad = np.argwhere(~(np.abs(np.stack([column[start:end] for column in columns], 1)) <= data.FLOAT32_MAX))
        if len(bad):
            row, column = bad[0]
            cell = columns[column][start + row]
            what = "not a finite number" if np.isinf(cell) else f"beyond float32's range (±{data.FLOAT32_MAX:.3g})"
            raise data.DataError(
                f"{source}: column {names[column]!r}, row {number(start + row) + 1}: the cell holds {cell}, {what}"
            )


def _laid_out(blocks: list[np.ndarray], mesh: jax.sharding.Mesh) -> jax.Array:
    """This process's blocks (of one shape) as one array split over the mesh's axis: block d on its d-th device."""
    devices = list(mesh.devices.flat)
    pieces = [jax.device_put(block, devices[place]) for block, place in zip(blocks, mine(mesh), strict=True)]
    shape = (len(devices) * len(blocks[0]), *blocks[0].shape[1:])
    return jax.make_array_from_single_device_arrays(
        shape, NamedSharding(mesh, PartitionSpec(mesh.axis_names[0])), pieces
    )


def scores(model: bp_jax.Model, split: data.Split, rows: Rows) -> Callable:
    """`params -> metrics` over every process's rows, from per-process sums gathered in one all-gather: a
    regression's train_mse, held_out_mse and baseline_held_out_mse (the held-out MSE of the training rows' mean
    target, ȳ = Σy/n: Σ(y − ȳ)² = Σy² − 2ȳΣy + n·ȳ²); a classification's train_ and held_out_accuracy and log loss
    (`runs.scores`' metrics, each a mean over the rows: Σ over processes of mean × rows, / rows) and
    baseline_held_out_accuracy (the held-out share of the training rows' most frequent class)."""
    measured = runs.scores(model, split)
    classify = split.scaling.task == "classification"
    names = [
        f"{part}_{metric}"
        for part in ("train", "held_out")
        for metric in (("accuracy", "log_loss") if classify else ("mse",))
    ]
    local_rows = {"train": len(split.y_train), "held_out": len(split.y_test)}
    total_rows = {"train": rows.train, "held_out": rows.held_out}
    part = lambda name: "train" if name.startswith("train") else "held_out"

    def on_host(params) -> dict:
        local = measured(params) if len(split.y_test) else dict.fromkeys(names, 0.0)
        y, y_train = split.y_test.astype(np.float64), split.y_train.astype(np.float64)
        sums = [float(local[name]) * local_rows[part(name)] for name in names]
        sums += [] if classify else [y_train.sum(), y.sum(), (y**2).sum()]
        with jax.enable_x64(True):
            gathered = np.asarray(multihost_utils.process_allgather(np.asarray(sums))).reshape(-1, len(sums)).sum(0)
        metrics = {name: value / total_rows[part(name)] for name, value in zip(names, gathered, strict=False)}
        if classify:
            assert rows.classes is not None  # a classification's `load`
            train, held = (np.asarray(list(rows.classes[part].values())) for part in ("train", "held_out"))
            return {**metrics, "baseline_held_out_accuracy": held[train.argmax()] / rows.held_out}
        train_y, test_y, test_y2 = gathered[len(names) :]
        mean = train_y / rows.train
        baseline = (test_y2 - 2 * mean * test_y + rows.held_out * mean**2) / rows.held_out
        return {**metrics, "baseline_held_out_mse": baseline}

    return on_host

"""Tables for the `bp-jax` command: one loader for the built-in data sets and the user's files.

    frame = read("diabetes" | "synthetic" | "path/to/file.csv" | ".parquet" | ".npz")   # a DataFrame
    names = column_names(source)                   # from the header or schema alone
    frame = read(source, columns=("a", "y"))       # only those: parquet's projection, a CSV's usecols
    split = load(source, target=None, features=None, split_seed=0, task="auto", missing="error")
    x = split.scaling.features(frame, source)      # new rows, encoded and standardised as the training rows were
    y = split.scaling.target_units(predictions)    # a regression's predictions back in the target's own units

The target is the last column unless named; the features are the other columns unless named (names match
exactly, spaces included). A CSV's header names each column once; a first column unnamed in the header (the row
index pandas writes) is left out, and `read` says so in `frame.attrs["notes"]` (`load` in `Split.notes`), for the
command to print. The task (`auto`): a text or boolean target is classification (its classes as the data spells
them), a numeric one regression. A numeric feature is standardised with the training split's mean and standard
deviation (a constant column's deviation counts as 1, so it standardises to 0, not NaN); a text feature is
one-hot, one input per category of the training split; dates and free text (many distinct values) are refused,
naming the `--features` that leaves them out. Empty cells: `missing="error"` refuses them, naming the columns and
counts; "drop" leaves out their rows; "impute" gives every feature a fill, the training split's mean or most
frequent category, used wherever a cell is empty (in training, predict and the exports alike); a row without a
target is never used. A column of row weights (`sample_weight`) is no feature: each used cell a number ≥ 0, the
training rows' not all 0. Every used numeric cell must be a number float32 holds (finite, |x| ≤ 3.4e38), and so must
its standardised value: anything else is a DataError naming the file, the column and the row (from 1, after the
header).

Loading reads only the used columns, refuses a table too big for the memory available before reading it
(`refuse_too_big`), and checks and converts each column once, by its type: a numeric column is never turned into
text, text columns are checked by pandas' and pyarrow's vectorised string operations, and the float32 inputs are
written column by column (the table is held once, as read, beside the inputs).
"""

import contextlib
import hashlib
import importlib.util
import os
import re
import sys
import zipfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import NamedTuple

import numpy as np

from bp_jax.cli._args import UsageError

NAMES = ("diabetes", "synthetic")
#: The diabetes features, named as scikit-learn's load_diabetes names them; the target column is "target".
DIABETES_FEATURES = ("age", "sex", "bmi", "bp", "s1", "s2", "s3", "s4", "s5", "s6")
SUFFIXES = (".csv", ".parquet", ".npz")
FLOAT32_MAX = float(np.finfo(np.float32).max)  # 3.4e38: a larger cell would overflow on the way to the model


class DataError(UsageError):
    """A data file that cannot be trained on or predicted from: reported in one line, exit status 2."""


class Scaling(NamedTuple):
    """What turns a table's raw columns into the model's inputs, and its outputs back into the target's terms.

    The inputs are the features in order, a numeric one as one input and a text one as one 0/1 input per
    training category (`categories`, one-hot); a missing cell takes its `fill` value (--missing impute) or is an
    error. Each input is standardised, (x − x_mean) / x_std (a one-hot input keeps 0/1: mean 0, deviation 1).
    A regression target is standardised with y_mean, y_std; a classification target is the index of its value
    in `classes` (text, numbers or booleans, as the data spells them: `0.0` a float, `0` an int). Records
    written before classification lack task, classes, categories and fill: a regression run on numeric columns,
    without missing cells; those written before float classes kept their spelling hold an integral float class
    as an int, and are read as they are."""

    feature_names: tuple[str, ...]
    target_name: str
    x_mean: tuple[float, ...]
    x_std: tuple[float, ...]
    y_mean: float
    y_std: float
    task: str = "regression"
    classes: tuple = ()
    categories: Mapping[str, tuple[str, ...]] = MappingProxyType({})
    fill: Mapping[str, float | str] = MappingProxyType({})

    @property
    def outputs(self) -> int:
        """The model's outputs: one logit per class, or the one standardised target."""
        return len(self.classes) if self.task == "classification" else 1

    @property
    def input_names(self) -> tuple[str, ...]:
        """One name per model input: the numeric feature's, or `column=category` per one-hot input."""
        return tuple(
            name
            for feature in self.feature_names
            for name in (
                [f"{feature}={category}" for category in self.categories[feature]]
                if feature in self.categories
                else [feature]
            )
        )

    @property
    def feature_inputs(self) -> dict[str, tuple[int, int]]:
        """Each feature's first input and its number of inputs (a text feature's categories, else 1)."""
        widths = [len(self.categories[name]) if name in self.categories else 1 for name in self.feature_names]
        return dict(
            zip(self.feature_names, zip(np.cumsum([0, *widths[:-1]]).tolist(), widths, strict=True), strict=True)
        )

    def check_columns(self, names, source: str) -> None:
        """DataError naming the features missing from `names` and the names that are no feature (the target
        may be among them)."""
        missing = [name for name in self.feature_names if name not in names]
        extra = [name for name in names if name not in self.feature_names and name != self.target_name]
        if missing or extra:
            raise DataError(
                f"{source}: "
                + "; ".join(
                    [f"missing column(s) {', '.join(map(repr, missing))}"] * bool(missing)
                    + [f"extra column(s) {', '.join(map(repr, extra))}"] * bool(extra)
                )
                + f"; the run was trained on {', '.join(map(repr, self.feature_names))}"
            )

    def features(self, frame, source: str) -> np.ndarray:
        """The feature columns of `frame`, encoded and standardised, as float32; DataError naming missing or extra
        columns (the target column may be present, and is ignored), a missing cell without a fill value, a
        category never seen in training, or a cell that is not a number."""
        self.check_columns(list(frame.columns), source)
        if len(frame) == 0:
            raise DataError(f"{source}: no rows")
        inputs = self.feature_inputs
        columns = (
            (name, self.values(frame[name], name, source, unseen="error"), inputs[name][1])
            for name in self.feature_names
        )
        statistics = lambda name, _: (self.x_mean[inputs[name][0]], self.x_std[inputs[name][0]])
        return _standardised_inputs(columns, statistics, len(self.x_mean), (None,), len(frame), source)[0]

    def values(self, cells, name: str, source: str, *, unseen: str) -> np.ndarray:
        """One feature's cells as the model reads them, before standardising: float64 numbers (empty cells
        filled), or for a text feature each cell's index in `categories[name]` (int64). A category not among
        the training ones is an error (`unseen="error"`) or −1, no input set (`"zeros"`)."""
        if name in self.fill:
            if cells.dtype.kind in "iu":  # a nullable integer column (Int64) holds no fractional mean: as floats
                cells = cells.astype(np.float64)
            cells = cells.fillna(self.fill[name])
        if name not in self.categories:
            return _numbers(cells, name, source)
        known = self.categories[name]
        empty = cells.isna().to_numpy()
        if empty.any():
            raise DataError(
                f"{source}: column {name!r}, row {cells.index[np.flatnonzero(empty)[0]] + 1}: the cell is empty or NaN"
            )
        text = _text(cells)
        index = _category_index(text, known)
        if unseen == "error" and (index < 0).any():
            bad = np.flatnonzero(index < 0)[0]
            raise DataError(
                f"{source}: column {name!r}, row {cells.index[bad] + 1}: {text.iloc[bad]!r} is not a "
                f"category the run was trained on; the known ones are {', '.join(map(repr, known))}"
            )
        return index

    def standardise(self, x: np.ndarray, source: str, rows=None) -> np.ndarray:
        """(x − x_mean) / x_std as float32, x of shape (rows, inputs) (a sharded block's numeric features)."""
        return _standardised(x, self.x_mean, self.x_std, self.input_names, source, rows)

    def target(self, y, source: str, rows=None) -> np.ndarray:
        """Regression: (y − y_mean) / y_std as float32, of shape (rows, 1); classification: each value's index
        in `classes`, int32 of shape (rows,)."""
        if self.task == "classification":
            return _class_index(self.classes, y)
        return _standardised(y[:, None], (self.y_mean,), (self.y_std,), (self.target_name,), source, rows)

    def target_units(self, standardised: np.ndarray) -> np.ndarray:
        return np.asarray(standardised, np.float64).reshape(-1) * self.y_std + self.y_mean

    def to_record(self) -> dict:
        return {**self._asdict(), "categories": dict(self.categories), "fill": dict(self.fill)}

    @classmethod
    def from_record(cls, record: dict) -> "Scaling":
        tuples = lambda value: tuple(value) if isinstance(value, list) else value
        record = {name: tuples(value) for name, value in record.items()}
        record["categories"] = MappingProxyType(
            {name: tuple(known) for name, known in record.get("categories", {}).items()}
        )
        record["fill"] = MappingProxyType(record.get("fill", {}))
        return cls(**record)


class Split(NamedTuple):
    """Standardised float32 inputs; targets standardised float32 of shape (n, 1), like the documents'
    y = randn(32, 1), or int32 class indices of shape (n,); the Scaling that made them, a fingerprint of the raw
    data (to check a resumed run reads the same), notes on what was read (a left-out index column, rows left out)
    for the command to print, how many rows were left out (without a target; for an empty feature cell), and the
    training rows' weights (float64, from the `sample_weight` column; None without one)."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    scaling: Scaling
    fingerprint: str
    notes: tuple[str, ...] = ()
    left_out: Mapping[str, int] = MappingProxyType({"no_target": 0, "empty_feature": 0})
    w_train: np.ndarray | None = None


def validation_rows(y: np.ndarray, fraction: float, seed: int, *, classify: bool) -> tuple[np.ndarray, np.ndarray]:
    """(training rows, validation rows) of the training split's targets `y`: round(fraction · n) rows held for
    validation, drawn by `seed`; for classes stratified, class c giving its share n_val · n_c / n rounded by
    largest remainders (the shares summing to n_val), so the validation rows keep the classes' proportions."""
    rng = np.random.default_rng([seed, 1])  # a stream of its own: the held-out split used [seed]
    n = len(y)
    n_val = round(fraction * n)
    order = rng.permutation(n)
    if not classify:
        return np.sort(order[n_val:]), np.sort(order[:n_val])
    classes, counts = np.unique(y, return_counts=True)
    shares = n_val * counts / n
    quota = np.floor(shares).astype(int)
    quota[np.argsort(quota - shares, kind="stable")[: n_val - quota.sum()]] += 1  # the largest remainders
    by_class = [order[y[order] == c] for c in classes]
    validation = np.concatenate([rows[:k] for rows, k in zip(by_class, quota, strict=True)])
    return np.setdiff1d(np.arange(n), validation), np.sort(validation)


def is_file(source: str) -> bool:
    return source not in NAMES


def read(source: str, *, seed: int = 0, columns: Sequence[str] | None = None):
    """A DataFrame: a built-in data set (`synthetic` is drawn from `seed`), or a CSV with a header row naming
    each column once, or an .npz with arrays `x` (rows × features, columns named x0, x1, …) and optionally `y`.
    A CSV's first column unnamed in the header is a row index: left out, with a note in `frame.attrs["notes"]`.
    With `columns`, only those are read (in the file's order: a parquet's column projection, a CSV's usecols),
    and a file is refused before it is read when they would not fit in the memory available (`refuse_too_big`)."""

    if source in NAMES:
        frame = _built_in(source, seed)
        return frame if columns is None else frame[[name for name in frame.columns if name in columns]]
    path = _file(source)
    with _reading(source):
        suffix = path.suffix.lower()
        if columns is not None:
            refuse_too_big(source, estimated_rows(path), len(columns))
        if suffix == ".parquet":
            names = column_names(source)
            return _read_parquet(path, names if columns is None else [name for name in names if name in columns])
        return _read_npz(path, columns) if suffix == ".npz" else _read_csv(path, columns)


def column_names(source: str) -> list[str]:
    """The names of `source`'s columns, as `read` gives them, from its header alone: a parquet's schema (less the
    index pandas stored), a CSV's first lines, an .npz's array header."""
    if source in NAMES:
        return [*DIABETES_FEATURES, "target"] if source == "diabetes" else [*(f"x{i}" for i in range(10)), "y"]
    path = _file(source)
    with _reading(source):
        suffix = path.suffix.lower()
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            schema = pq.read_schema(path)
            index = (schema.pandas_metadata or {}).get("index_columns", [])
            return [name for name in schema.names if name not in index]
        if suffix == ".csv":
            return _csv_header(path)[0]
        shapes = _npz_shapes(path)
        return [*(f"x{i}" for i in range(shapes["x"][1])), *(["y"] if "y" in shapes else [])]


def _built_in(source: str, seed: int):
    import pandas as pd

    if source == "diabetes":  # scikit-learn's 442 patients × 10 features, read from its package
        folder = _sklearn_data_folder()
        x, y = np.loadtxt(folder / "diabetes_data_raw.csv.gz"), np.loadtxt(folder / "diabetes_target.csv.gz")
        return pd.DataFrame({**dict(zip(DIABETES_FEATURES, x.T)), "target": y})
    # synthetic: y = sin(x·a) + 0.05·(x·b)² + noise, x ~ N(0, 1)¹⁰
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((1000, 10))
    a, b = rng.standard_normal(10) / 3, rng.standard_normal(10) / 3
    y = np.sin(x @ a) + 0.05 * (x @ b) ** 2 + 0.1 * rng.standard_normal(1000)
    return pd.DataFrame({**{f"x{i}": x[:, i] for i in range(10)}, "y": y})


def _file(source: str) -> Path:
    """`source` as a path; DataError when it is not a .csv, .parquet or .npz regular file."""
    path = Path(source)
    if path.suffix.lower() not in SUFFIXES:
        raise DataError(f"{source}: expected a .csv, .parquet or .npz file, or one of {', '.join(NAMES)}")
    if not path.is_file():
        raise DataError(
            f"{source}: "
            + (
                "is a folder, not a file"
                if path.is_dir()
                else "not a regular file"
                if path.exists()
                else "no such file"
            )
        )
    return path


@contextlib.contextmanager
def _reading(source: str):
    """Errors of reading a file as one-line DataErrors."""
    import pandas as pd

    try:
        yield
    except DataError:
        raise
    except pd.errors.EmptyDataError:
        raise DataError(f"{source}: the file is empty; expected a header row and data rows") from None
    except (ValueError, OSError, pd.errors.ParserError) as err:  # unparsable CSV or parquet, not a zip, unreadable
        raise DataError(f"{source}: cannot be read: {str(err).strip().splitlines()[0]}") from None


def _sklearn_data_folder() -> Path:
    """scikit-learn's bundled data files, found without importing scikit-learn (a second of start-up)."""
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("scikit-learn provides the diabetes data", name="sklearn")
    return Path(spec.submodule_search_locations[0]) / "datasets" / "data"


def _csv_header(path: Path) -> tuple[list[str], bool]:
    """(the CSV's column names as pandas reads them, whether its first column, unnamed in the header, is a row
    index to leave out), from its first lines: DataError for a name the header repeats (pandas would rename
    a repeated `a` to `a.1`)."""
    import pandas as pd

    header = pd.read_csv(path, header=None, nrows=1, dtype=str, keep_default_na=False).iloc[0].tolist()
    repeated = sorted({name for name in header if name and header.count(name) > 1})
    if repeated:
        raise DataError(
            f"{path}: the header names column(s) {', '.join(map(repr, repeated))} more than once; "
            "give each column its own name"
        )
    names = [str(name) for name in pd.read_csv(path, nrows=1).columns]  # an empty name read as `Unnamed: 0`
    index = header[0] == "" and len(names) == len(header)
    return names[index:], index


def _read_csv(path: Path, columns: Sequence[str] | None):
    """The CSV as pandas reads it (only `columns`, when given), less a row index column (`_csv_header`)."""
    import pandas as pd

    names, index = _csv_header(path)
    frame = pd.read_csv(path, usecols=None if columns is None else [name for name in names if name in columns])
    if index:
        frame = frame.iloc[:, 1:] if columns is None else frame
        note = f"{path}: left out the first column, unnamed in the header: a row index (as pandas' to_csv writes)"
        frame.attrs["notes"] = (note,)
    return frame


def _read_parquet(path: Path, columns: Sequence[str]):
    """The parquet's `columns` as pandas reads them, read a column at a time (its compressed pages not held
    whole, its arrow copy freed as it is converted) into one DataFrame without copying: reading holds little
    more than the columns themselves (reading all at once held about twice as much)."""
    import pandas as pd
    import pyarrow.parquet as pq

    schema = pq.read_schema(path)
    nested = [name for name in columns if schema.field(name).type.num_fields > 0]  # list, struct, map columns
    if nested:
        raise DataError(
            f"{path}: column(s) {', '.join(map(repr, nested))} hold nested values "
            f"({', '.join(str(schema.field(name).type) for name in nested)}); expected numbers or text in each cell"
        )
    arrow = {"split_blocks": True, "self_destruct": True}
    read = lambda name: pd.read_parquet(path, columns=[name], pre_buffer=False, to_pandas_kwargs=arrow)[name]
    return pd.DataFrame({name: read(name) for name in columns}, copy=False)


def _npz_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """The shapes of the .npz's arrays, from their headers; DataError when it is no zip or lacks `x`."""
    if not zipfile.is_zipfile(path):
        raise DataError(f"{path}: not a valid .npz (zip) file; expected one written by numpy.savez")
    shapes = {}
    with zipfile.ZipFile(path) as archive:
        for member in archive.namelist():
            with archive.open(member) as file:
                major, _ = np.lib.format.read_magic(file)
                read_header = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
                shapes[member.removesuffix(".npy")] = read_header(file)[0]
    if "x" not in shapes:
        raise DataError(f"{path}: expected an array 'x' (and 'y' to train), found {sorted(shapes)}")
    x, y = shapes["x"], shapes.get("y")
    if len(x) != 2 or (y is not None and (len(y) not in (1, 2) or np.prod(y) != y[0] or y[0] != x[0])):
        raise DataError(f"{path}: expected x of shape (rows, features) and y of shape (rows,), got {x} and {y}")
    return shapes


def _read_npz(path: Path, columns: Sequence[str] | None):
    import pandas as pd

    _npz_shapes(path)
    with np.load(path, allow_pickle=False) as arrays:
        x = arrays["x"]
        y = arrays["y"].reshape(-1) if "y" in arrays else None
    named = {f"x{i}": x[:, i] for i in range(x.shape[1])} | ({} if y is None else {"y": y})
    return pd.DataFrame({name: cells for name, cells in named.items() if columns is None or name in columns})


def estimated_rows(path: Path) -> int:
    """The table's rows: a parquet's or an .npz's as recorded, a CSV's estimated from its first MiB of lines."""
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.ParquetFile(path).metadata.num_rows
    if suffix == ".npz":
        return _npz_shapes(path)["x"][0]
    with open(path, "rb") as file:
        header, sample = file.readline(), file.read(1 << 20)
    lines = sample.count(b"\n") + (not sample.endswith(b"\n"))
    return round(lines * (path.stat().st_size - len(header)) / max(len(sample), 1))


#: loading holds about this many times the used columns' float64 size at its peak: the columns as read, the
#: model's float32 inputs, and one column's working copies
LOAD_FACTOR = 2


def available_memory() -> int:
    """The bytes this process may still take: Linux's MemAvailable, or less under a cgroup's limit; the
    physical memory where neither is known."""
    limit = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    with contextlib.suppress(OSError, ValueError, StopIteration), open("/proc/meminfo") as meminfo:
        limit = 1024 * int(next(line for line in meminfo if line.startswith("MemAvailable:")).split()[1])
    with contextlib.suppress(OSError, ValueError):
        cgroup = Path("/sys/fs/cgroup")
        limit = min(limit, int((cgroup / "memory.max").read_text()) - int((cgroup / "memory.current").read_text()))
    return limit


def refuse_too_big(
    source: str, rows: int, columns: int, *, what: str = "the table is", advice: str = "fewer rows"
) -> None:
    """DataError, before anything is read, when loading `rows` × `columns` (`what`: the table, or a process's
    blocks) would take more than the memory available: LOAD_FACTOR × 8 bytes a cell."""
    size, available = 8 * rows * columns, available_memory()
    if LOAD_FACTOR * size > available:
        gb = lambda bytes_: f"{bytes_ / 1e9:.3g} GB"
        raise DataError(
            f"{source}: {what} too big for memory: {rows} rows × {columns} columns ({gb(size)} as float64) "
            f"need about {gb(LOAD_FACTOR * size)} to load, and {gb(available)} is available; read fewer columns "
            f"(--features) or {advice}"
        )


def _numbers(cells, name: str, source: str) -> np.ndarray:
    """The column as float64; DataError naming the first cell that is not a number float32 holds (finite,
    |x| ≤ FLOAT32_MAX), by its row in the file (the index, from 1)."""
    import pandas as pd

    if len(cells) == 0:
        raise DataError(f"{source}: no rows")
    column = (cells if _typed_numeric(cells) else pd.to_numeric(cells, errors="coerce")).to_numpy(
        np.float64, na_value=np.nan
    )
    bad = np.flatnonzero(~(np.abs(column) <= FLOAT32_MAX))
    if len(bad):
        cell, number = cells.iloc[bad[0]], column[bad[0]]
        what = (
            "is empty or NaN"
            if pd.isna(cell)
            else f"holds {cell!r}, not a finite number"
            if np.isnan(number)
            # text, as written
            else f"holds {number}, not a finite number"
            if np.isinf(number)
            # inf or -inf
            else f"holds {number}, beyond float32's range (±{FLOAT32_MAX:.3g})"
        )
        raise DataError(f"{source}: column {name!r}, row {cells.index[bad[0]] + 1}: the cell {what}")
    return column


def _standardised(values: np.ndarray, mean, std, names, source: str, rows=None) -> np.ndarray:
    """(values − mean) / std as float32 (columns named `names`, the rows at `rows` in the file, from 0; default
    0, 1, …); DataError naming the first cell whose standardised value float32 cannot hold (by its row from 1)."""
    with np.errstate(over="ignore"):
        standardised = ((values - np.asarray(mean)) / np.asarray(std)).astype(np.float32)
    bad = np.argwhere(~np.isfinite(standardised))
    if len(bad):
        row, column = bad[0]
        raise DataError(_beyond(source, names[column], row, rows, values[row, column], mean[column], std[column]))
    return standardised


def _beyond(source: str, name: str, row: int, rows, value: float, mean: float, std: float) -> str:
    return (
        f"{source}: column {name!r}, row {(row if rows is None else rows[row]) + 1}: the cell "
        f"{value} standardises to beyond float32's range (the training rows' mean "
        f"{mean:.3g}, standard deviation {std:.3g})"
    )


def _standardised_inputs(columns, statistics, width: int, parts, rows: int, source: str, numbers=None) -> list:
    """The model's inputs as float32, one array (part rows × `width`) per part of the `rows` rows (positions,
    or None for all), from `columns`: per feature (name, values, inputs), its `Scaling.values` standardised,
    (x − mean) / std with (mean, std) = statistics(name, its first part's values), or its category indices
    one-hot over `inputs` inputs. Each part's values are gathered once and standardised in place. DataError
    naming the first cell (by row, then input) whose standardised value float32 cannot hold (the rows at `numbers`
    in the file, from 0; default 0, 1, …): after every column's own checks, as if all were standardised at once."""
    outputs = [np.zeros((rows if part is None else len(part), width), np.float32) for part in parts]  # one-hot 0s
    first, offset = None, 0
    for name, values, inputs in columns:
        for index, (output, part) in enumerate(zip(outputs, parts, strict=True)):
            chosen = values if part is None else np.take(values, part)
            if values.dtype.kind != "f":
                known = np.flatnonzero(chosen >= 0)  # a row's 1 at its category's input, by its flat position
                np.put(output.reshape(-1), known * width + offset + chosen[known], 1)
                continue
            if index == 0:
                mean, std = statistics(name, chosen)
            with np.errstate(over="ignore"):
                standardised = chosen - mean if part is None else np.subtract(chosen, mean, out=chosen)
                standardised /= std
                standardised = standardised.astype(np.float32)
            output[:, offset] = standardised
            bad = np.flatnonzero(~np.isfinite(standardised))
            row = (bad if part is None else part[bad]).min(initial=rows)
            if row < (rows if first is None else first[1]):  # on a tie the earlier input is first
                first = (name, row, values[row], mean, std)
        offset += inputs
    if first is not None:
        raise DataError(_beyond(source, first[0], first[1], numbers, *first[2:]))
    return outputs


#: --task; --missing: what to do with rows that have an empty cell
TASKS = ("auto", "regression", "classification")
MISSING = ("error", "drop", "impute")
#: a text feature with more distinct values in the training rows than this, or than half its cells (when over
#: 10), is free text or an identifier, not a category
MAX_CATEGORIES = 50
#: a classification target with more classes than this is refused
MAX_CLASSES = 1000
DATE = re.compile(r"\s*(\d{4}-\d{1,2}-\d{1,2}|\d{1,2}[/.]\d{1,2}[/.]\d{2,4})([ T]\d{1,2}:\d{2}(:\d{2}(\.\d*)?)?)?\s*")
#: the rows hashed at a time by `_fingerprint`
CHUNK_ROWS = 1 << 16


def _kind(column) -> str:
    """How a column is read: "numeric" (numbers or booleans, or text whose cells are mostly numbers: its other
    cells are errors, named by `_numbers`), "date" (date or time cells), else "text". A column of numbers is
    decided by its type alone."""
    import pandas as pd

    if _typed_numeric(column):
        return "numeric"
    if pd.api.types.is_datetime64_any_dtype(column) or isinstance(column.dtype, pd.PeriodDtype):
        return "date"
    return text_kind(*text_counts(column.dropna()))


def text_counts(cells) -> tuple[int, int, bool]:
    """(how many of the filled `cells` are numbers, how many there are, whether every distinct one is a date (DATE)
    while numbers are at most half of them): what `text_kind` decides by, summed over any cut of the rows."""
    import pandas as pd

    if not len(cells):
        return 0, 0, True
    distinct = cells.value_counts(sort=False)  # each distinct cell parsed once, counted as often as it comes
    numbers = int(distinct.to_numpy()[pd.to_numeric(distinct.index, errors="coerce").notna()].sum())
    return numbers, len(cells), numbers / len(cells) <= 0.5 and _dates(distinct.index)


def text_kind(numbers: int, cells: int, dates: bool) -> str:
    """A column of text cells: "numeric" when most filled cells are numbers, else "date" when all are dates, else
    "text" (no filled cell: text)."""
    if not cells:
        return "text"
    return "numeric" if numbers / cells > 0.5 else "date" if dates else "text"


def _typed_numeric(column) -> bool:
    """Whether the column's type is numbers or booleans."""
    import pandas as pd

    return pd.api.types.is_numeric_dtype(column) or pd.api.types.is_bool_dtype(column)


def _text(cells):
    """The cells as text: a column of text as it is, any other's cells by str()."""
    import pandas as pd

    return cells if isinstance(cells.dtype, pd.StringDtype) else cells.map(str)


def _category_counts(cells, parts) -> tuple[list[str], list[np.ndarray]]:
    """(the distinct texts of a column's filled cells, how often each comes in each part's rows)."""
    import pandas as pd

    codes, distinct = pd.factorize(_text(cells))  # an empty cell: −1
    counts = [np.bincount(chosen[chosen >= 0], minlength=len(distinct)) for chosen in (codes[part] for part in parts)]
    return [str(text) for text in distinct], counts


def _category_index(text, known: tuple[str, ...]) -> np.ndarray:
    """Each cell's index in `known`, −1 for none of them (int64), by pyarrow over the column at once."""
    import pyarrow as pa
    import pyarrow.compute as pc

    cells = pa.array(text)
    index = pc.index_in(cells, value_set=pa.array(known, type=cells.type))
    return index.fill_null(-1).to_numpy().astype(np.int64)


def _dates(distinct) -> bool:
    """Whether every one of the `distinct` cells (an Index) is text written as a date or time (DATE): matched by
    pyarrow at once, those it leaves by Python's re (whose \\d and \\s take more than ASCII), stopping at the
    first other."""
    import pandas as pd

    if not (isinstance(distinct.dtype, pd.StringDtype) or pd.api.types.infer_dtype(distinct, skipna=False) == "string"):
        return False
    distinct = pd.Series(distinct, dtype="str")
    if DATE.fullmatch(distinct.iloc[0]) is None:
        return False
    matched = distinct.str.fullmatch(DATE.pattern).to_numpy(bool)
    return all(DATE.fullmatch(cell) is not None for cell in distinct[~matched])


def _label(value):
    """A class label as JSON and the predictions spell it, of the data's type: text, a bool, an int or a float
    (`0.0` stays `0.0`)."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value)
    return str(value)


def _integers_read_as_floats(source: str, column) -> bool:
    """Whether a CSV column pandas read as floats holds integers, read so for its empty cells alone: every filled
    cell written as an integer (`3`, not `3.0`)."""
    import pandas as pd

    if column.dtype.kind != "f" or not column.isna().any() or Path(source).suffix.lower() != ".csv":
        return False
    return written_as_integers(pd.read_csv(source, usecols=[column.name], dtype=str)[column.name])


def written_as_integers(cells) -> bool:
    """Whether every filled one of the text `cells` (a CSV column read as str) is written as an integer."""
    return bool(cells.dropna().str.strip().str.fullmatch(r"[+-]?\d+").all())


def _class_index(classes: tuple, values) -> np.ndarray:
    """Each value's index in `classes`, int32: each distinct value's label looked up once."""
    import pandas as pd

    position = {label: index for index, label in enumerate(classes)}
    codes, distinct = pd.factorize(values)
    return np.asarray([position[_label(value)] for value in distinct], np.int32)[codes]


def _choose(names: list[str], source: str, target: str | None, features: tuple[str, ...] | None, weight=None):
    """(feature names, target name) among the columns `names`; DataError naming what is missing, or a `weight`
    column that is the target or a feature (it is left out of the default features)."""
    if len(names) < 2:
        raise DataError(f"{source}: expected at least two columns (features and a target), got {names}")
    target = names[-1] if target is None else target
    if target not in names:
        raise DataError(f"{source}: no target column {target!r}; the columns are {', '.join(map(repr, names))}")
    if weight is not None and weight not in names:
        raise DataError(
            f"{source}: no column {weight!r} for --sample-weight; the columns are {', '.join(map(repr, names))}"
        )
    if weight == target:
        raise DataError(f"{source}: the target {target!r} cannot also be the --sample-weight column")
    if features is None:
        features = tuple(name for name in names if name not in (target, weight))
    elif weight in features:
        raise DataError(f"{source}: the --sample-weight column {weight!r} cannot also be a feature")
    features = tuple(features)
    missing = [name for name in features if name not in names]
    if missing:
        raise DataError(
            f"{source}: no column(s) {', '.join(map(repr, missing))} for --features; "
            f"the columns are {', '.join(map(repr, names))}"
        )
    if len(set(features)) < len(features):
        raise DataError(f"{source}: --features names a column more than once: {', '.join(map(repr, features))}")
    if target in features:
        raise DataError(f"{source}: the target {target!r} cannot also be a feature")
    return features, target


def _task(column, task: str) -> str:
    """ "classification" for a text or boolean target under auto (numbers, integers included, are regression
    unless asked), or as given."""
    import pandas as pd

    if task != "auto":
        return task
    cells = column.dropna()
    boolean = len(cells) > 0 and (
        pd.api.types.is_bool_dtype(column)
        or (column.dtype == object and pd.api.types.infer_dtype(cells, skipna=False) == "boolean")
    )
    return "classification" if boolean or _kind(column) == "text" else "regression"


def _refuse_unusable(frame, source: str, features: tuple[str, ...], kinds: Mapping[str, str]) -> None:
    """DataError naming the feature columns that are neither numbers nor categories (dates, free text, an
    identifier per row), with the --features that leaves them out."""
    unusable = {}
    for name in features:
        if kinds[name] == "date":
            unusable[name] = f"dates or times (such as {str(frame[name].dropna().iloc[0])!r})"
        elif kinds[name] == "text":
            cells = frame[name].dropna()
            distinct = _text(cells).nunique()
            if free_text(distinct, len(cells)):
                unusable[name] = f"free text ({distinct} distinct values in {len(cells)} cells)"
    refuse_unusable(source, features, unusable)


def free_text(distinct: int, cells: int) -> bool:
    """Whether a text column of `cells` filled cells with `distinct` values is free text or an identifier: over
    MAX_CATEGORIES values, or over 10 and over half its cells."""
    return distinct > MAX_CATEGORIES or (distinct > 10 and distinct > cells / 2)


def refuse_unusable(source: str, features: tuple[str, ...], unusable: Mapping[str, str]) -> None:
    """DataError naming each feature of `unusable` with what it holds, and the --features that leaves them out."""
    if unusable:
        quote = lambda name: f'"{name}"' if "," in name or '"' in name or name != name.strip() else name
        kept = ",".join(quote(name) for name in features if name not in unusable)
        raise DataError(
            f"{source}: "
            + "; ".join(f"column {name!r} holds {what}" for name, what in unusable.items())
            + ", which cannot be a feature (neither numbers nor categories); leave "
            + ("it" if len(unusable) == 1 else "them")
            + f" out with --features {kept or '…'}"
        )


def _missing_cells(frame, source: str, features: tuple[str, ...], target: str, missing: str):
    """(rows kept, left_out, notes): under "error" a DataError naming each column with empty cells, how many,
    and the --missing to use; "drop" keeps the rows with every cell, "impute" those with a target.
    left_out counts the rows without a target, and those left out for an empty feature cell."""
    counts, firsts, any_empty = {}, {}, np.zeros(len(frame), bool)
    for name in (*features, target):
        empty = frame[name].isna().to_numpy()
        if empty.any():
            counts[name], firsts[name] = int(empty.sum()), frame.index[np.argmax(empty)] + 1
            any_empty |= empty
    if counts and missing == "error":
        raise DataError(
            f"{source}: "
            + ", ".join(
                f"column {name!r} has {count} empty cell(s) (the first in row {firsts[name]})"
                for name, count in counts.items()
            )
            + "; pass --missing drop to leave those rows out, or --missing impute to fill the features "
            "(the training rows' mean, or most frequent category) and leave out rows without a target"
        )
    no_target = frame[target].isna().to_numpy()
    keep = ~(any_empty if missing == "drop" else no_target)
    left_out = {"no_target": int(no_target.sum()), "empty_feature": int((~keep & ~no_target).sum())}
    notes = [f"{source}: left out {left_out['no_target']} row(s) without a target ({target!r})"] * bool(
        left_out["no_target"]
    ) + [f"{source}: left out {left_out['empty_feature']} row(s) with an empty feature cell (--missing drop)"] * bool(
        left_out["empty_feature"]
    )
    return keep, left_out, notes


def most_frequent(distinct: Sequence[str], counts) -> tuple[str, int]:
    """(the category of `distinct` with the most `counts`, its count): the first in sorted order on a tie; ("", 0)
    for none."""
    ordered = sorted(zip(distinct, counts, strict=True), key=lambda category: category[0])
    return max(ordered, key=lambda category: category[1], default=("", 0))


def trained_categories(distinct: Sequence[str], counts) -> tuple[str, ...]:
    """The categories of `distinct` that come in the training rows (`counts` > 0), sorted."""
    return tuple(sorted(category for category, count in zip(distinct, counts, strict=True) if count))


def class_set(labels, source: str, target: str) -> tuple:
    """The distinct `labels` (spelled by `_label`) sorted by type, then value; DataError unless 2 to MAX_CLASSES."""
    classes = tuple(sorted(set(labels), key=lambda label: (str(type(label)), label)))
    if not 2 <= len(classes) <= MAX_CLASSES:
        raise DataError(
            f"{source}: the target {target!r} has {len(classes)} distinct value(s); classification "
            f"needs between 2 and {MAX_CLASSES}" + "; use --task regression" * (len(classes) > 2)
        )
    return classes


def unseen_note(source: str, name: str, distinct: Sequence[str], train, held) -> list[str]:
    """The note (a list of none or one) naming the categories of `distinct` in held-out rows only (`held` > 0,
    `train` 0)."""
    unseen = sorted(
        category for category, trained, out in zip(distinct, train, held, strict=True) if out and not trained
    )
    return [
        f"{source}: column {name!r} holds {', '.join(map(repr, unseen))} in held-out rows only, not in "
        f"the training rows: encoded there as no known category"
    ] * bool(unseen)


def not_a_class(source: str, target: str, row: int, value) -> DataError:
    """The error for a class that is an infinite number, at `row` (from 0)."""
    return DataError(
        f"{source}: column {target!r}, row {row + 1}: the class {value} is not a finite number; a class is text, "
        f"a boolean or a finite number"
    )


def _fingerprint(frame, features: tuple[str, ...], target: str, weight: str | None = None) -> str:
    """sha256 of the used columns' cells and names (the weight column's last, where there is one), in one pass
    over CHUNK_ROWS rows at a time: numbers as the rows' float64 bytes (as they always were, so older runs
    resume), a table with text by pandas' hash of each row."""
    import pandas as pd

    used = [*features, target, *([weight] if weight else [])]
    digest = hashlib.sha256()
    if all(pd.api.types.is_numeric_dtype(frame[name]) for name in used):
        arrays = [  # a numpy column as it is (no copy), cast a chunk at a time; pandas' own types' gaps as NaN
            frame[name].to_numpy()
            if isinstance(frame[name].dtype, np.dtype)
            else frame[name].to_numpy(np.float64, na_value=np.nan)
            for name in used
        ]
        block = np.empty((min(CHUNK_ROWS, len(frame)), len(used)))
        for start in range(0, len(frame), CHUNK_ROWS):
            rows = block[: min(CHUNK_ROWS, len(frame) - start)]
            for column, array in enumerate(arrays):
                rows[:, column] = array[start : start + len(rows)]
            digest.update(rows.data)  # C order: the bytes of the rows' to_numpy(np.float64)
    else:
        for start in range(0, len(frame), CHUNK_ROWS):
            digest.update(
                pd.util.hash_pandas_object(frame.iloc[start : start + CHUNK_ROWS][used], index=False).to_numpy()
            )
    digest.update(repr((tuple(features), target)).encode())
    return digest.hexdigest()


def _row_weights(cells, source: str, weight: str) -> np.ndarray:
    """The `weight` column as float64; DataError naming the first cell that is empty, not a number, infinite or
    negative."""
    weights = _numbers(cells, weight, source)
    negative = np.flatnonzero(weights < 0)
    if len(negative):
        raise DataError(
            f"{source}: column {weight!r}, row {cells.index[negative[0]] + 1}: the weight {weights[negative[0]]} is "
            f"negative; --sample-weight takes numbers ≥ 0"
        )
    return weights


def load(
    source: str,
    *,
    target: str | None = None,
    features: tuple[str, ...] | None = None,
    split_seed: int = 0,
    test_fraction: float = 0.2,
    task: str = "auto",
    missing: str = "error",
    sample_weight: str | None = None,
    read_columns: Callable = read,
) -> Split:
    """Read the used columns of `source` (`read_columns(source, seed=split_seed, columns=...)`, `read` by
    default), leave out rows with empty cells as `missing` says, hold out round(test_fraction · rows) rows (at
    least one) chosen by `split_seed`, and encode and standardise with the training rows' statistics:
    categories, fill values, means and deviations (see `Scaling`); `sample_weight` names a column of row
    weights (`Split.w_train`). Each column is checked and converted on its own, once, into the float32 inputs."""

    names = column_names(source)
    if target is None and Path(source).suffix.lower() == ".npz" and "y" not in names:
        raise DataError(
            f"{source}: holds no array 'y', the target to train on (x only); add y, or name a column of x "
            f"(x0, x1, …) with --target"
        )
    features, target = _choose(names, source, target, features, sample_weight)
    used = (*features, target, *([sample_weight] if sample_weight else []))
    split = _split(
        read_columns(source, seed=split_seed, columns=used),
        source,
        features,
        target,
        split_seed=split_seed,
        test_fraction=test_fraction,
        task=task,
        missing=missing,
        sample_weight=sample_weight,
    )
    if "pyarrow" in sys.modules:  # the table as read is freed: its memory back to the system now, not later
        sys.modules["pyarrow"].default_memory_pool().release_unused()
    return split


def _split(
    frame,
    source: str,
    features: tuple[str, ...],
    target: str,
    *,
    split_seed: int,
    test_fraction: float,
    task: str,
    missing: str,
    sample_weight: str | None,
) -> Split:
    """`load`'s work on the used columns as read: the checks, the split and the inputs, each column on its own."""
    import pandas as pd

    if len(frame) == 0:
        raise DataError(f"{source}: no rows")
    fingerprint, task = _fingerprint(frame, features, target, sample_weight), _task(frame[target], task)
    integer_classes = task == "classification" and _integers_read_as_floats(source, frame[target])
    kinds = {name: _kind(frame[name]) for name in features}
    _refuse_unusable(frame, source, features, kinds)
    keep, left_out, notes = _missing_cells(frame, source, features, target, missing)
    notes = [*frame.attrs.get("notes", ()), *notes]
    kept = None if keep.all() else np.flatnonzero(keep)
    if kept is not None:  # as the kept rows read: a text column's share of numbers changes with its rows
        kinds = {
            name: kinds[name] if _typed_numeric(frame[name]) else _kind(frame[name].iloc[kept]) for name in features
        }
    n = len(frame) if kept is None else len(kept)
    if n < 2:
        raise DataError(
            f"{source}: {n} row{'s' * (n != 1)}{' with a target' * (kept is not None)}; "
            f"need at least 2 (one to train on, one held out)"
        )
    column = lambda name: frame[name] if kept is None else frame[name].iloc[kept]  # the kept rows' cells
    order = np.random.default_rng(split_seed).permutation(n)
    n_test = max(1, round(n * test_fraction))
    test, train = order[:n_test], order[n_test:]
    w_train = None if sample_weight is None else _row_weights(column(sample_weight), source, sample_weight)[train]
    if w_train is not None and not w_train.sum() > 0:
        raise DataError(
            f"{source}: column {sample_weight!r} weighs 0 in every training row; --sample-weight needs a weight > 0"
        )
    text = {name: _category_counts(column(name), (train, test)) for name in features if kinds[name] == "text"}
    fill: dict = {}
    for name in features if missing == "impute" else ():  # every feature: a gap may come in new rows only
        value: float | str
        if name in text:
            value, count = most_frequent(text[name][0], text[name][1][0])
        else:
            cells = column(name).iloc[train].dropna()
            value, count = float(pd.to_numeric(cells, errors="coerce").mean()), len(cells)  # the mean
        if not count:
            raise DataError(f"{source}: column {name!r} has no value in the training rows to impute from")
        fill[name] = value
    categories = {name: trained_categories(distinct, counts) for name, (distinct, (counts, _)) in text.items()}
    rows = frame.index if kept is None else frame.index[kept]  # each row's in the file (from 0: a RangeIndex mostly)
    if task == "classification":
        labels = column(target).astype(np.int64) if integer_classes else column(target)  # spelled as in the file
        codes, distinct = pd.factorize(labels)
        spelled = [_label(value) for value in distinct]
        infinite = [code for code, label in enumerate(spelled) if isinstance(label, float) and np.isinf(label)]
        if infinite:
            first = np.flatnonzero(np.isin(codes, infinite))[0]
            raise not_a_class(source, target, rows[first], labels.iloc[first])
        classes = class_set(spelled, source, target)
        scaling = Scaling(features, target, (), (), 0.0, 1.0, task, classes)
    else:
        labels = _numbers(column(target), target, source)
        scaling = Scaling(
            features, target, (), (), float(labels[train].mean()), float(labels[train].std()) or 1.0
        )  # a constant target standardises to 0
    scaling = scaling._replace(categories=MappingProxyType(categories), fill=MappingProxyType(fill))
    x_mean = [0.0] * len(scaling.input_names)  # a one-hot input: mean 0, deviation 1
    x_std = [1.0] * len(x_mean)
    inputs = scaling.feature_inputs

    def statistics(name, training):  # a numeric input's training mean and deviation, recorded
        first = inputs[name][0]
        x_mean[first], x_std[first] = float(training.mean()), float(training.std()) or 1.0  # constant: 0, not NaN
        return x_mean[first], x_std[first]

    columns = ((name, scaling.values(column(name), name, source, unseen="zeros"), inputs[name][1]) for name in features)
    x_train, x_test = _standardised_inputs(columns, statistics, len(x_mean), (train, test), n, source, rows)
    scaling = scaling._replace(x_mean=tuple(x_mean), x_std=tuple(x_std))
    notes += [
        note for name, (distinct, counts) in text.items() for note in unseen_note(source, name, distinct, *counts)
    ]
    y = scaling.target(labels, source, rows)  # every row checked
    return Split(
        x_train, y[train], x_test, y[test], scaling, fingerprint, tuple(notes), MappingProxyType(left_out), w_train
    )

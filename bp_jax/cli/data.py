"""Regression data for the `bp-jax` command: one loader for the built-in data sets and the user's files.

    frame = read("diabetes" | "synthetic" | "path/to/file.csv" | ".npz")   # a DataFrame of named columns
    split = load(source, target=None, features=None, split_seed=0)        # standardised train/held-out split
    x = split.scaling.features(frame, source)      # new rows, standardised with the training statistics
    y = split.scaling.target_units(predictions)    # back in the target's own units

The target is the last column unless named; the features are the other columns unless named (names match
exactly, spaces included). A CSV's header names each column once; a first column unnamed in the header (the row
index pandas writes) is left out, and `read` says so in `frame.attrs["notes"]` (`load` in `Split.notes`), for the
command to print. Every used cell must be a number float32 holds (finite, |x| ≤ 3.4e38), and so must its
standardised value: anything else is a DataError naming the file, the column and the row (from 1, after the
header). Features and target are standardised with the training split's mean and standard deviation (a constant
column's deviation counts as 1, so it standardises to 0, not NaN).
"""

import hashlib
import importlib.util
import zipfile
from pathlib import Path
from typing import NamedTuple

import numpy as np

from bp_jax.cli._args import UsageError

NAMES = ("diabetes", "synthetic")
#: The diabetes features, named as scikit-learn's load_diabetes names them; the target column is "target".
DIABETES_FEATURES = ("age", "sex", "bmi", "bp", "s1", "s2", "s3", "s4", "s5", "s6")
SUFFIXES = (".csv", ".npz")
FLOAT32_MAX = float(np.finfo(np.float32).max)  # 3.4e38: a larger cell would overflow on the way to the model


class DataError(UsageError):
    """A data file that cannot be trained on or predicted from: reported in one line, exit status 2."""


class Scaling(NamedTuple):
    """What turns a table's raw columns into the model's inputs, and its outputs back into the target's units."""

    feature_names: tuple[str, ...]
    target_name: str
    x_mean: tuple[float, ...]
    x_std: tuple[float, ...]
    y_mean: float
    y_std: float

    def features(self, frame, source: str) -> np.ndarray:
        """The feature columns of `frame`, standardised, as float32; DataError naming missing or extra columns
        (the target column may be present, and is ignored)."""
        missing = [name for name in self.feature_names if name not in frame.columns]
        extra = [name for name in frame.columns if name not in self.feature_names and name != self.target_name]
        if missing or extra:
            raise DataError(f"{source}: " + "; ".join(
                [f"missing column(s) {', '.join(map(repr, missing))}"] * bool(missing)
                + [f"extra column(s) {', '.join(map(repr, extra))}"] * bool(extra))
                + f"; the run was trained on {', '.join(map(repr, self.feature_names))}")
        return self.standardise(_numeric(frame, self.feature_names, source), source)

    def standardise(self, x: np.ndarray, source: str) -> np.ndarray:
        """(x − x_mean) / x_std as float32, x of shape (rows, features)."""
        return _standardised(x, self.x_mean, self.x_std, self.feature_names, source)

    def target(self, y: np.ndarray, source: str) -> np.ndarray:
        """(y − y_mean) / y_std as float32, of shape (rows, 1)."""
        return _standardised(y[:, None], (self.y_mean,), (self.y_std,), (self.target_name,), source)

    def target_units(self, standardised: np.ndarray) -> np.ndarray:
        return np.asarray(standardised, np.float64).reshape(-1) * self.y_std + self.y_mean

    def to_record(self) -> dict:
        return self._asdict()

    @classmethod
    def from_record(cls, record: dict) -> "Scaling":
        return cls(**{name: tuple(value) if isinstance(value, list) else value for name, value in record.items()})


class Split(NamedTuple):
    """Standardised float32 arrays (targets of shape (n, 1), like the documents' y = randn(32, 1)), the
    Scaling that made them, a fingerprint of the raw data (to check a resumed run reads the same), and notes
    on what was read (a left-out index column) for the command to print."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    scaling: Scaling
    fingerprint: str
    notes: tuple[str, ...] = ()


def is_file(source: str) -> bool:
    return source not in NAMES


def read(source: str, *, seed: int = 0):
    """A DataFrame: a built-in data set (`synthetic` is drawn from `seed`), or a CSV with a header row naming
    each column once, or an .npz with arrays `x` (rows × features, columns named x0, x1, …) and optionally `y`.
    A CSV's first column unnamed in the header is a row index: left out, with a note in `frame.attrs["notes"]`."""
    import pandas as pd

    if source == "diabetes":  # scikit-learn's 442 patients × 10 features, read from its package
        folder = _sklearn_data_folder()
        x, y = np.loadtxt(folder / "diabetes_data_raw.csv.gz"), np.loadtxt(folder / "diabetes_target.csv.gz")
        return pd.DataFrame({**dict(zip(DIABETES_FEATURES, x.T)), "target": y})
    if source == "synthetic":  # y = sin(x·a) + 0.05·(x·b)² + noise, x ~ N(0, 1)¹⁰
        rng = np.random.default_rng(seed)
        x = rng.standard_normal((1000, 10))
        a, b = rng.standard_normal(10) / 3, rng.standard_normal(10) / 3
        y = np.sin(x @ a) + 0.05 * (x @ b) ** 2 + 0.1 * rng.standard_normal(1000)
        return pd.DataFrame({**{f"x{i}": x[:, i] for i in range(10)}, "y": y})
    path = Path(source)
    if path.suffix.lower() not in SUFFIXES:
        raise DataError(f"{source}: expected a .csv or .npz file, or one of {', '.join(NAMES)}")
    if not path.is_file():
        raise DataError(f"{source}: " + ("is a folder, not a file" if path.is_dir() else
                                         "not a regular file" if path.exists() else "no such file"))
    try:
        return _read_npz(path) if path.suffix.lower() == ".npz" else _read_csv(path)
    except DataError:
        raise
    except pd.errors.EmptyDataError:
        raise DataError(f"{source}: the file is empty; expected a header row and data rows") from None
    except (ValueError, OSError, pd.errors.ParserError) as err:  # unparsable CSV, not a zip, unreadable
        raise DataError(f"{source}: cannot be read: {str(err).strip().splitlines()[0]}") from None


def _sklearn_data_folder() -> Path:
    """scikit-learn's bundled data files, found without importing scikit-learn (a second of start-up)."""
    spec = importlib.util.find_spec("sklearn")
    if spec is None:
        raise ModuleNotFoundError("scikit-learn provides the diabetes data", name="sklearn")
    return Path(spec.submodule_search_locations[0]) / "datasets" / "data"


def _read_csv(path: Path):
    """The CSV as pandas reads it, its header checked against the raw one (pandas renames a repeated `a` to `a.1`
    and an empty name to `Unnamed: 0`)."""
    import pandas as pd

    header = pd.read_csv(path, header=None, nrows=1, dtype=str, keep_default_na=False).iloc[0].tolist()
    repeated = sorted({name for name in header if name and header.count(name) > 1})
    if repeated:
        raise DataError(f"{path}: the header names column(s) {', '.join(map(repr, repeated))} more than once; "
                        "give each column its own name")
    frame = pd.read_csv(path)
    if header[0] == "" and len(frame.columns) == len(header):
        frame = frame.iloc[:, 1:]
        note = f"{path}: left out the first column, unnamed in the header: a row index (as pandas' to_csv writes)"
        frame.attrs["notes"] = (note,)
    return frame


def _read_npz(path: Path):
    import pandas as pd

    if not zipfile.is_zipfile(path):
        raise DataError(f"{path}: not a valid .npz (zip) file; expected one written by numpy.savez")
    with np.load(path, allow_pickle=False) as arrays:
        if "x" not in arrays:
            raise DataError(f"{path}: expected an array 'x' (and 'y' to train), found {sorted(arrays)}")
        x = arrays["x"]
        y = arrays["y"] if "y" in arrays else None
    if x.ndim != 2 or (y is not None and (y.ndim not in (1, 2) or y.size != len(y) or len(y) != len(x))):
        raise DataError(f"{path}: expected x of shape (rows, features) and y of shape (rows,), got "
                        f"{x.shape} and {None if y is None else y.shape}")
    columns = {f"x{i}": x[:, i] for i in range(x.shape[1])}
    return pd.DataFrame(columns if y is None else {**columns, "y": y.reshape(-1)})


def _numeric(frame, columns, source: str) -> np.ndarray:
    """The columns as float64, rows × columns; DataError naming the first cell that is not a number float32
    holds (finite, |x| ≤ FLOAT32_MAX)."""
    import pandas as pd

    if len(frame) == 0:
        raise DataError(f"{source}: no rows")
    values = []
    for name in columns:
        column = pd.to_numeric(frame[name], errors="coerce").to_numpy(np.float64, na_value=np.nan)
        bad = np.flatnonzero(~(np.abs(column) <= FLOAT32_MAX))
        if len(bad):
            cell, number = frame[name].iloc[bad[0]], column[bad[0]]
            what = ("is empty or NaN" if pd.isna(cell) else
                    f"holds {cell!r}, not a finite number" if np.isnan(number) else  # text, as written
                    f"holds {number}, not a finite number" if np.isinf(number) else  # inf or -inf
                    f"holds {number}, beyond float32's range (±{FLOAT32_MAX:.3g})")
            raise DataError(f"{source}: column {name!r}, row {bad[0] + 1}: the cell {what}")
        values.append(column)
    return np.stack(values, axis=1)


def _standardised(values: np.ndarray, mean, std, names, source: str) -> np.ndarray:
    """(values − mean) / std as float32 (columns named `names`); DataError naming the first cell whose
    standardised value float32 cannot hold."""
    with np.errstate(over="ignore"):
        standardised = ((values - np.asarray(mean)) / np.asarray(std)).astype(np.float32)
    bad = np.argwhere(~np.isfinite(standardised))
    if len(bad):
        row, column = bad[0]
        raise DataError(f"{source}: column {names[column]!r}, row {row + 1}: the cell {values[row, column]} "
                        f"standardises to beyond float32's range (the training rows' mean {mean[column]:.3g}, "
                        f"standard deviation {std[column]:.3g})")
    return standardised


def columns(frame, source: str, target: str | None, features: tuple[str, ...] | None):
    """(x, y, feature names, target name): float64 arrays of the chosen columns; DataError naming what is
    missing."""
    names = [str(name) for name in frame.columns]
    frame = frame.set_axis(names, axis=1)
    if len(names) < 2:
        raise DataError(f"{source}: expected at least two columns (features and a target), got {names}")
    target = names[-1] if target is None else target
    if target not in names:
        raise DataError(f"{source}: no target column {target!r}; the columns are {', '.join(map(repr, names))}")
    features = tuple(name for name in names if name != target) if features is None else tuple(features)
    missing = [name for name in features if name not in names]
    if missing:
        raise DataError(f"{source}: no column(s) {', '.join(map(repr, missing))} for --features; "
                        f"the columns are {', '.join(map(repr, names))}")
    if len(set(features)) < len(features):
        raise DataError(f"{source}: --features names a column more than once: {', '.join(map(repr, features))}")
    if target in features:
        raise DataError(f"{source}: the target {target!r} cannot also be a feature")
    xy = _numeric(frame, (*features, target), source)
    return xy[:, :-1], xy[:, -1], features, target


def load(source: str, *, target: str | None = None, features: tuple[str, ...] | None = None,
         split_seed: int = 0, test_fraction: float = 0.2) -> Split:
    """Read `source` (see `read`), hold out round(test_fraction · rows) rows (at least one) chosen by
    `split_seed`, and standardise with the training rows' statistics."""
    frame = read(source, seed=split_seed)
    x, y, features, target = columns(frame, source, target, features)
    if len(x) < 2:
        raise DataError(f"{source}: {len(x)} row; need at least 2 (one to train on, one held out)")
    order = np.random.default_rng(split_seed).permutation(len(x))
    n_test = max(1, int(round(len(x) * test_fraction)))
    test, train = order[:n_test], order[n_test:]
    deviation = lambda values: np.where(values > 0, values, 1.0)  # a constant column standardises to 0
    scaling = Scaling(features, target, tuple(x[train].mean(0).tolist()), tuple(deviation(x[train].std(0)).tolist()),
                      float(y[train].mean()), float(deviation(y[train].std())))
    fingerprint = hashlib.sha256(np.ascontiguousarray(np.column_stack([x, y])).tobytes()
                                 + repr((features, target)).encode()).hexdigest()
    x, y = scaling.standardise(x, source), scaling.target(y, source)  # every row checked, by its row number
    return Split(x[train], y[train], x[test], y[test], scaling, fingerprint, frame.attrs.get("notes", ()))

"""Tables for the `bp-jax` command: one loader for the built-in data sets and the user's files.

    frame = read("diabetes" | "synthetic" | "path/to/file.csv" | ".parquet" | ".npz")   # a DataFrame
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
"""

import hashlib
import importlib.util
import re
import zipfile
from collections.abc import Mapping
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

    def features(self, frame, source: str) -> np.ndarray:
        """The feature columns of `frame`, encoded and standardised, as float32; DataError naming missing or extra
        columns (the target column may be present, and is ignored), a missing cell without a fill value, a
        category never seen in training, or a cell that is not a number."""
        missing = [name for name in self.feature_names if name not in frame.columns]
        extra = [name for name in frame.columns if name not in self.feature_names and name != self.target_name]
        if missing or extra:
            raise DataError(
                f"{source}: "
                + "; ".join(
                    [f"missing column(s) {', '.join(map(repr, missing))}"] * bool(missing)
                    + [f"extra column(s) {', '.join(map(repr, extra))}"] * bool(extra)
                )
                + f"; the run was trained on {', '.join(map(repr, self.feature_names))}"
            )
        if len(frame) == 0:
            raise DataError(f"{source}: no rows")
        return self.standardise(self.encode(frame, source, unseen="error"), source)

    def encode(self, frame, source: str, *, unseen: str) -> np.ndarray:
        """The model's inputs before standardising, float64 rows × inputs: missing cells filled, text one-hot.
        A category not among the training ones is an error (`unseen="error"`) or all zeros (`"zeros"`)."""
        import pandas as pd

        frame = frame[list(self.feature_names)].fillna(dict(self.fill)) if self.fill else frame
        blocks = []
        for name in self.feature_names:
            if name not in self.categories:
                blocks.append(_numeric(frame, (name,), source))
                continue
            known = self.categories[name]
            cells = frame[name]
            if cells.isna().any():
                row = frame.index[np.flatnonzero(cells.isna().to_numpy())[0]] + 1
                raise DataError(f"{source}: column {name!r}, row {row}: the cell is empty or NaN")
            text = cells.map(str).to_numpy()
            index = pd.Index(known).get_indexer(text)
            if unseen == "error" and (index < 0).any():
                bad = np.flatnonzero(index < 0)[0]
                raise DataError(
                    f"{source}: column {name!r}, row {frame.index[bad] + 1}: {text[bad]!r} is not a "
                    f"category the run was trained on; the known ones are {', '.join(map(repr, known))}"
                )
            blocks.append((index[:, None] == np.arange(len(known))).astype(np.float64))
        return np.concatenate(blocks, axis=1)

    def standardise(self, x: np.ndarray, source: str, rows=None) -> np.ndarray:
        """(x − x_mean) / x_std as float32, x of shape (rows, inputs)."""
        return _standardised(x, self.x_mean, self.x_std, self.input_names, source, rows)

    def target(self, y: np.ndarray, source: str, rows=None) -> np.ndarray:
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
    try:
        suffix = path.suffix.lower()
        if suffix == ".parquet":
            return pd.read_parquet(path)
        return _read_npz(path) if suffix == ".npz" else _read_csv(path)
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


def _read_csv(path: Path):
    """The CSV as pandas reads it, its header checked against the raw one (pandas renames a repeated `a` to `a.1`
    and an empty name to `Unnamed: 0`)."""
    import pandas as pd

    header = pd.read_csv(path, header=None, nrows=1, dtype=str, keep_default_na=False).iloc[0].tolist()
    repeated = sorted({name for name in header if name and header.count(name) > 1})
    if repeated:
        raise DataError(
            f"{path}: the header names column(s) {', '.join(map(repr, repeated))} more than once; "
            "give each column its own name"
        )
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
        y = arrays.get("y")
    if x.ndim != 2 or (y is not None and (y.ndim not in (1, 2) or y.size != len(y) or len(y) != len(x))):
        raise DataError(
            f"{path}: expected x of shape (rows, features) and y of shape (rows,), got "
            f"{x.shape} and {None if y is None else y.shape}"
        )
    columns = {f"x{i}": x[:, i] for i in range(x.shape[1])}
    return pd.DataFrame(columns if y is None else {**columns, "y": y.reshape(-1)})


def _numeric(frame, columns, source: str) -> np.ndarray:
    """The columns as float64, rows × columns; DataError naming the first cell that is not a number float32
    holds (finite, |x| ≤ FLOAT32_MAX), by its row in the file (the frame's index, from 1)."""
    import pandas as pd

    if len(frame) == 0:
        raise DataError(f"{source}: no rows")
    values = []
    for name in columns:
        column = pd.to_numeric(frame[name], errors="coerce").to_numpy(np.float64, na_value=np.nan)
        bad = np.flatnonzero(~(np.abs(column) <= FLOAT32_MAX))
        if len(bad):
            cell, number = frame[name].iloc[bad[0]], column[bad[0]]
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
            raise DataError(f"{source}: column {name!r}, row {frame.index[bad[0]] + 1}: the cell {what}")
        values.append(column)
    return np.stack(values, axis=1)


def _standardised(values: np.ndarray, mean, std, names, source: str, rows=None) -> np.ndarray:
    """(values − mean) / std as float32 (columns named `names`, rows numbered `rows` in the file, default
    1, 2, …); DataError naming the first cell whose standardised value float32 cannot hold."""
    with np.errstate(over="ignore"):
        standardised = ((values - np.asarray(mean)) / np.asarray(std)).astype(np.float32)
    bad = np.argwhere(~np.isfinite(standardised))
    if len(bad):
        row, column = bad[0]
        raise DataError(
            f"{source}: column {names[column]!r}, row {row + 1 if rows is None else rows[row]}: the cell "
            f"{values[row, column]} standardises to beyond float32's range (the training rows' mean "
            f"{mean[column]:.3g}, standard deviation {std[column]:.3g})"
        )
    return standardised


#: --task; --missing: what to do with rows that have an empty cell
TASKS = ("auto", "regression", "classification")
MISSING = ("error", "drop", "impute")
#: a text feature with more distinct values in the training rows than this, or than half its cells (when over
#: 10), is free text or an identifier, not a category
MAX_CATEGORIES = 50
#: a classification target with more classes than this is refused
MAX_CLASSES = 1000
DATE = re.compile(r"\s*(\d{4}-\d{1,2}-\d{1,2}|\d{1,2}[/.]\d{1,2}[/.]\d{2,4})([ T]\d{1,2}:\d{2}(:\d{2}(\.\d*)?)?)?\s*")


def _kind(column) -> str:
    """How a column is read: "numeric" (numbers or booleans, or text whose cells are mostly numbers: its other
    cells are errors, named by `_numeric`), "date" (date or time cells), else "text"."""
    import pandas as pd

    if pd.api.types.is_numeric_dtype(column) or pd.api.types.is_bool_dtype(column):
        return "numeric"
    if pd.api.types.is_datetime64_any_dtype(column) or isinstance(column.dtype, pd.PeriodDtype):
        return "date"
    cells = column.dropna()
    if len(cells) and pd.to_numeric(cells, errors="coerce").notna().mean() > 0.5:
        return "numeric"
    if len(cells) and cells.map(lambda cell: isinstance(cell, str) and DATE.fullmatch(cell) is not None).all():
        return "date"
    return "text"


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
    cells = pd.read_csv(source, usecols=[column.name], dtype=str)[column.name].dropna()
    return bool(cells.str.strip().str.fullmatch(r"[+-]?\d+").all())


def _class_index(classes: tuple, values) -> np.ndarray:
    """Each value's index in `classes`, int32."""
    position = {label: index for index, label in enumerate(classes)}
    return np.asarray([position[_label(value)] for value in values], np.int32)


def _choose(frame, source: str, target: str | None, features: tuple[str, ...] | None, weight: str | None = None):
    """(frame with str column names, feature names, target name); DataError naming what is missing, or a `weight`
    column that is the target or a feature (it is left out of the default features)."""
    names = [str(name) for name in frame.columns]
    frame = frame.set_axis(names, axis=1)
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
    return frame, features, target


def _task(frame, target: str, task: str) -> str:
    """ "classification" for a text or boolean target under auto (numbers, integers included, are regression
    unless asked), or as given."""
    if task != "auto":
        return task
    column = frame[target]
    cells = column.dropna()
    boolean = len(cells) > 0 and cells.map(lambda cell: isinstance(cell, (bool, np.bool_))).all()
    return "classification" if boolean or _kind(column) == "text" else "regression"


def _refuse_unusable(frame, source: str, features: tuple[str, ...]) -> None:
    """DataError naming the feature columns that are neither numbers nor categories (dates, free text, an
    identifier per row), with the --features that leaves them out."""
    unusable = {}
    for name in features:
        kind, cells = _kind(frame[name]), frame[name].dropna()
        distinct = cells.map(str).nunique()
        if kind == "date":
            unusable[name] = f"dates or times (such as {str(cells.iloc[0])!r})"
        elif kind == "text" and (distinct > MAX_CATEGORIES or (distinct > 10 and distinct > len(cells) / 2)):
            unusable[name] = f"free text ({distinct} distinct values in {len(cells)} cells)"
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
    empty = frame[[*features, target]].isna()
    counts = {name: int(count) for name, count in empty.sum().items() if count}
    if counts and missing == "error":
        first = lambda name: frame.index[np.flatnonzero(empty[name].to_numpy())[0]] + 1
        raise DataError(
            f"{source}: "
            + ", ".join(
                f"column {name!r} has {count} empty cell(s) (the first in row {first(name)})"
                for name, count in counts.items()
            )
            + "; pass --missing drop to leave those rows out, or --missing impute to fill the features "
            "(the training rows' mean, or most frequent category) and leave out rows without a target"
        )
    no_target = empty[target].to_numpy()
    keep = ~(empty.any(axis=1).to_numpy() if missing == "drop" else no_target)
    left_out = {"no_target": int(no_target.sum()), "empty_feature": int((~keep & ~no_target).sum())}
    notes = [f"{source}: left out {left_out['no_target']} row(s) without a target ({target!r})"] * bool(
        left_out["no_target"]
    ) + [f"{source}: left out {left_out['empty_feature']} row(s) with an empty feature cell (--missing drop)"] * bool(
        left_out["empty_feature"]
    )
    return keep, left_out, notes


def _fingerprint(frame, features: tuple[str, ...], target: str, weight: str | None = None) -> str:
    """sha256 of the used columns' cells and names (the weight column's last, where there is one): numbers as
    float64 bytes (as they always were, so older runs resume), a table with text by pandas' hash of each row."""
    import pandas as pd

    used = frame[[*features, target, *([weight] if weight else [])]]
    if all(pd.api.types.is_numeric_dtype(used[name]) for name in used.columns):
        content = np.ascontiguousarray(used.to_numpy(np.float64, na_value=np.nan)).tobytes()
    else:
        content = pd.util.hash_pandas_object(used, index=False).to_numpy().tobytes()
    return hashlib.sha256(content + repr((tuple(features), target)).encode()).hexdigest()


def _row_weights(frame, source: str, weight: str) -> np.ndarray:
    """The `weight` column as float64; DataError naming the first cell that is empty, not a number, infinite or
    negative."""
    weights = _numeric(frame, (weight,), source)[:, 0]
    negative = np.flatnonzero(weights < 0)
    if len(negative):
        raise DataError(
            f"{source}: column {weight!r}, row {frame.index[negative[0]] + 1}: the weight {weights[negative[0]]} is "
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
) -> Split:
    """Read `source` (see `read`), leave out rows with empty cells as `missing` says, hold out
    round(test_fraction · rows) rows (at least one) chosen by `split_seed`, and encode and standardise with the
    training rows' statistics: categories, fill values, means and deviations (see `Scaling`); `sample_weight`
    names a column of row weights (`Split.w_train`)."""
    import pandas as pd

    frame = read(source, seed=split_seed)
    if target is None and Path(source).suffix.lower() == ".npz" and "y" not in frame.columns:
        raise DataError(
            f"{source}: holds no array 'y', the target to train on (x only); add y, or name a column of x "
            f"(x0, x1, …) with --target"
        )
    frame, features, target = _choose(frame, source, target, features, sample_weight)
    if len(frame) == 0:
        raise DataError(f"{source}: no rows")
    fingerprint, task = _fingerprint(frame, features, target, sample_weight), _task(frame, target, task)
    integer_classes = task == "classification" and _integers_read_as_floats(source, frame[target])
    _refuse_unusable(frame, source, features)
    keep, left_out, notes = _missing_cells(frame, source, features, target, missing)
    notes = (*frame.attrs.get("notes", ()), *notes)
    frame = frame[keep]
    if len(frame) < 2:
        raise DataError(
            f"{source}: {len(frame)} row{'s' * (len(frame) != 1)}{' with a target' * any(~keep)}; "
            f"need at least 2 (one to train on, one held out)"
        )
    order = np.random.default_rng(split_seed).permutation(len(frame))
    n_test = max(1, round(len(frame) * test_fraction))
    test, train = order[:n_test], order[n_test:]
    w_train = None if sample_weight is None else _row_weights(frame, source, sample_weight)[train]
    if w_train is not None and not w_train.sum() > 0:
        raise DataError(
            f"{source}: column {sample_weight!r} weighs 0 in every training row; --sample-weight needs a weight > 0"
        )
    training = frame.iloc[train]
    text = [name for name in features if _kind(frame[name]) == "text"]
    fill: dict = {}
    for name in features if missing == "impute" else ():  # every feature: a gap may come in new rows only
        cells = training[name].dropna()
        if not len(cells):
            raise DataError(f"{source}: column {name!r} has no value in the training rows to impute from")
        fill[name] = (  # the most frequent category (the first in order on a tie), or the mean
            cells.map(str).value_counts().sort_index().idxmax()
            if name in text
            else float(pd.to_numeric(cells, errors="coerce").mean())
        )
    categories = {name: tuple(sorted(training[name].dropna().map(str).unique())) for name in text}
    rows = frame.index.to_numpy() + 1  # each kept row's number in the file, for messages
    if task == "classification":
        labels = frame[target].to_numpy(np.int64 if integer_classes else None)  # spelled as in the file
        infinite = [k for k, value in enumerate(labels) if isinstance(_label(value), float) and np.isinf(value)]
        if infinite:
            raise DataError(
                f"{source}: column {target!r}, row {rows[infinite[0]]}: the class {labels[infinite[0]]} is not a "
                f"finite number; a class is text, a boolean or a finite number"
            )
        classes = tuple(sorted({_label(value) for value in labels}, key=lambda label: (str(type(label)), label)))
        if not 2 <= len(classes) <= MAX_CLASSES:
            raise DataError(
                f"{source}: the target {target!r} has {len(classes)} distinct value(s); classification "
                f"needs between 2 and {MAX_CLASSES}" + "; use --task regression" * (len(classes) > 2)
            )
        scaling = Scaling(features, target, (), (), 0.0, 1.0, task, classes)
    else:
        labels = _numeric(frame, (target,), source)[:, 0]
        scaling = Scaling(
            features, target, (), (), float(labels[train].mean()), float(labels[train].std()) or 1.0
        )  # a constant target standardises to 0
    scaling = scaling._replace(categories=MappingProxyType(categories), fill=MappingProxyType(fill))
    x = scaling.encode(frame, source, unseen="zeros")
    one_hot = np.asarray([name not in features for name in scaling.input_names])
    deviation = x[train].std(0)
    scaling = scaling._replace(
        x_mean=tuple(np.where(one_hot, 0.0, x[train].mean(0)).tolist()),
        x_std=tuple(np.where(one_hot | (deviation == 0), 1.0, deviation).tolist()),
    )
    unseen = {
        name: sorted(set(frame[name].iloc[test].dropna().map(str)) - set(known)) for name, known in categories.items()
    }
    notes += tuple(
        f"{source}: column {name!r} holds {', '.join(map(repr, values))} in held-out rows only, not in "
        f"the training rows: encoded there as no known category"
        for name, values in unseen.items()
        if values
    )
    x, y = scaling.standardise(x, source, rows), scaling.target(labels, source, rows)  # every row checked
    return Split(x[train], y[train], x[test], y[test], scaling, fingerprint, notes, MappingProxyType(left_out), w_train)

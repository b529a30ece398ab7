"""`bp-jax train --data FILE` and `bp-jax predict`: the user's own data, end to end (in this process: run_cli)."""

import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import checkpoint_steps, run_cli


def houses(rows: int, seed: int = 0) -> pd.DataFrame:
    """A small regression table: float and integer features, a constant column, a target in its own units."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "size": rng.uniform(30, 200, rows).round(1),
            "rooms": rng.integers(1, 7, rows),
            "floors": np.full(rows, 2),
            "age": rng.integers(0, 80, rows),
        }
    )
    frame["price"] = (2.5 * frame["size"] + 10 * frame["rooms"] - 0.8 * frame["age"] + rng.normal(0, 15, rows)).round(
        2
    )  # as written to a CSV, so .npz and .csv hold the same
    return frame


@pytest.fixture(scope="module")
def csv_run(tmp_path_factory):
    """A run trained on a CSV (target named, not the last column), and that CSV."""
    folder = tmp_path_factory.mktemp("csv")
    table = houses(300)[["size", "rooms", "price", "floors", "age"]]
    table.to_csv(folder / "houses.csv", index=False)
    run_cli(
        "train",
        "--data",
        folder / "houses.csv",
        "--target",
        "price",
        "--optimizer",
        "adam",
        "--steps",
        600,
        "--out",
        folder / "run",
    )
    return folder / "run", folder / "houses.csv"


@pytest.mark.slow
def test_training_on_a_csv_learns_and_records_what_prediction_needs(csv_run):
    run, _ = csv_run
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["config"]["target"] == "price"
    assert metrics["config"]["features"] == ["size", "rooms", "floors", "age"]
    assert metrics["config"]["dataset"] == str(csv_run[1].absolute())
    scaling = metrics["data"]["scaling"]
    assert scaling["feature_names"] == metrics["config"]["features"] and scaling["target_name"] == "price"
    assert scaling["x_std"][2] == 1.0  # the constant column: no division by zero
    assert all(np.isfinite(value) for _, value in metrics["loss_history"])
    assert metrics["held_out_mse"] < 0.5 * metrics["baseline_held_out_mse"]


def test_predict_writes_one_prediction_per_row_in_the_targets_units(csv_run, tmp_path):
    run, csv = csv_run
    table = pd.read_csv(csv)
    printed = run_cli("predict", run, "--data", csv).stdout
    run_cli("predict", run, "--data", csv, "--out", tmp_path / "predictions.csv")
    assert (tmp_path / "predictions.csv").read_text() == printed
    predictions = pd.read_csv(tmp_path / "predictions.csv")
    assert list(predictions.columns) == ["price"] and len(predictions) == len(table)
    # In the target's units: the squared error over all rows, divided by the training split's variance of
    # the target, is the row-weighted mean of train and held-out MSE that training measured.
    metrics = json.loads((run / "metrics.json").read_text())
    scaling, examples = metrics["data"]["scaling"], metrics["examples"]
    measured = np.mean(((predictions["price"] - table["price"]) / scaling["y_std"]) ** 2)
    expected = (examples["train"] * metrics["train_mse"] + examples["held_out"] * metrics["held_out_mse"]) / len(table)
    assert measured == pytest.approx(expected, rel=1e-4)


def test_predict_takes_rows_without_the_target_and_in_any_column_order(csv_run, tmp_path):
    run, csv = csv_run
    table = pd.read_csv(csv)
    table[["age", "floors", "rooms", "size"]].to_csv(tmp_path / "new.csv", index=False)
    with_target = pd.read_csv(io.StringIO(run_cli("predict", run, "--data", csv).stdout))
    without = pd.read_csv(io.StringIO(run_cli("predict", run, "--data", tmp_path / "new.csv").stdout))
    pd.testing.assert_frame_equal(with_target, without)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda table: table.drop(columns=["rooms"]), "missing column(s) 'rooms'"),
        (lambda table: table.assign(colour=1), "extra column(s) 'colour'"),
        (
            lambda table: table.assign(age=table["age"].astype(object).where(table.index != 3, "old")),
            "column 'age', row 4: the cell holds 'old'",
        ),
    ],
)
@pytest.mark.slow
def test_predict_refuses_other_columns_or_bad_cells_naming_them(csv_run, tmp_path, change, message):
    run, csv = csv_run
    change(pd.read_csv(csv)).to_csv(tmp_path / "new.csv", index=False)
    result = run_cli("predict", run, "--data", tmp_path / "new.csv", "--out", tmp_path / "out.csv", check=False)
    assert result.returncode == 2 and message in result.stderr and "new.csv" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out.csv").exists()


def test_predict_never_overwrites_a_file(csv_run, tmp_path):
    run, csv = csv_run
    (tmp_path / "out.csv").write_text("mine\n")
    result = run_cli("predict", run, "--data", csv, "--out", tmp_path / "out.csv", check=False)
    assert result.returncode == 2 and "already exists" in result.stderr
    assert (tmp_path / "out.csv").read_text() == "mine\n"


@pytest.mark.slow
def test_training_on_an_npz_and_default_target_is_the_last_column(tmp_path):
    table = houses(200, seed=1)
    np.savez(tmp_path / "houses.npz", x=table.drop(columns="price").to_numpy(), y=table["price"].to_numpy())
    table.to_csv(tmp_path / "houses.csv", index=False)
    for source in ("houses.npz", "houses.csv"):
        run_cli("train", "--data", tmp_path / source, "--steps", 50, "--out", tmp_path / source.replace(".", "-"))
    from_npz = json.loads((tmp_path / "houses-npz" / "metrics.json").read_text())
    from_csv = json.loads((tmp_path / "houses-csv" / "metrics.json").read_text())
    assert from_csv["config"]["target"] == "price" and from_npz["config"]["target"] == "y"
    assert from_npz["loss_history"] == from_csv["loss_history"]  # the same numbers, whatever the format


def test_features_picks_columns(tmp_path):
    houses(200).to_csv(tmp_path / "houses.csv", index=False)
    run_cli(
        "train", "--data", tmp_path / "houses.csv", "--features", "size,age", "--steps", 20, "--out", tmp_path / "run"
    )
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["config"]["features"] == ["size", "age"] and metrics["examples"]["features"] == 2


def _text_cell(table):
    table["age"] = table["age"].astype(object)
    table.loc[6, "age"] = "unknown"
    return table


def _empty_cell(table):
    table.loc[4, "rooms"] = None
    return table


BAD_DATA = {
    "missing file": (None, [], "no such file"),
    "a text cell": (_text_cell, [], "column 'age', row 7: the cell holds 'unknown'"),
    "an empty cell": (_empty_cell, [], "column 'rooms' has 1 empty cell(s) (the first in row 5)"),
    "a NaN": (
        lambda table: table.assign(size=table["size"].where(table.index != 9, np.nan)),
        [],
        "column 'size' has 1 empty cell(s) (the first in row 10)",
    ),
    "a missing target": (lambda table: table, ["--target", "value"], "no target column 'value'"),
    "a missing feature": (lambda table: table, ["--features", "size,colour"], "no column(s) 'colour'"),
    "no rows": (lambda table: table.iloc[:0], [], "no rows"),
    "fewer rows than a batch": (lambda table: table.iloc[:30], [], "--batch-size must be between 1 and 24"),
}


@pytest.mark.parametrize("case", BAD_DATA)
def test_bad_data_is_one_line_naming_the_file_and_nothing_is_written(tmp_path, case):
    change, args, message = BAD_DATA[case]
    data = tmp_path / "houses.csv"
    if change is not None:
        change(houses(100)).to_csv(data, index=False)
    result = run_cli("train", "--data", data, "--steps", 10, *args, check=False, cwd=tmp_path)
    assert result.returncode == 2
    assert message in result.stderr and str(data) in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert sorted(path.name for path in tmp_path.iterdir()) == (["houses.csv"] if change else [])


def test_split_seed_chooses_the_held_out_rows_apart_from_the_init(tmp_path):
    args = ("--dataset", "synthetic", "--steps", 30)
    run_cli("train", *args, "--seed", 5, "--out", tmp_path / "a")
    run_cli("train", *args, "--seed", 0, "--split-seed", 5, "--out", tmp_path / "b")
    run_cli("train", *args, "--seed", 0, "--out", tmp_path / "c")
    a, b, c = (json.loads((tmp_path / name / "metrics.json").read_text()) for name in "abc")
    assert a["config"]["split_seed"] == b["config"]["split_seed"] == 5 and c["config"]["split_seed"] == 0
    assert a["data"]["scaling"] == b["data"]["scaling"] != c["data"]["scaling"]  # the same training rows
    assert a["baseline_held_out_mse"] == b["baseline_held_out_mse"]
    assert a["loss_history"] != b["loss_history"]  # another init and data order
    refused = run_cli("train", "--resume", tmp_path / "b", "--split-seed", 6, "--steps", 40, check=False)
    assert refused.returncode == 2 and "split_seed=5, not 6" in refused.stderr
    assert checkpoint_steps(Path(tmp_path / "b")) == [30]


def _refused(result, *messages):
    """The command's refusal: exit 2, one line `bp-jax <cmd>: error: …` holding every message, no traceback."""
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and " error: " in lines[0] and "Traceback" not in result.stderr, result.stderr
    for message in messages:
        assert message in lines[0], lines[0]


def _cell(column, row, value):
    """A change putting `value` (a number or the cell's text) in `column` at row `row` (from 1)."""

    def change(table):
        table[column] = table[column].astype(object)
        table.loc[row - 1, column] = value
        return table

    return change


@pytest.mark.parametrize(
    "change, args, message",
    [
        (_cell("size", 8, 1e39), [], "column 'size', row 8: the cell holds 1e+39, beyond float32's range"),
        (_cell("price", 3, -1e308), [], "column 'price', row 3: the cell holds -1e+308, beyond float32's range"),
        (_cell("age", 5, "inf"), [], "column 'age', row 5: the cell holds inf, not a finite number"),
        (_cell("age", 6, "-inf"), [], "column 'age', row 6: the cell holds -inf, not a finite number"),
        (
            _cell("price", 4, "inf"),
            ["--task", "classification"],
            "column 'price', row 4: the class inf is not a finite number",  # strict JSON would record it as null
        ),
        (lambda table: table, ["--features", "size,nope"], "the columns are 'size', 'rooms', 'floors', 'age', 'price'"),
        (
            lambda table: table.rename(columns={"size": " size "}),
            ["--features", "size"],
            "no column(s) 'size' for --features; the columns are ' size ', ",
        ),
    ],
)
def test_cells_beyond_float32_and_unknown_names_are_refused_naming_them(tmp_path, change, args, message):
    change(houses(100)).to_csv(tmp_path / "houses.csv", index=False)
    result = run_cli("train", "--data", tmp_path / "houses.csv", "--steps", 10, *args, check=False, cwd=tmp_path)
    _refused(result, message, str(tmp_path / "houses.csv"))
    assert "np.float64" not in result.stderr
    assert sorted(path.name for path in tmp_path.iterdir()) == ["houses.csv"]


def _write_folder(path):
    path.mkdir()


RAW_FILES = {  # what is written at data/<name>, and what the refusal says
    "a folder named .csv": ("x.csv", _write_folder, "x.csv: is a folder, not a file"),
    "a CSV renamed .npz": (
        "x.npz",
        lambda path: houses(20).to_csv(path, index=False),
        "x.npz: not a valid .npz (zip) file",
    ),
    "an .npz without y": (
        "x.npz",
        lambda path: np.savez(path, x=np.ones((20, 3))),
        "x.npz: holds no array 'y', the target to train on (x only)",
    ),
    "a repeated header name": (
        "x.csv",
        lambda path: path.write_text("a,a,y\n1,2,3\n4,5,6\n7,8,9\n"),
        "x.csv: the header names column(s) 'a' more than once",
    ),
}


@pytest.mark.parametrize("case", RAW_FILES)
def test_files_that_are_not_tables_are_refused_saying_what_they_are(tmp_path, case):
    name, write, message = RAW_FILES[case]
    (tmp_path / "data").mkdir()
    write(tmp_path / "data" / name)
    for command in (["train", "--steps", 10], ["sweep", "--lr", "0.1", "--steps", 10]):
        result = run_cli(*command, "--data", tmp_path / "data" / name, check=False, cwd=tmp_path)
        _refused(result, message)
        assert "allow_pickle" not in result.stderr and "no such file" not in result.stderr
        assert sorted(path.name for path in tmp_path.iterdir()) == ["data"]


@pytest.mark.parametrize(
    "features, message",
    [
        ("size,size", "--features: column 'size' is named twice"),
        ('size,"age', "expected comma-separated column names"),
        ("size,,age", "expected comma-separated column names"),
    ],
)
def test_features_naming_a_column_twice_or_unparsable_are_refused(tmp_path, features, message):
    houses(100).to_csv(tmp_path / "houses.csv", index=False)
    result = run_cli(
        "train", "--data", tmp_path / "houses.csv", "--features", features, "--steps", 10, check=False, cwd=tmp_path
    )
    _refused(result, message)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["houses.csv"]


def test_columns_with_spaces_or_commas_are_named_in_quotes(tmp_path):
    table = houses(100).rename(columns={"size": "size, m²", "rooms": " rooms "})
    table.to_csv(tmp_path / "houses.csv", index=False)
    run_cli(
        "train",
        "--data",
        tmp_path / "houses.csv",
        "--features",
        '"size, m²", " rooms " ,age',
        "--steps",
        10,
        "--out",
        tmp_path / "run",
    )
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["config"]["features"] == ["size, m²", " rooms ", "age"]


@pytest.mark.slow
def test_an_unnamed_index_column_is_left_out_with_a_note(tmp_path):
    table = houses(100)
    table.to_csv(tmp_path / "indexed.csv")  # pandas' default: the index first, under an empty header
    table.to_csv(tmp_path / "plain.csv", index=False)
    runs, notes = {}, {}
    for name in ("indexed", "plain"):
        result = run_cli("train", "--data", tmp_path / f"{name}.csv", "--steps", 20, "--out", tmp_path / name)
        runs[name] = json.loads((tmp_path / name / "metrics.json").read_text())
        notes[name] = [line for line in result.stderr.splitlines() if "note:" in line]
    assert notes["plain"] == [] and len(notes["indexed"]) == 1
    assert "indexed.csv: left out the first column, unnamed" in notes["indexed"][0]
    assert runs["indexed"]["config"]["features"] == ["size", "rooms", "floors", "age"]
    assert runs["indexed"]["loss_history"] == runs["plain"]["loss_history"]  # the same data
    predicted = run_cli("predict", tmp_path / "plain", "--data", tmp_path / "indexed.csv")
    assert "left out the first column" in predicted.stderr
    assert predicted.stdout == run_cli("predict", tmp_path / "plain", "--data", tmp_path / "plain.csv").stdout


@pytest.fixture(scope="module")
def tiny_column_run(tmp_path_factory):
    """A run trained on a table with a column that varied by 1e-30, and that table."""
    folder = tmp_path_factory.mktemp("tiny")
    table = houses(100).assign(tiny=np.random.default_rng(0).uniform(0, 1e-30, 100))
    table.to_csv(folder / "houses.csv", index=False)
    run_cli("train", "--data", folder / "houses.csv", "--target", "price", "--steps", 5, "--out", folder / "run")
    return folder / "run", table


@pytest.mark.parametrize(
    "change, message",
    [
        (_cell("size", 2, 1e39), "column 'size', row 2: the cell holds 1e+39, beyond float32's range"),
        (_cell("tiny", 3, 1e10), "column 'tiny', row 3: the cell 10000000000.0 standardises to beyond float32's range"),
    ],
)
@pytest.mark.slow
def test_predict_refuses_rows_beyond_float32(tiny_column_run, tmp_path, change, message):
    """A cell beyond float32, or one whose standardised form is (a column that varied by 1e-30 in training)."""
    run, table = tiny_column_run
    change(table.copy()).to_csv(tmp_path / "new.csv", index=False)
    result = run_cli("predict", run, "--data", tmp_path / "new.csv", "--out", tmp_path / "out.csv", check=False)
    _refused(result, message, "new.csv")
    assert not (tmp_path / "out.csv").exists()


def _below_a_file(tmp_path):
    """A folder that cannot be created, even by root: its parent is a regular file."""
    (tmp_path / "file").write_text("")
    return tmp_path / "file" / "cache"


@pytest.mark.parametrize(
    "where, named",
    [
        ("XDG_CACHE_HOME", "$XDG_CACHE_HOME"),
        ("BP_JAX_COMPILE_CACHE", "$BP_JAX_COMPILE_CACHE"),
    ],
)
@pytest.mark.slow
def test_an_unusable_default_cache_is_a_warning_and_training_goes_on(tmp_path, where, named):
    for folder in (_below_a_file(tmp_path), Path("/proc")):  # cannot be created; exists but cannot be written
        out = tmp_path / f"run-{folder.name}"
        result = run_cli("train", "--steps", 5, "--out", out, env={"BP_JAX_COMPILE_CACHE": None} | {where: folder})
        warnings = [line for line in result.stderr.splitlines() if "warning" in line]
        assert len(warnings) == 1 and named in warnings[0] and "without it" in warnings[0], result.stderr
        assert "--compile-cache" not in result.stderr and "Traceback" not in result.stderr
        assert (out / "metrics.json").exists()


def test_an_unusable_compile_cache_flag_is_an_error_naming_the_flag(tmp_path):
    for folder in (_below_a_file(tmp_path), Path("/proc")):
        result = run_cli("train", "--steps", 5, "--out", tmp_path / "run", "--compile-cache", folder, check=False)
        _refused(result, f"--compile-cache {folder}: cannot ")
        assert not (tmp_path / "run").exists()


def test_a_table_too_big_for_memory_is_refused_before_it_is_read(tmp_path, csv_run, monkeypatch):
    """Train and predict name the table's size and the memory available, exit 2, and never read the cells."""
    from bp_jax.cli import data

    houses(100).to_csv(tmp_path / "houses.csv", index=False)
    houses(100).to_parquet(tmp_path / "houses.parquet")
    monkeypatch.setattr(data, "available_memory", lambda: 5_000)  # 100 rows × 5 columns: 4 000 bytes as float64
    read_csv = pd.read_csv  # the header alone is read (nrows=1), the cells never
    monkeypatch.setattr(
        pd,
        "read_csv",
        lambda *args, **kwargs: (
            read_csv(*args, **kwargs) if kwargs.get("nrows") == 1 else pytest.fail("the CSV's cells were read")
        ),
    )
    monkeypatch.setattr(pd, "read_parquet", lambda *args, **kwargs: pytest.fail("the parquet's cells were read"))
    for name in ("houses.csv", "houses.parquet"):
        result = run_cli("train", "--data", tmp_path / name, "--steps", 10, "--out", tmp_path / "run", check=False)
        _refused(result, f"{name}: the table is too big for memory: 100 rows × 5 columns (4e-06 GB as float64)")
        assert "and 5e-06 GB is available" in result.stderr and not (tmp_path / "run").exists()
    result = run_cli("predict", csv_run[0], "--data", tmp_path / "houses.parquet", check=False)
    _refused(result, "houses.parquet: the table is too big for memory: 100 rows × 4 columns")


def test_only_the_used_columns_are_read_and_each_table_fingerprinted_as_before(tmp_path, monkeypatch):
    """`load` asks `read` for the target, features and weight alone, and a CSV or parquet gives just those; the
    fingerprint, hashed CHUNK_ROWS rows at a time, is the sha256 of all rows at once as older runs recorded it:
    float64 bytes of the rows of numbers, pandas' row hashes of a table with text."""
    import hashlib

    from bp_jax.cli import data

    monkeypatch.setattr(data, "CHUNK_ROWS", 7)  # 50 rows: chunks of 7 and a last one of 1
    table = houses(50).assign(flag=lambda frame: frame["rooms"] > 3, note="x")
    table["rooms"] = table["rooms"].astype("Int64").where(table.index != 4)  # a gap in a nullable column
    table.to_parquet(tmp_path / "t.parquet")
    table.assign(note=[f"free text {i}" for i in range(50)]).to_csv(tmp_path / "t.csv")  # and an index column
    asked = []
    spy = lambda source, **kwargs: asked.append(kwargs["columns"]) or data.read(source, **kwargs)
    for name, features, weight in [
        ("t.parquet", ("size", "rooms", "flag"), "age"),
        ("t.csv", ("size", "floors"), None),
    ]:
        split = data.load(
            str(tmp_path / name),
            target="price",
            features=features,
            sample_weight=weight,
            missing="drop",
            read_columns=spy,
        )
        features = split.scaling.feature_names
        used = [*features, "price", *([weight] if weight else [])]
        assert sorted(asked[-1]) == sorted(used) and "note" not in asked[-1]
        assert sorted(data.read(str(tmp_path / name), columns=asked[-1]).columns) == sorted(used)
        rows = data.read(str(tmp_path / name))[used]
        content = (
            rows.to_numpy(np.float64, na_value=np.nan).tobytes()
            if all(pd.api.types.is_numeric_dtype(rows[column]) for column in used)
            else pd.util.hash_pandas_object(rows, index=False).to_numpy().tobytes()
        )
        assert split.fingerprint == hashlib.sha256(content + repr((features, "price")).encode()).hexdigest()


def test_dates_are_told_by_pythons_re_where_pyarrow_differs():
    """pyarrow's \\d and \\s are ASCII: a date in other digits is still a date, and text is not."""
    from bp_jax.cli import data

    assert data._kind(pd.Series(["2024-01-0\u0663", "2024-01-02", None])) == "date"  # ٣, an Arabic-Indic 3
    assert data._kind(pd.Series(["2024-01-01", "2024-01-02x"])) == "text"
    assert data._kind(pd.Series(["2024-01-01", 3.5], dtype=object)) == "text"

"""`bp-jax train`, `predict` and `sweep` on real tables: class targets, text features, empty cells, dates and
parquet, end to end (in this process: run_cli)."""

import io
import json

import numpy as np
import pandas as pd
import pytest
from helpers import assert_same_state, run_cli, strict_json

from bp_jax.cli import data

QUICK = ("--steps", 40)


def animals(rows: int, seed: int = 0) -> pd.DataFrame:
    """A penguin-like table: a text class (three species, unequal), a text feature tied to the class (island),
    one unrelated to it (sex), and four measurements whose means differ by species."""
    rng = np.random.default_rng(seed)
    species = rng.choice(["Adelie", "Chinstrap", "Gentoo"], rows, p=[0.45, 0.2, 0.35])
    means = {"Adelie": (38.8, 18.3, 190, 3700), "Chinstrap": (48.8, 18.4, 196, 3730), "Gentoo": (47.5, 15.0, 217, 5080)}
    island = np.where(
        species == "Gentoo",
        "Biscoe",
        np.where(species == "Chinstrap", "Dream", rng.choice(["Torgersen", "Biscoe", "Dream"], rows)),
    )
    mean = np.array([means[name] for name in species])
    return pd.DataFrame(
        {
            "island": island,
            "bill_length_mm": (mean[:, 0] + rng.normal(0, 2.5, rows)).round(1),
            "bill_depth_mm": (mean[:, 1] + rng.normal(0, 1, rows)).round(1),
            "flipper_length_mm": (mean[:, 2] + rng.normal(0, 6, rows)).round(0),
            "body_mass_g": (mean[:, 3] + rng.normal(0, 400, rows)).round(-1),
            "sex": rng.choice(["male", "female"], rows),
            "species": species,
        }
    )


def error_line(result) -> str:
    """The command's one-line error (exit status 2, no traceback)."""
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(lines) == 1, result.stderr
    return lines[0]


def read_csv(text: str) -> pd.DataFrame:
    return pd.read_csv(io.StringIO(text))


@pytest.fixture(scope="module")
def class_run(tmp_path_factory):
    """A first run without flags (the defaults) on a 300-row table with a text class and text features."""
    folder = tmp_path_factory.mktemp("animals")
    animals(300).to_csv(folder / "animals.csv", index=False)
    result = run_cli("train", "--data", folder / "animals.csv", "--target", "species", "--out", folder / "run")
    return folder / "run", folder / "animals.csv", result


def test_a_text_target_is_classification_and_the_defaults_beat_the_majority_class(class_run):
    run, _, result = class_run
    metrics = strict_json(run / "metrics.json")
    assert metrics["task"] == metrics["config"]["task"] == "classification"
    assert metrics["config"]["hidden"] == [16] and metrics["config"]["lr"] == 0.1  # the class target's defaults
    scaling = metrics["data"]["scaling"]
    assert scaling["classes"] == ["Adelie", "Chinstrap", "Gentoo"]
    assert scaling["categories"] == {"island": ["Biscoe", "Dream", "Torgersen"], "sex": ["female", "male"]}
    assert metrics["examples"]["features"] == 3 + 4 + 2  # island one-hot, four numbers, sex one-hot
    counts = metrics["examples"]["classes"]
    assert sum(counts["train"].values()) == metrics["examples"]["train"] == 240
    assert sum(counts["held_out"].values()) == metrics["examples"]["held_out"] == 60
    majority = max(counts["train"], key=counts["train"].get)
    assert metrics["baseline_held_out_accuracy"] == counts["held_out"][majority] / 60
    assert metrics["held_out_accuracy"] > metrics["baseline_held_out_accuracy"] + 0.3
    assert metrics["train_accuracy"] > 0.8 and 0 < metrics["held_out_log_loss"] < np.log(3)
    assert "held_out_mse" not in metrics
    assert "held-out accuracy, majority class" in result.stdout and (run / "loss_curve.png").stat().st_size > 0


@pytest.mark.slow
def test_predict_writes_the_class_as_spelled_and_probabilities_summing_to_one(class_run, tmp_path):
    run, csv, _ = class_run
    table = pd.read_csv(csv)
    predictions = read_csv(run_cli("predict", run, "--data", csv).stdout)
    classes = ["Adelie", "Chinstrap", "Gentoo"]
    assert list(predictions.columns) == ["species", *(f"P({name})" for name in classes)]
    probabilities = predictions[[f"P({name})" for name in classes]].to_numpy()
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=0, atol=1e-12)
    assert (predictions["species"] == np.asarray(classes)[probabilities.argmax(axis=1)]).all()
    # every row predicted: the accuracy over the whole table is the row-weighted mean that training measured
    metrics = strict_json(run / "metrics.json")
    examples = metrics["examples"]
    expected = (
        examples["train"] * metrics["train_accuracy"] + examples["held_out"] * metrics["held_out_accuracy"]
    ) / len(table)
    assert np.mean(predictions["species"] == table["species"]) == pytest.approx(expected, abs=1e-9)
    # without the target, columns in another order: the same predictions
    table.drop(columns="species")[table.columns[::-1][1:]].to_csv(tmp_path / "new.csv", index=False)
    pd.testing.assert_frame_equal(read_csv(run_cli("predict", run, "--data", tmp_path / "new.csv").stdout), predictions)


def test_predict_refuses_a_category_never_seen_in_training_naming_it(class_run, tmp_path):
    run, csv, _ = class_run
    table = pd.read_csv(csv).head(5)
    table.loc[3, "island"] = "Mars"
    table.to_csv(tmp_path / "new.csv", index=False)
    line = error_line(run_cli("predict", run, "--data", tmp_path / "new.csv", "--out", tmp_path / "p.csv", check=False))
    assert "column 'island', row 4: 'Mars' is not a category" in line
    assert "'Biscoe', 'Dream', 'Torgersen'" in line
    assert not (tmp_path / "p.csv").exists()


@pytest.mark.slow
def test_resuming_a_class_run_gives_the_bits_of_one_uninterrupted_run(class_run, tmp_path):
    _, csv, _ = class_run
    flags = ("--data", csv, "--target", "species", "--optimizer", "adam")
    run_cli("train", *flags, "--steps", 60, "--out", tmp_path / "whole")
    run_cli("train", *flags, "--steps", 25, "--out", tmp_path / "parts")
    run_cli("train", "--resume", tmp_path / "parts", "--steps", 60)
    assert_same_state(tmp_path / "whole", tmp_path / "parts")


def with_holes(rows: int = 200) -> pd.DataFrame:
    table = animals(rows, seed=1).astype({"body_mass_g": float})
    table.loc[[3, 50], "sex"] = None
    table.loc[7, "body_mass_g"] = None
    table.loc[[10, 11], "species"] = None
    return table


def test_empty_cells_are_refused_by_default_naming_columns_counts_and_option(tmp_path):
    with_holes().to_csv(tmp_path / "holes.csv", index=False)
    line = error_line(run_cli("train", "--data", tmp_path / "holes.csv", "--out", tmp_path / "run", check=False))
    assert (
        "column 'body_mass_g' has 1 empty cell(s) (the first in row 8), column 'sex' has 2 empty cell(s) (the "
        "first in row 4), column 'species' has 2 empty cell(s) (the first in row 11)"
    ) in line
    assert "--missing drop" in line and "--missing impute" in line
    assert not (tmp_path / "run").exists()


def test_drop_leaves_out_rows_with_an_empty_cell_and_counts_the_rows_used(tmp_path):
    with_holes().to_csv(tmp_path / "holes.csv", index=False)
    result = run_cli("train", "--data", tmp_path / "holes.csv", "--missing", "drop", *QUICK, "--out", tmp_path / "run")
    assert "left out 2 row(s) without a target ('species')" in result.stderr
    assert "left out 3 row(s) with an empty feature cell" in result.stderr
    examples = strict_json(tmp_path / "run" / "metrics.json")["examples"]
    assert examples["train"] + examples["held_out"] == 200 - 5
    assert examples["left_out"] == {"no_target": 2, "empty_feature": 3}


@pytest.mark.slow
def test_impute_fills_features_from_the_training_rows_and_predict_reuses_the_fill(tmp_path):
    table = with_holes()
    table.to_csv(tmp_path / "holes.csv", index=False)
    result = run_cli(
        "train", "--data", tmp_path / "holes.csv", "--missing", "impute", *QUICK, "--out", tmp_path / "run"
    )
    assert "left out 2 row(s) without a target" in result.stderr
    metrics = strict_json(tmp_path / "run" / "metrics.json")
    assert metrics["examples"]["train"] + metrics["examples"]["held_out"] == 198
    fill = metrics["data"]["scaling"]["fill"]
    assert set(fill) == set(table.columns) - {"species"}  # every feature, those without gaps in training too
    # the fill values are the training rows' statistics: recompute them from the training split's rows
    used = table[table["species"].notna()].reset_index(drop=True)
    order = np.random.default_rng(0).permutation(len(used))
    training = used.iloc[order[round(len(used) * 0.2) :]]
    for name in ("body_mass_g", "bill_depth_mm"):
        assert fill[name] == pytest.approx(training[name].mean(), rel=1e-12)
    assert fill["sex"] == training["sex"].value_counts().idxmax()
    assert fill["island"] == training["island"].value_counts().idxmax()
    # predict fills empty cells with the same values, in columns without gaps in training too
    features = table.drop(columns="species")
    features.loc[[20, 21], ["bill_depth_mm", "island"]] = None
    features.to_csv(tmp_path / "new.csv", index=False)
    features.fillna(fill).to_csv(tmp_path / "filled.csv", index=False)
    predicted = lambda name: read_csv(run_cli("predict", tmp_path / "run", "--data", tmp_path / name).stdout)
    pd.testing.assert_frame_equal(predicted("new.csv"), predicted("filled.csv"))


def test_impute_fills_a_nullable_integer_column_with_its_fractional_mean(tmp_path):
    rng = np.random.default_rng(0)
    counts = pd.array(rng.integers(0, 9, 60), dtype="Int64")
    counts[[3, 17, 40]] = pd.NA
    table = pd.DataFrame({"count": counts, "x": rng.normal(size=60), "y": rng.normal(size=60)})
    table.to_parquet(tmp_path / "counts.parquet")
    run_cli("train", "--data", tmp_path / "counts.parquet", "--missing", "impute", *QUICK, "--out", tmp_path / "run")
    fill = strict_json(tmp_path / "run" / "metrics.json")["data"]["scaling"]["fill"]["count"]
    assert fill != round(fill)  # the training rows' mean, not an integer the column's dtype could hold
    table.astype({"count": "float64"}).fillna({"count": fill}).to_parquet(tmp_path / "filled.parquet")
    predicted = lambda name: read_csv(run_cli("predict", tmp_path / "run", "--data", tmp_path / name).stdout)
    pd.testing.assert_frame_equal(predicted("counts.parquet"), predicted("filled.parquet"))


def test_a_parquet_column_of_lists_is_refused_in_one_line(tmp_path):
    table = pd.DataFrame({"tags": [[1, 2], [3]] * 20, "x": np.arange(40.0), "y": np.arange(40.0)})
    table.to_parquet(tmp_path / "nested.parquet")
    line = error_line(run_cli("train", "--data", tmp_path / "nested.parquet", "--out", tmp_path / "run", check=False))
    assert "'tags' hold nested values (list<" in line and "expected numbers or text" in line
    assert not (tmp_path / "run").exists()


def test_dates_and_free_text_are_refused_suggesting_features(tmp_path):
    table = animals(120)
    table.insert(0, "day", pd.date_range("2024-01-01", periods=120).strftime("%Y-%m-%d"))
    table.insert(1, "note", [f"seen at dawn, bird {i}" for i in range(120)])
    table.to_csv(tmp_path / "dated.csv", index=False)
    line = error_line(run_cli("train", "--data", tmp_path / "dated.csv", "--out", tmp_path / "run", check=False))
    assert "column 'day' holds dates or times (such as '2024-01-01')" in line
    assert "column 'note' holds free text (120 distinct values in 120 cells)" in line
    assert "--features island,bill_length_mm,bill_depth_mm,flipper_length_mm,body_mass_g,sex" in line
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_task_auto_keeps_integer_targets_regression_unless_asked(tmp_path):
    table = animals(150).assign(rank=lambda frame: frame["species"].map({"Adelie": 1, "Chinstrap": 2, "Gentoo": 3}))
    table.drop(columns="species").to_csv(tmp_path / "ranked.csv", index=False)
    run_cli("train", "--data", tmp_path / "ranked.csv", *QUICK, "--out", tmp_path / "auto")
    metrics = strict_json(tmp_path / "auto" / "metrics.json")
    assert metrics["task"] == "regression" and "held_out_mse" in metrics and "held_out_accuracy" not in metrics
    assert metrics["config"]["hidden"] == [5] and metrics["config"]["lr"] == 0.01
    run_cli("train", "--data", tmp_path / "ranked.csv", "--task", "classification", *QUICK, "--out", tmp_path / "cls")
    assert strict_json(tmp_path / "cls" / "metrics.json")["data"]["scaling"]["classes"] == [1, 2, 3]
    predictions = read_csv(run_cli("predict", tmp_path / "cls", "--data", tmp_path / "ranked.csv").stdout)
    assert list(predictions.columns) == ["rank", "P(1)", "P(2)", "P(3)"]
    assert set(predictions["rank"]) <= {1, 2, 3} and predictions["rank"].dtype.kind == "i"
    line = error_line(
        run_cli(
            "train",
            "--data",
            tmp_path / "ranked.csv",
            "--target",
            "island",
            "--task",
            "regression",
            *QUICK,
            "--out",
            tmp_path / "text",
            check=False,
        )
    )
    assert "column 'island', row 1: the cell holds" in line and not (tmp_path / "text").exists()


@pytest.mark.slow
def test_boolean_and_float_class_targets_come_back_spelled_as_in_the_data_and_older_records_as_recorded(tmp_path):
    table = animals(150).assign(heavy=lambda frame: frame["body_mass_g"] > 4200)[
        ["island", "flipper_length_mm", "heavy"]
    ]
    table.to_csv(tmp_path / "heavy.csv", index=False)
    run_cli("train", "--data", tmp_path / "heavy.csv", *QUICK, "--out", tmp_path / "run")
    assert strict_json(tmp_path / "run" / "metrics.json")["data"]["scaling"]["classes"] == [False, True]
    predictions = read_csv(run_cli("predict", tmp_path / "run", "--data", tmp_path / "heavy.csv").stdout)
    assert list(predictions.columns) == ["heavy", "P(False)", "P(True)"] and predictions["heavy"].dtype == bool
    # the class written 0.0 and 1.0 (the same shapes: the same compiled programs)
    table.assign(heavy=table["heavy"] * 1.0).to_csv(tmp_path / "float.csv", index=False)
    args = ("--data", tmp_path / "float.csv", "--task", "classification")
    run_cli("train", *args, *QUICK, "--out", tmp_path / "float")
    predicted = lambda: run_cli("predict", tmp_path / "float", "--data", tmp_path / "float.csv").stdout.splitlines()
    lines = predicted()
    assert lines[0] == "heavy,P(0.0),P(1.0)" and {line.split(",")[0] for line in lines[1:]} == {"0.0", "1.0"}
    # an integer column with an empty cell reads as floats; its classes stay integers
    ints = table.assign(heavy=table["heavy"].astype(int).astype(object))
    ints.loc[3, "heavy"] = None
    ints.to_csv(tmp_path / "ints.csv", index=False)
    classes = data.load(str(tmp_path / "ints.csv"), task="classification", missing="drop").scaling.classes
    assert [(type(label), label) for label in classes] == [(int, 0), (int, 1)]
    # a run recorded before classes kept their spelling holds 0 and 1: read as recorded
    path = tmp_path / "float" / "checkpoints" / "40" / "record" / "metadata"
    record = json.loads(path.read_text())
    record["data"]["scaling"]["classes"] = [0, 1]
    path.write_text(json.dumps(record))
    assert predicted()[0] == "heavy,P(0),P(1)" and predicted()[1].split(",")[0] in ("0", "1")


@pytest.mark.slow
def test_parquet_trains_and_predicts_as_the_same_csv_does(tmp_path):
    table = animals(150)
    table.to_csv(tmp_path / "animals.csv", index=False)
    table.to_parquet(tmp_path / "animals.parquet")
    for suffix in ("csv", "parquet"):
        run_cli("train", "--data", tmp_path / f"animals.{suffix}", *QUICK, "--out", tmp_path / suffix)
    assert_same_state(tmp_path / "csv", tmp_path / "parquet")
    from_parquet = run_cli("predict", tmp_path / "parquet", "--data", tmp_path / "animals.parquet").stdout
    assert from_parquet == run_cli("predict", tmp_path / "csv", "--data", tmp_path / "animals.csv").stdout
    (tmp_path / "broken.parquet").write_text("not parquet")
    line = error_line(run_cli("train", "--data", tmp_path / "broken.parquet", "--out", tmp_path / "b", check=False))
    assert "broken.parquet: cannot be read" in line and not (tmp_path / "b").exists()


@pytest.mark.slow
def test_runs_recorded_before_classification_still_predict_and_resume(tmp_path):
    """A record without task, missing, classes, categories or fill (a regression run on numbers), nor the later
    settings (early stopping, ensemble, dropout, schedule, weight decay, weights: off)."""
    table = animals(150).drop(columns=["island", "sex", "species"])
    table.to_csv(tmp_path / "numbers.csv", index=False)
    run_cli("train", "--data", tmp_path / "numbers.csv", "--steps", 20, "--out", tmp_path / "run")
    before = run_cli("predict", tmp_path / "run", "--data", tmp_path / "numbers.csv").stdout
    path = tmp_path / "run" / "checkpoints" / "20" / "record" / "metadata"
    record = json.loads(path.read_text())
    later = ("early_stopping", "validation_fraction", "patience", "ensemble", "dropout")
    later += ("schedule", "warmup_epochs", "weight_decay", "class_weight", "sample_weight", "shard_data")
    for name in ("task", "missing", *later):
        del record["config"][name]
    for name in ("task", "classes", "categories", "fill"):
        del record["data"]["scaling"][name]
    path.write_text(json.dumps(record))
    assert run_cli("predict", tmp_path / "run", "--data", tmp_path / "numbers.csv").stdout == before
    run_cli("train", "--resume", tmp_path / "run", "--steps", 30)
    assert strict_json(tmp_path / "run" / "metrics.json")["final_step"] == 30


@pytest.mark.slow
def test_sweep_on_a_class_target_ranks_by_accuracy(tmp_path):
    animals(150).to_csv(tmp_path / "animals.csv", index=False)
    result = run_cli(
        "sweep",
        "--data",
        tmp_path / "animals.csv",
        "--lr",
        "0.01,0.1",
        "--seeds",
        2,
        *QUICK,
        "--out",
        tmp_path / "sweep",
    )
    report = strict_json(tmp_path / "sweep" / "sweep.json")
    assert report["config"]["task"] == "classification" and len(report["runs"]) == 4
    assert all(0 <= run["held_out_accuracy"] <= 1 and run["held_out_log_loss"] > 0 for run in report["runs"])
    assert 0 < report["baseline_held_out_accuracy"] < 1
    assert "held-out accuracy" in result.stdout and (tmp_path / "sweep" / "sweep.png").stat().st_size > 0

"""`bp-jax train --shard-data` (bp_jax/cli/shards.py): the blocks, the held-out draw, the combined statistics, the
command on one device here, and two processes on localhost against one process over two devices
(tests/shards_worker.py)."""

import itertools
import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import ROOT, fake_devices, final_state, finished, free_port, run_cli, strict_json

import bp_jax
from bp_jax.cli import shards


def table(rows: int, seed: int = 0) -> pd.DataFrame:
    """Five N(0, 1) features and y = sin(x·a) + noise."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, 5))
    return pd.DataFrame({**{f"f{i}": x[:, i] for i in range(5)}, "y": np.sin(x @ rng.standard_normal(5))})


def mixed(rows: int, seed: int = 0) -> pd.DataFrame:
    """A user's table: numbers, text, empty cells (every 7th x, 13th size, 11th colour, 17th label), row weights
    and a class target spelled as text."""
    rng = np.random.default_rng(seed)
    x, size = rng.standard_normal(rows), rng.standard_normal(rows)
    colour = rng.choice(["red", "green", "blue", "grey"], rows).astype(object)
    label = np.where(x + (colour == "red") > 0.5, "yes", np.where(size > 0.3, "maybe", "no")).astype(object)
    x[::7], size[::13], colour[::11], label[::17] = np.nan, np.nan, None, None
    return pd.DataFrame({"x": x, "colour": colour, "size": size, "w": rng.uniform(0.5, 2.0, rows), "label": label})


def parquet(path, frame: pd.DataFrame, row_group_size: int):
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), path, row_group_size=row_group_size)
    return path


def test_row_groups_split_into_contiguous_blocks_even_in_rows():
    assert shards.row_group_blocks([10] * 8, 4) == [range(0, 2), range(2, 4), range(4, 6), range(6, 8)]
    assert shards.row_group_blocks([100, 1, 1, 1, 100], 2) == [range(0, 2), range(2, 5)]  # cut nearest 101.5
    assert shards.row_group_blocks([1, 1, 1000], 3) == [range(0, 1), range(1, 2), range(2, 3)]  # one group each
    with pytest.raises(shards.data.DataError, match=r"t.parquet: 2 row group\(s\), fewer than the 3 devices"):
        shards.row_group_blocks([5, 5], 3, "t.parquet")


@pytest.mark.parametrize("blocks", [1, 2, 3, 7, 40])
def test_byte_ranges_give_every_line_to_one_block(tmp_path, blocks):
    """Lines of lengths 1 to 20 bytes (a cut anywhere: inside a line, on its newline, just after it)."""
    rng = np.random.default_rng(blocks)
    lines = [b"a,b\n"] + [b"x" * int(n) + b"\n" for n in rng.integers(0, 20, 30)]
    path = tmp_path / "t.csv"
    path.write_bytes(b"".join(lines))
    ranges = shards.byte_ranges(len(lines[0]), path.stat().st_size, blocks)
    assert ranges[0][0] == len(lines[0]) and ranges[-1][1] == path.stat().st_size and len(ranges) == blocks
    assert b"".join(shards.lines_in(path, first, end, len(lines[0])) for first, end in ranges) == b"".join(lines[1:])


@pytest.mark.parametrize("blocks", [1, 2])
def test_a_quoted_line_break_is_refused_in_every_block_it_touches(tmp_path, blocks):
    """Cut in two, the cell's first half ends block 0 and its second half begins block 1: each block is refused."""
    path = tmp_path / "t.csv"
    path.write_bytes(b'a,b\n1,"say ""hi"""\n2,"' + b"x" * 20 + b"\n" + b"y" * 20 + b'"\n3,z\n')
    body = len(b"a,b\n")
    for first, end in shards.byte_ranges(body, path.stat().st_size, blocks):
        with pytest.raises(shards.data.DataError, match=r"t\.csv: a quoted cell holds a line break .*--shard-data"):
            shards.read_block(str(path), (b"a,b\n", first, end), ["a", "b"])
    assert shards.read_block(str(path), (b"a,b\n", body, body + 5), ["a", "b"]).columns["a"].tolist() == [1.0]


def test_held_out_rows_are_a_seeded_draw_of_each_row_number():
    rows = np.arange(100_000)
    held = shards.held_out(rows, 3)
    assert abs(held.sum() - 20_000) < 5 * np.sqrt(100_000 * 0.2 * 0.8)  # Bernoulli(0.2) each
    assert np.array_equal(shards.held_out(rows[::-1], 3), held[::-1])  # a function of the number alone
    assert (held != shards.held_out(rows, 4)).mean() > 0.25  # another seed, another draw
    val = shards.validation(rows, 3, 0.1)  # --early-stopping's: a draw of its own
    assert np.array_equal(shards.validation(rows[::-1], 3, 0.1), val[::-1])
    assert abs(val.mean() - 0.1) < 5 * np.sqrt(0.1 * 0.9 / 100_000)
    assert abs((val & held).mean() - 0.1 * held.mean()) < 5 * np.sqrt(0.02 / 100_000)  # independent of held out


def test_row_sums_of_blocks_add_up_to_the_tables():
    values = np.random.default_rng(1).standard_normal((1000, 3))
    values[7, 1] = np.nan
    blocks = [shards.row_sum(list(values[a:b].T), a) for a, b in itertools.pairwise([0, 1, 400, 400, 1000])]
    assert (
        np.sum(blocks, dtype=np.uint64) == shards.row_sum(list(values.T), 0) != shards.row_sum(list(values[::-1].T), 0)
    )
    changed = values.copy()
    changed[999, 2] = np.nextafter(changed[999, 2], np.inf)
    assert shards.row_sum(list(changed.T), 0) != shards.row_sum(list(values.T), 0)


def test_combined_moments_are_the_unions_mean_and_deviation():
    rng = np.random.default_rng(0)
    values = rng.normal(3.0, 2.0, (500, 4))
    cuts = [0, 0, 7, 300, 300, 500]  # blocks of 0, 7, 293, 0 and 200 rows
    where = rng.random(500) < 0.8
    blocks = np.stack([shards.moments(list(values[a:b].T), where[a:b]) for a, b in itertools.pairwise(cuts)])
    mean, std = shards.combined(blocks)
    np.testing.assert_allclose(mean, values[where].mean(0), rtol=1e-12)
    np.testing.assert_allclose(std, values[where].std(0), rtol=1e-12)
    assert np.array_equal(shards.combined(np.stack([shards.moments([np.ones(3)], np.ones(3, bool))]))[1], [1.0])


def test_parquet_and_csv_load_alike_with_the_training_rows_statistics(tmp_path):
    """One device, one block: the scaling is the mean and population deviation of the training rows (those
    `held_out` leaves), the same for a parquet and a CSV of the table, and so are the rows and the fingerprint."""
    frame, loaded = table(600), []
    frame.to_csv(tmp_path / "t.csv", index=False)
    for path in (parquet(tmp_path / "t.parquet", frame, 100), tmp_path / "t.csv"):
        config = shards.runs.Config(dataset=str(path), batch_size=8, shard_data=True)
        loaded.append(shards.load(config, bp_jax.data_parallel_mesh(1)))
    train = frame[~shards.held_out(np.arange(600), 0)].to_numpy()
    for config, split, rows in loaded:
        scaling = split.scaling
        np.testing.assert_allclose([*scaling.x_mean, scaling.y_mean], train.mean(0), rtol=1e-10)
        np.testing.assert_allclose([*scaling.x_std, scaling.y_std], train.std(0), rtol=1e-10)
        assert (rows.train, rows.held_out, rows.counts.tolist()) == (len(train), 600 - len(train), [len(train)])
        assert config.features == tuple(f"f{i}" for i in range(5)) and config.target == "y"
    (_, parquet_split, parquet_rows), (_, csv_split, _) = loaded
    np.testing.assert_allclose(parquet_split.x_test, csv_split.x_test, rtol=1e-6, atol=1e-6)
    assert parquet_split.fingerprint == csv_split.fingerprint  # the same numbers
    assert np.array_equal(np.asarray(parquet_rows.x), parquet_split.x_train)


def agreed_blocks(source: str, split, features: tuple, target: str, weight: str | None, missing: str, blocks: int):
    """The blocks' `shards.agree` (and each block's rows to use and which are held out), given `data.load`'s own
    held-out rows (`split`'s: the first of its permutation of the kept rows) and the blocks' read types."""
    kept_rows = len(split.y_train) + len(split.y_test)
    test = np.zeros(kept_rows, bool)
    test[np.random.default_rng(0).permutation(kept_rows)[: len(split.y_test)]] = True
    used = [*features, target, *[weight] * bool(weight)]
    plan = shards._blocks(source, blocks)
    read = [shards.read_block(source, part, used, target) for part in plan]
    types = shards.agreed_types([block.types for block in read])
    kinds = shards.agreed_kinds([block.kinds for block in read])
    summaries, used_blocks, first, done = [], [], 0, 0
    for block, part in zip(read, plan, strict=True):
        rows = len(block.columns[target])
        text = lambda names, part=part: shards._csv_text(shards._text_of(source, part), names)
        block = shards.as_used(block, types, kinds, text, np.arange(first, first + rows), source, target, [weight])
        keep = np.flatnonzero(shards.kept(block, [*features, target], first, source, missing))
        block, held = shards.only(block, keep), test[done : done + len(keep)]
        used_blocks.append((block, held))
        summary = shards.summary(block, held, features, target, weight, classify=True, fill=missing == "impute")
        summaries.append(
            {
                **summary,
                "integral": shards.integral_classes(types[target], source, lambda text=text: text([target])[target]),
            }
        )
        first, done = first + rows, done + len(keep)
    agreed = shards.agree(summaries, kinds, types, source=source, features=features, target=target,
                          task="classification", missing=missing)  # fmt: skip
    return agreed, summaries, used_blocks, [block.types for block in read]


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_what_the_blocks_agree_equals_what_data_load_finds_in_the_whole_table(tmp_path, suffix):
    """Three blocks of a table with a text feature, empty cells, weights and text classes, given `data.load`'s own
    held-out rows: the classes, categories, fills, class weights, the weights' sum and the numeric inputs'
    statistics that the blocks agree are those `data.load` finds in the whole table."""
    frame, source = mixed(300), str(tmp_path / f"t{suffix}")
    parquet(source, frame, 50) if suffix == ".parquet" else frame.to_csv(source, index=False)
    features, target = ("x", "colour", "size"), "label"
    split = shards.data.load(source, target=target, split_seed=0, missing="impute", sample_weight="w")
    agreed, summaries, blocks, _ = agreed_blocks(source, split, features, target, "w", "impute", 3)
    scaling = agreed.scaling
    assert (scaling.classes, dict(scaling.categories)) == (split.scaling.classes, dict(split.scaling.categories))
    assert scaling.fill["colour"] == split.scaling.fill["colour"]
    numeric = ("x", "size")
    np.testing.assert_allclose(
        [scaling.fill[name] for name in numeric], [split.scaling.fill[name] for name in numeric], rtol=1e-12
    )
    np.testing.assert_allclose(
        shards.runs.balanced(agreed.class_counts[0]), shards.runs.class_weights(split), rtol=1e-12
    )
    np.testing.assert_allclose(sum(each["weight"] for each in summaries), split.w_train.sum(), rtol=1e-12)
    stats = [
        shards.moments([shards.encoded(block, scaling)[name] for name in numeric], ~held) for block, held in blocks
    ]
    mean, std = shards.combined(np.stack(stats))
    inputs = split.scaling.feature_inputs
    np.testing.assert_allclose(mean, [split.scaling.x_mean[inputs[name][0]] for name in numeric], rtol=1e-10)
    np.testing.assert_allclose(std, [split.scaling.x_std[inputs[name][0]] for name in numeric], rtol=1e-10)


def test_a_text_column_one_block_reads_as_numbers_and_integer_classes_with_gaps_agree_as_data_loads(tmp_path):
    """A CSV whose first block's `code` cells are all numbers (pandas reads them as numbers there, text elsewhere)
    and integer classes with empty cells (read as floats): the blocks agree text categories and integer classes,
    as `data.load` reads the whole file."""
    rng = np.random.default_rng(1)
    code = [str(value) for value in rng.integers(1, 3, 45)] + list(rng.choice(["a", "b"], 45))  # half: text
    k = pd.array(rng.integers(0, 3, 90), dtype="Int64")  # written 0, 1, 2, and empty
    k[::9] = pd.NA
    source = str(tmp_path / "t.csv")
    pd.DataFrame({"x": rng.standard_normal(90), "code": code, "k": k}).to_csv(source, index=False)
    split = shards.data.load(source, target="k", split_seed=0, task="classification", missing="drop")
    agreed, _, blocks, types = agreed_blocks(source, split, ("x", "code"), "k", None, "drop", 3)
    assert types[0]["code"] == "i" and types[1]["code"] == "t" and types[0]["k"] == "f"  # the paths under test
    first = shards.encoded(blocks[0][0], agreed.scaling)["code"]  # read again as text: its cells' categories
    assert first.dtype.kind == "i" and set(first) == {0, 1}
    assert agreed.scaling.classes == split.scaling.classes == (0, 1, 2)
    assert (
        [type(label) for label in agreed.scaling.classes]
        == [type(label) for label in split.scaling.classes]
        == [int] * 3
    )
    assert dict(agreed.scaling.categories) == dict(split.scaling.categories) == {"code": ("1", "2", "a", "b")}


@pytest.mark.slow  # a command's compilations
def test_train_with_shard_data_on_one_device(tmp_path):
    path = parquet(tmp_path / "t.parquet", table(600), 100)
    run_cli("train", "--data", path, "--shard-data", "--steps", 5, "--out", tmp_path / "run")
    metrics = strict_json(tmp_path / "run" / "metrics.json")
    held = int(shards.held_out(np.arange(600), 0).sum())
    assert metrics["examples"] == {"train": 600 - held, "held_out": held, "features": 5}
    assert metrics["config"]["shard_data"] is True and metrics["devices"] == 1
    assert metrics["held_out_mse"] > 0 and metrics["baseline_held_out_mse"] > 0


REFUSED = [
    (["--dataset", "diabetes"], "--shard-data trains on a .parquet or .csv file (--data)"),
    (["--batch-size", "full"], "--shard-data trains on minibatches (a --batch-size)"),
    (["--ensemble", 2], "--shard-data trains on one model (no --ensemble)"),
    (
        ["--features", "f0", "--early-stopping", "--validation-fraction", 0.01, "--batch-size", 2],
        "1 validation rows of 14",
    ),
    (["--missing", "impute"], "column 'name' holds free text (16 distinct values in 16 cells), which cannot be"),
    (["--target", "name", "--task", "regression", "--features", "f0"], "column 'name', row 1: the cell holds 'n0'"),
    (["--features", "f0", "--class-weight", "balanced"], "--class-weight balanced weighs classes; the target 'y' is"),
    (["--features", "f0,f1"], "column 'f1', row 4: the cell is empty or NaN; pass --missing drop"),
    (["--features", "f0", "--batch-size", 64], "block 0 of 1 holds 14 training rows, fewer than a device's share"),
    (["--target", "nothing"], "no target column 'nothing'"),
    (["--data", "missing.csv"], "missing.csv: cannot be read: [Errno 2] No such file or directory"),
]


@pytest.mark.parametrize("argv, message", REFUSED, ids=[message for _, message in REFUSED])
def test_what_a_sharded_run_refuses_in_one_line(tmp_path, argv, message):
    frame = table(16).assign(name=[f"n{i}" for i in range(16)])
    frame.loc[3, "f1"] = np.nan
    path = parquet(tmp_path / "t.parquet", frame[["name", "f0", "f1", "y"]], 4)
    argv = argv if {"--dataset", "--data"} & set(argv) else ["--data", path, *argv]
    result = run_cli("train", *argv, "--shard-data", "--steps", 1, "--out", tmp_path / "run", check=False)
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_blocks_too_big_for_this_processs_memory_are_refused_before_they_are_read(tmp_path, monkeypatch):
    """A parquet's blocks by their row groups' recorded rows, a CSV's by their share of its bytes: one line naming
    their size and the memory available, and more processes as a way out; no block read, nothing written."""
    frame = table(64)
    frame.to_csv(tmp_path / "t.csv", index=False)
    monkeypatch.setattr(shards.data, "available_memory", lambda: 5_000)  # 64 rows × 6 columns: 3 072 bytes
    monkeypatch.setattr(shards, "read_block", lambda *args, **kwargs: pytest.fail("a block was read"))
    for path in (parquet(tmp_path / "t.parquet", frame, 16), tmp_path / "t.csv"):
        result = run_cli("train", "--data", path, "--shard-data", "--steps", 1, "--out", tmp_path / "run", check=False)
        assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert f"{path.name}: this process's blocks are too big for memory: 64 rows × 6 columns" in result.stderr
        assert "and 5e-06 GB is available; read fewer columns (--features) or more processes" in result.stderr
        assert not (tmp_path / "run").exists()


@pytest.mark.slow  # three processes of their own
def test_two_processes_equal_one_process_over_two_devices_each_reading_half(tmp_path):
    """The params of a float64 fit on the blocks (to 1e-10), the scaling and the fingerprint of two processes
    equal one process's over two devices; each process reads half the rows, and its load's peak of numpy buffers
    (tracemalloc) is under 3/4 of one process's reading them all (its float64 block and float32 copy); the same
    (but the memory) for a CSV of text, empty cells imputed, row and class weights and text classes, with its
    validation rows scored in the loop; then `bp-jax train --shard-data --early-stopping` of that CSV in the same
    processes: the same loss history, metrics, validation losses and checkpoint."""
    path = parquet(tmp_path / "t.parquet", table(400_000), 50_000)  # 18 MiB of float64
    warm_up = parquet(tmp_path / "warm.parquet", table(64), 8)
    mixed(2000).to_csv(tmp_path / "mixed.csv", index=False)
    worker = [sys.executable, str(ROOT / "tests" / "shards_worker.py"), path]
    coordinator = f"127.0.0.1:{free_port()}"
    commands = [([*worker, "-", 1, 0, warm_up, tmp_path / "one", tmp_path / "mixed.csv"], 2)]
    commands += [([*worker, coordinator, 2, i, warm_up, tmp_path / "two", tmp_path / "mixed.csv"], 1) for i in range(2)]
    processes = [
        subprocess.Popen(list(map(str, argv)), env=os.environ | fake_devices(devices), stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
        for argv, devices in commands
    ]  # fmt: skip
    outputs = finished(processes)
    one, *two = [json.loads(stdout.splitlines()[-1]) for stdout, _ in outputs]
    assert one["dtypes"] == one["mixed"]["dtypes"] == ["float64"]
    assert one["mixed"]["scaling"]["categories"] == {"colour": ["blue", "green", "grey", "red"]}
    assert one["mixed"]["scaling"]["classes"] == ["maybe", "no", "yes"] and one["mixed"]["weights"]["class_weight"]
    assert len(one["mixed"]["validation_losses"]) == 8 and np.all(np.isfinite(one["mixed"]["validation_losses"]))
    for process in two:
        for ran, reference in ((process, one), (process["mixed"], one["mixed"])):
            for left, right in zip(ran["params"], reference["params"], strict=True):
                np.testing.assert_allclose(left, right, rtol=1e-10, atol=1e-10)
            np.testing.assert_allclose(ran["validation_losses"], reference["validation_losses"], rtol=1e-10)
            assert (ran["scaling"], ran["fingerprint"], ran["rows"]) == (
                reference["scaling"],
                reference["fingerprint"],
                reference["rows"],
            )
        assert (process["mixed"]["classes"], process["mixed"]["weights"]) == (
            one["mixed"]["classes"],
            one["mixed"]["weights"],
        )
        assert process["traced_mib"] < 0.75 * one["traced_mib"], (process["traced_mib"], one["traced_mib"])
    read = [process["local"]["train"] + process["local"]["held_out"] for process in two]
    assert sum(read) == 400_000 and read[0] == 200_000  # row groups 0-3 and 4-7
    # `bp-jax train --shard-data` (float32): the same losses, metrics and params
    assert [process["status"] for process in (one, *two)] == [0, 0, 0]
    runs = [strict_json(tmp_path / name / "metrics.json") for name in ("one", "two")]
    assert [(run["devices"], run["processes"]) for run in runs] == [(2, 1), (2, 2)]
    assert runs[0]["loss_history"] == runs[1]["loss_history"] and runs[0]["examples"] == runs[1]["examples"]
    whole = shards.data.load(str(tmp_path / "mixed.csv"), missing="impute", sample_weight="w")
    assert (
        runs[0]["examples"]["left_out"]
        == dict(whole.left_out)
        == {"no_target": len(range(0, 2000, 17)), "empty_feature": 0}
    )
    scores = ["train_accuracy", "held_out_accuracy", "baseline_held_out_accuracy", "weights"]  # counted: exact
    assert [runs[0][name] for name in scores] == [runs[1][name] for name in scores]
    np.testing.assert_allclose(runs[0]["held_out_log_loss"], runs[1]["held_out_log_loss"], rtol=1e-5)  # float32 means
    stopping = [run["early_stopping"] for run in runs]
    assert len(stopping[0]["validation_loss"]) == 2 and stopping[0]["best_epoch"] == stopping[1]["best_epoch"]
    np.testing.assert_allclose(stopping[0]["validation_loss"], stopping[1]["validation_loss"], rtol=1e-5)
    for left, right in zip(final_state(tmp_path / "one")[1], final_state(tmp_path / "two")[1], strict=True):
        np.testing.assert_allclose(left, right, rtol=1e-6, atol=1e-6)

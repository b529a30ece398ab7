"""`bp-jax export` and `bp_jax.to_jax_export` / `to_onnx`: a trained run's file, run without bp_jax (jax alone in a
subprocess where bp_jax cannot be imported; onnxruntime), gives `bp-jax predict`'s numbers; refusals in one line."""

import io
import os
import subprocess
import sys

import jax
import numpy as np
import pandas as pd
import pytest
from helpers import bp_jax_cli, run_cli, strict_json

import bp_jax

onnxruntime = pytest.importorskip("onnxruntime")
QUICK = ("--steps", 60)
#: float32 rounding of a computation predict does in float64 (standardising, the target's units)
RTOL, ATOL = 1e-5, 1e-5


def table(rows: int, *, task: str, seed: int = 0) -> pd.DataFrame:
    """Two measurements, a text feature, a few empty cells (both kinds), and a numeric or text target."""
    rng = np.random.default_rng(seed)
    colour = rng.choice(["red", "green", "blue"], rows)
    size = rng.normal(50, 10, rows)
    weight = rng.normal(3, 1, rows) * 1000
    score = 2 * size + weight / 100 + (colour == "red") * 30 + rng.normal(0, 5, rows)
    frame = pd.DataFrame({"size": size.round(2), "colour": colour, "weight (g)": weight.round(1)})
    frame["target"] = score.round(2) if task == "regression" else np.where(score > np.median(score), "high", "low")
    frame.loc[[3, 17], "size"] = np.nan
    frame.loc[[5], "colour"] = None
    return frame


@pytest.fixture(scope="module", params=["regression", "classification"])
def exported(request, tmp_path_factory):
    """A run with --missing impute on a table with a text feature; its predictions for 40 rows (4 with empty
    cells, one in "weight (g)", which had none in training) from `bp-jax predict`; its jax and ONNX exports."""
    folder = tmp_path_factory.mktemp(request.param)
    table(200, task=request.param).to_csv(folder / "table.csv", index=False)
    new = table(40, task=request.param, seed=1).drop(columns="target")
    new.loc[[8], "weight (g)"] = np.nan
    new.to_csv(folder / "new.csv", index=False)
    run_cli(
        "train", "--data", folder / "table.csv", "--target", "target", "--missing", "impute", "--out", folder / "run",
        "--task", request.param, *QUICK,
    )  # fmt: skip
    predicted = pd.read_csv(io.StringIO(run_cli("predict", folder / "run", "--data", folder / "new.csv").stdout))
    for format in ("jax", "onnx"):
        result = run_cli("export", folder / "run", "--format", format, "--out", folder / f"model.{format}")
        assert result.stdout.startswith(f"wrote {folder / f'model.{format}'}"), result.stdout
    return request.param, folder, predicted


def model_inputs(frame: pd.DataFrame, description: dict) -> np.ndarray:
    """The rows as the export takes them, built from FILE.inputs.json as a user would: a numeric column as it
    is, a text column one-hot over the named categories; an empty cell as NaN in its input(s)."""
    columns = []
    for entry in description["inputs"]:
        cells = frame[entry["feature"]]
        if "category" in entry:
            columns.append(np.where(cells.isna(), np.nan, (cells == entry["category"]).astype(float)))
        else:
            columns.append(cells.to_numpy(float))
    return np.stack(columns, axis=1).astype(np.float32)


def expected(task: str, predicted: pd.DataFrame) -> np.ndarray:
    """predict's numbers in the export's layout: (rows, 1) in the target's units, or (rows, classes)."""
    return predicted[["target"]].to_numpy(float) if task == "regression" else predicted.iloc[:, 1:].to_numpy(float)


@pytest.mark.slow
def test_inputs_json_names_each_input_column_and_the_outputs(exported):
    task, folder, predicted = exported
    description = strict_json(folder / "model.jax.inputs.json")
    names = [entry["name"] for entry in description["inputs"]]
    assert names == ["size", "colour=blue", "colour=green", "colour=red", "weight (g)"]
    assert description["input"] == {"dtype": "float32", "shape": ["rows", 5]}
    assert (description["format"], description["step"], description["task"]) == ("jax", 60, task)
    assert description["outputs"] == (["target"] if task == "regression" else list(predicted.columns[1:]))
    fills = [entry.get("nan_becomes") for entry in description["inputs"]]  # every input's: a gap may come anywhere
    assert [fills[1], fills[2], fills[3]].count(1.0) == 1 and fills[0] == pytest.approx(50, abs=3)
    assert fills[4] == pytest.approx(3000, abs=300)
    assert strict_json(folder / "model.onnx.inputs.json")["inputs"] == description["inputs"]


@pytest.mark.slow
def test_the_jax_export_runs_with_jax_alone_and_gives_predicts_numbers(exported, tmp_path):
    task, folder, predicted = exported
    x = model_inputs(pd.read_csv(folder / "new.csv"), strict_json(folder / "model.jax.inputs.json"))
    assert np.isnan(x).any(axis=1).sum() == 4
    np.save(tmp_path / "x.npy", x)
    hidden = tmp_path / "hidden" / "bp_jax"
    hidden.mkdir(parents=True)
    (hidden / "__init__.py").write_text("raise ImportError('bp_jax is hidden from this process')\n")
    script = (
        "import sys, numpy as np, jax\n"
        "try:\n    import bp_jax\nexcept ImportError as err:\n    assert 'hidden' in str(err), err\n"
        "else:\n    sys.exit('bp_jax was importable')\n"
        "exported = jax.export.deserialize(bytearray(open(sys.argv[1], 'rb').read()))\n"
        "np.save(sys.argv[3], np.asarray(exported.call(np.load(sys.argv[2]))))\n"
        "assert not any(name.startswith('bp_jax.') for name in sys.modules)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, folder / "model.jax", tmp_path / "x.npy", tmp_path / "y.npy"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=os.environ | {"PYTHONPATH": str(tmp_path / "hidden")},  # on the default device: a GPU where there is one
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), expected(task, predicted), rtol=RTOL, atol=ATOL)


@pytest.mark.slow
def test_onnxruntime_runs_the_onnx_export_and_gives_predicts_numbers(exported):
    task, folder, predicted = exported
    x = model_inputs(pd.read_csv(folder / "new.csv"), strict_json(folder / "model.onnx.inputs.json"))
    session = onnxruntime.InferenceSession(folder / "model.onnx", providers=["CPUExecutionProvider"])
    (y,) = session.run(None, {"x": x})
    assert y.dtype == np.float32
    np.testing.assert_allclose(y, expected(task, predicted), rtol=RTOL, atol=ATOL)


def test_a_run_without_impute_gives_nan_for_a_nan_input(tmp_path):
    table(100, task="regression").dropna().to_csv(tmp_path / "table.csv", index=False)
    run_cli("train", "--data", tmp_path / "table.csv", "--out", tmp_path / "run", "--steps", 5)
    run_cli("export", tmp_path / "run", "--format", "onnx", "--out", tmp_path / "m.onnx")
    description = strict_json(tmp_path / "m.onnx.inputs.json")
    assert "NaN output" in description["missing"] and all("nan_becomes" not in e for e in description["inputs"])
    x = np.array([[50, 0, 0, 1, 3000], [np.nan, 0, 0, 1, 3000]], np.float32)
    (y,) = onnxruntime.InferenceSession(tmp_path / "m.onnx").run(None, {"x": x})
    assert np.isfinite(y[0]).all() and np.isnan(y[1]).all()


def error_line(result) -> str:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


@pytest.fixture(scope="module")
def seed_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("seed") / "run"
    run_cli("train", "--out", folder, "--steps", 5)
    return folder


def test_refusals_are_one_line_and_write_nothing(seed_run, tmp_path):
    export = lambda run, out, *more: run_cli("export", run, "--format", "jax", "--out", out, *more, check=False)
    line = error_line(export(tmp_path / "nowhere", tmp_path / "a.jax"))
    assert line == f"bp-jax export: error: {tmp_path / 'nowhere'} is not a run folder: no such directory"
    (tmp_path / "empty").mkdir()
    assert "no checkpoint in" in error_line(export(tmp_path / "empty", tmp_path / "a.jax"))
    (tmp_path / "mine.jax").write_text("mine")
    assert "mine.jax already exists" in error_line(export(seed_run, tmp_path / "mine.jax"))
    (tmp_path / "b.jax.inputs.json").write_text("mine too")
    assert "b.jax.inputs.json already exists" in error_line(export(seed_run, tmp_path / "b.jax"))
    for out in ("", ".", f"{tmp_path}/"):  # a folder, not a file
        assert f"--out: expected the name of a file, got {out!r}" in error_line(export(seed_run, out))
    for out, why in (("missing/a.jax", "No such file or directory"), ("mine.jax/a.jax", "Not a directory")):
        assert error_line(export(seed_run, tmp_path / out)).endswith(f"could not write {tmp_path / out}: {why}")
    assert "invalid choice: 'tflite'" in error_line(
        run_cli("export", seed_run, "--format", "tflite", "--out", tmp_path / "c", check=False)
    )
    assert sorted(path.name for path in tmp_path.iterdir()) == ["b.jax.inputs.json", "empty", "mine.jax"]
    assert (tmp_path / "mine.jax").read_text() == "mine" and (tmp_path / "b.jax.inputs.json").read_text() == "mine too"


@pytest.mark.parametrize(
    "form, module, install",
    [
        ("onnx", "onnx", "in the export extra: pip install 'bp_jax[export]'"),
        ("jax", "flatbuffers", "which jax serializes with, in the cli and export extras: pip install flatbuffers"),
    ],
)
@pytest.mark.slow
def test_a_format_without_its_module_names_the_pip_command(seed_run, tmp_path, form, module, install):
    hidden = tmp_path / "hidden" / module
    hidden.mkdir(parents=True)
    (hidden / "__init__.py").write_text(f"raise ModuleNotFoundError(\"No module named '{module}'\", name='{module}')\n")
    result = bp_jax_cli(  # its own process: the hidden module must be missing when it starts
        "export", seed_run, "--format", form, "--out", tmp_path / "m.out", check=False,
        env={"PYTHONPATH": f"{tmp_path / 'hidden'}:{bp_jax.__path__[0]}/.."},
    )  # fmt: skip
    assert error_line(result) == f"bp-jax export: error: --format {form} needs {module}, {install}"
    assert not (tmp_path / "m.out").exists()


def test_to_jax_export_and_to_onnx_are_the_models_function(tmp_path):
    model = bp_jax.Sequential(bp_jax.Linear(3, 4, bias=False), bp_jax.Sigmoid(), bp_jax.Linear(4, 2), bp_jax.Tanh())
    params = model.init(jax.random.key(0))
    x = np.random.default_rng(0).normal(size=(7, 3)).astype(np.float32)
    with jax.default_matmul_precision("highest"):
        reference = np.asarray(model.apply(params, x))
    exported = jax.export.deserialize(bp_jax.to_jax_export(model, params).serialize())
    np.testing.assert_allclose(exported.call(x), reference, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(exported.call(x[:1]), reference[:1], rtol=1e-6, atol=1e-6)
    assert exported.call(x[:0]).shape == (0, 2)  # any number of rows, zero included
    (tmp_path / "m.onnx").write_bytes(bp_jax.to_onnx(model, params).SerializeToString())
    session = onnxruntime.InferenceSession(tmp_path / "m.onnx")
    np.testing.assert_allclose(session.run(None, {"x": x})[0], reference, rtol=1e-6, atol=1e-6)
    assert session.run(None, {"x": x[:0]})[0].shape == (0, 2)


@pytest.mark.parametrize(
    ("export", "model", "options", "message"),
    [
        ("to_onnx", bp_jax.tiny_net(), {}, "exports a Sequential of Linear, ReLU, Sigmoid and Tanh layers"),
        ("to_jax_export", bp_jax.tiny_net(), {}, "pass inputs="),
        ("to_jax_export", bp_jax.mlp((3, 1)), {"x_mean": [0, 0], "x_std": [1, 1]}, r"shape \(3,\), got shape \(2,\)"),
        ("to_jax_export", bp_jax.mlp((3, 1)), {"x_mean": [0, 0, 0]}, "give x_mean with x_std"),
        ("to_onnx", bp_jax.mlp((3, 2)), {"y_mean": 1, "y_std": 2, "probabilities": True}, "a regression's"),
        ("to_onnx", bp_jax.mlp((3, 2)), {"inputs": 4}, "takes 3 inputs, not inputs=4"),
    ],
)
def test_bad_arguments_are_one_line_value_errors(export, model, options, message):
    with pytest.raises(ValueError, match=message):
        getattr(bp_jax, export)(model, model.init(jax.random.key(0)), bp_jax.Scaling(**options))


def test_to_onnx_checks_the_params_shapes():
    model, other = bp_jax.mlp((3, 4, 1)), bp_jax.mlp((3, 5, 1))
    with pytest.raises(ValueError, match=r"layer 0: weight of shape \(4, 3\) expected, got \(5, 3\)"):
        bp_jax.to_onnx(model, other.init(jax.random.key(0)))

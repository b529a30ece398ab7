"""`bp-jax train --ensemble K`: K members trained as one program, each its own one-model run; metrics, predict and
the jax and ONNX exports give the members' mean and spread (regression) or averaged probabilities and entropy."""

import dataclasses
import json
import shutil

import jax
import numpy as np
import pandas as pd
import pytest
from helpers import checkpoint_steps, run_cli, strict_json

import bp_jax
from bp_jax.cli import data, runs

onnxruntime = pytest.importorskip("onnxruntime")
QUICK = ("--epochs", 3, "--batch-size", 8)
#: float32 rounding of what predict does in float64 (the target's units, the mean and std, the entropy)
RTOL, ATOL = 1e-5, 1e-5


def table(rows: int, *, task: str, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, 3))
    score = x @ np.array([1.0, -2.0, 0.5]) + 0.3 * rng.normal(size=rows)
    frame = pd.DataFrame(x.round(3), columns=["a", "b", "c"])
    frame["y"] = 10 * score.round(3) + 50 if task == "regression" else np.where(score > 0, "yes", "no")
    return frame


@pytest.fixture(scope="module", params=["regression", "classification"])
def ensemble(request, tmp_path_factory):
    """(task, folder): a run of 3 members, seeds 5, 6, 7, on a 40-row table (4 steps an epoch, checkpointed after
    each); predict's CSV for 10 new rows (predicted.csv) and its jax and ONNX exports."""
    folder = tmp_path_factory.mktemp(request.param)
    table(40, task=request.param).to_csv(folder / "table.csv", index=False)
    table(10, task=request.param, seed=1).drop(columns="y").to_csv(folder / "new.csv", index=False)
    train = ("train", "--data", folder / "table.csv", "--ensemble", 3, "--seed", 5, *QUICK, "--checkpoint-every", 4)
    run_cli(*train, "--out", folder / "run")
    predicted = run_cli("predict", folder / "run", "--data", folder / "new.csv").stdout
    (folder / "predicted.csv").write_text(predicted)
    for format in ("jax", "onnx"):
        run_cli("export", folder / "run", "--format", format, "--out", folder / f"model.{format}")
    return request.param, folder


def member_outputs(folder) -> tuple[runs.Run, data.Split, np.ndarray, np.ndarray]:
    """The run, its split, and each member's outputs (members, rows, outputs) for the held-out and the new rows."""
    trained, model, params = runs.read_trained(folder / "run")
    _, split = runs.load_data(trained.config)
    new = trained.scaling.features(data.read(str(folder / "new.csv")), "new.csv")
    apply = jax.vmap(model.apply, (0, None))
    with jax.default_matmul_precision("highest"):
        return (
            trained,
            split,
            np.asarray(apply(params, split.x_test), np.float64),
            np.asarray(apply(params, new), np.float64),
        )


def test_each_member_is_its_own_one_model_run(ensemble, tmp_path):
    task, folder = ensemble
    if task == "classification":
        pytest.skip("the loop is the same; once is enough")
    run_cli("train", "--data", folder / "table.csv", "--seed", 7, "--split-seed", 5, *QUICK, "--out", tmp_path)
    _, _, member = runs.read_trained(folder / "run")
    _, _, alone = runs.read_trained(tmp_path)
    for ours, theirs in zip(jax.tree.leaves(member), jax.tree.leaves(alone), strict=True):
        np.testing.assert_allclose(ours[2], theirs, rtol=1e-5, atol=1e-6)
    metrics, plain = strict_json(folder / "run" / "metrics.json"), strict_json(tmp_path / "metrics.json")
    assert plain["config"]["ensemble"] == 1 and "members" not in plain
    # a run recorded before ensembles (no "ensemble" in its config) reads as one model (Config.from_record, which
    # predict, export and --resume share)
    path = tmp_path / "checkpoints" / str(plain["final_step"]) / "record" / "metadata"
    record = json.loads(path.read_text())
    path.write_text(json.dumps(record | {"config": {k: v for k, v in record["config"].items() if k != "ensemble"}}))
    assert run_cli("predict", tmp_path, "--data", folder / "new.csv").stdout.startswith("y\n")
    assert [member["seed"] for member in metrics["members"]] == [5, 6, 7]
    assert metrics["members"][2]["held_out_mse"] == pytest.approx(plain["held_out_mse"], rel=1e-5)


def test_the_metrics_are_the_ensembles_prediction(ensemble):
    task, folder = ensemble
    _, split, outputs, _ = member_outputs(folder)
    metrics = strict_json(folder / "run" / "metrics.json")
    assert metrics["config"]["ensemble"] == 3 and len(metrics["members"]) == 3
    if task == "regression":
        mean, std = outputs.mean(axis=0), outputs.std(axis=0)
        assert metrics["held_out_mse"] == pytest.approx(np.mean((mean - split.y_test) ** 2), rel=1e-5)
        inside = np.abs(split.y_test - mean) <= 2 * std
        assert metrics["held_out_coverage_2sd"] == pytest.approx(inside.mean(), abs=1.5 / len(inside))
        members = np.mean((outputs - split.y_test) ** 2, axis=(1, 2))
        np.testing.assert_allclose([member["held_out_mse"] for member in metrics["members"]], members, rtol=1e-5)
    else:
        shifted = np.exp(outputs - outputs.max(axis=2, keepdims=True))
        averaged = (shifted / shifted.sum(axis=2, keepdims=True)).mean(axis=0)
        assert metrics["held_out_accuracy"] == np.mean(averaged.argmax(axis=1) == split.y_test)
        log_loss = -np.mean(np.log(averaged[np.arange(len(split.y_test)), split.y_test]))
        assert metrics["held_out_log_loss"] == pytest.approx(log_loss, rel=1e-5)


def test_predict_gives_the_mean_and_std_or_the_averaged_probabilities_and_entropy(ensemble):
    task, folder = ensemble
    trained, _, _, outputs = member_outputs(folder)
    predicted = pd.read_csv(folder / "predicted.csv")
    if task == "regression":
        assert list(predicted.columns) == ["y", "y_std"]
        units = outputs[..., 0] * trained.scaling.y_std + trained.scaling.y_mean
        np.testing.assert_allclose(predicted["y"], units.mean(axis=0), rtol=1e-10)
        np.testing.assert_allclose(predicted["y_std"], units.std(axis=0), rtol=1e-9)
        assert (predicted["y_std"] > 0).all()
    else:
        assert list(predicted.columns) == ["y", "P(no)", "P(yes)", "entropy"]
        p = predicted[["P(no)", "P(yes)"]].to_numpy()
        np.testing.assert_allclose(p.sum(axis=1), 1, rtol=1e-12)
        np.testing.assert_allclose(predicted["entropy"], -np.sum(p * np.log(p), axis=1), rtol=1e-10)
        assert (predicted["y"] == np.where(p[:, 1] > p[:, 0], "yes", "no")).all()


def test_the_jax_and_onnx_exports_give_predicts_numbers(ensemble):
    task, folder = ensemble
    predicted = pd.read_csv(folder / "predicted.csv")
    expected = predicted[["y", "y_std"]] if task == "regression" else predicted.iloc[:, 1:]
    description = strict_json(folder / "model.onnx.inputs.json")
    assert description["outputs"] == list(expected.columns) and description["members"] == 3
    x = pd.read_csv(folder / "new.csv").to_numpy(np.float32)
    exported = jax.export.deserialize(bytearray((folder / "model.jax").read_bytes()))
    (onnx_y,) = onnxruntime.InferenceSession(folder / "model.onnx", providers=["CPUExecutionProvider"]).run(
        None, {"x": x}
    )
    for y in (np.asarray(exported.call(x)), onnx_y):
        assert y.dtype == np.float32
        np.testing.assert_allclose(y, expected.to_numpy(float), rtol=RTOL, atol=ATOL)


def test_a_resumed_ensemble_continues_bit_identically(ensemble, tmp_path):
    """The run's checkpoint after its first epoch, resumed to the end, ends with its params, bit for bit."""
    task, folder = ensemble
    if task == "classification":
        pytest.skip("the loop is the same; once is enough")
    shutil.copytree(folder / "run", tmp_path / "run", ignore=shutil.ignore_patterns("*.json", "*.png"))
    for later in checkpoint_steps(tmp_path / "run")[1:]:
        shutil.rmtree(tmp_path / "run" / "checkpoints" / str(later))
    assert checkpoint_steps(tmp_path / "run") == [4]
    run_cli("train", "--resume", tmp_path / "run", "--epochs", 3)
    (_, _, resumed), (_, _, straight) = runs.read_trained(tmp_path / "run"), runs.read_trained(folder / "run")
    for ours, theirs in zip(jax.tree.leaves(resumed), jax.tree.leaves(straight), strict=True):
        np.testing.assert_array_equal(ours, theirs)
    ours, theirs = strict_json(tmp_path / "run" / "metrics.json"), strict_json(folder / "run" / "metrics.json")
    assert ours["loss_history"] == theirs["loss_history"] and ours["members"] == theirs["members"]


@pytest.mark.parametrize(
    "args, message",
    [
        (("--ensemble", 0), "argument --ensemble: expected a positive integer, got '0'"),
        (("--ensemble", "two"), "argument --ensemble: expected a positive integer, got 'two'"),
        (("--ensemble", 2, "--seed", 2**32 - 1), "--seed 4294967295 + --ensemble 2 passes 2**32 − 1"),
    ],
)
def test_a_bad_ensemble_is_one_line_and_writes_nothing(tmp_path, args, message):
    result = run_cli("train", "--steps", 5, *args, "--out", tmp_path / "run", check=False)
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "run").exists()


def test_a_bare_ensembles_onnx_gives_the_members_mean_and_std():
    """3 members of a 2 → 4 → 1 tanh net, params drawn in numpy (no program compiled), against numpy's forward."""
    model, rng = bp_jax.mlp((2, 4, 1), "tanh"), np.random.default_rng(0)
    shapes = jax.eval_shape(model.init, jax.random.key(0))
    params = jax.tree.map(lambda leaf: rng.normal(size=(3, *leaf.shape)).astype(np.float32), shapes)
    x = rng.normal(size=(6, 2)).astype(np.float32)
    (first, _, second) = jax.tree.map(lambda leaf: leaf.astype(np.float64), params)
    hidden = np.tanh(np.einsum("ri,kji->krj", x, first["weight"]) + first["bias"][:, None])
    outputs = np.einsum("krj,kij->kri", hidden, second["weight"]) + second["bias"][:, None]
    (y,) = onnxruntime.InferenceSession(bp_jax.to_onnx(model, params, ensemble=True).SerializeToString()).run(
        None, {"x": x}
    )
    np.testing.assert_allclose(
        y, np.concatenate([outputs.mean(axis=0), outputs.std(axis=0)], axis=1), rtol=RTOL, atol=ATOL
    )
    with pytest.raises(ValueError, match=r"a leading member axis; layer 0's weight has shape \(4, 2\)"):
        bp_jax.to_onnx(model, jax.tree.map(lambda leaf: leaf[0], params), ensemble=True)


def test_an_ensemble_trains_build_models_function_with_the_rows_minor():
    """`training_model`: for an ensemble of minibatches, `build_model`'s function of the same params (float64) in
    mlp's "columns" layout; one model, dropout, the full batch or a hidden layer wider than the batch: build_model's."""
    config = runs.Config(ensemble=4, hidden=(5, 3), batch_size=8)
    plain = runs.build_model(6, config, 2)
    trained = runs.training_model(6, config, 2)
    assert "layout='columns'" in trained.name

    @jax.jit  # one program: eager calls would compile each small op
    def both(key):
        params, x = plain.init(key), jax.random.normal(key, (7, 6))
        return trained.apply(params, x), plain.apply(params, x)

    with jax.enable_x64(True):
        np.testing.assert_allclose(*both(jax.random.key(0)), rtol=1e-10, atol=1e-12)
    for other in ({"ensemble": 1}, {"dropout": 0.1}, {"batch_size": None}, {"batch_size": 4}):
        changed = dataclasses.replace(config, **other)
        assert runs.training_model(6, changed, 2).name == runs.build_model(6, changed, 2).name

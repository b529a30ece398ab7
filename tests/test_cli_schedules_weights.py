"""`bp-jax train --schedule`, `--warmup-epochs`, `--weight-decay`, `--class-weight balanced` and `--sample-weight
COLUMN`: the optimizer they make, plateau's rule inside the loop against optax's reduce_on_plateau given each epoch's
mean loss, the weighted loss Σ wᵢ·ℓᵢ / Σ wᵢ (loss, gradient and `fit`, float64), what metrics.json records, a resumed
run continuing its schedule bit for bit, predict without the weight column, and the bad values."""

import dataclasses
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import assert_same_state, checkpoint_steps, run_cli, strict_json, weighted_table
from sklearn.utils.class_weight import compute_class_weight

import bp_jax
from bp_jax.cli import data, runs


def problem(classify: bool, rows: int = 12):
    """A float64 model, params and data (x, targets) of `rows` rows: 3 classes, or one number per row."""
    key_x, key_y, key_init = jax.random.split(jax.random.key(1), 3)
    model = bp_jax.mlp((3, 4, 3 if classify else 1), "tanh")
    x = jax.random.normal(key_x, (rows, 3))
    y = jax.random.randint(key_y, (rows,), 0, 3) if classify else jax.random.normal(key_y, (rows, 1))
    scaling = data.Scaling((), "t", (), (), 0.0, 1.0, "classification" if classify else "regression", (0, 1, 2))
    return model, scaling, model.init(key_init), x, y


def test_the_weighted_loss_and_its_gradient_weigh_each_row():
    with jax.enable_x64(True):
        model, scaling, params, x, y = problem(classify=True)
        plain, weighted = runs.loss(model, scaling), runs.loss(model, scaling, weighted=True)
        w = jnp.asarray(np.random.default_rng(0).uniform(0, 3, len(x)))

        @jax.jit
        def measured(params):
            grad, ones = jax.grad(weighted), jnp.ones(len(x))
            return {
                "loss": weighted(params, x, {"target": y, "weight": w}),
                "each": jax.vmap(lambda row, target: plain(params, row[None], target[None]))(x, y),
                "twice": grad(params, x, {"target": y, "weight": 2 * ones}),
                "plain": jax.grad(plain)(params, x, y),
                "zero_first": grad(params, x, {"target": y, "weight": w.at[0].set(0.0)}),
                "without": grad(params, x[1:], {"target": y[1:], "weight": w[1:]}),
                "nothing": jax.value_and_grad(weighted)(params, x, {"target": y, "weight": 0 * ones}),
            }

        got = measured(params)
        np.testing.assert_allclose(got["loss"], np.sum(w * got["each"]) / np.sum(w), rtol=1e-12)
        close = lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-14)
        jax.tree.map(close, got["twice"], got["plain"])
        jax.tree.map(close, got["zero_first"], got["without"])
        loss, grads = got["nothing"]  # a minibatch of weightless rows: no loss, no step
        assert float(loss) == 0.0 and not any(np.any(leaf) for leaf in jax.tree.leaves(grads))


def test_fit_with_weight_zero_on_a_row_trains_as_without_it():
    with jax.enable_x64(True):
        model, scaling, params, x, y = problem(classify=False)
        weighted = runs.loss(model, scaling, weighted=True)
        ones = jnp.ones(len(x))
        run = lambda x, y, w: bp_jax.fit(weighted, params, x, {"target": y, "weight": w}, steps=40, lr=0.1)
        close = lambda a, b: jax.tree.map(lambda u, v: np.testing.assert_allclose(u, v, rtol=1e-10, atol=1e-12), a, b)
        close(run(x, y, ones.at[5].set(0.0)).params, run(jnp.delete(x, 5, 0), jnp.delete(y, 5, 0), ones[1:]).params)


@pytest.fixture(scope="module")
def weighted_run(tmp_path_factory):
    """A class run with balanced class weights, row weights, AdamW and the warmup-cosine schedule, checkpointed every
    5 steps (4 an epoch), and its table."""
    folder = tmp_path_factory.mktemp("weighted")
    weighted_table().to_csv(folder / "t.csv", index=False)
    run_cli(
        "train",
        *("--data", folder / "t.csv", "--target", "cls", "--features", "a,b", "--seed", 2),
        *("--class-weight", "balanced", "--sample-weight", "w", "--optimizer", "adam", "--weight-decay", 0.01),
        *("--schedule", "warmup-cosine", "--warmup-epochs", 1, "--epochs", 3, "--batch-size", 8),
        *("--checkpoint-every", 5, "--out", folder / "run"),
    )
    return folder


def test_metrics_record_the_balanced_weights_and_predict_needs_no_weight_column(weighted_run):
    metrics = strict_json(weighted_run / "run" / "metrics.json")
    assert metrics["config"]["class_weight"] == "balanced" and metrics["config"]["sample_weight"] == "w"
    assert metrics["config"]["schedule"] == "warmup-cosine" and metrics["config"]["weight_decay"] == 0.01
    split = data.load(str(weighted_run / "t.csv"), target="cls", features=("a", "b"), split_seed=2, sample_weight="w")
    labels = np.asarray(split.scaling.classes)[split.y_train]
    balanced = compute_class_weight("balanced", classes=np.unique(labels), y=labels)  # n / (k·n_c)
    assert metrics["weights"]["class_weight"] == pytest.approx(dict(zip(np.unique(labels), balanced)), rel=1e-12)
    rows = split.w_train * balanced[split.y_train]
    assert metrics["weights"]["sample_weight"] == "w"
    assert metrics["weights"]["train_sum"] == pytest.approx(rows.sum(), rel=1e-6)
    weighted_table().drop(columns=["y", "w"]).to_csv(weighted_run / "new.csv", index=False)
    weighted_table().drop(columns=["y"]).to_csv(weighted_run / "with_w.csv", index=False)
    without = run_cli("predict", weighted_run / "run", "--data", weighted_run / "new.csv").stdout
    assert run_cli("predict", weighted_run / "run", "--data", weighted_run / "with_w.csv").stdout == without


@pytest.mark.parametrize(
    "flags, cells, expected",
    [
        (("--target", "y", "--class-weight", "balanced"), {}, "--class-weight balanced weighs classes; the target 'y'"),
        (("--class-weight", "even"), {}, "argument --class-weight: invalid choice: 'even'"),
        (("--sample-weight", "q"), {}, "no column 'q' for --sample-weight"),
        (("--sample-weight", "y"), {}, "the target 'y' cannot also be the --sample-weight column"),
        (("--sample-weight", "w", "--features", "a,w"), {}, "the --sample-weight column 'w' cannot also be a feature"),
        (("--sample-weight", "w"), {"w": -1.0}, "the weight -1.0 is negative"),
        (("--sample-weight", "w"), {"w": None}, "column 'w', row 4: the cell is empty or NaN"),
        (("--sample-weight", "w"), {"w": "heavy"}, "column 'w', row 4: the cell holds 'heavy', not a finite number"),
        (("--sample-weight", "w"), {"w": 0.0}, "column 'w' weighs 0 in every training row"),
    ],
)
def test_bad_weights_are_one_line_and_write_nothing(tmp_path, flags, cells, expected):
    frame = weighted_table().drop(columns=["cls"])
    for name, value in cells.items():
        frame[name] = frame[name].astype(object)
        if value == 0.0:
            frame[name] = 0.0
        else:
            frame.loc[3, name] = value
    frame.to_csv(tmp_path / "t.csv", index=False)
    result = run_cli("train", "--data", tmp_path / "t.csv", *flags, "--out", tmp_path / "run", check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and expected in result.stderr, result.stderr
    assert not (tmp_path / "run").exists()


def test_the_schedules_follow_their_formulas_over_the_run():
    steps, per_epoch, lr = 100, 10, 0.5
    t = np.arange(steps)
    cosine = runs.learning_rate(runs.Config(lr=lr, schedule="cosine"), steps, per_epoch)
    warm_config = runs.Config(optimizer="momentum", lr=lr, schedule="warmup-cosine", warmup_epochs=2)
    warm = runs.learning_rate(warm_config, steps, per_epoch)
    np.testing.assert_allclose(jax.vmap(cosine)(t), lr * (1 + np.cos(np.pi * t / steps)) / 2, rtol=1e-5, atol=1e-7)
    warmup = np.where(t < 20, lr * t / 20, lr * (1 + np.cos(np.pi * (t - 20) / 80)) / 2)
    np.testing.assert_allclose(jax.vmap(warm)(t), warmup, rtol=1e-5, atol=1e-7)
    assert runs.optimizer(runs.Config()) is None  # the hand-written update, as before
    assert runs.optimizer(runs.Config(schedule="cosine")) is not None  # sgd with a schedule: optax's
    per_member = optax.inject_hyperparams(  # as sweep holds each member's rate: η traced
        lambda learning_rate: runs.optimizer(dataclasses.replace(warm_config, lr=learning_rate), steps, per_epoch)
    )(learning_rate=lr)
    w = {"w": jnp.ones(2)}
    assert not np.any(per_member.update(w, per_member.init(w), w)[0]["w"])  # η_0 = 0: the warm-up's start


@pytest.mark.parametrize("name", ["sgd", "momentum", "adam"])
def test_weight_decay_is_decoupled(name):
    """One step from w with gradient g: adam's update less η·λ·w (AdamW); the others', with g + λ·w."""
    w, g, lr, decay = {"w": jnp.array([1.0, -2.0])}, {"w": jnp.array([0.3, 0.1])}, 0.1, 0.5
    decayed = runs.optimizer(runs.Config(optimizer=name, lr=lr, weight_decay=decay))
    plain = runs.optimizer(runs.Config(optimizer="optax-sgd" if name == "sgd" else name, lr=lr))
    step = decayed.update(g, decayed.init(w), w)[0]["w"]
    if name == "adam":
        np.testing.assert_allclose(step, plain.update(g, plain.init(w), w)[0]["w"] - lr * decay * w["w"], atol=1e-8)
    else:
        with_decay = {"w": g["w"] + decay * w["w"]}
        np.testing.assert_allclose(step, plain.update(with_decay, plain.init(w), w)[0]["w"], rtol=1e-6)


def test_plateau_scales_the_rate_as_optax_given_each_epochs_mean_loss_and_resumes_bit_for_bit():
    """A rate too small to improve the loss: the rule, fed each step's loss inside the loop, scales the update at
    the epochs' ends as optax's reduce_on_plateau does on the host given each epoch's mean loss; stopped in the
    middle of an epoch and resumed from its optimizer state, the run ends with the bits of the one not stopped."""
    x = jnp.linspace(-1, 1, 8).reshape(-1, 1)
    model, per_epoch, epochs = bp_jax.mlp((1, 4, 1), "tanh"), 2, 23
    config = runs.Config(optimizer="momentum", lr=1e-9, schedule="plateau")
    optimizer, rule, scales = runs.optimizer(config, epochs * per_epoch, per_epoch), runs.plateau_rule(config, 2), []
    train = lambda params, steps, **kwargs: bp_jax.fit(
        bp_jax.loss_fn(model),
        params,
        x,
        jnp.sin(3 * x),
        steps=steps,
        batch_size=4,
        key=jax.random.key(1),
        optimizer=optimizer,
        stop_rule=rule,
        chunk_size=per_epoch,
        **kwargs,
    )
    params = model.init(jax.random.key(0))
    result = train(params, epochs * per_epoch, on_chunk=lambda chunk: scales.append(float(chunk.opt_state[1].scale)))
    plateau = optax.contrib.reduce_on_plateau(**runs.PLATEAU)
    update = jax.jit(lambda state, mean: plateau.update(None, state, value=mean)[1])
    state, expected = plateau.init(params), []
    for mean in result.losses.reshape(epochs, per_epoch).mean(axis=1):
        state = update(state, mean)
        expected.append(float(state.scale))
    assert scales == pytest.approx(expected, rel=1e-6) and expected[9:11] == pytest.approx([1.0, 0.1])
    assert expected[-1] == pytest.approx(0.01)
    first = train(params, 21)  # 10½ epochs: the scale is about to change
    rest = train(first.params, epochs * per_epoch - 21, start_step=21, opt_state=first.opt_state)
    jax.tree.map(np.testing.assert_array_equal, (rest.params, rest.opt_state), (result.params, result.opt_state))
    per_member = optax.inject_hyperparams(  # as sweep holds each member's rate: the rule finds the plateau inside
        lambda learning_rate: runs.optimizer(dataclasses.replace(config, lr=learning_rate), 46, per_epoch)
    )(learning_rate=1e-9)
    advanced = rule.update({}, 0, jnp.float32(1.0), per_member.init(params))[2]
    assert int(advanced.inner_state[1].count) == 1 and float(advanced.inner_state[1].avg_value) == 1.0


def test_a_resumed_run_continues_its_schedule_and_weights_bit_for_bit(tmp_path, weighted_run):
    """A run resumed from its checkpoint in the middle of an epoch ends with the bits of the run never stopped."""
    whole, resumed = weighted_run / "run", tmp_path / "resumed"
    assert checkpoint_steps(whole) == [5, 10, 12]
    shutil.copytree(whole, resumed)
    for step in (10, 12):
        shutil.rmtree(resumed / "checkpoints" / str(step))
    run_cli("train", "--resume", resumed)
    assert_same_state(whole, resumed)
    metrics = strict_json(resumed / "metrics.json")
    assert metrics["resumed_from_step"] == 5 and metrics["config"] == strict_json(whole / "metrics.json")["config"]
    longer = run_cli("train", "--resume", resumed, "--epochs", 4, check=False)
    assert longer.returncode == 2 and len(longer.stderr.strip().splitlines()) == 1
    assert "the run's warmup-cosine schedule spans its 12 steps; resume it to step 12" in longer.stderr


@pytest.mark.parametrize(
    "flags, expected",
    [
        (("--schedule", "linear"), "argument --schedule: invalid choice: 'linear'"),
        (("--schedule", "cosine", "--warmup-epochs", 1), "--warmup-epochs 1 goes with --schedule warmup-cosine"),
        (("--warmup-epochs", 1), "--warmup-epochs 1 goes with --schedule warmup-cosine, not constant"),
        (("--schedule", "warmup-cosine"), "needs --warmup-epochs E, a warm-up shorter than the run's 22 steps"),
        (("--schedule", "warmup-cosine", "--warmup-epochs", 2), "(11 an epoch), got 2 (22 steps)"),
        (("--warmup-epochs", 0), "argument --warmup-epochs: expected a positive integer, got '0'"),
        (("--weight-decay", -0.1), "argument --weight-decay: expected a finite number ≥ 0, got '-0.1'"),
        (("--weight-decay", "nan"), "argument --weight-decay: expected a finite number ≥ 0, got 'nan'"),
    ],
)
def test_bad_schedules_are_one_line_and_write_nothing(tmp_path, flags, expected):
    result = run_cli("train", "--epochs", 2, *flags, "--out", tmp_path / "run", check=False)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert expected in result.stderr, result.stderr
    assert not (tmp_path / "run").exists()

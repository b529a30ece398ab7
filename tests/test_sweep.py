"""`bp-jax sweep` end to end, each run in its own process: every (lr, seed) member is `bp-jax train` with
that lr and seed and the sweep's split seed."""

import pytest
from helpers import bp_jax_cli, strict_json

STEPS = "150"


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep") / "run"
    done = bp_jax_cli("sweep", "--lr", "0.003,0.03,5", "--seeds", 3, "--seed", 4, "--steps", STEPS, "--out", out,
                      "--compile-cache", "off")
    return out, done


def test_every_member_is_reported_and_diverged_ones_do_not_fail_the_sweep(sweep):
    out, done = sweep
    report = strict_json(out / "sweep.json")
    assert [(run["lr"], run["seed"]) for run in report["runs"]] == [
        (lr, seed) for lr in (0.003, 0.03, 5.0) for seed in (4, 5, 6)]
    assert report["steps"] == int(STEPS) and report["config"]["split_seed"] == 0
    finished = [run for run in report["runs"] if run["lr"] != 5.0]
    assert all(run["diverged_at"] is None and run["held_out_mse"] < report["baseline_held_out_mse"]
               for run in finished)
    assert all(isinstance(run["diverged_at"], int) for run in report["runs"] if run["lr"] == 5.0)
    table = done.stdout
    assert "3 of 3" in table and "0 of 3" in table and "held-out MSE, mean ± std" in table
    assert (out / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("optimizer, lr, seed", [("sgd", 0.03, 5), ("momentum", 0.003, 6)])
def test_a_member_equals_bp_jax_train_with_its_lr_seed_and_the_split_seed(tmp_path, sweep, optimizer, lr, seed):
    out, _ = sweep
    if optimizer != "sgd":  # a sweep of its own with that optimizer
        out = tmp_path / "sweep"
        bp_jax_cli("sweep", "--lr", f"{lr},0.01", "--seeds", 3, "--seed", 4, "--steps", STEPS,
                   "--optimizer", optimizer, "--out", out, "--compile-cache", "off")
    member = next(run for run in strict_json(out / "sweep.json")["runs"] if run["lr"] == lr and run["seed"] == seed)
    bp_jax_cli("train", "--lr", lr, "--seed", seed, "--split-seed", 0, "--steps", STEPS, "--optimizer", optimizer,
               "--out", tmp_path / "train", "--compile-cache", "off")
    metrics = strict_json(tmp_path / "train" / "metrics.json")
    for name in ("train_mse", "held_out_mse"):
        assert member[name] == pytest.approx(metrics[name], rel=1e-5), name


def test_members_split_over_4_devices_equal_one_device(tmp_path, sweep):
    out, _ = sweep
    bp_jax_cli("sweep", "--lr", "0.003,0.03,5", "--seeds", 4, "--seed", 4, "--steps", STEPS, "--devices", 4,
               "--out", tmp_path / "split", "--compile-cache", "off", env={"JAX_NUM_CPU_DEVICES": "4"})
    one = {(run["lr"], run["seed"]): run for run in strict_json(out / "sweep.json")["runs"]}
    for run in strict_json(tmp_path / "split" / "sweep.json")["runs"]:
        if (run["lr"], run["seed"]) in one:
            reference = one[run["lr"], run["seed"]]
            assert run["diverged_at"] == reference["diverged_at"]
            if run["diverged_at"] is None:
                assert run["held_out_mse"] == pytest.approx(reference["held_out_mse"], rel=1e-5)


@pytest.mark.parametrize("args, message", [
    (["--lr", ""], "--lr: expected comma-separated numbers > 0"),
    (["--lr", "0.1,-1"], "--lr: expected comma-separated numbers > 0"),
    (["--lr", "0.1,fast"], "--lr: expected comma-separated numbers > 0"),
    (["--lr", "0.1", "--seeds", "0"], "--seeds: expected a positive integer"),
    (["--seeds", "2"], "the following arguments are required: --lr"),
    (["--lr", "0.1,0.01,0.1"], "--lr lists 0.1 more than once"),
    (["--lr", "0.1", "--compile-cache", "/dev/null/cache"],
     "--compile-cache /dev/null/cache: cannot create the folder"),
    (["--lr", "0.1", "--seeds", "3", "--devices", "2"], "3 members (learning rates × seeds) do not split evenly"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, args, message):
    done = bp_jax_cli("sweep", *args, "--steps", 5, "--out", tmp_path / "bad", check=False,
                      env={"JAX_NUM_CPU_DEVICES": "2"})
    assert done.returncode == 2 and message in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert not (tmp_path / "bad" / "sweep.json").exists()


def test_a_folder_holding_a_sweep_is_not_written_over(sweep):
    out, _ = sweep
    before = (out / "sweep.json").read_bytes()
    done = bp_jax_cli("sweep", "--lr", "0.1", "--steps", 5, "--out", out, check=False)
    assert done.returncode == 2 and "already holds a run" in done.stderr and "--resume" not in done.stderr
    assert (out / "sweep.json").read_bytes() == before

"""The parity checks on every platform JAX sees, and agreement between backends (bp_jax.cli.check)."""

import jax
import pytest

from bp_jax import cli, documents, manual
from bp_jax.cli import check as backends


def device_or_skip(platform: str) -> jax.Device:
    try:
        return jax.devices(platform)[0]
    except RuntimeError:
        pytest.skip(f"no {platform} device: jax sees {jax.devices()}")


@pytest.mark.parametrize("platform", backends.PLATFORMS)
@pytest.mark.slow
def test_parity_checks_pass_on(platform):
    device = device_or_skip(platform)
    results = backends.parity_checks(device)
    assert len(results) == len(backends.CHECKS) * (1 if platform == "tpu" else 2)
    failed = [result for result in results if not result.passed]
    assert not failed, failed
    assert {result.backend for result in results} == {platform}


@pytest.mark.parametrize("platform", backends.PLATFORMS)
def test_checks_run_on_the_device_they_name(platform):
    device = device_or_skip(platform)
    with jax.default_device(device):
        model = documents.seed_mlp()
        params = model.init(jax.random.key(0))
        loss, _ = jax.jit(manual.value_and_grad(model))(params, jax.numpy.ones((4, 10)), jax.numpy.zeros((4, 1)))
    assert loss.devices() == {device}


def test_gpu_training_agrees_with_cpu():
    gpu = device_or_skip("gpu")
    result = backends.agreement(jax.devices("cpu")[0], gpu)
    assert result.passed, result


@pytest.mark.slow
def test_agreement_measures_the_distance_between_runs():
    cpu = jax.devices("cpu")[0]
    same = backends.agreement(cpu, cpu)
    assert same.passed and same.max_abs_error == 0.0
    assert same.backend == "cpu vs cpu"


@pytest.mark.slow
def test_check_command_fails_on_a_wrong_derivative(monkeypatch, capsys):
    """The command on two of the checks (every check passing is test_parity_checks_pass_on's), one made wrong."""
    kept = ("documents' tiny-network numbers", "neuron: manual vs jax.grad")
    monkeypatch.setattr(backends, "CHECKS", {name: backends.CHECKS[name] for name in kept})
    right = manual.neuron_grad
    monkeypatch.setattr(manual, "neuron_grad", lambda *args: right(*args) * 1.001)
    monkeypatch.setenv("COLUMNS", "160")
    assert cli.main(["check"]) == 1
    out = capsys.readouterr().out
    for column in ("backend", "device", "check", "max abs error", "tolerance", "result"):
        assert column in out
    failing = [line for line in out.splitlines() if "FAIL" in line and line.startswith("│")]
    assert len(failing) == 2 and all("neuron: manual vs jax.grad" in line for line in failing)
    assert "2 of 4 checks passed; 2 FAILED" in out

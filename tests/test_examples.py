"""Each example runs as a script and prints the documents' numbers."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).parent.parent / "examples"


def run(name: str) -> str:
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / name)], capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_tiny_network_prints_the_documents_values():
    out = run("tiny_network.py")
    for line in ("After w1: 1.0", "After ReLU: 1.0", "Final output: 1.5", "Loss: 2.25"):
        assert line in out
    for name, value in (("w1", "-9.0000"), ("w2", "-3.0000"), ("x", "-2.2500")):
        assert re.search(rf"dL/d{name}\s+{value}\s+{value}\s+0\.00e\+00", out), out


def test_single_neuron_formula_matches_jax_grad_for_every_activation():
    out = run("single_neuron.py")
    for name in ("identity", "relu", "sigmoid", "tanh"):
        row = re.search(rf"^{name}\s+\S+\s+\S+\s+(\S+)\s+(\S+)\s+(\S+)$", out, re.M)
        assert row, out
        formula, autodiff, difference = map(float, row.groups())
        assert formula == pytest.approx(autodiff, abs=1e-6) and difference < 1e-6


@pytest.mark.slow
def test_training_step_lowers_the_loss_and_both_steps_agree():
    out = run("training_step.py")
    rows = re.findall(r"^\s+(\d+)\s+([\d.]+)\s+([\d.]+)$", out, re.M)
    assert len(rows) == 6
    hand, via_optax = [float(r[1]) for r in rows], [float(r[2]) for r in rows]
    assert hand == via_optax
    assert hand[-1] < hand[0]
    assert float(re.search(r"max \|hand - optax\| over all params: (\S+)", out).group(1)) < 1e-5


@pytest.mark.slow
def test_pytorch_parity_prints_small_differences_for_every_quantity():
    pytest.importorskip("torch", reason="the parity example runs PyTorch: pip install 'bp_jax[torch]'")
    out = run("pytorch_parity.py")
    tables = re.split(r"\n\n", out.strip())
    assert len(tables) == 5, out
    for table in tables:
        title, _header, *rows = table.splitlines()
        tolerance = 1e-10 if "float64" in title else 1e-5
        assert len(rows) >= 4, table
        for row in rows:
            torch_value, bp_jax_value, difference = map(float, row.split()[-3:])
            assert difference < tolerance and abs(torch_value - bp_jax_value) < 10 * tolerance, row
    assert "dL/dw1                    -9.000000000000    -9.000000000000    0.00e+00" in out


@pytest.mark.slow
def test_per_example_clipping_clips_every_norm_and_still_learns():
    out = run("per_example_clipping.py")
    difference = float(re.search(r"by hand vs jax\.vmap\(jax\.grad\): max \|difference\| (\S+)", out).group(1))
    assert difference < 1e-5
    norms = [tuple(map(float, row)) for row in re.findall(r"^\s+\d+\s+([\d.]+)\s+([\d.]+)$", out, re.M)]
    assert len(norms) == 8
    for before, after in norms:
        assert after <= 1.0 + 1e-6 and after == pytest.approx(min(before, 1.0), abs=1e-4)
    above = int(re.search(r"(\d+) of 64 norms were above C", out).group(1))
    assert 0 < above < 64 and any(before > 1.0 for before, _ in norms)  # clipping did something
    losses = [tuple(map(float, row)) for row in re.findall(r"^\s+\d+\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)$", out, re.M)]
    assert len(losses) == 5 and losses[0][0] == losses[0][1] == losses[0][2]
    assert all(last < first / 2 for first, last in zip(losses[0], losses[-1]))

"""The examples (examples/*.py, not part of the package) train the same model with fused_ce's and
torch's losses: the curves agree step by step, the loss decreases, and the MLP learns the digits."""

import importlib.util
import pathlib
import subprocess
import sys

import pytest
import torch.nn.functional as F

import fused_ce

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"


def load_example(name):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_logistic_regression_curves_agree():
    ex = load_example("logistic_regression")
    ours = ex.train(fused_ce.binary_cross_entropy_with_logits, steps=150, seed=0)
    ref = ex.train(F.binary_cross_entropy_with_logits, steps=150, seed=0)
    assert len(ours) == len(ref) == 150
    for step, (a, b) in enumerate(zip(ours, ref)):
        assert a == pytest.approx(b, rel=1e-9, abs=1e-12), f"step {step}"  # fp64: near-identical
    assert ours[-1] < 0.5 * ours[0]
    assert all(b <= a + 1e-12 for a, b in zip(ours, ours[1:])), "full-batch GD on a convex loss must not go up"


def test_mlp_digits_curves_agree_and_learn():
    pytest.importorskip("sklearn", reason="the digits data set comes with scikit-learn")
    ex = load_example("mlp_digits")
    ours, acc_ours = ex.train(fused_ce.cross_entropy, steps=200, seed=0)
    ref, acc_ref = ex.train(F.cross_entropy, steps=200, seed=0)
    assert len(ours) == len(ref) == 200
    # fp32 training amplifies rounding differences slowly: tight early, looser late
    for step, (a, b) in enumerate(zip(ours, ref)):
        tol = 1e-5 if step < 20 else 2e-2
        assert a == pytest.approx(b, rel=tol, abs=tol), f"step {step}: {a} vs {b}"
    assert sum(ours[-20:]) / 20 < 0.25 * sum(ours[:20]) / 20
    assert acc_ours > 0.9 and acc_ref > 0.9
    assert abs(acc_ours - acc_ref) < 0.02


@pytest.mark.parametrize("name", ["logistic_regression", "mlp_digits"])
def test_examples_run_as_scripts(name):
    if name == "mlp_digits":
        pytest.importorskip("sklearn", reason="the digits data set comes with scikit-learn")
    proc = subprocess.run([sys.executable, str(EXAMPLES / f"{name}.py")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "fused_ce" in proc.stdout and "torch" in proc.stdout
    assert len(proc.stdout.strip().splitlines()) > 5

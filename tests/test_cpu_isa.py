"""Choosing the CPU kernels' instruction set: FUSED_CE_CPU_CAPABILITY=default|avx2|avx512 forces one, is
read at every call (so the `isa_device` fixture can run the parity matrix, tests/test_isa_parity.py, and
the block-boundary tests under each), and a value the CPU cannot run, or that names no instruction set,
is refused with a clear error instead of running illegal instructions."""

import subprocess
import sys

import pytest
import torch
from cpu_isas import ALL_ISAS, SUPPORTED, SUPPORTED_ISAS

import fused_ce

CALL = "import torch, fused_ce; fused_ce.cross_entropy(torch.randn(2, 3), torch.tensor([0, 1]))"


def _small_loss():
    return fused_ce.cross_entropy(torch.tensor([[1.0, 2.0, 0.5]]), torch.tensor([1]))


@pytest.mark.parametrize("isa", [i for i in ALL_ISAS if not SUPPORTED[i]] or ["nonexistent-isa"])
def test_unsupported_or_unknown_capability_is_refused(isa, monkeypatch):
    """Forcing a capability the CPU lacks (AVX-512 on an AVX2 machine, say) raises instead of running
    illegal instructions; in a subprocess, so that a missing check kills that process, not the suite."""
    monkeypatch.setenv("FUSED_CE_CPU_CAPABILITY", isa)
    proc = subprocess.run([sys.executable, "-c", CALL], capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "FUSED_CE_CPU_CAPABILITY" in proc.stderr and "RuntimeError" in proc.stderr, proc.stderr[-2000:]
    assert "Illegal instruction" not in proc.stderr


def test_unknown_capability_name_is_refused(monkeypatch):
    monkeypatch.setenv("FUSED_CE_CPU_CAPABILITY", "sse9")
    with pytest.raises(RuntimeError, match="FUSED_CE_CPU_CAPABILITY must be default, avx2 or avx512, got: sse9"):
        _small_loss()


def test_capability_is_read_at_every_call(monkeypatch):
    """Each call reads the variable anew: a valid value works, a bad one set afterwards in the same
    process raises, and every supported value works again after it (what the isa_device fixture relies
    on: a choice cached at the first call would silently run one build under every name)."""
    expected = torch.log(torch.exp(torch.tensor([1.0, 2.0, 0.5])).sum()) - 2.0
    for isa in SUPPORTED_ISAS:
        monkeypatch.setenv("FUSED_CE_CPU_CAPABILITY", isa)
        torch.testing.assert_close(_small_loss(), expected)
        monkeypatch.setenv("FUSED_CE_CPU_CAPABILITY", "sse9")
        with pytest.raises(RuntimeError, match="got: sse9"):
            _small_loss()
    monkeypatch.delenv("FUSED_CE_CPU_CAPABILITY")
    torch.testing.assert_close(_small_loss(), expected)

"""Shared helpers of the fused_ce tests: the devices the tests run on, and (re-exported from the package)
the error bound and the comparison of a fused loss with torch's own.

The judge itself lives in the package, fused_ce.testing.parity, whose docstring says how a result is judged: the
installed self-check (python -m fused_ce.check) applies the same rule to the same cases
(fused_ce.testing._parity_cases).
"""

import pytest
import torch

import fused_ce.testing
from fused_ce.testing.case_grid import short_name
from fused_ce.testing.parity import (  # noqa: F401  (the tests import these from here)
    DEFAULT_TOL,
    FLOAT_DTYPES,
    MAX_BOUND,
    SMALL_INPUT,
    Tol,
    assert_close,
    assert_loss_of_no_rows,
    compare_with_torch,
    error_bound,
    input_magnitude,
    random_grad_output,
    relative_error,
    unit_roundoff,
)

EMULATED_CUDA = "emulated_cuda"


def devices():
    """Where the device-parametrized tests run: 'cpu' (the CPU kernels) always; 'emulated_cuda' where the
    emulated CUDA extension is built: CPU tensors (so the test sees device 'cpu') run through fused_ce's CUDA
    glue and kernels on the emulator, which conftest.py switches on for cases marked emulated_cuda; 'cuda' only
    where a GPU is visible (never queried at import by the kernels)."""
    found = ["cpu"]
    if fused_ce.testing.emulated_cuda_available():
        found.append(pytest.param("cpu", id=EMULATED_CUDA, marks=pytest.mark.emulated_cuda))
    return found + (["cuda"] if torch.cuda.is_available() else [])


DEVICES = devices()
# Devices of tensors, for tests that draw one (hypothesis) rather than being parametrized.
TENSOR_DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def parametrize_grid(family):
    """A test parametrized over a fused_ce.testing.case_grid.Family's whole grid (one pytest parameter per grid
    parameter, values named as the self-check names them) and over DEVICES."""

    def parametrize(test):
        for name, values in reversed(family.grid.items()):
            test = pytest.mark.parametrize(name, values, ids=short_name)(test)
        return pytest.mark.parametrize("device", DEVICES)(test)

    return parametrize


def spy_on(monkeypatch, targets, record):
    """Replaces each (module, name) of `targets` by a function that appends record(name, args) to the list
    returned, then calls the original: which of fused_ce's functions a test's code path reached, and with what."""
    calls = []
    for module, name in targets:
        original = getattr(module, name)

        def spied(*args, _original=original, _name=name, **kwargs):
            calls.append(record(_name, args))
            return _original(*args, **kwargs)

        monkeypatch.setattr(module, name, spied)
    return calls

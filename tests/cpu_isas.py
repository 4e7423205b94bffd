"""The CPU instruction sets fused_ce's kernels are built for, which of them this CPU runs, and the
`isa_device` fixture that runs a test once per instruction set (and once on every other device).

The kernels are compiled three times (default, AVX2, AVX-512); FUSED_CE_CPU_CAPABILITY picks one and is
read at every call (csrc/cpu/kernel_choice.cpp), so one process can run them all in turn.
"""

import pytest
from helpers import TENSOR_DEVICES

from fused_ce._core.cpu_isas import ALL_ISAS, SUPPORTED, SUPPORTED_ISAS, VECTOR_BYTES  # noqa: F401  (tests import them)

# (device, isa): the CPU once per instruction set it runs; a GPU once, with isa None. (The CUDA kernels'
# block boundaries under emulation are tests/test_emulated_cuda.py's tiling paths.)
_PARAMS = [pytest.param(("cpu", isa), id=f"cpu-{isa}") for isa in SUPPORTED_ISAS] + [
    pytest.param((d, None), id=d) for d in TENSOR_DEVICES if d != "cpu"
]


@pytest.fixture(params=_PARAMS)
def isa_device(request, monkeypatch):
    """(device, isa) with FUSED_CE_CPU_CAPABILITY set to isa for the test's duration (CPU only)."""
    device, isa = request.param
    if isa is not None:
        monkeypatch.setenv("FUSED_CE_CPU_CAPABILITY", isa)
    return device, isa

import os

# Threads that wait by spinning (OpenMP's default) stall each other when the machine has more busy
# processes than cores, which makes tiny tensor ops take 100+ ms; waiting passively keeps both threads
# (and so the kernels' parallel paths) without that cost. Must be set before torch loads OpenMP.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest
import torch
import torch.distributed as dist
from cpu_isas import SUPPORTED_ISAS
from helpers import TENSOR_DEVICES

import fused_ce
import fused_ce.testing


def pytest_report_header(config):
    where = fused_ce.__file__
    cuda = "cuda cases collected" if "cuda" in TENSOR_DEVICES else "no GPU: cuda cases not collected"
    emulated = (
        "emulated_cuda cases collected"
        if fused_ce.testing.emulated_cuda_available()
        else "no emulated CUDA extension (build with FUSED_CE_EMULATED_CUDA=1): emulated_cuda cases not collected"
    )
    return f"fused_ce {fused_ce.__version__} from {where}; torch {torch.__version__}; {cuda}; {emulated}"


@pytest.fixture(autouse=True)
def _emulated_cuda(request, monkeypatch):
    """Cases marked emulated_cuda run fused_ce's CUDA kernels on CPU tensors through the emulator, with
    out-of-range class indices raising IndexError as on the CPU (FUSED_CE_CUDA_CHECK_TARGETS=1)."""
    if request.node.get_closest_marker("emulated_cuda") is None:
        yield
        return
    monkeypatch.setenv("FUSED_CE_CUDA_CHECK_TARGETS", "1")
    with fused_ce.testing.emulated_cuda():
        yield


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def one_rank_group():
    """A gloo process group of one rank in this process, for fused_ce.parallel's entry points in tests that check
    what does not need several ranks (their dtypes, their kernels on every path); destroyed after the module."""
    if dist.is_initialized():
        yield
        return
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


# (device, isa): the CPU once per instruction set it runs; a GPU once, with isa None. (The CUDA kernels'
# block boundaries under emulation are tests/test_emulated_cuda.py's tiling paths.)
_ISA_PARAMS = [pytest.param(("cpu", isa), id=f"cpu-{isa}") for isa in SUPPORTED_ISAS] + [
    pytest.param((d, None), id=d) for d in TENSOR_DEVICES if d != "cpu"
]


@pytest.fixture(params=_ISA_PARAMS)
def isa_device(request, monkeypatch):
    """(device, isa) with FUSED_CE_CPU_CAPABILITY set to isa for the test's duration (CPU only)."""
    device, isa = request.param
    if isa is not None:
        monkeypatch.setenv("FUSED_CE_CPU_CAPABILITY", isa)
    return device, isa

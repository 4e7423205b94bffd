"""The record of where the self-check ran: versions, fused_ce's build, and each checked device (the GPU's
name and driver). Everything here is read from the installed packages and the machine; nothing is assumed.
"""

import platform
import shutil
import subprocess
import sys

import torch

import fused_ce

from .._core import cpu_isas, library
from ..testing import emulated_cuda_available


def build_flags():
    """What this fused_ce was built with: the CPU kernels' instruction sets (compiled, supported here, chosen
    now), whether the CUDA kernels and the emulated CUDA build exist."""
    return {
        "cpu_isas_built": list(cpu_isas.ALL_ISAS),
        "cpu_isas_supported": list(cpu_isas.SUPPORTED_ISAS),
        "cpu_isa_chosen": cpu_isas.chosen_isa(),
        "cuda_kernels": torch._C._dispatch_has_kernel_for_dispatch_key(f"{library.LIBRARY}::cross_entropy_fwd", "CUDA"),
        "emulated_cuda": emulated_cuda_available(),
        "built_for": fused_ce.build_info(),
    }


def versions():
    return {
        "fused_ce": fused_ce.__version__,
        "fused_ce_path": fused_ce.__file__,
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
    }


def cpu_name():
    """The CPU's model name (the benchmarks record it too)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _nvidia_driver():
    """The NVIDIA driver's version from nvidia-smi, else the CUDA driver API version torch reports."""
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            out = subprocess.run(
                [smi, "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True, text=True, timeout=20
            )
            if out.returncode == 0 and out.stdout.strip():
                return out.stdout.strip().splitlines()[0]
        except (OSError, subprocess.SubprocessError):
            pass
    try:
        version = torch._C._cuda_getDriverVersion()
        return f"CUDA driver API {version // 1000}.{version % 1000 // 10}"
    except (AttributeError, RuntimeError):
        return None


def describe_device(target):
    """Name and details of one checked target (a fused_ce.check.targets.Target)."""
    if target.device.type == "cuda":
        props = torch.cuda.get_device_properties(target.device)
        return {
            "name": props.name,
            "capability": f"{props.major}.{props.minor}",
            "memory_gib": round(props.total_memory / 2**30, 1),
            "driver": _nvidia_driver(),
        }
    record = {"name": cpu_name(), "threads": torch.get_num_threads()}
    if target.emulated:
        record["kernels"] = "fused_ce's CUDA kernels run by the CPU emulator (fused_ce.testing.emulated_cuda)"
    else:
        record["kernels"] = f"CPU kernels, {cpu_isas.chosen_isa()} build"
    return record

"""Loads the compiled extension after checking that it was built for the torch found at run time.

A torch extension's binary is tied to the torch it was compiled against: between minor releases torch's C++
ABI and operator registry change, so a build (or a wheel) made for another torch fails to load with an undefined
symbol, or worse, loads and crashes. setup.py records the build's torch in fused_ce/_build_info.py; this module
compares it with the running torch before loading fused_ce._C, and turns a failed load into an ImportError
that names both versions and the fix.
"""

import importlib
import re

import torch

# The package the compiled modules and _build_info.py sit in: fused_ce, the parent of this _core.
PACKAGE = __package__.rpartition(".")[0]

try:
    from .. import _build_info  # written by setup.py beside the compiled modules
except ImportError:  # a build that bypassed setup.py's build_py (python setup.py build_ext --inplace)
    _build_info = None


def _release(version):
    """(major, minor) of a torch version string such as 2.13.0+cpu or 2.15.0.dev20261201."""
    return tuple(int(part) for part in re.match(r"(\d+)\.(\d+)", version).groups())


def _cuda_major(version):
    return None if version is None else version.split(".")[0]


def describe_build(info):
    kernels = f"CUDA {info.CUDA_TOOLKIT} kernels" if info.CUDA_KERNELS else "CPU kernels only"
    return f"torch {info.TORCH} ({kernels})"


def mismatch(info, torch_version, torch_cuda):
    """Why a build described by `info` cannot run beside torch `torch_version` (CUDA `torch_cuda`), or None."""
    if _release(info.TORCH) != _release(torch_version):
        return "its torch release differs"
    if info.CUDA_KERNELS and _cuda_major(torch_cuda) != _cuda_major(info.TORCH_CUDA):
        return "its CUDA kernels need a torch built with CUDA " + str(info.TORCH_CUDA)
    return None


def _message(info, reason):
    found = f"torch {torch.__version__} ({'CUDA ' + torch.version.cuda if torch.version.cuda else 'CPU-only'})"
    if info is not None:
        head = f"fused_ce {info.VERSION} was built for {describe_build(info)}, but {found} is installed ({reason})."
    else:
        head = (
            f"fused_ce cannot be loaded beside {found} ({reason}); its build did not record which torch it was "
            f"made for."
        )
    return (
        f"{head} Install the fused_ce wheel made for this torch (its version label names it: "
        f"+pt<torch version><cpu|cuXYZ>), or build fused_ce from source against this torch: "
        f"pip install --no-cache-dir --force-reinstall <fused_ce source folder or sdist>."
    )


def load_extension(name="_C"):
    """Imports fused_ce.<name> (static registration of the ops) after the version check."""
    if _build_info is not None:
        reason = mismatch(_build_info, torch.__version__, torch.version.cuda)
        if reason:
            raise ImportError(_message(_build_info, reason))
    try:
        return importlib.import_module(f"{PACKAGE}.{name}")
    except (ImportError, OSError) as e:
        raise ImportError(_message(_build_info, f"loading fused_ce.{name} failed: {e}")) from e

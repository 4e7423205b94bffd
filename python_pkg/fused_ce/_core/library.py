"""The op libraries: loading the compiled extensions, which library the public API calls, and the one loop
that registers Python-side rules (fake kernels, autograd, vmap) in every loaded library.

The schemas and the CPU/CUDA kernels live in C++ (csrc/). The same Python registrations serve a second op
library when the emulated CUDA extension is installed (`fused_ce_emulated_cuda`: the CUDA glue and kernels run
on CPU tensors by an emulator, see fused_ce.testing). kernel_ops() says which library the public API calls.
"""

import importlib
import os

import torch

from . import build_check

# Loads fused_ce._C (static registration of schemas and kernels), or says why this build cannot run here.
build_check.load_extension()

LIBRARY = "fused_ce"
EMULATED_LIBRARY = "fused_ce_emulated_cuda"


def _load_emulated_library():
    """The emulated CUDA extension, if it was built (FUSED_CE_EMULATED_CUDA=1): the packaged module, or the
    library named by FUSED_CE_EMULATED_CUDA_LIBRARY (the sanitizer build, scripts/test_emulated_asan.sh)."""
    path = os.environ.get("FUSED_CE_EMULATED_CUDA_LIBRARY")
    if path:
        torch.ops.load_library(path)
        return True
    try:
        importlib.import_module(f"{build_check.PACKAGE}._C_emulated_cuda")  # a compiled module, loaded like _C
    except ImportError:
        return False
    return True


EMULATED_AVAILABLE = _load_emulated_library()

# Depth of nested fused_ce.testing.emulated_cuda() blocks; a plain module global, which torch.compile guards on.
emulated_depth = 0


def kernel_ops():
    """The op namespace that the public API calls now."""
    return torch.ops.fused_ce_emulated_cuda if emulated_depth else torch.ops.fused_ce


def op_libraries():
    """The names of the loaded op libraries: fused_ce, and the emulated CUDA build's when it is installed."""
    return [LIBRARY] + ([EMULATED_LIBRARY] if EMULATED_AVAILABLE else [])


def register_in_every_library(*registrations):
    """Runs each registration(lib) (fake kernels, autograd, vmap rules of some ops) for every loaded library."""
    for lib in op_libraries():
        for register in registrations:
            register(lib)


def lse_dtype(dtype):
    """The accumulation dtype: of per-row losses, z-losses and statistics, and of the lse users are given."""
    return torch.float64 if dtype == torch.float64 else torch.float32


# The lse a cross-entropy forward op saves for its backward (its second output): fp64 for every input dtype,
# so that the backward's probabilities carry no rounding of it (csrc/rowmath.h, lse_saved).
SAVED_LSE_DTYPE = torch.float64


def row_shape(logits):
    """The shape of per-row results of (N, C, d1, ..., dk) logits: (N, d1, ..., dk)."""
    return (logits.shape[0],) + tuple(logits.shape[2:])

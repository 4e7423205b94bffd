"""Testing tools of fused_ce, for its own test suite, its self-check (python -m fused_ce.check) and users who
check fused_ce (or their own losses) against torch by the same rule.

The parity judge (fused_ce.testing.parity): assert_close judges a result against an fp64 reference with an
error bound made of the dtype's rounding and the arithmetic's; compare_with_torch runs a fused loss and torch's
on the same inputs and judges values and gradients. Case grids (fused_ce.testing.case_grid.Family): one check
run over a grid of parameters, whole or by a covering walk.

emulated_cuda(): runs the public API (functional, modules, Function classes; forward, backward and double
backward) on CPU tensors through fused_ce's CUDA glue and CUDA kernels, executed by a CPU emulator of the
CUDA execution model. It needs the emulated CUDA extension, built with FUSED_CE_EMULATED_CUDA=1 (no CUDA
toolkit or GPU needed):

    FUSED_CE_EMULATED_CUDA=1 pip install --no-build-isolation .

    import fused_ce.testing
    with fused_ce.testing.emulated_cuda():
        loss = fused_ce.cross_entropy(logits_on_cpu, target)   # the CUDA kernels ran, on the CPU
        loss.backward()

Inside, out-of-range class indices behave as on a GPU: NaN loss and gradient rows, or torch's IndexError
when FUSED_CE_CUDA_CHECK_TARGETS=1. The emulator is slow (it runs every GPU thread as a fiber), and the
switch is process-wide, not per thread: it is meant for tests. docs/emulated_cuda.md says what the
emulation checks and what it cannot.
"""

import contextlib

from .._core import library
from .case_grid import Family
from .parity import Tol, assert_close, compare_with_torch, error_bound, relative_error

__all__ = [
    "Family",
    "Tol",
    "assert_close",
    "compare_with_torch",
    "emulated_cuda",
    "emulated_cuda_available",
    "error_bound",
    "relative_error",
]


def emulated_cuda_available():
    """True when the emulated CUDA extension is installed (built with FUSED_CE_EMULATED_CUDA=1)."""
    return library.EMULATED_AVAILABLE


@contextlib.contextmanager
def emulated_cuda():
    """Within this block, fused_ce's public API runs its CUDA kernels on CPU tensors, through the emulator.
    Autograd graphs built inside keep using the emulated ops for their backward, also after the block."""
    if not library.EMULATED_AVAILABLE:
        raise RuntimeError(
            "fused_ce.testing.emulated_cuda() needs the emulated CUDA extension: reinstall fused_ce with "
            "FUSED_CE_EMULATED_CUDA=1 (pip install --no-build-isolation .)"
        )
    library.emulated_depth += 1
    try:
        yield
    finally:
        library.emulated_depth -= 1

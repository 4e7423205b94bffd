"""Testing hooks of fused_ce.

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

from . import _ops

__all__ = ["emulated_cuda", "emulated_cuda_available"]


def emulated_cuda_available():
    """True when the emulated CUDA extension is installed (built with FUSED_CE_EMULATED_CUDA=1)."""
    return _ops.EMULATED_AVAILABLE


@contextlib.contextmanager
def emulated_cuda():
    """Within this block, fused_ce's public API runs its CUDA kernels on CPU tensors, through the emulator.
    Autograd graphs built inside keep using the emulated ops for their backward, also after the block."""
    if not _ops.EMULATED_AVAILABLE:
        raise RuntimeError(
            "fused_ce.testing.emulated_cuda() needs the emulated CUDA extension: reinstall fused_ce with "
            "FUSED_CE_EMULATED_CUDA=1 (pip install --no-build-isolation .)")
    _ops.emulated_depth += 1
    try:
        yield
    finally:
        _ops.emulated_depth -= 1

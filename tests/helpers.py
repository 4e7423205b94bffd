"""Shared helpers of the fused_ce tests: devices, per-dtype tolerances, and the comparison of a fused
loss (values and gradients) with torch's own loss.

Low-precision results (bf16, fp16) are compared with torch run on the same low-precision values upcast
to fp32: torch's own bf16/fp16 CPU losses round intermediates and are less accurate than fused_ce,
which accumulates in fp32. fp32 and fp64 results are compared with torch directly, tightly; an fp32
result that misses torch's fp32 result must then match torch's fp64 result (see compare_with_torch).
"""
from dataclasses import dataclass

import pytest
import torch

import fused_ce.testing


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


@dataclass(frozen=True)
class Tol:
    rtol: float
    atol: float  # relative to the largest finite magnitude of the expected tensor (at least 1)


TOLS = {
    torch.float64: Tol(1e-9, 1e-11),
    # atol is torch.testing's fp32 default: the saved fp32 log-sum-exp carries an absolute error of up to
    # ulp(lse)/2 into log-probabilities (3e-6 at logits near 74), which the gradient of a class with
    # probability near 1 shows in full.
    torch.float32: Tol(2e-5, 1e-5),
    torch.bfloat16: Tol(1.6e-2, 4e-3),
    torch.float16: Tol(2e-3, 5e-4),
}
FLOAT_DTYPES = list(TOLS)
LOW_PRECISION = (torch.bfloat16, torch.float16)


def assert_close(actual, expected, dtype=None, tol=None, msg=""):
    """torch.testing.assert_close with the tolerance of `dtype` (default: actual's dtype), the absolute
    part scaled by the expected tensor's magnitude; NaN must match NaN, and inf must match inf."""
    tol = tol or TOLS[dtype or actual.dtype]
    assert actual.shape == expected.shape, f"{msg}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    expected = expected.detach()
    finite = expected[torch.isfinite(expected)]
    scale = max(1.0, finite.abs().max().item()) if finite.numel() else 1.0
    torch.testing.assert_close(
        actual.detach().to(expected.dtype), expected, rtol=tol.rtol, atol=tol.atol * scale,
        equal_nan=True, msg=lambda m: f"{msg}\n{m}" if msg else m)


def assert_loss_of_no_rows(out, reduction):
    """The loss over an empty batch or only ignored rows, as torch: mean is 0/0 = NaN, sum is 0, and
    'none' holds zeros (or nothing)."""
    if reduction == "mean":
        assert out.isnan(), f"mean over no rows must be NaN, got {out}"
    else:
        assert (out == 0).all(), f"{reduction} over no rows must be 0, got {out}"


def _as_reference(t, in_fp64):
    """t detached; bf16/fp16 tensors upcast to fp32, or every floating tensor to fp64 when in_fp64."""
    if not isinstance(t, torch.Tensor):
        return t
    t = t.detach()
    if t.is_floating_point() and in_fp64:
        return t.double()
    if t.is_floating_point() and t.dtype in LOW_PRECISION:
        return t.float()
    return t


def random_grad_output(out, seed=1234):
    """A non-uniform upstream gradient (in [0.5, 1.5)) of out's shape, so the backward cannot assume 1."""
    gen = torch.Generator().manual_seed(seed)
    return (torch.rand(out.shape, generator=gen, dtype=torch.float64) + 0.5).to(out.device)


def compare_with_torch(ours_fn, torch_fn, args, grad_args=(), dtype=None, kwargs=None, grad_output=None,
                       expected_dtype=None, tol=None):
    """Runs ours_fn(*args, **kwargs) and torch_fn(*args, **kwargs) and asserts that values and the
    gradients w.r.t. args[i] for i in grad_args agree. `args` may be non-contiguous views (they are
    passed as they are, to exercise the kernels' strided paths); gradients are taken w.r.t. them.

    fp32 results must match torch's fp32 result or, where torch's own fp32 rounding is the larger error
    (large C with large logits: torch's fp32 gradient can be 1e-2 off in relative terms on small
    entries), torch's fp64 result of the same inputs, with the same fp32 tolerance.

    dtype: the tolerance's dtype (default args[0].dtype). grad_output: None for a random non-uniform
    upstream gradient, or a tensor. Returns (ours_out, ours_grads) for further checks.
    """
    kwargs = kwargs or {}
    dtype = dtype or args[0].dtype
    ours_args = [a.detach().requires_grad_(i in grad_args) if isinstance(a, torch.Tensor) else a
                 for i, a in enumerate(args)]
    out = ours_fn(*ours_args, **kwargs)
    go = None
    grads = []
    if grad_args:
        go = random_grad_output(out) if grad_output is None else grad_output
        leaves = [ours_args[i] for i in grad_args]
        grads = torch.autograd.grad(out, leaves, go.to(out.dtype), allow_unused=True)
        for i, g, leaf in zip(grad_args, grads, leaves):
            if g is not None:
                assert g.dtype == leaf.dtype and g.shape == leaf.shape, \
                    f"gradient of argument {i}: {g.dtype} {tuple(g.shape)}"
    ref, ref_grads = _torch_result(torch_fn, args, kwargs, grad_args, go, in_fp64=False)
    if expected_dtype is None:
        expected_dtype = dtype if dtype in LOW_PRECISION else ref.dtype
    assert out.dtype == expected_dtype, f"output dtype {out.dtype}, torch gives {expected_dtype}"
    assert out.device == ref.device
    try:
        _assert_same_values(out, grads, ref, ref_grads, grad_args, dtype, tol)
    except AssertionError:
        if dtype != torch.float32:
            raise
        ref, ref_grads = _torch_result(torch_fn, args, kwargs, grad_args, go, in_fp64=True)
        try:
            _assert_same_values(out, grads, ref, ref_grads, grad_args, dtype, tol)
        except AssertionError as e64:
            raise AssertionError(f"differs from torch's fp32 and fp64 results; against fp64:\n{e64}") from None
    return out, grads


def _torch_result(torch_fn, args, kwargs, grad_args, go, in_fp64):
    """torch_fn's value and gradients w.r.t. args[i] for i in grad_args, on args upcast by _as_reference."""
    ref_args = [_as_reference(a, in_fp64) for a in args]
    ref_args = [a.requires_grad_(True) if i in grad_args else a for i, a in enumerate(ref_args)]
    ref_kwargs = {k: _as_reference(v, in_fp64) for k, v in kwargs.items()}
    ref = torch_fn(*ref_args, **ref_kwargs)
    if not grad_args:
        return ref, []
    return ref, torch.autograd.grad(ref, [ref_args[i] for i in grad_args], go.to(ref.dtype), allow_unused=True)


def _assert_same_values(out, grads, ref, ref_grads, grad_args, dtype, tol):
    assert_close(out, ref, dtype, tol, "loss value")
    for i, g, rg in zip(grad_args, grads, ref_grads):
        assert (g is None) == (rg is None), f"gradient of argument {i}: {g} vs torch {rg}"
        if g is not None:
            assert_close(g, rg, dtype, tol, f"gradient w.r.t. argument {i}")

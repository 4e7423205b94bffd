"""Fake (meta) kernels and autograd formulas of the fused_ce ops, registered with torch.library.

The schemas and the CPU/CUDA kernels live in C++ (csrc/). Backward passes call the backward ops, so
torch.compile and opcheck see only registered ops. When a graph of the backward is being built
(create_graph=True, i.e. double backward), the gradient is instead written with differentiable torch
operations (_double_backward.py), which autograd can differentiate once more.

The same registrations serve a second op library when the emulated CUDA extension is installed
(`fused_ce_emulated_cuda`: the CUDA glue and kernels run on CPU tensors by an emulator, see
fused_ce.testing). kernel_ops() says which library the public API calls.
"""
import os

import torch

from . import _C  # noqa: F401  (loads the library: static registration of schemas and kernels)
from . import _double_backward, _transform_levels

LIBRARY = "fused_ce"
EMULATED_LIBRARY = "fused_ce_emulated_cuda"

NONE, MEAN, SUM = 0, 1, 2


def _load_emulated_library():
    """The emulated CUDA extension, if it was built (FUSED_CE_EMULATED_CUDA=1): the packaged module, or the
    library named by FUSED_CE_EMULATED_CUDA_LIBRARY (the sanitizer build, scripts/test_emulated_asan.sh)."""
    path = os.environ.get("FUSED_CE_EMULATED_CUDA_LIBRARY")
    if path:
        torch.ops.load_library(path)
        return True
    try:
        from . import _C_emulated_cuda  # noqa: F401
    except ImportError:
        return False
    return True


EMULATED_AVAILABLE = _load_emulated_library()

# Depth of nested fused_ce.testing.emulated_cuda() blocks; a plain module global, which torch.compile guards on.
emulated_depth = 0


def kernel_ops():
    """The op namespace that the public API calls now."""
    return torch.ops.fused_ce_emulated_cuda if emulated_depth else torch.ops.fused_ce


def lse_dtype(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def row_shape(logits):
    return (logits.shape[0],) + tuple(logits.shape[2:])


def _loss_like(logits, reduction):
    shape = row_shape(logits) if reduction == NONE else ()
    return logits.new_empty(shape)


def _grad_like(x):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


# ---- fake kernels ---------------------------------------------------------------------------------
def _register_fakes(lib):
    @torch.library.register_fake(f"{lib}::cross_entropy_fwd")
    def _(logits, target, weight, ignore_index, label_smoothing, reduction):
        torch._check(logits.dim() >= 2, lambda: "fused_ce: logits must have shape (N, C, d1, ..., dk)")
        torch._check(tuple(target.shape) == row_shape(logits), lambda: "fused_ce: target must have shape (N, d1..dk)")
        return _loss_like(logits, reduction), logits.new_empty(row_shape(logits), dtype=lse_dtype(logits.dtype))

    @torch.library.register_fake(f"{lib}::cross_entropy_soft_fwd")
    def _(logits, target, weight, label_smoothing, reduction):
        torch._check(logits.dim() >= 2, lambda: "fused_ce: logits must have shape (N, C, d1, ..., dk)")
        torch._check(target.shape == logits.shape, lambda: "fused_ce: target must have the logits' shape")
        return _loss_like(logits, reduction), logits.new_empty(row_shape(logits), dtype=lse_dtype(logits.dtype))

    @torch.library.register_fake(f"{lib}::cross_entropy_bwd")
    def _(grad, logits, target, weight, lse, ignore_index, label_smoothing, reduction):
        return _grad_like(logits)

    @torch.library.register_fake(f"{lib}::cross_entropy_soft_bwd")
    def _(grad, logits, target, weight, lse, label_smoothing, reduction):
        return _grad_like(logits)

    @torch.library.register_fake(f"{lib}::cross_entropy_soft_target_bwd")
    def _(grad, logits, weight, lse, label_smoothing, reduction):
        return _grad_like(logits)

    @torch.library.register_fake(f"{lib}::bce_with_logits_fwd")
    def _(input, target, weight, pos_weight, reduction):
        torch._check(target.shape == input.shape, lambda: "fused_ce: target must have the input's shape")
        return input.new_empty(input.shape if reduction == NONE else ())

    @torch.library.register_fake(f"{lib}::bce_with_logits_bwd")
    def _(grad, input, target, weight, pos_weight, reduction):
        return _grad_like(input)

    @torch.library.register_fake(f"{lib}::bce_with_logits_target_bwd")
    def _(grad, input, target, weight, pos_weight, reduction):
        return _grad_like(input)


# ---- backward formulas, shared by register_autograd and the public autograd.Function classes ------
# `ops` is the op namespace whose forward ran (kernel_ops() at that time).
def cross_entropy_backward(ops, grad_loss, logits, target, weight, lse, ignore_index, label_smoothing, reduction):
    """Gradient w.r.t. the logits of the class-index loss."""
    if _transform_levels.backward_needs_graph(grad_loss, logits):
        return _double_backward.cross_entropy_grad(
            grad_loss, logits, target, weight, ignore_index, label_smoothing, reduction)
    return ops.cross_entropy_bwd(grad_loss, logits, target, weight, lse, ignore_index, label_smoothing, reduction)


def cross_entropy_soft_backward(ops, grad_loss, logits, target, weight, lse, label_smoothing, reduction,
                                need_logits, need_target):
    """Gradients w.r.t. the logits and the probability target."""
    if _transform_levels.backward_needs_graph(grad_loss, logits, target):
        return _double_backward.cross_entropy_soft_grads(
            grad_loss, logits, target, weight, label_smoothing, reduction, need_logits, need_target)
    g_logits = ops.cross_entropy_soft_bwd(grad_loss, logits, target, weight, lse, label_smoothing, reduction) \
        if need_logits else None
    g_target = ops.cross_entropy_soft_target_bwd(grad_loss, logits, weight, lse, label_smoothing, reduction) \
        if need_target else None
    return g_logits, g_target


def bce_backward(ops, grad_loss, input, target, weight, pos_weight, reduction, need_input, need_target):
    """Gradients w.r.t. the logits and the target of BCE with logits."""
    if _transform_levels.backward_needs_graph(grad_loss, input, target):
        return _double_backward.bce_grads(
            grad_loss, input, target, weight, pos_weight, reduction, need_input, need_target)
    g_input = ops.bce_with_logits_bwd(grad_loss, input, target, weight, pos_weight, reduction) if need_input else None
    g_target = ops.bce_with_logits_target_bwd(grad_loss, input, target, weight, pos_weight, reduction) \
        if need_target else None
    return g_input, g_target


# ---- register_autograd ----------------------------------------------------------------------------
def _setup_ce(ctx, inputs, output):
    logits, target, weight, ignore_index, label_smoothing, reduction = inputs
    ctx.save_for_backward(logits, target, weight, output[1])
    ctx.args = (ignore_index, label_smoothing, reduction)


def _setup_ce_soft(ctx, inputs, output):
    logits, target, weight, label_smoothing, reduction = inputs
    ctx.save_for_backward(logits, target, weight, output[1])
    ctx.args = (label_smoothing, reduction)


def _setup_bce(ctx, inputs, output):
    input, target, weight, pos_weight, reduction = inputs
    ctx.save_for_backward(input, target, weight, pos_weight)
    ctx.reduction = reduction


def _register_autograd(lib):
    ops = getattr(torch.ops, lib)

    def backward_ce(ctx, grad_loss, grad_lse):
        logits, target, weight, lse = ctx.saved_tensors
        g = cross_entropy_backward(ops, grad_loss, logits, target, weight, lse, *ctx.args)
        return g, None, None, None, None, None

    def backward_ce_soft(ctx, grad_loss, grad_lse):
        logits, target, weight, lse = ctx.saved_tensors
        g_logits, g_target = cross_entropy_soft_backward(
            ops, grad_loss, logits, target, weight, lse, *ctx.args,
            need_logits=ctx.needs_input_grad[0], need_target=ctx.needs_input_grad[1])
        return g_logits, g_target, None, None, None

    def backward_bce(ctx, grad_loss):
        input, target, weight, pos_weight = ctx.saved_tensors
        g_input, g_target = bce_backward(
            ops, grad_loss, input, target, weight, pos_weight, ctx.reduction,
            need_input=ctx.needs_input_grad[0], need_target=ctx.needs_input_grad[1])
        return g_input, g_target, None, None, None

    torch.library.register_autograd(f"{lib}::cross_entropy_fwd", backward_ce, setup_context=_setup_ce)
    torch.library.register_autograd(f"{lib}::cross_entropy_soft_fwd", backward_ce_soft, setup_context=_setup_ce_soft)
    torch.library.register_autograd(f"{lib}::bce_with_logits_fwd", backward_bce, setup_context=_setup_bce)


from . import _vmap  # noqa: E402  (its rules use the constants above)

for _lib in [LIBRARY] + ([EMULATED_LIBRARY] if EMULATED_AVAILABLE else []):
    _register_fakes(_lib)
    _register_autograd(_lib)
    _vmap.register(_lib)

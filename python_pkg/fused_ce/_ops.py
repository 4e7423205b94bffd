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

from . import _build_check, _double_backward, _transform_levels
from ._dtypes import KERNEL_DTYPES, dtype_name

# Loads fused_ce._C (static registration of schemas and kernels), or says why this build cannot run here.
_build_check.load_extension()

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
    """The accumulation dtype: of per-row losses, z-losses and statistics, and of the lse users are given."""
    return torch.float64 if dtype == torch.float64 else torch.float32


# The lse a cross-entropy forward op saves for its backward (its second output): fp64 for every input dtype,
# so that the backward's probabilities carry no rounding of it (csrc/rowmath.h, lse_saved).
SAVED_LSE_DTYPE = torch.float64


def row_shape(logits):
    return (logits.shape[0],) + tuple(logits.shape[2:])


def _loss_like(logits, reduction):
    shape = row_shape(logits) if reduction == NONE else ()
    return logits.new_empty(shape)


def _grad_like(x):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


# ---- fake kernels ---------------------------------------------------------------------------------
# They raise what the C++ glue (csrc/op_common.h) raises for the same arguments, so that a call under
# FakeTensorMode or torch.compile fails as the real one does. Device checks matter most here: the
# dispatcher runs the fake kernel for any call with a meta tensor among its arguments, so without them
# CPU logits with a meta weight would return an uninitialized CPU tensor.
def _check_devices(logits, **tensors):
    for name, t in tensors.items():
        torch._check(t is None or t.device == logits.device, lambda: (
            f"fused_ce: every tensor must be on the logits' device {logits.device}, but {name} is on {t.device}"))


def _check_floating(t, name):
    torch._check(t.dtype in KERNEL_DTYPES, lambda: (
        f"fused_ce: {name} must be float32, float64, float16 or bfloat16, got {dtype_name(t.dtype)}"))


def _check_weight(weight, logits, num_classes):
    if weight is None:
        return
    torch._check(weight.dim() == 1 and weight.numel() == num_classes, lambda: (
        f"weight tensor should be defined either for all {num_classes} classes or no classes but got weight "
        f"tensor of shape: {list(weight.shape)}"))
    torch._check(weight.dtype == logits.dtype, lambda: (
        f"expected scalar type {dtype_name(logits.dtype)} but found {dtype_name(weight.dtype)}"))
    _check_devices(logits, weight=weight)


def _check_reduction(reduction):
    torch._check(reduction in (NONE, MEAN, SUM), lambda: (
        f"fused_ce: reduction must be 0 (none), 1 (mean) or 2 (sum), got {reduction}"))


def _check_ce(logits, target, weight, soft):
    _check_floating(logits, "logits")
    torch._check(logits.dim() >= 2, lambda: f"fused_ce: logits must have shape (N, C, d1, ..., dk), got {list(logits.shape)}")
    if soft:
        torch._check(target.shape == logits.shape and target.dtype == logits.dtype, lambda: (
            f"fused_ce: probability targets must have the logits' shape and dtype, got {list(target.shape)} "
            f"{dtype_name(target.dtype)} for logits {list(logits.shape)} {dtype_name(logits.dtype)}"))
    else:
        torch._check(target.dtype in (torch.int64, torch.uint8), lambda: (
            f"expected target dtype to be Long or Byte, but got {dtype_name(target.dtype)}"))
        torch._check(tuple(target.shape) == row_shape(logits), lambda: (
            f"Expected target size {list(row_shape(logits))}, got {list(target.shape)}"))
    _check_devices(logits, target=target)
    _check_weight(weight, logits, logits.shape[1])


def _check_backward(grad, logits, lse, reduction, loss_shape):
    if lse is not None:
        _check_devices(logits, lse=lse)
        torch._check(lse.dtype == SAVED_LSE_DTYPE and tuple(lse.shape) == row_shape(logits),
                     lambda: "fused_ce: lse must be the forward's second output")
    _check_devices(logits, grad=grad)
    shape = tuple(loss_shape) if reduction == NONE else ()
    torch._check(tuple(grad.shape) == shape if reduction == NONE else grad.numel() == 1,
                 lambda: f"fused_ce: grad must have shape {list(shape)} for this reduction, got {list(grad.shape)}")


def _check_bce(input, target, weight, pos_weight):
    _check_floating(input, "input")
    torch._check(target.shape == input.shape, lambda: (
        f"Target size ({list(target.shape)}) must be the same as input size ({list(input.shape)})"))
    torch._check(target.dtype == input.dtype, lambda: (
        f"fused_ce: target must have the input's dtype, got {dtype_name(target.dtype)}"))
    _check_devices(input, target=target, weight=weight, pos_weight=pos_weight)
    for operand in (weight, pos_weight):
        if operand is not None:
            operand.expand(input.shape)  # the glue's own broadcast, and so its error


def _register_fakes(lib):
    @torch.library.register_fake(f"{lib}::cross_entropy_fwd")
    def _(logits, target, weight, ignore_index, label_smoothing, reduction):
        _check_reduction(reduction)
        _check_ce(logits, target, weight, soft=False)
        return _loss_like(logits, reduction), logits.new_empty(row_shape(logits), dtype=SAVED_LSE_DTYPE)

    @torch.library.register_fake(f"{lib}::cross_entropy_soft_fwd")
    def _(logits, target, weight, label_smoothing, reduction):
        _check_reduction(reduction)
        _check_ce(logits, target, weight, soft=True)
        return _loss_like(logits, reduction), logits.new_empty(row_shape(logits), dtype=SAVED_LSE_DTYPE)

    @torch.library.register_fake(f"{lib}::cross_entropy_bwd")
    def _(grad, logits, target, weight, lse, ignore_index, label_smoothing, reduction):
        _check_reduction(reduction)
        _check_ce(logits, target, weight, soft=False)
        _check_backward(grad, logits, lse, reduction, row_shape(logits))
        return _grad_like(logits)

    @torch.library.register_fake(f"{lib}::cross_entropy_soft_bwd")
    def _(grad, logits, target, weight, lse, label_smoothing, reduction):
        _check_reduction(reduction)
        _check_ce(logits, target, weight, soft=True)
        _check_backward(grad, logits, lse, reduction, row_shape(logits))
        return _grad_like(logits)

    @torch.library.register_fake(f"{lib}::cross_entropy_soft_target_bwd")
    def _(grad, logits, weight, lse, label_smoothing, reduction):
        _check_reduction(reduction)
        _check_floating(logits, "logits")
        _check_weight(weight, logits, logits.shape[1])
        _check_backward(grad, logits, lse, reduction, row_shape(logits))
        return _grad_like(logits)

    @torch.library.register_fake(f"{lib}::bce_with_logits_fwd")
    def _(input, target, weight, pos_weight, reduction):
        _check_reduction(reduction)
        _check_bce(input, target, weight, pos_weight)
        return input.new_empty(input.shape if reduction == NONE else ())

    @torch.library.register_fake(f"{lib}::bce_with_logits_bwd")
    def _(grad, input, target, weight, pos_weight, reduction):
        _check_reduction(reduction)
        _check_bce(input, target, weight, pos_weight)
        _check_backward(grad, input, None, reduction, input.shape)
        return _grad_like(input)

    @torch.library.register_fake(f"{lib}::bce_with_logits_target_bwd")
    def _(grad, input, target, weight, pos_weight, reduction):
        _check_reduction(reduction)
        _check_bce(input, target, weight, pos_weight)
        _check_backward(grad, input, None, reduction, input.shape)
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

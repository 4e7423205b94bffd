"""The fused linear cross-entropy as torch.library custom ops: the chunk loop, its fake kernels and autograd.

For row chunks X_c of the input, in a fixed order, through one reused workspace:
    tile = X_c W^T (+ b)                                    torch.mm / addmm, in the input dtype
    loss rows, and tile <- dlogits                          the C++ op linear_ce_tile_ (CPU or CUDA kernels)
    dX_c = tile W;  dW += tile^T X_c;  db += column sums    dW and db accumulated in fp32 for fp16/bf16
so no N x V tensor ever exists. With reduction 'mean' or 'sum' the gradients are computed during forward
(when something requires grad) and backward only scales them by the scalar upstream gradient. With 'none'
the upstream gradient differs per row and dW cannot be rescaled afterwards: backward runs the loop a second
time with the per-row gradients (linear_cross_entropy_bwd), as does a second backward of 'mean'/'sum'
(retain_graph=True) once the first has scaled the forward's gradients in place.

The ops are defined once per op library (fused_ce, and fused_ce_emulated_cuda when the emulated CUDA
extension is installed, whose linear_ce_tile_ runs the CUDA kernels on CPU tensors).
"""

from typing import Optional

import torch
from torch import Tensor

from .._core.fake_checks import check_ce, check_reduction
from .._core.library import lse_dtype as acc_dtype  # the accumulation dtype
from .._core.library import register_in_every_library
from .._core.reductions import MEAN, NONE, SUM
from .._vocab import tiles
from .._vocab.stats import fixed_order_sum as _fixed_order_sum


def _target_weight_total(target, weight, ignore_index, num_classes):
    """The weighted mean's denominator: sum of w[y] over rows that are not ignored (float64, 0-dim)."""
    live = target != ignore_index
    if weight is None:
        return _fixed_order_sum(live)
    # Out-of-range targets are clamped here only to be indexable; linear_ce_tile_ reports them (CPU) or
    # makes their rows NaN (CUDA).
    w_y = weight.to(torch.float64)[target.long().clamp(0, num_classes - 1)]
    return _fixed_order_sum(torch.where(live, w_y, 0.0))


def _counted_rows(target, ignore_index):
    """The z-loss mean's denominator: the number of rows that are not ignored (float64, 0-dim)."""
    return _fixed_order_sum(target != ignore_index)


def _chunked_pass(
    ops,
    input,
    linear_weight,
    linear_bias,
    target,
    weight,
    ignore_index,
    label_smoothing,
    lm,
    chunk_rows,
    tile_classes,
    row_grad,
    denominator,
    z_denominator,
    need_input,
    need_weight,
    need_bias,
):
    """One fixed-order pass over the row chunks. lm = (logit_scale, softcap, lse_square_scale), the
    language-model options. Returns the per-row cross-entropy losses, z-losses and log-sum-exps (accumulation
    dtype) and the gradients asked for (None otherwise) of sum_i g_i ce_i + g_z_i z_i, g_i = row_grad[i] /
    denominator, g_z_i = row_grad[i] / z_denominator: the input's in its dtype, linear_weight's and
    linear_bias's in the accumulation dtype (rounded by the caller). With 0 < tile_classes < V the logits are
    taken tile_classes classes at a time (_vocab/tiles.py)."""
    N = input.shape[0]
    V = linear_weight.shape[0]
    if 0 < tile_classes < V:
        return tiles.vocab_tiled_pass(
            ops,
            input,
            linear_weight,
            linear_bias,
            target,
            weight,
            ignore_index,
            label_smoothing,
            lm,
            chunk_rows,
            tile_classes,
            row_grad,
            denominator,
            z_denominator,
            need_input,
            need_weight,
            need_bias,
        )
    acc = acc_dtype(input.dtype)
    low_precision = input.dtype in (torch.float16, torch.bfloat16)
    grads = need_input or need_weight or need_bias
    row_loss, z_rows, lse_rows = (input.new_empty(N, dtype=acc) for _ in range(3))
    g_input = torch.empty(input.shape, dtype=input.dtype, device=input.device) if need_input else None
    # dW and db are accumulated across chunks in fp32 (fp64 for fp64), also for fp16/bf16 weights.
    grad_dtype = acc
    g_weight = torch.zeros(linear_weight.shape, dtype=grad_dtype, device=input.device) if need_weight else None
    g_bias = torch.zeros(V, dtype=grad_dtype, device=input.device) if need_bias else None
    rows = max(1, min(chunk_rows, N))
    workspace = input.new_empty(rows * V)
    # fp16/bf16: dW's product is formed in fp32 from an fp32 copy of the tile, so that it is accumulated
    # in fp32 across chunks without an fp16/bf16 rounding per chunk.
    workspace_fp32 = input.new_empty(rows * V, dtype=torch.float32) if low_precision and need_weight else None
    w_t = linear_weight.t()
    for start in range(0, N, rows):
        stop = min(start + rows, N)
        x = input[start:stop]
        tile = workspace[: (stop - start) * V].view(stop - start, V)
        if linear_bias is None:
            torch.mm(x, w_t, out=tile)
        else:
            torch.addmm(linear_bias, x, w_t, out=tile)
        loss, lse, z = ops.linear_ce_tile_(
            tile,
            target[start:stop],
            weight,
            ignore_index,
            label_smoothing,
            None if row_grad is None else row_grad[start:stop],
            denominator,
            grads,
            *lm,
            z_denominator,
        )
        row_loss[start:stop], lse_rows[start:stop], z_rows[start:stop] = loss, lse, z
        if not grads:
            continue
        if need_input:
            torch.mm(tile, linear_weight, out=g_input[start:stop])
        if need_weight:
            if workspace_fp32 is not None:
                tile32 = workspace_fp32[: tile.numel()].view(tile.shape).copy_(tile)
                g_weight.addmm_(tile32.t().to(grad_dtype), x.to(grad_dtype))
            else:
                g_weight.addmm_(tile.t(), x)
        if need_bias:
            g_bias += tile.sum(0, dtype=acc)
    return row_loss, z_rows, lse_rows, g_input, g_weight, g_bias


def _reduce(rows, reduction, denominator):
    """rows, their fixed-order sum, or that sum over the denominator (NaN when it is 0, as torch's mean of
    no weight), in the rows' dtype."""
    if reduction == NONE:
        return rows
    total = _fixed_order_sum(rows)
    if reduction == MEAN:
        total = torch.where(denominator == 0, float("nan"), total / denominator)
    return total.to(rows.dtype)


def _scale_ready_grads(ctx, ready, grad_loss):
    """The gradients that forward computed, times the scalar upstream gradient, in the accumulation dtype
    (grad_loss's) and rounded once to each parameter's dtype. In eager mode they are scaled in place, so that
    no second V x H buffer exists (the saved one is then spent: a second backward, retain_graph=True, runs the
    chunk loop again); while a graph is traced (tensor subclasses) out of place."""
    in_place = all(type(t) is torch.Tensor for t in (grad_loss, *ready))
    ctx.grads_spent = in_place
    out = []
    for g, dtype in zip(ready, ctx.dtypes):
        if dtype is None:
            out.append(None)
        elif in_place and g.dtype == grad_loss.dtype:
            g.data.mul_(grad_loss)  # .data: the saved tensor's version stays, so a second backward can unpack
            out.append(g.to(dtype))
        else:
            out.append((g.to(grad_loss.dtype) * grad_loss).to(dtype))
    return out


def _empty(like):
    return like.new_empty(0)


def _define(lib):
    ops = getattr(torch.ops, lib)

    @torch.library.register_fake(f"{lib}::linear_ce_tile_")
    def _(
        tile,
        target,
        weight,
        ignore_index,
        label_smoothing,
        row_grad,
        denominator,
        write_grad,
        logit_scale=1.0,
        softcap=0.0,
        lse_square_scale=0.0,
        z_denominator=None,
    ):
        check_ce(tile, target, weight, soft=False)
        rows = tile.new_empty(tile.shape[:1], dtype=acc_dtype(tile.dtype))
        return rows, torch.empty_like(rows), torch.empty_like(rows)

    @torch.library.custom_op(f"{lib}::linear_cross_entropy_fwd", mutates_args=())
    def fwd(
        input: Tensor,
        linear_weight: Tensor,
        linear_bias: Optional[Tensor],
        target: Tensor,
        weight: Optional[Tensor],
        ignore_index: int,
        label_smoothing: float,
        reduction: int,
        chunk_rows: int,
        need_input: bool,
        need_weight: bool,
        need_bias: bool,
        logit_scale: float = 1.0,
        softcap: float = 0.0,
        lse_square_scale: float = 0.0,
        tile_classes: int = 0,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
        """Loss in the accumulation dtype (the z-loss included), then d(loss)/d(input, linear_weight,
        linear_bias) for mean/sum when asked (empty tensors otherwise; the last two stay in the accumulation
        dtype until backward has scaled them, so that fp16/bf16 weights are rounded once), then the z-loss
        reduced like the loss and the per-row log-sum-exp (0 on ignored rows)."""
        check_reduction(reduction)
        with torch.no_grad(), torch.autocast(input.device.type, enabled=False):
            V = linear_weight.shape[0]
            denominator = _target_weight_total(target, weight, ignore_index, V) if reduction == MEAN else None
            z_denominator = _counted_rows(target, ignore_index) if reduction == MEAN else None
            scalar = reduction != NONE
            row_loss, z_rows, lse, gx, gw, gb = _chunked_pass(
                ops,
                input,
                linear_weight,
                linear_bias,
                target,
                weight,
                ignore_index,
                label_smoothing,
                (logit_scale, softcap, lse_square_scale),
                chunk_rows,
                tile_classes,
                None,
                denominator,
                z_denominator,
                scalar and need_input,
                scalar and need_weight,
                scalar and need_bias and linear_bias is not None,
            )
            z_loss = _reduce(z_rows, reduction, z_denominator)
            if reduction == NONE:
                loss = row_loss + z_rows
            elif reduction == SUM:
                loss = (_fixed_order_sum(row_loss) + _fixed_order_sum(z_rows)).to(row_loss.dtype)
            else:  # each mean in float64, then one rounding
                ce = torch.where(denominator == 0, float("nan"), _fixed_order_sum(row_loss) / denominator)
                z = torch.where(z_denominator == 0, 0.0, _fixed_order_sum(z_rows) / z_denominator)
                loss = (ce + z).to(row_loss.dtype)
        return loss, *[g if g is not None else _empty(input) for g in (gx, gw, gb)], z_loss, lse

    @fwd.register_fake
    def _(
        input,
        linear_weight,
        linear_bias,
        target,
        weight,
        ignore_index,
        label_smoothing,
        reduction,
        chunk_rows,
        need_input,
        need_weight,
        need_bias,
        logit_scale=1.0,
        softcap=0.0,
        lse_square_scale=0.0,
        tile_classes=0,
    ):
        check_reduction(reduction)
        scalar = reduction != NONE
        loss = input.new_empty(input.shape[:1] if reduction == NONE else (), dtype=acc_dtype(input.dtype))
        gx = torch.empty_like(input) if scalar and need_input else _empty(input)
        acc = acc_dtype(input.dtype)
        gw = linear_weight.new_empty(linear_weight.shape, dtype=acc) if scalar and need_weight else _empty(input)
        gb = (
            linear_bias.new_empty(linear_bias.shape, dtype=acc)
            if scalar and need_bias and linear_bias is not None
            else _empty(input)
        )
        return loss, gx, gw, gb, torch.empty_like(loss), input.new_empty(input.shape[:1], dtype=acc)

    @torch.library.custom_op(f"{lib}::linear_cross_entropy_bwd", mutates_args=())
    def bwd(
        grad: Tensor,
        input: Tensor,
        linear_weight: Tensor,
        linear_bias: Optional[Tensor],
        target: Tensor,
        weight: Optional[Tensor],
        ignore_index: int,
        label_smoothing: float,
        reduction: int,
        chunk_rows: int,
        need_input: bool,
        need_weight: bool,
        need_bias: bool,
        logit_scale: float = 1.0,
        softcap: float = 0.0,
        lse_square_scale: float = 0.0,
        tile_classes: int = 0,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Gradients of the loss under the upstream gradient `grad` (per row for reduction='none', else one
        value), by the chunk loop again: the backward of 'none', and a second backward of 'mean'/'sum'."""
        check_reduction(reduction)
        with torch.no_grad(), torch.autocast(input.device.type, enabled=False):
            acc = acc_dtype(input.dtype)
            row_grad = grad.to(acc) if reduction == NONE else grad.to(acc).reshape(1).expand(input.shape[0])
            denominator = (
                _target_weight_total(target, weight, ignore_index, linear_weight.shape[0])
                if reduction == MEAN
                else None
            )
            z_denominator = _counted_rows(target, ignore_index) if reduction == MEAN else None
            _, _, _, gx, gw, gb = _chunked_pass(
                ops,
                input,
                linear_weight,
                linear_bias,
                target,
                weight,
                ignore_index,
                label_smoothing,
                (logit_scale, softcap, lse_square_scale),
                chunk_rows,
                tile_classes,
                row_grad.contiguous(),
                denominator,
                z_denominator,
                need_input,
                need_weight,
                need_bias and linear_bias is not None,
            )
        gw = gw.to(linear_weight.dtype) if gw is not None else None
        gb = gb.to(linear_bias.dtype) if gb is not None else None
        return tuple(g if g is not None else _empty(input) for g in (gx, gw, gb))

    @bwd.register_fake
    def _(
        grad,
        input,
        linear_weight,
        linear_bias,
        target,
        weight,
        ignore_index,
        label_smoothing,
        reduction,
        chunk_rows,
        need_input,
        need_weight,
        need_bias,
        logit_scale=1.0,
        softcap=0.0,
        lse_square_scale=0.0,
        tile_classes=0,
    ):
        check_reduction(reduction)
        gx = torch.empty_like(input) if need_input else _empty(input)
        gw = torch.empty_like(linear_weight) if need_weight else _empty(input)
        gb = torch.empty_like(linear_bias) if need_bias and linear_bias is not None else _empty(input)
        return gx, gw, gb

    def setup_context(ctx, inputs, output):
        (
            input,
            linear_weight,
            linear_bias,
            target,
            weight,
            ignore_index,
            label_smoothing,
            reduction,
            chunk_rows,
            need_input,
            need_weight,
            need_bias,
            logit_scale,
            softcap,
            lse_square_scale,
            tile_classes,
        ) = inputs
        ctx.reduction = reduction
        ctx.args = (ignore_index, label_smoothing, reduction, chunk_rows)
        ctx.lm = (logit_scale, softcap, lse_square_scale, tile_classes)
        ctx.computed = (need_input, need_weight, need_bias)
        ctx.dtypes = (input.dtype, linear_weight.dtype, None if linear_bias is None else linear_bias.dtype)
        ctx.grads_spent = False
        ctx.mark_non_differentiable(*output[1:])
        ctx.save_for_backward(
            input, linear_weight, linear_bias, target, weight, *(output[1:4] if reduction != NONE else ())
        )

    def backward(ctx, grad_loss, *_unused):
        if torch.is_grad_enabled():  # the gradients below are not differentiable functions of the inputs
            raise RuntimeError(
                "fused_ce.linear_cross_entropy does not support double backward (create_graph=True); "
                "use torch.nn.functional.linear_cross_entropy with options=None for higher-order gradients"
            )
        need = ctx.needs_input_grad[:3]
        input, linear_weight, linear_bias, target, weight, *ready = ctx.saved_tensors
        if ctx.reduction == NONE or ctx.grads_spent:
            grads = ops.linear_cross_entropy_bwd(
                grad_loss, input, linear_weight, linear_bias, target, weight, *ctx.args, *need, *ctx.lm
            )
        else:
            missing = [
                name for name, n, c in zip(("input", "linear_weight", "linear_bias"), need, ctx.computed) if n and not c
            ]
            if missing:
                raise RuntimeError(
                    f"fused_ce: linear_cross_entropy_fwd was called without computing the gradient "
                    f"of {', '.join(missing)}, which backward needs"
                )
            grads = _scale_ready_grads(ctx, ready, grad_loss)
        return tuple(g if n else None for g, n in zip(grads, need)) + (None,) * 13

    fwd.register_autograd(backward, setup_context=setup_context)


register_in_every_library(_define)

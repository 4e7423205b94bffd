"""The linear cross-entropy in (row chunk x vocabulary tile) logits tiles, for vocabularies too wide for whole
rows of logits to fit the workspace (linear.tile_shape), and for the vocabulary-parallel linear cross-entropy,
whose rank holds one slice of the classes (parallel.py).

Two passes over the tiles, in a fixed order:
  1. tile = X_r W_v^T (+ b_v); ce_partial_stats reduces it to per-row statistics, merged over the tiles of
     the row (_vocab/stats.py, merge). The caller combines them over ranks, if any, and turns them into losses and
     ce_partial_grad's per-row coefficients.
  2. the same tiles again; ce_partial_grad turns each into its dlogits, then dX_r += dlogits W_v,
     dW_v += dlogits^T X_r and db_v += its column sums.
Only one tile of logits and one of dlogits exist at a time. Pass 2 computes the logits a second time, the price
of never holding a whole row: with whole rows, linear_ce_tile_ does both in one pass (_linear/ops.py).
dX and dW are accumulated in fp32 for fp16/bf16 (fp64 for fp64).
"""

import torch

from .._core.library import lse_dtype as acc_dtype
from . import stats as S


def _tiles(num_rows, num_classes, rows, cols):
    """(row slice, class slice) of every tile, row chunks outer; one empty class slice without classes."""
    class_slices = [slice(c, min(c + cols, num_classes)) for c in range(0, num_classes, cols)] or [slice(0, 0)]
    for r in range(0, num_rows, rows):
        yield slice(r, min(r + rows, num_rows)), class_slices


def _logits(workspace, x, linear_weight, linear_bias, cs):
    tile = workspace[: x.shape[0] * (cs.stop - cs.start)].view(x.shape[0], cs.stop - cs.start)
    if linear_bias is None:
        return torch.mm(x, linear_weight[cs].t(), out=tile)
    return torch.addmm(linear_bias[cs], x, linear_weight[cs].t(), out=tile)


def _part(t, cs):
    return None if t is None else t[cs]


def tiled_stats(
    ops,
    input,
    linear_weight,
    linear_bias,
    target,
    weight,
    ignore_index,
    smoothing,
    transform,
    rows,
    cols,
    class_offset=0,
):
    """Pass 1: the (6, N) statistics of each row of input @ linear_weight^T (+ bias), whose classes start at
    global class `class_offset`. transform = (logit_scale, softcap)."""
    N, V = input.shape[0], linear_weight.shape[0]
    out = input.new_empty((S.PARTIAL_STATS, N), dtype=acc_dtype(input.dtype))
    workspace = input.new_empty(min(rows, N) * min(cols, V))
    for rs, class_slices in _tiles(N, V, rows, cols):
        x, t, acc = input[rs], target[rs], None
        for cs in class_slices:
            tile = _logits(workspace, x, linear_weight, linear_bias, cs)
            part = ops.ce_partial_stats(
                tile, t, _part(weight, cs), class_offset + cs.start, ignore_index, smoothing, *transform
            )
            acc = part if acc is None else S.merge(acc, part)
        out[:, rs] = acc
    return out


def tiled_grads(
    ops,
    input,
    linear_weight,
    linear_bias,
    target,
    weight,
    coefs,
    ignore_index,
    transform,
    rows,
    cols,
    need_input,
    need_weight,
    need_bias,
    class_offset=0,
):
    """Pass 2: the gradients asked for (None otherwise) of the loss whose ce_partial_grad coefficients per row are
    `coefs` (4, N), in the accumulation dtype (rounded by the caller): the input's (of this slice's classes; the
    caller sums it over ranks), linear_weight's and linear_bias's."""
    N, V = input.shape[0], linear_weight.shape[0]
    acc = acc_dtype(input.dtype)
    low_precision = input.dtype != acc
    g_input = torch.empty(input.shape, dtype=acc, device=input.device) if need_input else None
    g_weight = torch.zeros(linear_weight.shape, dtype=acc, device=input.device) if need_weight else None
    g_bias = torch.zeros(V, dtype=acc, device=input.device) if need_bias else None
    workspace = input.new_empty(min(rows, N) * min(cols, V))
    for rs, class_slices in _tiles(N, V, rows, cols):
        x, t = input[rs], target[rs]
        x_acc = x.to(acc) if low_precision else x
        gx = g_input[rs].zero_() if need_input else None
        for cs in class_slices:
            tile = _logits(workspace, x, linear_weight, linear_bias, cs)
            dlogits = ops.ce_partial_grad(
                tile, t, _part(weight, cs), coefs[:, rs], class_offset + cs.start, ignore_index, *transform
            ).to(acc)
            if need_input:
                gx.addmm_(dlogits, linear_weight[cs].to(acc))
            if need_weight:
                g_weight[cs].addmm_(dlogits.t(), x_acc)
            if need_bias:
                g_bias[cs] += dlogits.sum(0)
    return g_input, g_weight, g_bias


def vocab_tiled_pass(
    ops,
    input,
    linear_weight,
    linear_bias,
    target,
    weight,
    ignore_index,
    label_smoothing,
    lm,
    rows,
    cols,
    row_grad,
    denominator,
    z_denominator,
    need_input,
    need_weight,
    need_bias,
):
    """_linear/ops.py's _chunked_pass in vocabulary tiles, with the same arguments and results: the per-row
    cross-entropy losses, z-losses and log-sum-exps (0 on ignored rows) and the gradients asked for of
    sum_i g_i ce_i + g_z_i z_i, g_i = row_grad[i] / denominator, g_z_i = row_grad[i] / z_denominator."""
    logit_scale, softcap, z_scale = lm
    S.check_targets(target, ignore_index, linear_weight.shape[0])
    stats = tiled_stats(
        ops,
        input,
        linear_weight,
        linear_bias,
        target,
        weight,
        ignore_index,
        label_smoothing > 0,
        (logit_scale, softcap),
        rows,
        cols,
    )
    terms = S.RowTerms(stats, target, ignore_index, label_smoothing, linear_weight.shape[0], z_scale)
    zero = torch.zeros_like(terms.lse)
    row_loss = torch.where(terms.valid, terms.ce, zero)
    z_rows = torch.where(terms.valid, terms.z, zero)
    lse_rows = torch.where(terms.valid, terms.lse, zero)
    grads = (None, None, None)
    if need_input or need_weight or need_bias:
        g = 1.0 if row_grad is None else row_grad
        ce_scale = g if denominator is None else g / denominator
        z_scale_rows = g if z_denominator is None else g / z_denominator
        coefs = terms.grad_coefs(ce_scale, z_scale_rows).to(terms.lse.dtype)
        gx, gw, gb = tiled_grads(
            ops,
            input,
            linear_weight,
            linear_bias,
            target,
            weight,
            coefs,
            ignore_index,
            (logit_scale, softcap),
            rows,
            cols,
            need_input,
            need_weight,
            need_bias,
        )
        grads = (None if gx is None else gx.to(input.dtype), gw, gb)
    return (row_loss, z_rows, lse_rows, *grads)

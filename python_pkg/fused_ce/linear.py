"""Fused linear cross-entropy: drop-ins for torch.nn.functional.linear_cross_entropy and
torch.nn.LinearCrossEntropyLoss (torch 2.13) that never hold the N x V logits (see _linear/ops.py).

Memory knob: each row chunk's logits tile takes at most `workspace_mib` MiB (plus an fp32 copy of it for
fp16/bf16 when linear_weight needs a gradient), so chunk rows = workspace / (V * bytes per logit), at least
one row. Vocabularies so wide that fewer than MIN_CHUNK_ROWS whole rows fit are cut into tiles of fewer
classes (tile_shape). The default is 32 MiB, or FUSED_CE_LINEAR_CE_WORKSPACE_MIB when set at import; assign
fused_ce.linear.workspace_mib to change it. An explicit LinearCrossEntropyOptions(batch_chunk_size=k) wins.
"""

import math
import os

import torch
import torch.nn.functional as F

from ._core import func, library, reductions
from ._core.dtypes import KERNEL_DTYPES
from ._core.reductions import NONE
from ._linear import ops as _linear_ops  # noqa: F401  (defines and registers the linear cross-entropy's ops)
from ._linear.loss_base import LinearCrossEntropyLossBase
from ._lm import options as lm_options
from .functional import cross_entropy

workspace_mib = float(os.environ.get("FUSED_CE_LINEAR_CE_WORKSPACE_MIB", "32"))


def chunk_rows(num_rows, num_classes, dtype, options=None):
    """Rows per chunk: options.batch_chunk_size when given, else what the workspace budget holds."""
    explicit = getattr(options, "batch_chunk_size", None)
    if explicit is not None:
        return max(1, min(int(explicit), num_rows))
    itemsize = dtype.itemsize
    if dtype in (torch.float16, torch.bfloat16):
        itemsize += 4  # the fp32 copy of the tile for dW
    rows = int(workspace_mib * 2**20) // max(1, num_classes * itemsize)
    return max(1, min(rows, num_rows))


# With fewer whole rows than this in the workspace, its tiles take this many rows and fewer classes instead.
MIN_CHUNK_ROWS = 32


def tile_shape(num_rows, num_classes, dtype, options=None):
    """(rows, classes) of each logits tile: whole rows (chunk_rows) while the workspace holds MIN_CHUNK_ROWS of
    them, all rows, or an explicit batch_chunk_size; else MIN_CHUNK_ROWS rows of as many classes as fit, for
    vocabularies too wide for whole rows (each tile is then computed twice, _vocab/tiles.py). A tile then takes
    its logits, their gradient, and an fp32 copy of that for fp16/bf16."""
    rows = chunk_rows(num_rows, num_classes, dtype, options)
    if getattr(options, "batch_chunk_size", None) is not None or rows >= min(num_rows, MIN_CHUNK_ROWS):
        return rows, num_classes
    rows = min(num_rows, MIN_CHUNK_ROWS)
    bytes_per_logit = 2 * dtype.itemsize + (4 if dtype in (torch.float16, torch.bfloat16) else 0)
    classes = int(workspace_mib * 2**20) // (rows * bytes_per_logit)
    return rows, max(1, min(classes, num_classes))


def _check_shapes(input, linear_weight, target, linear_bias, ignore_index):
    """torch 2.13's own checks, in its order and with its messages. Returns the logits' shape and whether the
    target holds class probabilities."""
    if input.dim() < 1 or input.dim() > 2:
        raise RuntimeError(f"expected input with dimensionality 1 or 2, got {input.dim()}")
    if linear_weight.dim() < 2:
        raise RuntimeError(f"expected linear_weight with dimensionality at least 2, got {linear_weight.dim()}")
    num_batches = input.shape[:-1]
    in_features = input.shape[-1]
    if in_features != linear_weight.shape[-1]:
        raise RuntimeError(
            "expected equal input and linear_weight last dimensions (in_features), "
            f"got {input.shape[-1]} and {linear_weight.shape[-1]}, respectively"
        )
    num_classes = linear_weight.shape[0]
    out_features = tuple(linear_weight.shape[1:-1])
    if linear_bias is not None and tuple(linear_bias.shape) != (num_classes, *out_features):
        raise RuntimeError(f"expected linear_bias shape {(num_classes, *out_features)}, got {tuple(linear_bias.shape)}")
    if out_features and not num_batches:
        raise RuntimeError(
            f"K-dimensional loss defined by linear_weight shape {tuple(linear_weight.shape)} requires"
            f" batched input, (N, {in_features}), got unbatched input with shape {tuple(input.shape)}"
        )
    logits_shape = (*num_batches, num_classes, *out_features)
    probabilities = target.shape == logits_shape
    if probabilities and ignore_index is not None:
        raise RuntimeError("ignore_index cannot be specified when target contains probabilities")
    return logits_shape, probabilities


def _fused_path_applies(input, linear_weight, target, linear_bias, weight, probabilities):
    """The chunked kernels take 2-D class-index problems in one kernel dtype on one device; everything else
    (probability targets, K-dimensional weights, mixed dtypes or devices, torch.func transforms, errors) runs
    the reference path, which raises torch's errors."""
    tensors = [t for t in (input, linear_weight, linear_bias, weight) if t is not None]
    return (
        not probabilities
        and linear_weight.dim() == 2
        and linear_weight.shape[0] > 0
        and target.dtype in (torch.int64, torch.uint8)
        and tuple(target.shape) == tuple(input.shape[:-1])
        and input.dtype in KERNEL_DTYPES
        and all(t.dtype == input.dtype for t in tensors)
        and all(t.device == input.device for t in tensors)
        and (
            weight is None
            or (weight.dim() == 1 and weight.shape[0] == linear_weight.shape[0] and not weight.requires_grad)
        )
        and not func.transforms_active()
    )


def _autocast(input, linear_weight, linear_bias):
    """Under autocast, torch's reference path runs the linear in the autocast dtype and the loss in fp32; fp64
    inputs are left as they are (autocast casts no fp64 tensor), so their loss is fp64, as without autocast."""
    device = input.device.type
    if not torch.is_autocast_enabled(device) or input.dtype == torch.float64:
        return input, linear_weight, linear_bias, False
    dtype = torch.get_autocast_dtype(device)
    cast = lambda t: t if t is None or not t.is_floating_point() else t.to(dtype)  # noqa: E731
    return cast(input), cast(linear_weight), cast(linear_bias), True


def linear_cross_entropy(
    input,
    linear_weight,
    target,
    *,
    linear_bias=None,
    weight=None,
    reduction="mean",
    ignore_index=None,
    label_smoothing=0.0,
    options=None,
    logit_scale=1.0,
    softcap=None,
    lse_square_scale=0.0,
    return_z_loss=False,
    return_lse=False,
):
    """Drop-in for torch.nn.functional.linear_cross_entropy (torch 2.13): the loss of
    cross_entropy(linear(input, linear_weight, linear_bias), target, ...), computed in row chunks that never
    hold the N x V logits. ignore_index=None means -100. `options` (a LinearCrossEntropyOptions) is accepted;
    only its batch_chunk_size is used (see the module's memory knob). The language-model options are
    fused_ce.cross_entropy's (logit_scale, softcap, lse_square_scale, return_z_loss, return_lse), applied to the
    logits of each chunk inside the same kernels.

    The loss has the input's dtype, as torch's: for fp16/bf16 inputs it is rounded to it (the kernels compute
    and reduce it in fp32). summed_in_fp32 keeps that fp32 sum, for callers that reduce in fp32 themselves."""
    return _linear_cross_entropy(
        input,
        linear_weight,
        target,
        linear_bias,
        weight,
        reduction,
        ignore_index,
        label_smoothing,
        options,
        logit_scale,
        softcap,
        lse_square_scale,
        return_z_loss,
        return_lse,
        fp32_loss=False,
    )


def summed_in_fp32(
    input,
    linear_weight,
    target,
    *,
    linear_bias=None,
    weight=None,
    ignore_index=-100,
    label_smoothing=0.0,
    logit_scale=1.0,
    softcap=None,
    lse_square_scale=0.0,
):
    """The fp32 sum of the per-row losses of linear_cross_entropy (z-loss included), unrounded for fp16/bf16
    inputs (fp64 inputs give an fp64 sum): what transformers' causal-LM loss computes after upcasting its logits
    to fp32, and what the transformers integration divides by num_items_in_batch."""
    return _linear_cross_entropy(
        input,
        linear_weight,
        target,
        linear_bias,
        weight,
        "sum",
        ignore_index,
        label_smoothing,
        None,
        logit_scale,
        softcap,
        lse_square_scale,
        False,
        False,
        fp32_loss=True,
    )


def _linear_cross_entropy(
    input,
    linear_weight,
    target,
    linear_bias,
    weight,
    reduction,
    ignore_index,
    label_smoothing,
    options,
    logit_scale,
    softcap,
    lse_square_scale,
    return_z_loss,
    return_lse,
    fp32_loss,
):
    logits_shape, probabilities = _check_shapes(input, linear_weight, target, linear_bias, ignore_index)
    ignore_index = -100 if ignore_index is None else ignore_index
    red = reductions.reduction_enum(reduction)
    softcap = 0.0 if softcap is None else float(softcap)
    lm_options.check_softcap(softcap)
    lm = {
        "logit_scale": logit_scale,
        "softcap": softcap,
        "lse_square_scale": lse_square_scale,
        "return_z_loss": return_z_loss,
        "return_lse": return_lse,
    }
    # Under autocast the logits are fp16/bf16 but torch's loss reads class weights in fp32: the reference path.
    if (
        label_smoothing > 1.0
        or (weight is not None and torch.is_autocast_enabled(input.device.type))
        or not _fused_path_applies(input, linear_weight, target, linear_bias, weight, probabilities)
    ):
        logits = F.linear(
            input,
            linear_weight.reshape(math.prod(logits_shape[input.dim() - 1 :]), input.shape[-1]),
            None if linear_bias is None else linear_bias.reshape(-1),
        )
        if fp32_loss and logits.dtype in (torch.float16, torch.bfloat16):
            logits = logits.float()  # as transformers upcasts; this path holds the logits anyway
        return cross_entropy(
            logits.reshape(logits_shape),
            target,
            weight=weight,
            reduction=reduction,
            ignore_index=ignore_index,
            label_smoothing=label_smoothing,
            **lm,
        )
    x, w, b, autocast = _autocast(input, linear_weight, linear_bias)
    unbatched = x.dim() == 1
    if unbatched:
        x, target = x.unsqueeze(0), target.unsqueeze(0)
    grad = torch.is_grad_enabled()
    rows, classes = tile_shape(x.shape[0], w.shape[0], x.dtype, options)
    loss, _, _, _, z_loss, lse = library.kernel_ops().linear_cross_entropy_fwd(
        x,
        w,
        b,
        target,
        weight,
        ignore_index,
        label_smoothing,
        red,
        rows,
        grad and x.requires_grad,
        grad and w.requires_grad,
        grad and b is not None and b.requires_grad,
        float(logit_scale),
        softcap,
        float(lse_square_scale),
        classes if classes < w.shape[0] else 0,
    )
    if unbatched:
        lse = lse.squeeze(0)
        if red == NONE:
            loss, z_loss = loss.squeeze(0), z_loss.squeeze(0)
    if not (autocast or (fp32_loss and loss.dtype == torch.float32)):
        loss = loss.to(input.dtype)
    return lm_options.parts(loss, z_loss, lse, return_z_loss, return_lse)


class LinearCrossEntropyLoss(LinearCrossEntropyLossBase):
    """Drop-in for torch.nn.LinearCrossEntropyLoss: the same constructor, parameters (linear.weight,
    linear.bias), buffers and state_dict keys; forward runs fused_ce.linear_cross_entropy. The constructor also
    takes its keyword-only language-model options (logit_scale, softcap, lse_square_scale, return_z_loss,
    return_lse). A subclass of torch's class where torch has one (2.13 and newer); on older torch it stands alone
    with the same state (_linear/loss_base.py)."""

    def __init__(
        self,
        *args,
        logit_scale=1.0,
        softcap=None,
        lse_square_scale=0.0,
        return_z_loss=False,
        return_lse=False,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self.lm_options = {
            "logit_scale": float(logit_scale),
            "softcap": softcap,
            "lse_square_scale": float(lse_square_scale),
            "return_z_loss": bool(return_z_loss),
            "return_lse": bool(return_lse),
        }

    def forward(self, input, target):
        linear_weight = self.linear.weight.reshape((self.num_classes, *self.out_features, self.linear.in_features))
        linear_bias = (
            self.linear.bias.reshape((self.num_classes, *self.out_features)) if self.linear.bias is not None else None
        )
        return linear_cross_entropy(
            input,
            linear_weight,
            target,
            linear_bias=linear_bias,
            weight=self.weight,
            reduction=self.reduction,
            ignore_index=self.ignore_index,
            label_smoothing=self.label_smoothing,
            options=self.options,
            **self.lm_options,
        )


__all__ = [
    "LinearCrossEntropyLoss",
    "chunk_rows",
    "linear_cross_entropy",
    "summed_in_fp32",
    "tile_shape",
    "workspace_mib",
]

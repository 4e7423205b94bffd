"""Fake (meta) kernels of the vocabulary-parallel cross-entropy's slice ops (schemas in
csrc/partial_stats_schema.h), for each op library. They have no autograd formula of their own:
parallel.py's autograd.Function calls ce_partial_stats in forward and ce_partial_grad in backward.
"""

import torch

from .._core.dtypes import dtype_name
from .._core.fake_checks import check_ce, check_devices, check_softcap, grad_like
from .._core.library import lse_dtype, register_in_every_library, row_shape

# Rows of ce_partial_stats's result (rowmath.h, PartialStat).
MAX, SUM_EXP, TARGET_LOGIT, TARGET_WEIGHT, SMOOTHING, WEIGHT_SUM = range(6)
PARTIAL_STATS = 6
# Rows of ce_partial_grad's coefs: lse, prob, tgt, klass.
GRAD_COEFS = 4


def _register_fakes(lib):
    @torch.library.register_fake(f"{lib}::ce_partial_stats")
    def _(logits, target, weight, class_offset, ignore_index, smoothing, logit_scale=1.0, softcap=0.0):
        check_ce(logits, target, weight, soft=False)
        check_softcap(softcap)
        return logits.new_empty((PARTIAL_STATS,) + row_shape(logits), dtype=lse_dtype(logits.dtype))

    @torch.library.register_fake(f"{lib}::ce_partial_grad")
    def _(logits, target, weight, coefs, class_offset, ignore_index, logit_scale=1.0, softcap=0.0):
        check_ce(logits, target, weight, soft=False)
        check_softcap(softcap)
        check_devices(logits, coefs=coefs)
        shape = [GRAD_COEFS] + list(row_shape(logits))
        acc = lse_dtype(logits.dtype)
        torch._check(
            coefs.dtype == acc and list(coefs.shape) == shape,
            lambda: (
                f"fused_ce: coefs must have shape {shape} and dtype {dtype_name(acc)}, got {list(coefs.shape)} "
                f"{dtype_name(coefs.dtype)}"
            ),
        )
        return grad_like(logits)


register_in_every_library(_register_fakes)

"""Which optional torch features this torch has, detected by feature (never by version string).

fused_ce supports torch from the floor in pyproject.toml up (docs/support.md). Features newer than the floor
are used only where they exist; where one is missing, what depends on it degrades as documented there.
Importing fused_ce never fails for want of one.
"""

import torch
import torch.nn.functional as F

# torch.library.register_vmap (torch 2.5): one batched kernel call per vmap. Without it, torch.func.vmap over
# fused_ce runs functorch's fallback, one kernel call per sample, with its performance warning (_core/vmap.py).
REGISTER_VMAP = hasattr(torch.library, "register_vmap")

# torch.nn.LinearCrossEntropyLoss and F.linear_cross_entropy (torch 2.13). Without them fused_ce's own
# LinearCrossEntropyLoss stands alone (same constructor, parameters, buffers and state_dict keys).
LINEAR_CE_MODULE = hasattr(torch.nn, "LinearCrossEntropyLoss")
LINEAR_CE_FUNCTION = hasattr(F, "linear_cross_entropy")

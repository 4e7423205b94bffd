"""fused_ce: fused softmax cross-entropy and BCE-with-logits for PyTorch (C++ and CUDA kernels).

import fused_ce
loss_fn = fused_ce.CrossEntropyLoss()      # instead of torch.nn.CrossEntropyLoss()
loss = fused_ce.cross_entropy(logits, y)   # instead of torch.nn.functional.cross_entropy
"""

from ._core import backward, build_check, fakes, vmap  # noqa: F401  (register the ops' fakes, autograd, vmap rules)
from ._vocab import partial_stats_ops  # noqa: F401  (fake kernels of the vocabulary-parallel slice ops)
from .autograd import BCEWithLogitsFunction, CrossEntropyFunction
from .functional import binary_cross_entropy_with_logits, cross_entropy
from .linear import LinearCrossEntropyLoss, linear_cross_entropy
from .modules import BCEWithLogitsLoss, CrossEntropyLoss

__version__ = "0.1.0"  # the base version; setup.py reads it here. The installed build's own: build_info()


def build_info():
    """What this fused_ce was built for: its version (with the torch label of a wheel), the torch and CUDA
    versions, whether CUDA kernels were compiled and for which architectures, and the C++ ABI. None for a build
    that did not record it."""
    info = build_check._build_info
    return None if info is None else {k.lower(): v for k, v in vars(info).items() if k.isupper()}


__all__ = [
    "BCEWithLogitsFunction",
    "BCEWithLogitsLoss",
    "CrossEntropyFunction",
    "CrossEntropyLoss",
    "LinearCrossEntropyLoss",
    "binary_cross_entropy_with_logits",
    "build_info",
    "cross_entropy",
    "linear_cross_entropy",
]

"""fused_ce: fused softmax cross-entropy and BCE-with-logits for PyTorch (C++ and CUDA kernels).

    import fused_ce
    loss_fn = fused_ce.CrossEntropyLoss()      # instead of torch.nn.CrossEntropyLoss()
    loss = fused_ce.cross_entropy(logits, y)   # instead of torch.nn.functional.cross_entropy
"""
from . import _ops  # noqa: F401  (registers fake kernels and autograd for the ops)
from . import _parallel_ops  # noqa: F401  (fake kernels of the vocabulary-parallel slice ops)
from .autograd import BCEWithLogitsFunction, CrossEntropyFunction
from .functional import binary_cross_entropy_with_logits, cross_entropy
from .linear import LinearCrossEntropyLoss, linear_cross_entropy
from .modules import BCEWithLogitsLoss, CrossEntropyLoss

__version__ = "0.1.0"

__all__ = [
    "BCEWithLogitsFunction",
    "BCEWithLogitsLoss",
    "CrossEntropyFunction",
    "CrossEntropyLoss",
    "LinearCrossEntropyLoss",
    "binary_cross_entropy_with_logits",
    "cross_entropy",
    "linear_cross_entropy",
]

"""What autograd keeps for the backward of a forward: the tensors saved through
torch.autograd.graph.saved_tensors_hooks, each storage counted once. Between the forward and the backward of a
training step these (plus the parameters and their gradients) are what is alive, so on a CPU, whose allocator
torch does not instrument, they measure a step's peak memory beyond the model: for a causal LM's stock loss they
include the N x V logits (and their fp32 log-softmax), which the fused forward never builds.
"""

import torch


class SavedTensors:
    """Context manager recording the storages autograd saves: .bytes (total) and .bytes_where(predicate) (of the
    saved tensors whose shape satisfies it, e.g. a last dimension of the vocabulary size: logits and their
    log-softmax)."""

    def __init__(self):
        self._storages = {}

    def _pack(self, tensor):
        storage = tensor.untyped_storage()
        self._storages[storage.data_ptr()] = (storage.nbytes(), tuple(tensor.shape))
        return tensor

    @property
    def bytes(self):
        return sum(nbytes for nbytes, _ in self._storages.values())

    def bytes_where(self, predicate):
        return sum(nbytes for nbytes, shape in self._storages.values() if predicate(shape))

    def __enter__(self):
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda tensor: tensor)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc):
        self._hooks.__exit__(*exc)
        return False

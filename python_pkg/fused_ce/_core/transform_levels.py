"""Whether a backward must itself be differentiable (then it is written with torch ops,
double_backward.py) or may run the fused backward kernel (which has no derivative of its own).

Plain autograd says so by grad mode plus requires_grad (create_graph=True). torch.func does not: its
transforms always build graphs, and a tensor's requires_grad there describes the innermost level only.
What tells is the tensors' functorch wrappers. A backward running for transform level L sees its
tensors wrapped at L (grad's own level: nothing will differentiate that result again) and at outer
levels; a wrapper of a grad or jvp level below the current one (hessian = jacfwd(jacrev), grad(grad),
jacrev(jacrev), ...) means an outer transform differentiates this backward, so it needs the graph.
Batching (vmap) wrappers do not: the ops' vmap rules batch the kernels.
"""

import torch
from torch._C import _functorch
from torch._functorch.pyfunctorch import retrieve_all_functorch_interpreters


def _outer_differentiating_level(t, current):
    while _functorch.is_functorch_wrapped_tensor(t):
        if not _functorch.is_batchedtensor(t) and _functorch.maybe_get_level(t) < current:
            return True
        t = _functorch.get_unwrapped(t)
    return t.requires_grad  # plain autograd around the transforms, with create_graph=True


def backward_needs_graph(*tensors):
    """True when autograd or a torch.func transform will differentiate the backward being computed."""
    if not torch.is_grad_enabled():
        return False
    tensors = [t for t in tensors if t is not None]
    if not torch._C._are_functorch_transforms_active():
        return any(t.requires_grad for t in tensors)
    current = _functorch.current_level()
    return any(_outer_differentiating_level(t, current) for t in tensors)


def check_jvp_not_nested():
    """Raises where a jvp rule runs inside another forward-mode transform (jacfwd(jacfwd(f)),
    jvp over jvp). torch.func runs an autograd.Function's jvp with forward AD off, so the outer transform
    would take the inner tangent for a constant and return a wrong second derivative without an error
    (measured on torch 2.13 with a one-line exp Function as well)."""
    jvp_levels = [i for i in retrieve_all_functorch_interpreters() if i.key() == _functorch.TransformType.Jvp]
    if len(jvp_levels) > 1:
        raise NotImplementedError(
            "fused_ce: forward-mode AD of forward-mode AD (e.g. jacfwd(jacfwd(f)) or jvp of jvp) is not "
            "supported: torch.func does not differentiate an autograd.Function's jvp rule. Use reverse mode "
            "for one of the two: torch.func.hessian (jacfwd(jacrev(f))), jacrev(jacrev(f)) or jacrev(jacfwd(f))."
        )

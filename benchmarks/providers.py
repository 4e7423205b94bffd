"""The functions under test. Each provider turns a case into a callable loss(x, target) -> scalar tensor, or
raises Unavailable with the reason it is skipped (the reason is reported next to the results)."""

import inspect

import torch
import torch.nn.functional as F

import fused_ce

ALL = ("fused_ce", "eager-thp", "compile-thp", "torch", "torch_compile", "liger")
COMPILED = {"torch_compile"}  # their first call compiles; memory is measured after it
# Torch at its best on CPU: the same calls as "torch" / "torch_compile", timed in a separate process that starts
# with THP_MEM_ALLOC_ENABLE=1 (torch's switch for transparent huge pages in its CPU allocator; it is read once,
# at the first allocation, so it cannot be turned on in a process that has already allocated). See thp.py.
THP = {"eager-thp": "torch", "compile-thp": "torch_compile"}
# What runs when --providers is not given. On CPU, torch at its best only: with the default allocator, torch
# pays page faults on every fresh buffer (eager takes 3-5x as long), which would dominate the run's time (and
# torch_compile would double its compile time) for a comparison against a handicap that a careful user
# switches off; ask for them with --providers.
DEFAULTS = {"cpu": ("fused_ce", "eager-thp", "compile-thp"), "cuda": ("fused_ce", "torch", "torch_compile", "liger")}


class Unavailable(Exception):
    pass


def _torch_lm_options(x, target, softcap, lse_square_scale, ignore_index=-100, **kwargs):
    """The language-model options written with torch's own ops (torch has no fused form): soft-capped logits,
    then cross-entropy plus the z-loss, lse_square_scale * logsumexp**2 averaged over the rows that count."""
    z = softcap * torch.tanh(x / softcap)
    loss = F.cross_entropy(z, target, ignore_index=ignore_index, **kwargs)
    lse = torch.logsumexp(z.float(), dim=1)
    counted = target != ignore_index
    z_loss = lse_square_scale * torch.where(counted, lse * lse, 0.0).sum() / counted.sum()
    return loss + z_loss.to(loss.dtype)


def _eager(case):
    if case.feature == "softcap_zloss":
        return _torch_lm_options
    return F.cross_entropy if case.loss == "ce" else F.binary_cross_entropy_with_logits


def _fused(case):
    return fused_ce.cross_entropy if case.loss == "ce" else fused_ce.binary_cross_entropy_with_logits


def _bind(fn, kwargs):
    def loss(x, target):
        return fn(x, target, **kwargs)

    return loss


def _compiled(case, kwargs):
    # Shapes are fixed per case, so a static graph is the fair comparison. The caller resets dynamo between
    # input groups: compiled graphs hang off the shared code object of `loss`, and the recompile limit would
    # otherwise send later shapes back to eager without a word.
    return torch.compile(_bind(_eager(case), kwargs), dynamic=False)


def _liger(case, kwargs, device):
    if device != "cuda":
        raise Unavailable("Liger-Kernel is Triton, GPU only")
    if case.loss != "ce":
        raise Unavailable("Liger-Kernel has no BCE-with-logits")
    if case.feature == "soft":
        raise Unavailable("Liger-Kernel takes class-index targets only")
    try:
        from liger_kernel.transformers import LigerCrossEntropyLoss
    except Exception as e:
        raise Unavailable(f"liger_kernel not importable ({type(e).__name__}: {e})") from None
    params = inspect.signature(LigerCrossEntropyLoss.__init__).parameters
    unsupported = [k for k in kwargs if k not in params]
    if unsupported:
        raise Unavailable(f"this Liger-Kernel version has no {', '.join(unsupported)} argument")
    module = LigerCrossEntropyLoss(**kwargs)
    # Liger computes the gradient in forward and writes it into the logits in place; timing it on the same
    # tensor every repeat is what its own benchmarks do.
    return module


def build(provider, case, inputs, device):
    """The loss callable of `provider` for this case; compilation, if any, happens at its first call."""
    if provider == "fused_ce":
        return _bind(_fused(case), inputs.kwargs)
    if provider == "torch":
        return _bind(_eager(case), inputs.kwargs)
    if provider == "torch_compile":
        return _compiled(case, inputs.kwargs)
    if provider == "liger":
        return _liger(case, inputs.kwargs, device)
    if provider in THP:
        raise Unavailable("THP providers run in their own process (thp.py)")
    raise ValueError(f"unknown provider {provider!r}; choose from {', '.join(ALL)}")


def describe_error(e):
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:200] if text else ''}"

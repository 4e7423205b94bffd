"""An ignored row's gradient is exactly 0 whatever memory the gradient lands in.

The CPU backward skips writing ignored rows only when the gradient is a fresh anonymous mapping (4 MiB or more
with huge pages usable, csrc/cpu/large_buffers.cpp), which the OS hands over zeroed. Smaller gradients come from
torch's allocator, which may hand back a freed block still holding old values (NaN here), and the in-place
backward writes over the logits themselves: both must be written.
"""

import pytest
import torch
import torch.nn.functional as F

import fused_ce


def inputs(n, c, dtype=torch.float32):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, c, generator=gen, dtype=dtype)
    target = torch.randint(0, c, (n,), generator=gen)
    target[::2] = -100
    return x, target


def check(grad, x, target):
    ignored = target == -100
    assert torch.equal(grad[ignored], torch.zeros_like(grad[ignored]))
    ref = x.double().requires_grad_()
    F.cross_entropy(ref, target, reduction="sum").backward()
    torch.testing.assert_close(grad[~ignored].double(), ref.grad[~ignored], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("lm_options", [False, True])
def test_large_gradient_fresh_mapping(lm_options):
    x, target = inputs(512, 4096)  # an 8 MiB gradient
    leaf = x.clone().requires_grad_()
    extra = {"lse_square_scale": 0.0, "logit_scale": 1.0, "return_lse": True} if lm_options else {}
    out = fused_ce.cross_entropy(leaf, target, reduction="sum", **extra)
    (out[0] if lm_options else out).backward()
    check(leaf.grad, x, target)


@pytest.mark.parametrize("lm_options", [False, True])
def test_small_gradient_in_reused_memory(lm_options):
    x, target = inputs(64, 1000)  # 256 KiB: torch's allocator
    extra = {"return_lse": True} if lm_options else {}
    for _ in range(3):
        leaf = x.clone().requires_grad_()
        out = fused_ce.cross_entropy(leaf, target, reduction="sum", **extra)
        garbage = torch.full_like(x, float("nan"))  # freed just before the gradient is allocated
        del garbage
        (out[0] if lm_options else out).backward()
        check(leaf.grad, x, target)


def test_in_place_gradient_over_the_logits():
    x, target = inputs(512, 4096)
    leaf = x.clone().requires_grad_()
    logits = leaf * 1.0
    loss = fused_ce.cross_entropy(logits, target, reduction="sum", inplace_backward=True)
    (grad,) = torch.autograd.grad(loss, logits)
    assert grad.data_ptr() == logits.data_ptr()
    check(grad, x, target)

"""The language-model options (logit_scale, softcap, lse_square_scale, return_z_loss, return_lse) of
fused_ce.linear_cross_entropy and LinearCrossEntropyLoss, on every device, against the float64 reference of
tests/lm_reference.py (plain PyTorch): the loss and z-loss, and the gradients of input, linear_weight and
linear_bias, with chunks that do not divide N."""

import pytest
import torch
import torch.nn.functional as F
import torch_compat
from helpers import DEVICES
from lm_reference import reference as lm_reference
from lm_reference import rel_err

import fused_ce

N, H, V = 23, 8, 29
OPTIONS = [(1.0, 0.0, 1e-2), (0.7, 2.5, 0.0), (1.2, 4.0, 1e-3)]  # (logit_scale, softcap, lse_square_scale)


def reference(x, w, b, t, cw, reduction, smoothing, scale, cap, zscale, ignore_index=3):
    """(loss, z_loss, lse) of the options on the logits F.linear(x, w, b), in fp64."""
    return lm_reference(F.linear(x, w, b), t, cw, reduction, smoothing, scale, cap, zscale, ignore_index)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("scale,cap,zscale", OPTIONS, ids=str)
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("extras", [False, True], ids=["plain", "bias_weight_smoothing"])
def test_fp64_matches_the_reference(device, scale, cap, zscale, reduction, extras):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(N, H, generator=gen, dtype=torch.float64).to(device)
    w = torch.randn(V, H, generator=gen, dtype=torch.float64).to(device)
    b = torch.randn(V, generator=gen, dtype=torch.float64).to(device) if extras else None
    cw = (torch.rand(V, generator=gen, dtype=torch.float64) + 0.1).to(device) if extras else None
    t = torch.randint(0, V, (N,), generator=gen).to(device)
    t[::5] = 3  # ignore_index below
    smoothing = 0.2 if extras else 0.0
    leaves = [a.clone().requires_grad_() for a in (x, w) + ((b,) if extras else ())]
    ref_leaves = [a.clone().requires_grad_() for a in leaves]
    loss, z_loss, lse = fused_ce.linear_cross_entropy(
        leaves[0],
        leaves[1],
        t,
        linear_bias=leaves[2] if extras else None,
        weight=cw,
        reduction=reduction,
        ignore_index=3,
        label_smoothing=smoothing,
        options=torch_compat.LinearCrossEntropyOptions(batch_chunk_size=7),
        logit_scale=scale,
        softcap=cap,
        lse_square_scale=zscale,
        return_z_loss=True,
        return_lse=True,
    )
    ref_loss, ref_z, ref_lse = reference(
        ref_leaves[0], ref_leaves[1], ref_leaves[2] if extras else None, t, cw, reduction, smoothing, scale, cap, zscale
    )
    counted = t != 3
    assert rel_err(loss, ref_loss) < 1e-9 and rel_err(lse[counted], ref_lse[counted]) < 1e-9
    assert rel_err(z_loss, ref_z) < 1e-9 if zscale else bool((z_loss == 0).all())
    g = torch.rand(ref_loss.shape, dtype=torch.float64).to(device) + 0.5  # per-token upstream gradient for 'none'
    grads = torch.autograd.grad(loss, leaves, g)
    ref_grads = torch.autograd.grad(ref_loss, ref_leaves, g)
    for name, a, r in zip(("input", "linear_weight", "linear_bias"), grads, ref_grads):
        assert rel_err(a, r) < 1e-9, name


def test_module_takes_the_options():
    torch.manual_seed(0)
    module = fused_ce.LinearCrossEntropyLoss(
        H, V, dtype=torch.float64, softcap=3.0, lse_square_scale=0.1, return_lse=True
    )
    x, t = torch.randn(N, H, dtype=torch.float64), torch.randint(0, V, (N,))
    loss, lse = module(x, t)
    ref = reference(x, module.linear.weight, module.linear.bias, t, None, "mean", 0.0, 1.0, 3.0, 0.1, -100)
    assert rel_err(loss, ref[0]) < 1e-9 and rel_err(lse, ref[2]) < 1e-9


def test_gradcheck_with_every_option():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(5, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    w = torch.randn(6, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    b = torch.randn(6, generator=gen, dtype=torch.float64, requires_grad=True)
    t = torch.tensor([0, 5, -100, 2, 2])

    def f(x, w, b):
        return fused_ce.linear_cross_entropy(
            x,
            w,
            t,
            linear_bias=b,
            label_smoothing=0.1,
            logit_scale=0.8,
            softcap=2.0,
            lse_square_scale=0.1,
            options=torch_compat.LinearCrossEntropyOptions(batch_chunk_size=2),
        )

    torch.autograd.gradcheck(f, (x, w, b))

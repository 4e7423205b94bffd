"""The language-model options of fused_ce.cross_entropy (logit_scale, softcap, lse_square_scale,
return_z_loss, return_lse) against the float64 reference of tests/lm_reference.py (plain PyTorch)."""

import pytest
import torch
import torch.nn.functional as F
from lm_reference import reference, rel_err

import fused_ce


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("scale,cap,zscale", [(1.0, 0.0, 1e-2), (0.7, 0.0, 0.0), (1.3, 2.5, 1e-3), (1.0, 30.0, 0.0)])
@pytest.mark.parametrize("weighted,smoothing", [(False, 0.0), (True, 0.1)])
def test_options_match_fp64_reference(reduction, scale, cap, zscale, weighted, smoothing):
    n, c = 7, 5
    x = (torch.randn(n, c, 3, dtype=torch.float64) * 3).requires_grad_()
    target = torch.randint(0, c, (n, 3))
    target[1, 0] = target[4, 2] = -100
    weight = torch.rand(c, dtype=torch.float64) + 0.5 if weighted else None
    loss, z_loss, lse = fused_ce.cross_entropy(
        x,
        target,
        weight,
        reduction=reduction,
        label_smoothing=smoothing,
        logit_scale=scale,
        softcap=cap,
        lse_square_scale=zscale,
        return_z_loss=True,
        return_lse=True,
    )
    xr = x.detach().clone().requires_grad_()
    ref_loss, ref_z, ref_lse = reference(xr, target, weight, reduction, smoothing, scale, cap, zscale)
    assert lse.dtype == torch.float64 and lse.shape == target.shape
    counted = target != -100  # the lse of an ignored row may be anything
    assert rel_err(loss, ref_loss) < 1e-9 and rel_err(lse[counted], ref_lse[counted]) < 1e-9
    if zscale:
        assert rel_err(z_loss, ref_z) < 1e-9
    else:
        assert (z_loss == 0).all()
    g = torch.randn_like(ref_loss)
    (gx,) = torch.autograd.grad(loss, x, g)
    (ref_gx,) = torch.autograd.grad(ref_loss, xr, g)
    assert rel_err(gx, ref_gx) < 1e-9


def test_defaults_return_the_plain_loss_bit_for_bit():
    x, t = torch.randn(6, 4), torch.randint(0, 4, (6,))
    assert torch.equal(fused_ce.cross_entropy(x, t, logit_scale=1.0, softcap=0.0), fused_ce.cross_entropy(x, t))


def test_only_requested_parts_and_fp32_lse_for_half():
    x, t = torch.randn(6, 4, dtype=torch.bfloat16), torch.randint(0, 4, (6,))
    out = fused_ce.cross_entropy(x, t, return_lse=True)
    assert isinstance(out, tuple) and len(out) == 2 and out[1].dtype == torch.float32
    assert rel_err(out[1], torch.logsumexp(x.double(), 1)) < 1e-6
    assert len(fused_ce.cross_entropy(x, t, return_z_loss=True)) == 2


def test_gradcheck_softcap_and_z_loss():
    x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    t = torch.tensor([0, 2, -100, 1])
    torch.autograd.gradcheck(
        lambda x: fused_ce.cross_entropy(x, t, logit_scale=1.5, softcap=2.0, lse_square_scale=0.1), (x,)
    )


def test_negative_softcap_is_refused():
    with pytest.raises(ValueError, match="softcap must be >= 0"):
        fused_ce.cross_entropy(torch.randn(2, 3), torch.tensor([0, 1]), softcap=-1.0)


def test_module_passes_the_options():
    x = torch.randn(5, 4, dtype=torch.float64)
    t = torch.tensor([0, 3, -100, 1, 2])
    module = fused_ce.CrossEntropyLoss(
        reduction="sum", logit_scale=0.5, softcap=3.0, lse_square_scale=0.2, return_lse=True
    )
    loss, lse = module(x, t)
    ref_loss, _, ref_lse = reference(x, t, None, "sum", 0.0, 0.5, 3.0, 0.2)
    assert rel_err(loss, ref_loss) < 1e-9 and rel_err(lse[t != -100], ref_lse[t != -100]) < 1e-9


def test_module_with_options_refuses_torchscript_calls_it_cannot_run():
    """Scripted, the value options run with class-index targets only (tests/test_lm_options_fused.py)."""
    scripted = torch.jit.script(fused_ce.CrossEntropyLoss(softcap=2.0))
    with pytest.raises(torch.jit.Error, match="not supported under TorchScript"):
        scripted(torch.randn(3, 4), torch.softmax(torch.randn(3, 4), 1))
    with pytest.raises(torch.jit.Error, match="not supported under TorchScript"):
        torch.jit.script(fused_ce.CrossEntropyLoss(inplace_backward=True))(torch.randn(3, 4), torch.tensor([0, 1, 2]))


def test_probability_targets_count_every_row():
    x = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    p = torch.softmax(torch.randn(4, 5, dtype=torch.float64), 1)
    loss, z_loss = fused_ce.cross_entropy(x, p, softcap=2.0, lse_square_scale=0.3, return_z_loss=True)
    z = 2.0 * torch.tanh(x / 2.0)
    lse = torch.logsumexp(z, 1)
    ref = F.cross_entropy(z, p) + 0.3 * (lse**2).mean()
    assert rel_err(loss, ref) < 1e-9 and rel_err(z_loss, 0.3 * (lse**2).mean()) < 1e-9
    assert rel_err(torch.autograd.grad(loss, x)[0], torch.autograd.grad(ref, x)[0]) < 1e-9


def test_compile_fullgraph_matches_eager():
    x, t = torch.randn(6, 5), torch.tensor([0, 4, -100, 1, 2, 3])

    def f(x, t):
        return fused_ce.cross_entropy(x, t, logit_scale=0.8, softcap=4.0, lse_square_scale=1e-2, return_lse=True)

    torch._dynamo.reset()
    compiled = torch.compile(f, fullgraph=True, backend="eager")
    for a, b in zip(compiled(x, t), f(x, t)):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("reduction", ["none", "mean"])
def test_gradgradcheck_with_every_option(reduction):
    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    t = torch.tensor([1, -100, 3])
    w = torch.rand(4, dtype=torch.float64) + 0.5

    def f(x):
        return fused_ce.cross_entropy(
            x, t, w, reduction=reduction, label_smoothing=0.1, logit_scale=1.2, softcap=1.5, lse_square_scale=0.2
        )

    torch.autograd.gradgradcheck(f, (x,))


def test_torch_func_grad_and_vmap_match_the_reference():
    x = torch.randn(2, 4, 5, dtype=torch.float64)
    t = torch.tensor([[0, 1, 2, -100], [4, 3, 2, 1]])

    def f(x, t):
        return fused_ce.cross_entropy(x, t, softcap=2.0, lse_square_scale=0.1)

    def ref(x, t):
        return reference(x, t, None, "mean", 0.0, 1.0, 2.0, 0.1)[0]

    got = torch.func.vmap(torch.func.grad(f))(x, t)
    want = torch.func.vmap(torch.func.grad(ref))(x, t)
    assert rel_err(got, want) < 1e-9


def test_softcap_none_is_off_as_the_default():
    x, t = torch.randn(3, 5, dtype=torch.float64), torch.tensor([0, 4, 2])
    assert torch.equal(fused_ce.cross_entropy(x, t, softcap=None), fused_ce.cross_entropy(x, t))
    assert torch.equal(fused_ce.CrossEntropyLoss(softcap=None)(x, t), fused_ce.cross_entropy(x, t))
    capped = fused_ce.cross_entropy(x, t, softcap=2.0)
    assert torch.equal(fused_ce.CrossEntropyLoss(softcap=2.0)(x, t), capped)
    assert not torch.equal(capped, fused_ce.cross_entropy(x, t))

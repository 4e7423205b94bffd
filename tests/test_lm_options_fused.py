"""The fused kernels of the language-model options (cross_entropy_lm_* ops: logit_scale, softcap, z-loss,
in-place backward) on every device (the CPU kernels, and the CUDA kernels through the emulated build),
against the float64 reference of tests/lm_reference.py (plain PyTorch)."""

import itertools

import pytest
import torch
from helpers import DEVICES
from lm_reference import reference, rel_err

import fused_ce

OPTIONS = [  # (logit_scale, softcap, lse_square_scale)
    (1.0, 0.0, 1e-2),
    (0.7, 0.0, 0.0),
    (1.3, 2.5, 0.0),
    (0.9, 4.0, 1e-3),
    (1.0, 50.0, 1e-4),
]
REDUCTIONS = ["none", "mean", "sum"]


def make_case(shape, dtype, device, scale=3.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(shape, generator=g, dtype=torch.float64) * scale).to(dtype).to(device)
    target_shape = (shape[0],) + tuple(shape[2:])
    target = torch.randint(0, shape[1], target_shape, generator=g)
    target.view(-1)[1::5] = -100
    return x, target.to(device)


# Rows: a whole number of SIMD vectors plus a tail (37), more classes than one block of the online max
# (4500 fp32 classes is over 2048), and the N-D layout (N, C, d).
SHAPES = [(6, 37), (3, 4500), (4, 9, 5)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("scale,cap,zscale", OPTIONS, ids=str)
@pytest.mark.parametrize("weighted,smoothing", [(False, 0.0), (True, 0.1)], ids=["plain", "weighted_smoothed"])
def test_fp64_values_and_gradients_match_the_reference(device, shape, scale, cap, zscale, weighted, smoothing):
    x, target = make_case(shape, torch.float64, device)
    weight = (torch.rand(shape[1], dtype=torch.float64) + 0.5).to(device) if weighted else None
    counted = target != -100
    for reduction in REDUCTIONS:
        xf = x.clone().requires_grad_()
        loss, z_loss, lse = fused_ce.cross_entropy(
            xf,
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
        xr = x.clone().requires_grad_()
        ref_loss, ref_z, ref_lse = reference(xr, target, weight, reduction, smoothing, scale, cap, zscale)
        assert loss.dtype == torch.float64 and lse.shape == target.shape and z_loss.shape == ref_z.shape
        assert rel_err(loss, ref_loss) < 1e-9, reduction
        assert rel_err(lse[counted], ref_lse[counted]) < 1e-9
        assert rel_err(z_loss, ref_z) < 1e-9 if zscale else bool((z_loss == 0).all())
        g = torch.rand_like(ref_loss) + 0.5
        (gx,) = torch.autograd.grad(loss, xf, g)
        (ref_gx,) = torch.autograd.grad(ref_loss, xr, g)
        assert rel_err(gx, ref_gx) < 1e-9, reduction


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 2e-5), (torch.bfloat16, 1e-2)], ids=["fp32", "bf16"])
def test_low_precision_within_rounding_of_the_fp64_answer(device, dtype, tol):
    """fp32 accumulation: the loss is within fp32 rounding of the exact loss of the (rounded) input; the
    bf16 gradient within bf16 rounding of the exact gradient."""
    x, target = make_case((5, 300), dtype, device)
    for scale, cap, zscale in OPTIONS:
        xf = x.clone().requires_grad_()
        loss = fused_ce.cross_entropy(
            xf, target, logit_scale=scale, softcap=cap, lse_square_scale=zscale, reduction="sum"
        )
        xr = x.double().requires_grad_()
        ref = reference(xr, target, None, "sum", 0.0, scale, cap, zscale)[0]
        assert rel_err(loss, ref) < (2e-6 if dtype == torch.float32 else 1e-2)
        (gx,) = torch.autograd.grad(loss, xf)
        (ref_gx,) = torch.autograd.grad(ref, xr)
        assert gx.dtype == dtype and rel_err(gx, ref_gx) < tol


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", [(6, 37), (4, 9, 5), (7,)], ids=str)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_in_place_gradient_lands_in_the_logits_and_equals_out_of_place(device, shape, reduction):
    x, target = make_case(shape if len(shape) > 1 else (1,) + shape, torch.float32, device)
    if len(shape) == 1:
        x, target = x[0], target[0]
    if target.dim() == 0 and int(target) == -100:
        target = torch.tensor(3)
    grads = []
    for inplace in (False, True):
        leaf = x.clone().requires_grad_()
        logits = leaf * 1.0  # not a leaf: an activation, as an LM head's output is
        loss = fused_ce.cross_entropy(
            logits,
            target,
            reduction=reduction,
            softcap=4.0,
            lse_square_scale=1e-2,
            logit_scale=0.8,
            inplace_backward=inplace,
        )
        version = logits._version
        loss.backward(torch.ones_like(loss))
        grads.append(leaf.grad)
        if inplace:
            assert logits._version > version  # written over
            assert torch.equal(logits.detach(), leaf.grad)  # the gradient is in the logits' own storage
    assert torch.equal(grads[0], grads[1])


def test_in_place_gradient_raises_where_the_logits_are_saved_elsewhere():
    h = torch.randn(6, 8, dtype=torch.float64, requires_grad=True)
    w = torch.randn(10, 8, dtype=torch.float64, requires_grad=True)
    target = torch.tensor([1, 2, -100, 9, 0, 3])
    logits = h @ w.t()
    squares = (logits**2).sum()  # pow saves the logits themselves
    loss = fused_ce.cross_entropy(logits, target, inplace_backward=True)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        (loss + squares).backward()


def test_in_place_gradient_refuses_leaf_logits():
    with pytest.raises(RuntimeError, match="leaf tensor"):
        fused_ce.cross_entropy(torch.randn(3, 4, requires_grad=True), torch.tensor([0, 1, 2]), inplace_backward=True)


def test_in_place_gradient_falls_back_for_double_backward_and_strided_logits():
    h = torch.randn(5, 6, dtype=torch.float64, requires_grad=True)
    target = torch.tensor([1, 2, -100, 4, 0])

    def loss_of(inplace, transpose):
        logits = (h * 1.0).t().contiguous().t() if transpose else h * 1.0
        return fused_ce.cross_entropy(logits, target, softcap=3.0, lse_square_scale=0.1, inplace_backward=inplace)

    for transpose in (False, True):
        (g_in,) = torch.autograd.grad(loss_of(True, transpose), h, create_graph=True)
        (g_out,) = torch.autograd.grad(loss_of(False, transpose), h, create_graph=True)
        assert g_in.requires_grad and rel_err(g_in, g_out) < 1e-12
        v = torch.randn_like(h)
        (hv_in,) = torch.autograd.grad(g_in, h, v)
        (hv_out,) = torch.autograd.grad(g_out, h, v)
        assert rel_err(hv_in, hv_out) < 1e-12


COMBINATIONS = list(itertools.product([1.0, 0.7], [0.0, 2.0], [0.0, 0.1]))


@pytest.mark.parametrize("scale,cap,zscale", COMBINATIONS[1:], ids=str)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_gradcheck_and_gradgradcheck(scale, cap, zscale, reduction):
    x = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    target = torch.tensor([1, -100, 4, 0])
    weight = torch.rand(5, dtype=torch.float64) + 0.5

    def f(x):
        return fused_ce.cross_entropy(
            x,
            target,
            weight,
            reduction=reduction,
            label_smoothing=0.1,
            logit_scale=scale,
            softcap=cap,
            lse_square_scale=zscale,
        )

    torch.autograd.gradcheck(f, (x,))
    torch.autograd.gradgradcheck(f, (x,))


@pytest.mark.parametrize("backend", ["eager", "aot_eager"])
def test_compile_fullgraph_forward_and_backward(backend):
    x, target = make_case((6, 37), torch.float32, "cpu")

    def f(x, t):
        loss, z_loss, lse = fused_ce.cross_entropy(
            x, t, logit_scale=0.8, softcap=4.0, lse_square_scale=1e-2, return_z_loss=True, return_lse=True
        )
        return loss, z_loss, lse

    torch._dynamo.reset()
    compiled = torch.compile(f, fullgraph=True, backend=backend)
    xc, xe = x.clone().requires_grad_(), x.clone().requires_grad_()
    got, want = compiled(xc, target), f(xe, target)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)
    got[0].backward()
    want[0].backward()
    torch.testing.assert_close(xc.grad, xe.grad)


def test_function_class_takes_the_options_as_one_node():
    x, target = make_case((5, 7), torch.float64, "cpu")
    x.requires_grad_()
    loss = fused_ce.CrossEntropyFunction.apply(
        x, target, None, -100, "sum", 0.1, softcap=2.0, logit_scale=1.2, lse_square_scale=0.1
    )
    assert "cross_entropy_lm_fwd" in type(loss.grad_fn).__name__
    ref = reference(x, target, None, "sum", 0.1, 1.2, 2.0, 0.1)[0]
    assert rel_err(loss, ref) < 1e-9
    loss, z_loss = fused_ce.CrossEntropyFunction.apply(x, target, lse_square_scale=0.1, return_z_loss=True)
    assert rel_err(z_loss, reference(x, target, None, "mean", 0.0, 1.0, 0.0, 0.1)[1]) < 1e-9


def test_torchscript_module_runs_the_value_options():
    module = fused_ce.CrossEntropyLoss(logit_scale=0.9, softcap=3.0, lse_square_scale=0.1, reduction="sum")
    scripted = torch.jit.script(module)
    x, target = make_case((5, 7), torch.float64, "cpu")
    assert rel_err(scripted(x, target), reference(x, target, None, "sum", 0.0, 0.9, 3.0, 0.1)[0]) < 1e-9
    with pytest.raises(torch.jit.Error, match="not supported under TorchScript"):
        torch.jit.script(fused_ce.CrossEntropyLoss(return_lse=True))(x, target)


@pytest.mark.parametrize("device", DEVICES)
def test_defaults_run_the_plain_kernels_bit_for_bit(device):
    x, target = make_case((6, 37), torch.float32, device)
    ops = fused_ce._core.library.kernel_ops()
    plain, plain_lse = ops.cross_entropy_fwd(x, target, None, -100, 0.1, 1)
    loss, lse, z_loss = ops.cross_entropy_lm_fwd(x, target, None, -100, 0.1, 1, 1.0, 0.0, 0.0)
    assert torch.equal(loss, plain) and torch.equal(lse, plain_lse) and float(z_loss) == 0.0
    g = torch.tensor(0.7)
    assert torch.equal(
        ops.cross_entropy_lm_bwd(g, x, target, None, lse, -100, 0.1, 1, 1.0, 0.0, 0.0),
        ops.cross_entropy_bwd(g, x, target, None, lse, -100, 0.1, 1),
    )

"""The composite path of the language-model options (fused_ce._lm.options: the transformed logits
materialized, the plain fused loss on them, torch.logsumexp for the z-loss and lse), which runs for
probability targets and for class-index targets inside torch.func transforms, on (N, C, d1, d2) logits:
every option (logit_scale, softcap, lse_square_scale, label smoothing, class weight, ignore_index) and every
reduction, the loss, z_loss and lse and the gradients, against the fp64 reference of tests/lm_reference.py,
judged by the suite's error bound. The 2-D cases alone cannot tell the class dimension (1) from the last one."""

import pytest
import torch
from helpers import DEVICES, assert_close, input_magnitude, random_grad_output
from lm_reference import reference

import fused_ce
from fused_ce._lm import options as _lm_options

SHAPE = (3, 7, 4, 2)  # N, C, d1, d2: no two of the dims after N are equal
OPTIONS = [  # (logit_scale, softcap, lse_square_scale, label_smoothing, weighted)
    (1.3, 0.0, 1e-2, 0.0, False),
    (0.8, 4.0, 0.0, 0.1, True),
    (1.0, 2.5, 1e-3, 0.2, True),
    (1.0, 0.0, 0.0, 0.1, False),
]
REDUCTIONS = ["none", "mean", "sum"]


@pytest.fixture
def composite_only(monkeypatch):
    """The fused LM kernels refuse to run, so that every call below takes the composite path."""

    def refuse(*args, **kwargs):
        raise AssertionError("the fused LM kernels ran where the composite path should")

    monkeypatch.setattr(_lm_options.lm_ops, "cross_entropy_lm", refuse)


def _problem(device, soft, weighted):
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(SHAPE, generator=g, dtype=torch.float64) * 3).to(device)
    if soft:
        target = torch.softmax(torch.randn(SHAPE, generator=g, dtype=torch.float64) * 2, dim=1).to(device)
    else:
        target = torch.randint(0, SHAPE[1], (SHAPE[0],) + SHAPE[2:], generator=g)
        target.view(-1)[1::5] = -100
        target = target.to(device)
    weight = (torch.rand(SHAPE[1], generator=g, dtype=torch.float64) + 0.5).to(device) if weighted else None
    return x, target, weight


def _judge(ours, expected, x, what):
    assert_close(ours, expected, input_scale=input_magnitude(x), terms=x.numel(), msg=what)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("scale,cap,zscale,smoothing,weighted", OPTIONS, ids=str)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("soft", [True, False], ids=["probability_targets", "class_indices_under_vjp"])
def test_nd_composite_matches_the_reference(
    composite_only, device, soft, reduction, scale, cap, zscale, smoothing, weighted
):
    """Probability targets run the composite in eager mode (with the target's gradient too); class indices,
    with ignored rows, run it inside torch.func.vjp. The lse of every counted row, the z-loss and the loss,
    and the gradients under a random upstream gradient."""
    x, target, weight = _problem(device, soft, weighted)

    def ours(x, target):
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
        return loss, (z_loss, lse)

    def ref(x, target):
        loss, z_loss, lse = reference(x, target, weight, reduction, smoothing, scale, cap, zscale)
        return loss, (z_loss, lse)

    argnums = (0, 1) if soft else (0,)
    if soft:
        leaves = [x.clone().requires_grad_(), target.clone().requires_grad_()]
        loss, (z_loss, lse) = ours(*leaves)
        grads = torch.autograd.grad(loss, leaves, random_grad_output(loss))
    else:
        loss, vjp_fn, (z_loss, lse) = torch.func.vjp(lambda x: ours(x, target), x, has_aux=True)
        grads = vjp_fn(random_grad_output(loss))
    ref_leaves = [x.clone().requires_grad_(), target.clone().requires_grad_() if soft else target]
    ref_loss, (ref_z, ref_lse) = ref(*ref_leaves)
    ref_grads = torch.autograd.grad(ref_loss, [ref_leaves[i] for i in argnums], random_grad_output(ref_loss))
    assert lse.shape == ref_lse.shape == (SHAPE[0],) + SHAPE[2:] and z_loss.shape == ref_z.shape
    counted = torch.ones_like(lse, dtype=torch.bool) if soft else target != -100
    _judge(lse[counted], ref_lse[counted], x, "lse")
    _judge(z_loss, ref_z, x, "z_loss")
    _judge(loss, ref_loss, x, "loss")
    for name, g, r in zip(["input", "target"], grads, ref_grads):
        _judge(g, r, x, f"gradient w.r.t. the {name}")

"""Every case first checks fused_ce's loss and input gradient against eager torch, computed in fp32 for
low-precision inputs. Gradient tolerances are relative to the largest reference gradient, because a mean
over N·C elements makes every entry small."""

import providers
import torch
from cases import Inputs

# dtype name -> (rtol, atol as a share of the reference's largest magnitude)
TOLERANCES = {"fp64": (1e-7, 1e-9), "fp32": (1e-4, 1e-5), "fp16": (2e-3, 2e-3), "bf16": (1.6e-2, 1e-2)}


def _reference(case, inputs):
    x = inputs.x.detach().to(torch.float64 if case.dtype == "fp64" else torch.float32).requires_grad_()
    target = inputs.target if not inputs.target.is_floating_point() else inputs.target.to(x.dtype)
    kwargs = {k: v.to(x.dtype) if isinstance(v, torch.Tensor) else v for k, v in inputs.kwargs.items()}
    eager = providers.build("torch", case, Inputs(x, target, kwargs), x.device.type)
    loss = eager(x, target)
    (grad,) = torch.autograd.grad(loss, x)
    return loss.detach(), grad


# Elements per block of the comparison: torch.testing.assert_close builds several full-size temporaries, which
# on a 4096×32000 case took seconds (page faults on a 2-core machine); blocks keep them small and warm.
BLOCK = 1 << 22


def _compare(name, actual, expected, rtol, atol_share):
    """None when |actual − expected| ≤ atol + rtol·|expected| everywhere (assert_close's rule: NaN never
    matches, equal infinities do), else what differs."""
    if actual.shape != expected.shape:
        return f"{name}: shape {tuple(actual.shape)}, expected {tuple(expected.shape)}"
    a = actual.detach().to(expected.dtype).reshape(-1)
    e = expected.detach().reshape(-1)
    atol = atol_share * max(torch.linalg.vector_norm(e, ord=float("inf")).item(), 1e-30) if e.numel() else 0.0
    bad, worst, worst_at = 0, 0.0, 0
    for start in range(0, e.numel(), BLOCK):
        ab, eb = a[start : start + BLOCK], e[start : start + BLOCK]
        diff = (ab - eb).abs()
        mismatch = ~((diff <= atol + rtol * eb.abs()) | (ab == eb))
        count = int(mismatch.sum())
        if count:
            bad += count
            d = torch.where(mismatch, diff.nan_to_num(nan=float("inf")), 0)
            i = int(d.argmax())
            if d[i].item() > worst or bad == count:
                worst, worst_at = d[i].item(), start + i
    if not bad:
        return None
    return (
        f"{name}: {bad} of {e.numel()} elements differ; greatest absolute difference {worst:.3g} at flat index "
        f"{worst_at} (atol {atol:.3g}, rtol {rtol:g})"
    )


def check(case, inputs, device):
    """'ok', or 'MISMATCH: ...' / 'ERROR: ...' describing what failed."""
    rtol, atol_share = TOLERANCES[case.dtype]
    try:
        fused = providers.build("fused_ce", case, inputs, device)
        loss = fused(inputs.x, inputs.target)
        (grad,) = torch.autograd.grad(loss, inputs.x)
    except Exception as e:
        return f"ERROR: fused_ce raised {providers.describe_error(e)}"
    if loss.dtype != inputs.x.dtype or grad.dtype != inputs.x.dtype:
        return f"MISMATCH: dtype loss {loss.dtype}, grad {grad.dtype}, input {inputs.x.dtype}"
    ref_loss, ref_grad = _reference(case, inputs)
    problems = [
        p
        for p in (
            _compare("loss", loss.detach(), ref_loss, rtol, atol_share),
            _compare("grad", grad, ref_grad, rtol, atol_share),
        )
        if p
    ]
    return "MISMATCH: " + "; ".join(problems) if problems else "ok"

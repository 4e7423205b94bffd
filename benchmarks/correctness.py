"""Every case first checks fused_ce's loss and input gradient against eager torch, computed in fp32 for
low-precision inputs. Gradient tolerances are relative to the largest reference gradient, because a mean
over N·C elements makes every entry small."""
import torch

import providers
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


def _compare(name, actual, expected, rtol, atol_share):
    atol = atol_share * max(expected.abs().max().item(), 1e-30)
    try:
        torch.testing.assert_close(actual.to(expected.dtype), expected, rtol=rtol, atol=atol)
    except AssertionError as e:
        first = next((ln.strip() for ln in str(e).splitlines() if "bsolute difference" in ln), "values differ")
        return f"{name}: {first}"
    return None


def check(case, inputs, device):
    """'ok', or 'MISMATCH: ...' / 'ERROR: ...' describing what failed."""
    rtol, atol_share = TOLERANCES[case.dtype]
    try:
        fused = providers.build("fused_ce", case, inputs, device)
        loss = fused(inputs.x, inputs.target)
        (grad,) = torch.autograd.grad(loss, inputs.x)
    except Exception as e:  # noqa: BLE001 - any failure of the code under test is a result to report
        return f"ERROR: fused_ce raised {providers.describe_error(e)}"
    if loss.dtype != inputs.x.dtype or grad.dtype != inputs.x.dtype:
        return f"MISMATCH: dtype loss {loss.dtype}, grad {grad.dtype}, input {inputs.x.dtype}"
    ref_loss, ref_grad = _reference(case, inputs)
    problems = [p for p in (_compare("loss", loss.detach(), ref_loss, rtol, atol_share),
                            _compare("grad", grad, ref_grad, rtol, atol_share)) if p]
    return "MISMATCH: " + "; ".join(problems) if problems else "ok"

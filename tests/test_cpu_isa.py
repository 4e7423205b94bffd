"""The CPU kernels are built three times (default / AVX2 / AVX-512) and one is picked at run time;
FUSED_CE_CPU_CAPABILITY forces one. Each capability this CPU supports runs a parity script in a
subprocess (the choice is made once per process); one it lacks must be refused with a clear error."""
import os
import subprocess
import sys

import pytest

ALL_ISAS = ["default", "avx2", "avx512"]


def _cpu_flags():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


FLAGS = _cpu_flags()
SUPPORTED = {
    "default": True,
    "avx2": {"avx2", "fma"} <= FLAGS,
    "avx512": {"avx512f", "avx512bw", "avx512vl", "avx512dq"} <= FLAGS,
}

PARITY_SCRIPT = r"""
import torch, torch.nn.functional as F, fused_ce
torch.manual_seed(0)
def check(ours, ref, args, grads, tol, **kw):
    a = [t.detach().requires_grad_(i in grads) for i, t in enumerate(args)]
    r = [(t.detach().float() if t.is_floating_point() else t).requires_grad_(i in grads) for i, t in enumerate(args)] if tol else \
        [t.detach().requires_grad_(i in grads) for i, t in enumerate(args)]
    rkw = {k: v.float() if tol and isinstance(v, torch.Tensor) else v for k, v in kw.items()}
    o, e = ours(*a, **kw), ref(*r, **rkw)
    go = torch.rand_like(e) + 0.5
    torch.testing.assert_close(o.to(e.dtype), e, **(tol or {}))
    for g, ge in zip(torch.autograd.grad(o, [a[i] for i in grads], go.to(o.dtype)),
                     torch.autograd.grad(e, [r[i] for i in grads], go)):
        torch.testing.assert_close(g.to(ge.dtype), ge, **(tol or {}))
n = 0
for dtype, tol in [(torch.float64, None), (torch.float32, None),
                   (torch.bfloat16, dict(rtol=2e-2, atol=1e-2)), (torch.float16, dict(rtol=2e-3, atol=1e-3))]:
    for shape in [(7, 3), (5, 37), (3, 1029), (2, 19, 5), (2, 9, 33)]:
        x = (torch.randn(shape) * 4).to(dtype)
        y = torch.randint(0, shape[1], (shape[0],) + shape[2:]); y.view(-1)[0] = -100
        w = (torch.rand(shape[1]) + 0.1).to(dtype)
        for kw in (dict(), dict(weight=w, label_smoothing=0.1, reduction="none"), dict(reduction="sum")):
            check(fused_ce.cross_entropy, F.cross_entropy, (x, y), (0,), tol, **kw); n += 1
        t = torch.softmax(torch.randn(shape), 1).to(dtype)
        check(fused_ce.cross_entropy, F.cross_entropy, (x, t), (0, 1), tol, weight=w, label_smoothing=0.2); n += 1
        pw = (torch.rand(shape[-1]) + 0.5).to(dtype)
        for kw in (dict(pos_weight=pw), dict(weight=w.view(-1, *([1] * (len(shape) - 2))), reduction="none")):
            check(fused_ce.binary_cross_entropy_with_logits, F.binary_cross_entropy_with_logits,
                  (x, torch.rand(shape).to(dtype)), (0, 1), tol, **kw); n += 1
print("checked", n)
"""


def _run(isa, code):
    env = dict(os.environ, FUSED_CE_CPU_CAPABILITY=isa)
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("isa", [i for i in ALL_ISAS if SUPPORTED[i]])
def test_each_supported_capability_matches_torch(isa):
    proc = _run(isa, PARITY_SCRIPT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "checked 120" in proc.stdout


def test_default_capability_is_always_supported():
    assert SUPPORTED["default"]


@pytest.mark.parametrize("isa", [i for i in ALL_ISAS if not SUPPORTED[i]] or ["nonexistent-isa"])
def test_unsupported_or_unknown_capability_is_refused(isa):
    """Forcing a capability the CPU lacks (here: AVX-512 on an AVX2 machine), or a name that is not a
    capability, raises instead of running illegal instructions."""
    code = "import torch, fused_ce; fused_ce.cross_entropy(torch.randn(2, 3), torch.tensor([0, 1]))"
    proc = _run(isa, code)
    assert proc.returncode != 0
    assert "FUSED_CE_CPU_CAPABILITY" in proc.stderr
    assert "Illegal instruction" not in proc.stderr


def test_unknown_capability_name_is_refused():
    proc = _run("sse9", "import torch, fused_ce; fused_ce.cross_entropy(torch.randn(2, 3), torch.tensor([0, 1]))")
    assert proc.returncode != 0 and "must be default, avx2 or avx512" in proc.stderr

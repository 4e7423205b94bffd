"""Soft caps of every size users set: caps 30, 50, 100 and 1000, on every path that applies a soft cap: the CPU
kernels on every instruction set (the `isa_device` fixture; fp32, bf16, fp64; rows and N-D), the CUDA kernels
under the emulated build, the fused linear loss, the vocabulary-parallel loss (world size 1) and the composite
path (probability targets). Values (loss, log-sum-exp) and gradients against float64 torch, with the judge's
bounds (compare_with_torch; assert_close where the result is not a torch loss's).

Every capped z lies in [-c, c]; the scan sums exp(z - shift) against a shift near the row's max, and a scan that
shifted the whole row by c instead (one pass, as the CPU kernels did up to issue 27) needs exp(-2c) to be a normal
number: at c = 50 a subnormal, at c = 88 zero. The rows that tell such a scan: every logit far below 0 (z near
-c, so every term is near exp(-2c)), and the others below. Each problem has
its own kind of rows, judged on its own (the error is relative to the largest value of the tensor judged):
  far_negative  x in -c [2, 4] (z within 4 % of -c, the gradient not yet vanishing), one row at -10 c;
  mixed         x = 2 c * N(0, 1): both signs, many saturated;
  moderate      x = 3 * N(0, 1), far inside the cap (z ~ x): the tanh's own accuracy, times c, shows here.
"""

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from helpers import DEVICES, assert_close, compare_with_torch, input_magnitude

import fused_ce
import fused_ce.parallel
import fused_ce.testing

CAPS = [30.0, 50.0, 100.0, 1000.0]
KINDS = ["far_negative", "mixed", "moderate"]
DTYPES = [torch.float32, torch.bfloat16, torch.float64]
ROWS, CLASSES = 6, 301  # 301: a scalar tail after the whole vectors at every vector width but fp64 AVX2's
ND_SHAPE = (2, 37, 19)  # (N, C, S): 19 positions end in a partial vector of lanes


def capped_logits(shape, cap, kind, seed=0):
    """float64 logits of `shape` (class dimension 1) of the kind (module docstring) for cap c."""
    gen = torch.Generator().manual_seed(seed)
    if kind == "far_negative":
        x = -cap * (2 + 2 * torch.rand(shape, generator=gen, dtype=torch.float64))
        x[0] = -10 * cap  # the first row (the first position of each row in N-D: its n = 0 slice)
        return x
    scale = 2 * cap if kind == "mixed" else 3.0
    return scale * torch.randn(shape, generator=gen, dtype=torch.float64)


def class_targets(logits_shape, seed=1):
    """Class indices for logits of that shape (class dimension 1)."""
    shape = (logits_shape[0],) + tuple(logits_shape[2:])
    return torch.randint(0, logits_shape[1], shape, generator=torch.Generator().manual_seed(seed))


def torch_capped(x, target, reduction="mean", softcap=0.0):
    """torch's cross-entropy of z = softcap * tanh(x / softcap), in x's dtype (the judge runs it in fp64 for
    the reference, in fp32 for its baseline)."""
    return F.cross_entropy(softcap * torch.tanh(x / softcap), target, reduction=reduction)


def capped_lse(x, cap):
    """The float64 log-sum-exp of the capped logits."""
    return torch.logsumexp(cap * torch.tanh(x.double() / cap), dim=1)


def check_cross_entropy(x, target, cap):
    """fused_ce.cross_entropy with the cap: loss per row, gradient and log-sum-exp against float64."""
    compare_with_torch(
        fused_ce.cross_entropy, torch_capped, (x, target), grad_args=(0,), kwargs={"reduction": "none", "softcap": cap}
    )
    _, lse = fused_ce.cross_entropy(x, target, reduction="none", softcap=cap, return_lse=True)
    assert_close(lse, capped_lse(x, cap), msg="log-sum-exp", input_scale=input_magnitude(x))


def cases(dtypes):
    return [pytest.param(d, c, k, id=f"{str(d)[6:]}-cap{c:g}-{k}") for d in dtypes for c in CAPS for k in KINDS]


@pytest.mark.parametrize("layout", ["rows", "nd"])
@pytest.mark.parametrize("dtype,cap,kind", cases(DTYPES))
def test_cpu_kernels(dtype, cap, kind, layout, isa_device):
    device, _ = isa_device
    x = capped_logits((ROWS, CLASSES) if layout == "rows" else ND_SHAPE, cap, kind).to(dtype).to(device)
    check_cross_entropy(x, class_targets(x.shape).to(device), cap)


@pytest.mark.skipif(
    not fused_ce.testing.emulated_cuda_available(),
    reason="the emulated CUDA extension is not built (FUSED_CE_EMULATED_CUDA=1)",
)
@pytest.mark.emulated_cuda  # conftest.py: runs inside fused_ce.testing.emulated_cuda()
@pytest.mark.parametrize("layout", ["rows", "nd"])
@pytest.mark.parametrize("dtype,cap,kind", cases(DTYPES))
def test_emulated_cuda_kernels(dtype, cap, kind, layout):
    x = capped_logits((ROWS, CLASSES) if layout == "rows" else ND_SHAPE, cap, kind).to(dtype)
    check_cross_entropy(x, class_targets(x.shape), cap)


def linear_problem(cap, kind, dtype, device, H=5):
    """(input, linear_weight) whose logits input @ linear_weight.T are of the kind: the first feature
    carries each row's offset (weight 1 for every class), the other H - 1 spread the logits around it."""
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(ROWS, H, generator=gen, dtype=torch.float64)
    w = torch.randn(CLASSES, H, generator=gen, dtype=torch.float64)
    spread = {"far_negative": cap / 2, "mixed": 2 * cap, "moderate": 3.0}[kind]
    # a sum of H - 1 products of N(0, a^2) values has the standard deviation a^2 sqrt(H - 1)
    a = (spread / (H - 1) ** 0.5) ** 0.5
    x[:, 1:] *= a
    w[:, 1:] *= a
    x[:, 0] = capped_logits((ROWS, 1), cap, kind)[:, 0] if kind == "far_negative" else 0.0
    w[:, 0] = 1.0
    return x.to(dtype).to(device), w.to(dtype).to(device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype,cap,kind", cases([torch.float32, torch.float64]))
def test_linear_cross_entropy(dtype, cap, kind, device):
    """The fused linear loss (each tile's logits through the class-index kernels): loss per row, log-sum-exp
    and the gradients of input and linear_weight, judged at the logits' magnitude, as the linear loss's own
    tests judge it."""
    x, w = linear_problem(cap, kind, dtype, device)
    target = class_targets((ROWS, CLASSES)).to(device)
    leaves = [x.detach().requires_grad_(), w.detach().requires_grad_()]
    loss, lse = fused_ce.linear_cross_entropy(*leaves, target, reduction="none", softcap=cap, return_lse=True)
    ref_leaves = [t.detach().double().requires_grad_() for t in (x, w)]
    logits = F.linear(*ref_leaves)
    ref = torch_capped(logits, target, reduction="none", softcap=cap)
    scale = input_magnitude(logits)
    assert_close(loss, ref, msg="loss", input_scale=scale)
    assert_close(lse, capped_lse(logits, cap), msg="log-sum-exp", input_scale=scale)
    go = torch.rand(ROWS, generator=torch.Generator().manual_seed(3), dtype=torch.float64) + 0.5
    grads = torch.autograd.grad(loss, leaves, go.to(loss.dtype).to(device))
    for what, g, r in zip(("input", "linear_weight"), grads, torch.autograd.grad(ref, ref_leaves, go.to(device))):
        assert_close(g, r, msg=f"gradient of {what}", input_scale=scale)


@pytest.fixture(scope="module")
def world_of_one():
    """A gloo process group of this process alone, for fused_ce.parallel."""
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    yield
    dist.destroy_process_group()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype,cap,kind", cases([torch.float32, torch.float64]))
def test_parallel_cross_entropy(dtype, cap, kind, device, world_of_one):
    """fused_ce.parallel.cross_entropy's slice ops (their own scalar scan, csrc/cpu/partial_stats_cpu.cpp)."""
    x = capped_logits((ROWS, CLASSES), cap, kind).to(dtype).to(device)
    ours = lambda x, t, **kw: fused_ce.parallel.cross_entropy(x, t, class_offsets=[0, CLASSES], **kw)  # noqa: E731
    compare_with_torch(
        ours,
        torch_capped,
        (x, class_targets(x.shape).to(device)),
        grad_args=(0,),
        kwargs={"reduction": "none", "softcap": cap},
    )


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype,cap,kind", cases([torch.float32, torch.float64]))
def test_probability_targets(dtype, cap, kind, device):
    """The composite path (fused_ce._lm.options: z materialized by torch, then the plain fused loss)."""
    x = capped_logits((ROWS, CLASSES), cap, kind).to(dtype).to(device)
    p = (
        torch.softmax(
            torch.randn(ROWS, CLASSES, generator=torch.Generator().manual_seed(4), dtype=torch.float64), dim=1
        )
        .to(dtype)
        .to(device)
    )
    compare_with_torch(
        fused_ce.cross_entropy, torch_capped, (x, p), grad_args=(0, 1), kwargs={"reduction": "none", "softcap": cap}
    )

"""CUDA tests of fused_ce: parity with torch, layouts, sizes, determinism, graphs, autocast and out-of-range
targets. Each device-independent test runs twice: on a real GPU (skipped when none is visible) and on the
emulator (CPU tensors through the same CUDA glue and kernels, fused_ce.testing.emulated_cuda, skipped when
the emulated extension is not built); tests of what only a GPU has (graphs, device indices, autocast on
CUDA, more than 2^31 elements) run on a GPU only. Nothing here touches the GPU at import."""

import pytest
import torch
import torch.nn.functional as F
from helpers import assert_close, compare_with_torch, input_magnitude

import fused_ce
import fused_ce.testing

GPU_ONLY = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is not available")
EMULATED = [
    pytest.mark.skipif(
        not fused_ce.testing.emulated_cuda_available(),
        reason="the emulated CUDA extension is not built (FUSED_CE_EMULATED_CUDA=1)",
    ),
    pytest.mark.emulated_cuda,
]  # conftest.py enters emulated_cuda() for these


@pytest.fixture(params=[pytest.param("cuda", marks=GPU_ONLY), pytest.param("emulated_cuda", marks=EMULATED)])
def dev(request):
    """The device of the test's tensors: the GPU, or the CPU for the emulated CUDA kernels."""
    return "cuda" if request.param == "cuda" else "cpu"


def emulated(dev):
    return dev == "cpu"


DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]
REDUCTIONS = ["none", "mean", "sum"]


def check_parity(fn_ours, fn_torch, x, target, dtype, **kw):
    """fused_ce's loss and gradients (w.r.t. x, and the target when it requires grad) against torch's
    float64 result on the same inputs, within helpers.error_bound."""
    assert x.dtype == dtype
    out, _ = compare_with_torch(
        fn_ours, fn_torch, (x, target), grad_args=(0, 1) if target.requires_grad else (0,), kwargs=kw
    )
    assert out.dtype == x.dtype and out.device == x.device


def hard_target(shape, C, device, ignore_index=None):
    t = torch.randint(0, C, shape, device=device)
    if ignore_index is not None:
        t.view(-1)[::3] = ignore_index
    return t


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(16, 10), (4, 7, 5, 3)])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("ignore", [False, True])
@pytest.mark.parametrize("smoothing", [0.0, 0.2])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_hard_parity(dtype, shape, weighted, ignore, smoothing, reduction, dev):
    C = shape[1]
    x = torch.randn(shape, device=dev).to(dtype) * 3
    t = hard_target((shape[0],) + shape[2:], C, dev, ignore_index=-100 if ignore else None)
    w = torch.rand(C, device=dev).to(dtype) + 0.1 if weighted else None
    check_parity(
        fused_ce.cross_entropy, F.cross_entropy, x, t, dtype, weight=w, reduction=reduction, label_smoothing=smoothing
    )


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(16, 10), (4, 7, 5, 3)])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("smoothing", [0.0, 0.2])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_soft_parity(dtype, shape, weighted, smoothing, reduction, dev):
    C = shape[1]
    x = torch.randn(shape, device=dev).to(dtype) * 3
    t = torch.softmax(torch.randn(shape, device=dev), 1).to(dtype).requires_grad_()
    w = torch.rand(C, device=dev).to(dtype) + 0.1 if weighted else None
    check_parity(
        fused_ce.cross_entropy, F.cross_entropy, x, t, dtype, weight=w, reduction=reduction, label_smoothing=smoothing
    )


BCE_OPERANDS = {
    "none": lambda shape, dev: None,
    "scalar": lambda shape, dev: torch.rand((), device=dev) + 0.5,
    "last_dim": lambda shape, dev: torch.rand(shape[-1], device=dev) * 3,
    "column": lambda shape, dev: torch.rand(shape[:-1] + (1,), device=dev) + 0.5,
    "full": lambda shape, dev: torch.rand(shape, device=dev) + 0.5,
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(7,), (5, 9), (3, 4, 130)])
@pytest.mark.parametrize("weight", ["none", "scalar", "column", "full"])
@pytest.mark.parametrize("pos_weight", ["none", "last_dim"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_bce_parity(dtype, shape, weight, pos_weight, reduction, dev):
    x = (torch.randn(shape, device=dev) * 4).to(dtype)
    y = torch.rand(shape, device=dev).to(dtype).requires_grad_()
    w = BCE_OPERANDS[weight](shape, dev)
    pw = BCE_OPERANDS[pos_weight](shape, dev)
    kw = {
        "weight": None if w is None else w.to(dtype),
        "pos_weight": None if pw is None else pw.to(dtype),
        "reduction": reduction,
    }
    check_parity(fused_ce.binary_cross_entropy_with_logits, F.binary_cross_entropy_with_logits, x, y, dtype, **kw)


def test_bce_extreme_logits(dev):
    x = torch.tensor([-100.0, 100.0, -float("inf"), float("inf"), 0.0], device=dev)
    y = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.5], device=dev)
    pw = torch.full((5,), 3.0, device=dev)
    ours = fused_ce.binary_cross_entropy_with_logits(x, y, pos_weight=pw, reduction="none")
    ref = F.binary_cross_entropy_with_logits(x.double(), y.double(), pos_weight=pw.double(), reduction="none")
    assert_close(ours, ref, input_scale=input_magnitude(x, pw))


@GPU_ONLY
@pytest.mark.parametrize("device", ["cuda:0", "cuda:1"])
def test_device_index(device):
    if device == "cuda:1" and torch.cuda.device_count() < 2:
        pytest.skip("needs two GPUs")
    x = torch.randn(33, 1000, device=device)
    t = torch.randint(0, 1000, (33,), device=device)
    with torch.cuda.device(0):  # the op must follow its input's device, not the current one
        check_parity(fused_ce.cross_entropy, F.cross_entropy, x, t, torch.float32, label_smoothing=0.1)
        y = torch.rand(33, 1000, device=device)
        check_parity(fused_ce.binary_cross_entropy_with_logits, F.binary_cross_entropy_with_logits, x, y, torch.float32)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("layout", ["row_slice", "transposed", "misaligned", "column_slice_nd"])
def test_layouts(dtype, layout, dev):
    N, C = 37, 1003
    if layout == "row_slice":  # rows of a wider tensor: row stride != C
        x = torch.randn(N, C + 13, device=dev).to(dtype)[:, 5 : 5 + C]
    elif layout == "transposed":
        x = torch.randn(C, N, device=dev).to(dtype).t()
    elif layout == "misaligned":  # every row off a 16-byte boundary by one element
        x = torch.randn(N * C + 1, device=dev).to(dtype)[1:].view(N, C)
    else:
        x = torch.randn(N, C, 6, device=dev).to(dtype)[:, :, 1:5]
    t = torch.randint(0, C, (N,) + tuple(x.shape[2:]), device=dev)
    t.view(-1)[0] = -100
    for smoothing in (0.0, 0.3):
        check_parity(fused_ce.cross_entropy, F.cross_entropy, x, t, dtype, label_smoothing=smoothing, reduction="none")
    p = torch.softmax(torch.randn(x.shape, device=dev), 1).to(dtype)
    check_parity(fused_ce.cross_entropy, F.cross_entropy, x, p, dtype)
    y = torch.rand(x.shape, device=dev).to(dtype)
    check_parity(
        fused_ce.binary_cross_entropy_with_logits, F.binary_cross_entropy_with_logits, x, y, dtype, reduction="none"
    )


@pytest.mark.parametrize("C", [1, 3, 4095, 65537, 262144])
@pytest.mark.parametrize("N", [1, 5, 300])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_class_counts(C, N, dtype, dev):
    most = 2**20 if emulated(dev) else 2**25  # elements: the emulator runs about 1e6 per second
    if C * N > most:
        N = max(1, most // C)
    x = (torch.randn(N, C, device=dev) * 2).to(dtype)
    t = torch.randint(0, C, (N,), device=dev)
    check_parity(fused_ce.cross_entropy, F.cross_entropy, x, t, dtype, label_smoothing=0.1)
    p = torch.softmax(torch.randn(N, C, device=dev), 1).to(dtype)
    check_parity(fused_ce.cross_entropy, F.cross_entropy, x, p, dtype, reduction="sum")


@pytest.mark.parametrize("C", [3, 50000])
def test_nd_class_counts(C, dev):
    x = torch.randn(2, C, 7, device=dev)
    t = torch.randint(0, C, (2, 7), device=dev)
    check_parity(fused_ce.cross_entropy, F.cross_entropy, x, t, torch.float32, label_smoothing=0.2)


def test_large_n(dev):
    N, C = (1 << 16 if emulated(dev) else 1 << 20), 8
    x = torch.randn(N, C, device=dev)
    t = torch.randint(0, C, (N,), device=dev)
    t[::7] = -100
    check_parity(fused_ce.cross_entropy, F.cross_entropy, x, t, torch.float32)


def test_special_values(dev):
    """-inf rows, an -inf target logit (inf loss), a NaN logit, huge logits and an ignored row. A loss is a
    difference of values of the size of its row's logits, so its error is judged against that size: the
    saved fp32 log-sum-exp of a row of 1e4 rounds to half an ulp of 1e4 (4.9e-4) on any device."""
    x = torch.randn(6, 50, device=dev)
    x[0, :] = -float("inf")
    x[0, 3] = 0.0
    x[1, 7] = -float("inf")
    x[2, 9] = float("nan")
    x[3, :] = 1e4
    x[3, 2] = 1e4 + 3
    t = torch.tensor([3, 7, 1, 2, -100, 4], device=dev)
    ours = fused_ce.cross_entropy(x, t, reduction="none").double()
    ref = F.cross_entropy(x.double(), t, reduction="none")
    assert torch.equal(ours.isnan(), ref.isnan()) and torch.equal(ours.isinf(), ref.isinf())
    row_size = x.double().abs().nan_to_num(0, 0, 0).amax(1).clamp_min(1)
    finite = ref.isfinite()
    assert finite.sum() == 4  # the -inf row with one 0 logit, the 1e4 row, and two ordinary rows
    err = (ours - ref)[finite].abs()
    assert (err <= 4 * torch.finfo(torch.float32).eps * row_size[finite]).all(), (ours, ref)


def test_all_ignored(dev):
    x = torch.randn(4, 10, device=dev, requires_grad=True)
    t = torch.full((4,), -100, device=dev)
    loss = fused_ce.cross_entropy(x, t)
    assert torch.isnan(loss)
    (g,) = torch.autograd.grad(loss, x)
    assert torch.equal(g, torch.zeros_like(g))
    assert fused_ce.cross_entropy(x, t, reduction="sum").item() == 0


@GPU_ONLY
def test_over_2_31_elements():
    N, C = 1 << 15, (1 << 16) + 3  # 2^31 + 98304 bf16 elements
    need = N * C * 2 * 3 + (1 << 30)
    free, _ = torch.cuda.mem_get_info()
    if free < need:
        pytest.skip(f"needs {need >> 30} GiB of free GPU memory")
    x = torch.randn(N, C, device="cuda", dtype=torch.bfloat16)
    t = torch.randint(0, C, (N,), device="cuda")
    x.requires_grad_()
    loss = fused_ce.cross_entropy(x, t, reduction="none")
    (g,) = torch.autograd.grad(loss.sum(), x)
    rows = torch.tensor([0, N // 2, N - 1], device="cuda")
    ref = F.cross_entropy(x.detach()[rows].double(), t[rows], reduction="none")
    scale = input_magnitude(x[rows])
    assert_close(loss[rows], ref, msg="loss of rows at the start, middle and end", input_scale=scale)
    p = torch.softmax(x.detach()[rows].double(), 1)
    p[torch.arange(3), t[rows]] -= 1
    for k in range(3):  # row by row: each row's gradient relative to its own size
        assert_close(g[rows[k]], p[k], msg=f"gradient of row {rows[k].item()}", input_scale=scale)


@pytest.mark.parametrize("shape", [(2, 262144), (4096, 1000), (3, 500, 40)])
def test_deterministic(shape, dev):
    """Bitwise equal results run to run. On the emulator every launch also runs its blocks and threads in a
    different random order, which the fixed-order reductions must not see."""
    if emulated(dev) and shape == (4096, 1000):
        shape = (512, 1000)
    x = torch.randn(shape, device=dev, requires_grad=True)
    t = torch.randint(0, shape[1], (shape[0],) + shape[2:], device=dev)
    p = torch.softmax(torch.randn(shape, device=dev), 1)
    w = torch.rand(shape[1], device=dev)

    def once():
        a = fused_ce.cross_entropy(x, t, weight=w, label_smoothing=0.1)
        b = fused_ce.cross_entropy(x, p, label_smoothing=0.1)
        c = fused_ce.binary_cross_entropy_with_logits(x, p)
        grads = torch.autograd.grad(a + b + c, x)
        return [a, b, c, *grads]

    first, second = once(), once()
    for u, v in zip(first, second):
        assert torch.equal(u, v)


@GPU_ONLY
def test_cuda_graph_capture():
    N, C = 64, 5000
    x = torch.randn(N, C, device="cuda", requires_grad=True)
    t = torch.randint(0, C, (N,), device="cuda")
    t[0] = -100
    y = torch.rand(N, C, device="cuda")

    def step():
        a = fused_ce.cross_entropy(x, t, label_smoothing=0.1)
        b = fused_ce.binary_cross_entropy_with_logits(x, y)
        (g,) = torch.autograd.grad(a + b, x)
        return a, b, g

    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(2):
            step()
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = step()
    with torch.no_grad():
        x.copy_(torch.randn_like(x))
    graph.replay()
    torch.cuda.synchronize()
    expected = step()
    for u, v in zip(out, expected):
        torch.testing.assert_close(u, v, rtol=0, atol=0)


@GPU_ONLY
def test_autocast():
    lin = torch.nn.Linear(64, 300).cuda()
    h = torch.randn(32, 64, device="cuda")
    t = torch.randint(0, 300, (32,), device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        logits = lin(h)
        assert logits.dtype == torch.bfloat16
        ours = fused_ce.cross_entropy(logits, t)
        ref = F.cross_entropy(logits, t)
        ours_b = fused_ce.binary_cross_entropy_with_logits(logits, torch.rand_like(logits.float()))
    assert ours.dtype == ref.dtype == torch.float32
    assert ours_b.dtype == torch.float32
    assert_close(
        ours, F.cross_entropy(logits.double(), t), msg="autocast loss against fp64", input_scale=input_magnitude(logits)
    )


def test_out_of_range_target_check_mode(dev, monkeypatch):
    """FUSED_CE_CUDA_CHECK_TARGETS=1 (read at every call) raises torch's IndexError, after one sync."""
    monkeypatch.setenv("FUSED_CE_CUDA_CHECK_TARGETS", "1")
    x = torch.randn(4, 5, device=dev)
    with pytest.raises(IndexError, match="^Target 5 is out of bounds.$"):
        fused_ce.cross_entropy(x, torch.tensor([0, 5, 1, 2], device=dev))
    with pytest.raises(IndexError, match="^Target -3 is out of bounds.$"):
        fused_ce.cross_entropy(x, torch.tensor([0, 1, -3, 2], device=dev), reduction="none")


def test_out_of_range_target_default_mode(dev, monkeypatch):
    """By default no sync and no device-side assert: the bad row's loss and gradient are NaN, the others
    are right, and the context stays usable. (The CPU kernels raise instead: under emulation this also
    shows that the CUDA code ran.)"""
    monkeypatch.delenv("FUSED_CE_CUDA_CHECK_TARGETS", raising=False)
    x = torch.randn(4, 5, device=dev, requires_grad=True)
    for bad in (5, -3, 1000):
        t = torch.tensor([0, bad, 1, -100], device=dev)
        loss = fused_ce.cross_entropy(x, t, reduction="none")
        assert torch.isnan(loss[1]) and not torch.isnan(loss[0]) and loss[3] == 0
        assert torch.isnan(fused_ce.cross_entropy(x, t))
        (g,) = torch.autograd.grad(fused_ce.cross_entropy(x, t, reduction="sum"), x)
        assert torch.isnan(g[1]).all() and torch.isfinite(g[0]).all() and (g[3] == 0).all()
    if dev == "cuda":
        torch.cuda.synchronize()  # the context is still usable
    t = torch.tensor([0, 1, 2, 3], device=dev)
    compare_with_torch(fused_ce.cross_entropy, F.cross_entropy, (x, t), grad_args=(0,))

"""CUDA tests of fused_ce: parity with torch on the GPU, layouts, sizes, determinism, graphs, autocast and
out-of-range targets. Every test skips when no GPU is visible; nothing here touches the GPU at import."""
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F

import fused_ce
from helpers import assert_close, compare_with_torch, input_magnitude

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is not available")

DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]
REDUCTIONS = ["none", "mean", "sum"]


def check_parity(fn_ours, fn_torch, x, target, dtype, **kw):
    """fused_ce's loss and gradients (w.r.t. x, and the target when it requires grad) against torch's
    float64 result on the same inputs, within helpers.error_bound."""
    assert x.dtype == dtype
    out, _ = compare_with_torch(fn_ours, fn_torch, (x, target), grad_args=(0, 1) if target.requires_grad else (0,),
                                kwargs=kw)
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
def test_hard_parity(dtype, shape, weighted, ignore, smoothing, reduction):
    dev = "cuda"
    C = shape[1]
    x = torch.randn(shape, device=dev).to(dtype) * 3
    t = hard_target((shape[0],) + shape[2:], C, dev, ignore_index=-100 if ignore else None)
    w = torch.rand(C, device=dev).to(dtype) + 0.1 if weighted else None
    check_parity(fused_ce.cross_entropy, F.cross_entropy, x, t, dtype, weight=w, reduction=reduction,
                 label_smoothing=smoothing)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(16, 10), (4, 7, 5, 3)])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("smoothing", [0.0, 0.2])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_soft_parity(dtype, shape, weighted, smoothing, reduction):
    dev = "cuda"
    C = shape[1]
    x = torch.randn(shape, device=dev).to(dtype) * 3
    t = torch.softmax(torch.randn(shape, device=dev), 1).to(dtype).requires_grad_()
    w = torch.rand(C, device=dev).to(dtype) + 0.1 if weighted else None
    check_parity(fused_ce.cross_entropy, F.cross_entropy, x, t, dtype, weight=w, reduction=reduction,
                 label_smoothing=smoothing)


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
def test_bce_parity(dtype, shape, weight, pos_weight, reduction):
    dev = "cuda"
    x = (torch.randn(shape, device=dev) * 4).to(dtype)
    y = torch.rand(shape, device=dev).to(dtype).requires_grad_()
    w = BCE_OPERANDS[weight](shape, dev)
    pw = BCE_OPERANDS[pos_weight](shape, dev)
    kw = {"weight": None if w is None else w.to(dtype), "pos_weight": None if pw is None else pw.to(dtype),
          "reduction": reduction}
    check_parity(fused_ce.binary_cross_entropy_with_logits, F.binary_cross_entropy_with_logits, x, y, dtype, **kw)


def test_bce_extreme_logits():
    x = torch.tensor([-100.0, 100.0, -float("inf"), float("inf"), 0.0], device="cuda")
    y = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.5], device="cuda")
    pw = torch.full((5,), 3.0, device="cuda")
    ours = fused_ce.binary_cross_entropy_with_logits(x, y, pos_weight=pw, reduction="none")
    ref = F.binary_cross_entropy_with_logits(x.double(), y.double(), pos_weight=pw.double(), reduction="none")
    assert_close(ours, ref, input_scale=input_magnitude(x, pw))


@pytest.mark.parametrize("device", ["cuda:0", "cuda:1"])
def test_device_index(device):
    if device == "cuda:1" and torch.cuda.device_count() < 2:
        pytest.skip("needs two GPUs")
    x = torch.randn(33, 1000, device=device)
    t = torch.randint(0, 1000, (33,), device=device)
    with torch.cuda.device(0):  # the op must follow its input's device, not the current one
        check_parity(fused_ce.cross_entropy, F.cross_entropy, x, t, torch.float32, label_smoothing=0.1)
        y = torch.rand(33, 1000, device=device)
        check_parity(fused_ce.binary_cross_entropy_with_logits, F.binary_cross_entropy_with_logits, x, y,
                     torch.float32)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("layout", ["row_slice", "transposed", "misaligned", "column_slice_nd"])
def test_layouts(dtype, layout):
    N, C = 37, 1003
    if layout == "row_slice":  # rows of a wider tensor: row stride != C
        x = torch.randn(N, C + 13, device="cuda").to(dtype)[:, 5:5 + C]
    elif layout == "transposed":
        x = torch.randn(C, N, device="cuda").to(dtype).t()
    elif layout == "misaligned":  # every row off a 16-byte boundary by one element
        x = torch.randn(N * C + 1, device="cuda").to(dtype)[1:].view(N, C)
    else:
        x = torch.randn(N, C, 6, device="cuda").to(dtype)[:, :, 1:5]
    t = torch.randint(0, C, (N,) + tuple(x.shape[2:]), device="cuda")
    t.view(-1)[0] = -100
    for smoothing in (0.0, 0.3):
        check_parity(fused_ce.cross_entropy, F.cross_entropy, x, t, dtype, label_smoothing=smoothing,
                     reduction="none")
    p = torch.softmax(torch.randn(x.shape, device="cuda"), 1).to(dtype)
    check_parity(fused_ce.cross_entropy, F.cross_entropy, x, p, dtype)
    y = torch.rand(x.shape, device="cuda").to(dtype)
    check_parity(fused_ce.binary_cross_entropy_with_logits, F.binary_cross_entropy_with_logits, x, y, dtype,
                 reduction="none")


@pytest.mark.parametrize("C", [1, 3, 4095, 65537, 262144])
@pytest.mark.parametrize("N", [1, 5, 300])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_class_counts(C, N, dtype):
    if C * N > 2**25:
        N = max(1, 2**25 // C)
    x = (torch.randn(N, C, device="cuda") * 2).to(dtype)
    t = torch.randint(0, C, (N,), device="cuda")
    check_parity(fused_ce.cross_entropy, F.cross_entropy, x, t, dtype, label_smoothing=0.1)
    p = torch.softmax(torch.randn(N, C, device="cuda"), 1).to(dtype)
    check_parity(fused_ce.cross_entropy, F.cross_entropy, x, p, dtype, reduction="sum")


@pytest.mark.parametrize("C", [3, 50000])
def test_nd_class_counts(C):
    x = torch.randn(2, C, 7, device="cuda")
    t = torch.randint(0, C, (2, 7), device="cuda")
    check_parity(fused_ce.cross_entropy, F.cross_entropy, x, t, torch.float32, label_smoothing=0.2)


def test_large_n():
    N, C = 1 << 20, 8
    x = torch.randn(N, C, device="cuda")
    t = torch.randint(0, C, (N,), device="cuda")
    t[::7] = -100
    check_parity(fused_ce.cross_entropy, F.cross_entropy, x, t, torch.float32)


def test_special_values():
    x = torch.randn(6, 50, device="cuda")
    x[0, :] = -float("inf")
    x[0, 3] = 0.0
    x[1, 7] = -float("inf")  # the target logit: inf loss
    x[2, 9] = float("nan")
    x[3, :] = 1e4
    t = torch.tensor([3, 7, 1, 2, -100, 4], device="cuda")
    ours = fused_ce.cross_entropy(x, t, reduction="none")
    ref = F.cross_entropy(x.double(), t, reduction="none")
    # The row of 1e4 logits is judged on its own: its loss log(50) = 3.912023 comes from an fp32 LSE of
    # 10003.912, whose rounding (ulp / 2 = 4.9e-4 there; 8.6e-5 for this value) is the documented limit.
    others = torch.tensor([0, 1, 2, 4, 5], device="cuda")
    assert_close(ours[others], ref[others], msg="rows of ordinary logits", input_scale=input_magnitude(x[others]))
    assert_close(ours[3:4], ref[3:4], msg="the row of 1e4 logits", input_scale=1e4)


def test_all_ignored():
    x = torch.randn(4, 10, device="cuda", requires_grad=True)
    t = torch.full((4,), -100, device="cuda")
    loss = fused_ce.cross_entropy(x, t)
    assert torch.isnan(loss)
    (g,) = torch.autograd.grad(loss, x)
    assert torch.equal(g, torch.zeros_like(g))
    assert fused_ce.cross_entropy(x, t, reduction="sum").item() == 0


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
def test_deterministic(shape):
    x = torch.randn(shape, device="cuda", requires_grad=True)
    t = torch.randint(0, shape[1], (shape[0],) + shape[2:], device="cuda")
    p = torch.softmax(torch.randn(shape, device="cuda"), 1)
    w = torch.rand(shape[1], device="cuda")

    def once():
        a = fused_ce.cross_entropy(x, t, weight=w, label_smoothing=0.1)
        b = fused_ce.cross_entropy(x, p, label_smoothing=0.1)
        c = fused_ce.binary_cross_entropy_with_logits(x, p)
        grads = torch.autograd.grad(a + b + c, x)
        return [a, b, c, *grads]

    first, second = once(), once()
    for u, v in zip(first, second):
        assert torch.equal(u, v)


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
    assert_close(ours, F.cross_entropy(logits.double(), t), msg="autocast loss against fp64",
                 input_scale=input_magnitude(logits))


OUT_OF_RANGE = textwrap.dedent("""
    import torch, fused_ce
    x = torch.randn(4, 5, device="cuda")
    t = torch.tensor([0, 5, 1, 2], device="cuda")
    try:
        fused_ce.cross_entropy(x, t)
    except IndexError as e:
        print("IndexError:", e)
""")


def test_out_of_range_target_check_mode():
    env = dict(os.environ, FUSED_CE_CUDA_CHECK_TARGETS="1")
    r = subprocess.run([sys.executable, "-c", OUT_OF_RANGE], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "IndexError: Target 5 is out of bounds." in r.stdout, r.stdout + r.stderr


def test_out_of_range_target_default_mode():
    x = torch.randn(4, 5, device="cuda", requires_grad=True)
    for bad in (5, -3, 1000):
        t = torch.tensor([0, bad, 1, -100], device="cuda")
        loss = fused_ce.cross_entropy(x, t, reduction="none")
        assert torch.isnan(loss[1]) and not torch.isnan(loss[0]) and loss[3] == 0
        assert torch.isnan(fused_ce.cross_entropy(x, t))
        (g,) = torch.autograd.grad(fused_ce.cross_entropy(x, t, reduction="sum"), x)
        assert torch.isnan(g[1]).all() and torch.isfinite(g[0]).all() and (g[3] == 0).all()
    torch.cuda.synchronize()  # the context is still usable
    t = torch.tensor([0, 1, 2, 3], device="cuda")
    compare_with_torch(fused_ce.cross_entropy, F.cross_entropy, (x, t), grad_args=(0,))

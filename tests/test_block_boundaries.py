"""Numerics at every block boundary of the CPU kernels, once per instruction set this CPU runs (the
`isa_device` fixture), against torch in float64 on the same rounded inputs (compare_with_torch).

Where the blocks end (csrc/cpu/kernels_impl.h, csrc/kernel_args.h). A vector holds L lanes of the
accumulation type (fp32 for fp32/bf16/fp16 inputs, fp64 for fp64): 32-byte vectors in the default and
AVX2 builds, 64-byte ones under AVX-512, so L is 8 or 16 for fp32 and 4 or 8 for fp64.
  rows (2-D inputs, classes contiguous): the online max runs over blocks of 128 vectors = 128 L classes
    (2048 fp32 classes under AVX-512), the running sums (BlockedSum) flush every 64 vectors = 64 L
    classes, and the last C mod L classes are a scalar tail;
  lanes (N-D inputs): a vector holds L positions of one class, blocks are 128 classes, the sums flush
    every 64 classes, and the last S mod L positions fill a partial vector;
  BCE: each partial sum, and each parallel task, covers 8192 elements.
"""

import pytest
import torch
import torch.nn.functional as F
from cpu_isas import VECTOR_BYTES
from helpers import compare_with_torch

import fused_ce

SCAN_STEPS = 128  # kChunkSteps: vectors (rows) or classes (lanes) per block of the online max
FLUSH_STEPS = 64  # BlockedSum::kBlock
BCE_CHUNK = 8192  # kBceChunk
SPIKE = 100.0  # exp(100) overflows fp32: only a sum shifted by the running max survives it
INF, NAN = float("inf"), float("nan")
DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]
CE = fused_ce.cross_entropy
BCE = fused_ce.binary_cross_entropy_with_logits
# (smoothing, weighted): the smoothing sums (and their weights) run over the whole row
OPTIONS = [(0.0, False), (0.1, True)]


def lanes(isa, dtype):
    """L for this build and dtype (the AVX-512 value on devices other than the CPU)."""
    return VECTOR_BYTES[isa or "avx512"] // (8 if dtype == torch.float64 else 4)


def randn(*shape, scale=2.0, seed=0):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * scale


def soft_target(shape, seed=1, scale=1.0):
    return torch.softmax(randn(*shape, scale=scale, seed=seed), dim=1)


def check_ce(x, target, dtype, device, smoothing, weighted, reduction="none", finite=True):
    """compare_with_torch on x and target rounded to dtype; with finite, the loss and gradients must
    also be finite (an overflow in one block would make them inf or NaN)."""
    x = x.to(dtype).to(device)
    target = target.to(dtype).to(device) if target.is_floating_point() else target.to(device)
    w = (
        (torch.rand(x.shape[1], generator=torch.Generator().manual_seed(2), dtype=torch.float64) + 0.5)
        .to(dtype)
        .to(device)
        if weighted
        else None
    )
    grad_args = (0, 1) if target.is_floating_point() else (0,)
    out, grads = compare_with_torch(
        CE,
        F.cross_entropy,
        (x, target),
        grad_args=grad_args,
        kwargs={"weight": w, "label_smoothing": smoothing, "reduction": reduction},
    )
    if finite:
        assert torch.isfinite(out).all(), f"non-finite loss in rows {(~torch.isfinite(out)).nonzero().tolist()}"
        for g in grads:
            assert torch.isfinite(g).all()
    return out, grads


def row_edges(L):
    """Classes on either side of every vector, flush and block edge of a row of C = 2 blocks + L + 3
    classes (three blocks of the online max, the last one partial, ending in a 3-class scalar tail)."""
    B, flush = SCAN_STEPS * L, FLUSH_STEPS * L
    C = 2 * B + L + 3
    return C, sorted({0, L - 1, L, flush - 1, flush, B - 1, B, 2 * B - 1, 2 * B, C - 4, C - 3, C - 1})


@pytest.mark.parametrize("options", OPTIONS, ids=["plain", "smoothing+weight"])
@pytest.mark.parametrize("soft", [False, True], ids=["hard", "soft"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_spikes_at_row_block_edges(dtype, soft, options, isa_device):
    """2-D rows: a +100 spike at each edge; the max in the first and in the last block; a first block
    100 above the rest (the running max must carry into the next block's max, or its sum overflows)
    and 100 below it (the running sum is rescaled to 0)."""
    device, isa = isa_device
    L = lanes(isa, dtype)
    C, edges = row_edges(L)
    B = SCAN_STEPS * L
    rows = len(edges) + 3
    x = randn(rows, C)
    for r, c in enumerate(edges):
        x[r, c] += SPIKE
    x[-3, 0] += SPIKE
    x[-3, -1] += SPIKE
    x[-2, :B] += SPIKE
    x[-1, :B] -= SPIKE
    if soft:
        target = soft_target((rows, C))
    else:  # half the spikes are the target (loss ~0), half are not (loss ~100)
        target = torch.randint(0, C, (rows,), generator=torch.Generator().manual_seed(3))
        target[: len(edges) : 2] = torch.tensor(edges[::2])
    check_ce(x, target, dtype, device, *options)


@pytest.mark.parametrize("options", OPTIONS, ids=["plain", "smoothing+weight"])
@pytest.mark.parametrize("soft", [False, True], ids=["hard", "soft"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_spikes_at_class_block_edges_nd(dtype, soft, options, isa_device):
    """N-D (lanes layout): C = 2 blocks + 3 classes, S = 2 L + 1 positions (the last vector of
    positions holds one live lane); each position gets its spike at another block or flush edge, one
    position a first block 100 above the rest, one (in the partial vector) 100 below."""
    device, isa = isa_device
    L = lanes(isa, dtype)
    C, S = 2 * SCAN_STEPS + 3, 2 * L + 1
    edges = [0, FLUSH_STEPS - 1, FLUSH_STEPS, SCAN_STEPS - 1, SCAN_STEPS, 2 * SCAN_STEPS - 1, 2 * SCAN_STEPS, C - 1]
    x = randn(2, C, S)
    spike_at = torch.tensor([edges[i % len(edges)] for i in range(2 * S)]).view(2, S)
    for n in range(2):
        for s in range(S):
            x[n, spike_at[n, s], s] += SPIKE
    x[0, :SCAN_STEPS, 1] += SPIKE
    x[1, :SCAN_STEPS, S - 1] -= SPIKE
    if soft:
        target = soft_target((2, C, S))
    else:
        target = torch.randint(0, C, (2, S), generator=torch.Generator().manual_seed(3))
        target[:, ::2] = spike_at[:, ::2]
    check_ce(x, target, dtype, device, *options)


@pytest.mark.parametrize("options", [(1.0, False), (0.3, True)], ids=["smoothing1", "smoothing0.3+weight"])
@pytest.mark.parametrize("target", ["hard", "near_uniform", "soft"])
@pytest.mark.parametrize("shape", [(1, 2300, 2), (2, 700, 9), (2, 4500)], ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_long_smoothing_and_target_sums(dtype, shape, target, options, isa_device):
    """The smoothing and soft-target sums run over thousands of similar terms (uniform smoothing,
    near-uniform targets), where a plain running sum loses ~1e-5 relative: (1, 2300, 2) soft targets
    with smoothing 1.0 were 2.7e-5 off before the sums were blocked. Per row (reduction 'none'), in the
    dtypes whose rounding is finer than that error."""
    device, _ = isa_device
    x = randn(*shape, scale=3.0)
    if target == "hard":
        t = torch.randint(0, shape[1], (shape[0],) + shape[2:], generator=torch.Generator().manual_seed(3))
    else:
        t = soft_target(shape, scale=0.01 if target == "near_uniform" else 2.0)
    check_ce(x, t, dtype, device, *options)


def special_rows(C, B):
    """(logits, hard target) of rows holding -inf, +inf and NaN at block edges (B: the block length),
    and one ordinary row that must stay unaffected."""
    x = randn(10, C)
    y = torch.tensor([5, B + 1, C - 1, 5, 5, 5, B, 5, 5, B + 2])
    x[0, B - 1 : B + 1] = -INF  # both sides of a block edge; finite loss
    x[1, :B] = -INF  # a whole first block; the running max starts at -inf
    x[2, : C - 1] = -INF  # all but the scalar tail's last class, the target
    x[3, B] = INF  # NaN loss, as torch (inf - inf)
    x[4, B - 1] = NAN
    x[5, C - 1] = NAN
    x[6, B] = -INF  # the target: loss inf
    x[7] = -INF  # the whole row: NaN, as torch
    x[9, :B] = -INF  # a first block of -inf, then logits near -200 whose exps underflow unless shifted by their
    x[9, B:] -= 200.0  # own max (a reference of 0 for the -inf lanes would lose them all); finite loss
    return x, y


@pytest.mark.parametrize("smoothing", [0.0, 0.2])
@pytest.mark.parametrize("soft", [False, True], ids=["hard", "soft"])
@pytest.mark.parametrize("layout", ["rows", "nd"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_infinities_and_nan_at_block_edges(dtype, layout, soft, smoothing, isa_device):
    """inf, NaN and -inf where torch has them, and nowhere else: each special row's loss and gradient
    as torch's, the ordinary row unaffected."""
    device, isa = isa_device
    if layout == "rows":
        L = lanes(isa, dtype)
        C, B = 2 * SCAN_STEPS * L + 3, SCAN_STEPS * L
        x, y = special_rows(C, B)
    else:  # the ten rows are positions of one (1, C, 10) input: one full vector of lanes and a partial one
        C, B = 2 * SCAN_STEPS + 3, SCAN_STEPS
        x, y = special_rows(C, B)
        x, y = x.t().unsqueeze(0).contiguous(), y.unsqueeze(0)
    t = soft_target(x.shape) if soft else y
    out, _grads = check_ce(x, t, dtype, device, smoothing, False, finite=False)
    rows = out.reshape(-1)
    # row 0's -inf logits enter the loss only through soft targets or smoothing (as -inf * weight)
    assert bool(torch.isfinite(rows[0])) == (not soft and smoothing == 0)
    assert bool(torch.isfinite(rows[9])) == (not soft and smoothing == 0)
    assert torch.isfinite(rows[8])
    assert rows[3].isnan() and rows[4].isnan() and rows[5].isnan() and rows[7].isnan()


def chunk_edges(numel, L):
    edges = set()
    for k in range(0, numel, BCE_CHUNK):
        edges |= {k - L, k - 1, k, k + L - 1}
    return sorted(e for e in edges | {numel - 1} if 0 <= e < numel)


@pytest.mark.parametrize("values", ["finite_extremes", "infinities", "nan"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_bce_chunk_edges(dtype, reduction, values, isa_device):
    """BCE over 2 chunks + 47 elements, with a weight per column (contiguous runs that wrap at each row)
    and a pos_weight per row (constant runs), both crossing chunk edges; +-100, +-inf or NaN on either
    side of every chunk edge and in the scalar tail."""
    device, isa = isa_device
    shape = (3, 5477)
    numel = shape[0] * shape[1]
    assert numel == 2 * BCE_CHUNK + 47
    x = randn(*shape, scale=4.0)
    edges = torch.tensor(chunk_edges(numel, lanes(isa, dtype)))
    if values == "nan":
        x.view(-1)[BCE_CHUNK] = NAN
    else:
        big = SPIKE if values == "finite_extremes" else INF
        x.view(-1)[edges] = big * (1 - 2 * (torch.arange(len(edges)) % 2)).double()
    y = torch.rand(shape, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    w = torch.rand(shape[1], generator=torch.Generator().manual_seed(5), dtype=torch.float64) + 0.5
    pw = torch.rand(shape[0], 1, generator=torch.Generator().manual_seed(6), dtype=torch.float64) * 3 + 0.5
    args = [t.to(dtype).to(device) for t in (x, y, w, pw)]
    out, grads = compare_with_torch(
        BCE,
        F.binary_cross_entropy_with_logits,
        tuple(args[:2]),
        grad_args=(0, 1),
        kwargs={"weight": args[2], "pos_weight": args[3], "reduction": reduction},
    )
    if values == "finite_extremes":
        assert torch.isfinite(out).all() and all(torch.isfinite(g).all() for g in grads)

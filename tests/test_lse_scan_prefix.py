"""The re-summing rule of the CPU log-sum-exp scan (csrc/cpu/kernels_impl.h, lse_scan): rows whose first
logits lie far below the row's later maximum, on every CPU instruction set (the `isa_device` fixture) and on
the CUDA kernels' own scan under the emulated build; the loss, the log-sum-exp and the gradient against torch
in float64 (compare_with_torch, the judge's bounds).

lse_scan sums each block of kChunkSteps vectors against a per-lane reference, the lane's first value until a
block's max goes above it, and sums a block again against its own max only where that max exceeds the
reference by more than kRedoAbove = 20: up to there no term exceeds exp(20), so the fp32 sum neither
overflows nor loses precision. A first value J below the later maximum makes every later term exp(~J):
  J = 20     at the rule's edge (jumps of 19.5 to 20.5): some blocks kept, some summed again;
  J = 50     summed again (a rule that kept it would still be exact: exp(50) is finite);
  J = 87     summed again; kept, a block's terms exp(86.5..87.5) add up past fp32's largest value, exp(88.7),
             and the loss is inf. Every logit lies within 0.5 of its level (J below, or at the maximum): with a
             wider spread some block would jump by more than 88 and be summed again under a rule of 88 too;
  J = 89     just past fp32's exp range: each kept term is inf;
  J = 200    far past it;
  -inf       a first value of -inf shifts the sum by 0, and the later values (here near -800, below even
             fp64's exp range) all underflow unless summed against their own max.
Where the jump lies (L: lanes of the accumulation type per vector, B = kChunkSteps vectors of L classes):
rows (N, C) with C = 2.5 B + 3: inside the first block (after 3 L + 1 low classes), at the second block's
first class (a block boundary), inside the third block (after 2 B + 5 L), and in the 3-class scalar tail
(every vector low); N-D inputs (N, C, S), where a vector holds L positions of one class and a block is
kChunkSteps classes: C = 320 classes with the jump after 3, 128 and 261 classes, positions taking those in
turn so that each vector mixes them, and S = 19 ending in a partial vector of positions.
"""

import pytest
import torch
import torch.nn.functional as F
from helpers import assert_close, compare_with_torch, input_magnitude
from test_block_boundaries import SCAN_STEPS, lanes

import fused_ce
import fused_ce.testing

INF = float("inf")
JUMPS = [20.0, 50.0, 87.0, 89.0, 200.0, INF]  # INF: the first logits are -inf
DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]
LAYOUTS = ["rows", "nd"]
BELOW_EXP_RANGE = 800.0  # exp(-800) is 0 in fp64 too
ND_CLASSES = 2 * SCAN_STEPS + SCAN_STEPS // 2
ND_JUMP_AT = [3, SCAN_STEPS, 2 * SCAN_STEPS + 5]
ND_POSITIONS = 19


def row_jumps_at(L):
    """(C, where the high logits of each row start) for rows of L-lane vectors (see the module docstring)."""
    B = SCAN_STEPS * L
    C = 2 * B + B // 2 + 3
    return C, [3 * L + 1, B, 2 * B + 5 * L, C - 3]


def low_prefix(C, jump_at, jump, seed=0):
    """float64 logits of len(jump_at) rows of C classes in (-0.5, 0], whose first jump_at[r] classes of row r
    are `jump` lower (or -inf, with the rest moved BELOW_EXP_RANGE down); and a target among each row's high
    classes."""
    gen = torch.Generator().manual_seed(seed)
    x = -0.5 * torch.rand(len(jump_at), C, generator=gen, dtype=torch.float64)
    target = torch.empty(len(jump_at), dtype=torch.long)
    for r, k in enumerate(jump_at):
        if jump == INF:
            x[r, :k] = -INF
            x[r, k:] -= BELOW_EXP_RANGE
        else:
            x[r, :k] -= jump
        target[r] = torch.randint(k, C, (), generator=gen)
    return x, target


def problem(layout, jump, L):
    """(x, target) of the layout for vectors of L lanes."""
    if layout == "rows":
        C, jump_at = row_jumps_at(L)
        return low_prefix(C, jump_at, jump)
    jump_at = [ND_JUMP_AT[s % len(ND_JUMP_AT)] for s in range(ND_POSITIONS)]
    x, target = low_prefix(ND_CLASSES, jump_at * 2, jump)
    # row n * S + s is position s of the (2, C, S) input's n
    return x.view(2, ND_POSITIONS, ND_CLASSES).transpose(1, 2).contiguous(), target.view(2, ND_POSITIONS)


def check_prefix_rows(x, target, dtype, device):
    """The loss per row and its gradient (compare_with_torch), and the log-sum-exp per row, of x rounded to
    dtype; every value finite."""
    x = x.to(dtype).to(device)
    target = target.to(device)
    out, (grad,) = compare_with_torch(
        fused_ce.cross_entropy, F.cross_entropy, (x, target), grad_args=(0,), kwargs={"reduction": "none"}
    )
    _, lse = fused_ce.cross_entropy(x, target, reduction="none", return_lse=True)
    ref_lse = torch.logsumexp(x.double(), dim=1)
    assert_close(lse, ref_lse, msg="log-sum-exp", input_scale=input_magnitude(x))
    for what, t in (("loss", out), ("gradient", grad), ("log-sum-exp", lse)):
        assert torch.isfinite(t).all(), f"non-finite {what} at {(~torch.isfinite(t)).nonzero()[:4].tolist()}"


@pytest.mark.parametrize("jump", JUMPS, ids=lambda j: f"first_{j:g}_below")
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_first_logits_far_below_the_max(dtype, layout, jump, isa_device):
    device, isa = isa_device
    x, target = problem(layout, jump, lanes(isa, dtype))
    check_prefix_rows(x, target, dtype, device)


@pytest.mark.skipif(
    not fused_ce.testing.emulated_cuda_available(),
    reason="the emulated CUDA extension is not built (FUSED_CE_EMULATED_CUDA=1)",
)
@pytest.mark.emulated_cuda  # conftest.py: runs inside fused_ce.testing.emulated_cuda()
@pytest.mark.parametrize("jump", JUMPS, ids=lambda j: f"first_{j:g}_below")
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_first_logits_far_below_the_max_emulated_cuda(dtype, layout, jump):
    """The CUDA kernels' scan (a rescale per pack of values, device_common.cuh lse_add) on the same rows,
    sized for AVX-512's lanes: long rows split into chunks whose states are merged."""
    x, target = problem(layout, jump, lanes(None, dtype))
    check_prefix_rows(x, target, dtype, "cpu")

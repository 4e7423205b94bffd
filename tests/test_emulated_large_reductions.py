"""The CUDA kernels' device reductions over more partial sums than one block adds up (csrc/cuda/reduce.cu,
finish_sum, and the launchers that use it: device_sum in csrc/cuda/ops_cuda.cpp and the BCE forward), under
the emulated CUDA build, against torch in float64 (compare_with_torch, the judge's bounds).

A reduced loss is summed in two steps: fixed tiles of values, one partial sum per block (kSumTile = 16 x 256
per-row losses of cross-entropy, kBceTile = 32 x 256 elements of BCE), then the partials by one block of
kBlock = 256 threads, each thread taking every 256th partial. Up to 256 partials each thread holds at most
one, so a final step that read only the first block's worth of partials would go unnoticed: these inputs have
more, 2.5M BCE elements (306 partials) and 1.1M cross-entropy rows (269 partials; the weighted mean's
denominator, a sum of w[y] over the rows, too). Their last rows differ from the others (larger logits), so
any rows left out move the result far beyond the bound. Class counts stay small (2 and 3) to keep the
emulator fast: each case runs in about a second.
"""

import pytest
import torch
import torch.nn.functional as F
from helpers import compare_with_torch

import fused_ce
import fused_ce.testing

pytestmark = [
    pytest.mark.skipif(
        not fused_ce.testing.emulated_cuda_available(),
        reason="the emulated CUDA extension is not built (FUSED_CE_EMULATED_CUDA=1)",
    ),
    pytest.mark.emulated_cuda,  # conftest.py: runs inside fused_ce.testing.emulated_cuda()
]

FINISH_THREADS = 256  # kBlock: the threads of finish_sum's one block
SUM_TILE = 16 * FINISH_THREADS  # kSumTile: values per partial of device_sum
BCE_TILE = 32 * FINISH_THREADS  # kBceTile: elements per partial of the BCE forward
BCE_ELEMENTS = 2_500_000
CE_ROWS = 1_100_000
IGNORE = -100


def logits_with_larger_tail(shape, seed=0):
    """float64 N(0, 1) logits whose last tenth of rows (dimension 0) is four times larger."""
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    x[-shape[0] // 10 :] *= 4
    return x


def test_sizes_exceed_one_block_of_partials():
    assert -(-BCE_ELEMENTS // BCE_TILE) > FINISH_THREADS
    assert -(-CE_ROWS // SUM_TILE) > FINISH_THREADS


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_bce_over_many_tiles(reduction):
    x = logits_with_larger_tail((BCE_ELEMENTS,)).float()
    y = torch.rand(BCE_ELEMENTS, generator=torch.Generator().manual_seed(1), dtype=torch.float64).float()
    compare_with_torch(
        fused_ce.binary_cross_entropy_with_logits,
        F.binary_cross_entropy_with_logits,
        (x, y),
        kwargs={"reduction": reduction},
    )


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("target", ["class_index", "weighted_ignored", "probabilities"])
def test_cross_entropy_over_many_rows(target, reduction):
    """Class indices; with class weights and ignored rows (the weighted mean's denominator is a device sum
    too, also in the gradient); class probabilities (their own forward kernel)."""
    C = 3
    x = logits_with_larger_tail((CE_ROWS, C)).float()
    gen = torch.Generator().manual_seed(2)
    kwargs = {"reduction": reduction}
    if target == "probabilities":
        t = torch.softmax(torch.randn(CE_ROWS, C, generator=gen, dtype=torch.float64), dim=1).float()
    else:
        t = torch.randint(0, C, (CE_ROWS,), generator=gen)
    if target == "weighted_ignored":
        t[::7] = IGNORE
        kwargs.update(weight=torch.tensor([0.5, 1.0, 2.0]), ignore_index=IGNORE)
    compare_with_torch(fused_ce.cross_entropy, F.cross_entropy, (x, t), grad_args=(0,), kwargs=kwargs)

"""The vocabulary-parallel cross-entropy's slice ops, ce_partial_stats and ce_partial_grad
(csrc/partial_stats_schema.h), on the CPU kernels and on the CUDA kernels (emulated or real), against the fp64
references of partial_stats_reference.py: every layout the CUDA tiling distinguishes (a group of threads per
row, rows split into chunks and merged, the N-D layout, also split), one-class and class-less slices, rows that
start at any offset of a wider tensor, targets below, in and above the slice, and ignored ones; also with the
language-model options (logit_scale, softcap), whose statistics are those of the transformed logits."""

import pytest
import torch
from helpers import DEVICES, parametrize_grid
from lm_reference import transformed
from partial_stats_reference import partial_grad, partial_stats

import fused_ce
from fused_ce._vocab import partial_stats_ops as P
from fused_ce.testing._opcheck_cases import OPCHECK_PARTIAL_STATS

DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]
# Largest error of an accumulated statistic, relative to the largest magnitude of that statistic over the
# rows: fp32 accumulation (fp64 for fp64) of inputs that are exact in both.
ACC_TOL = {torch.float64: 1e-12, torch.float32: 2e-5, torch.float16: 2e-5, torch.bfloat16: 2e-5}
# The gradient rounds to the logits' dtype.
GRAD_TOL = {torch.float64: 1e-12, torch.float32: 2e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}
OFFSET = 10
# (logit_scale, softcap): a scale alone, and a scale with a cap that the logits (about 30 +- 9) do not saturate.
LM_OPTIONS = [(0.5, 0.0), (1.3, 50.0)]

# name: logits shape (the slice), and whether its rows are a column range of a wider tensor
LAYOUTS = {
    "rows": ((5, 37), False),
    "one_class": ((4, 1), False),
    "split_rows": ((2, 2500), False),  # few rows: the CUDA scan splits each row into chunks and merges them
    "row_stride": ((6, 37), True),
    "nd": ((2, 40, 3), False),
    "nd_split": ((1, 100, 2, 2), False),
    "classless": ((3, 0), False),
}


def ops():
    return fused_ce._core.library.kernel_ops()


def _problem(layout, dtype, device):
    shape, strided = LAYOUTS[layout]
    g = torch.Generator().manual_seed(1)
    C = shape[1]
    # Far from zero, so that sums of x taken against 0 instead of a value of the row lose digits.
    if strided:
        wide = torch.randn(shape[0], C + 5, generator=g, dtype=torch.float64) * 3 + 30
        logits = wide.to(dtype).to(device)[:, 3 : 3 + C]
    else:
        logits = (torch.randn(shape, generator=g, dtype=torch.float64) * 3 + 30).to(dtype).to(device)
    rows = (shape[0],) + tuple(shape[2:])
    # below the slice, ignored, first, middle and last class of the slice, above it, out of every range
    choices = torch.tensor([0, -100, OFFSET, OFFSET + C // 2, OFFSET + max(C - 1, 0), OFFSET + C, 10**6])
    target = choices[torch.randint(0, len(choices), rows, generator=g)]
    target.view(-1)[: min(target.numel(), len(choices))] = choices[: min(target.numel(), len(choices))]
    weight = (torch.rand(C, generator=g, dtype=torch.float64) + 0.5).to(dtype).to(device)
    return logits, target.to(device), weight


def _assert_rows_close(actual, expected, tol, what):
    """Per statistic (first dim): the same non-finite entries, the rest within tol of its largest magnitude."""
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    for k in range(expected.shape[0]):
        a, e = actual[k].double(), expected[k]
        finite = torch.isfinite(e)
        assert torch.equal(finite, torch.isfinite(a)) and torch.equal(a[~finite], e[~finite]), f"{what}[{k}]"
        scale = e[finite].abs().max().item() if finite.any() else 0.0
        err = (a[finite] - e[finite]).abs().max().item() if finite.any() else 0.0
        assert err <= tol * scale, f"{what}[{k}]: error {err:.3g} > {tol:g} x {scale:.3g}"


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_partial_stats_match_fp64_reference(layout, dtype, device):
    logits, target, weight = _problem(layout, dtype, device)
    # The last: an ignore_index that is the slice's first class, whose rows then have no target term.
    for w, smoothing, ignore in [
        (weight, True, -100),
        (None, True, -100),
        (weight, False, -100),
        (weight, True, OFFSET),
    ]:
        stats = ops().ce_partial_stats(logits, target, w, OFFSET, ignore, smoothing)
        assert stats.dtype == fused_ce._core.library.lse_dtype(dtype)
        expected = partial_stats(logits.cpu(), target.cpu(), None if w is None else w.cpu(), OFFSET, ignore, smoothing)
        # The max and the target's logit and weight are values of the input: exact.
        for k in (P.MAX, P.TARGET_LOGIT, P.TARGET_WEIGHT):
            assert torch.equal(stats[k].cpu().double(), expected[k]), (layout, k, w is None, smoothing, ignore)
        _assert_rows_close(stats.cpu(), expected, ACC_TOL[dtype], f"{layout} weighted={w is not None}")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_partial_grad_matches_fp64_reference(layout, dtype, device):
    logits, target, weight = _problem(layout, dtype, device)
    acc = fused_ce._core.library.lse_dtype(dtype)
    rows = (logits.shape[0],) + tuple(logits.shape[2:])
    g = torch.Generator().manual_seed(2)
    lse = torch.logsumexp(logits.double().cpu(), 1) + 1.0 if logits.shape[1] else torch.zeros(rows, dtype=torch.float64)
    prob, tgt, klass = (torch.rand(rows, generator=g, dtype=torch.float64) + 0.5 for _ in range(3))
    for w, k in [(weight, klass), (None, klass), (weight, torch.zeros_like(klass))]:
        coefs = torch.stack([lse, prob, tgt, k]).to(acc)
        grad = ops().ce_partial_grad(logits, target, w, coefs.to(device), OFFSET, -100)
        assert grad.dtype == dtype and grad.shape == logits.shape and grad.is_contiguous()
        expected = partial_grad(logits.cpu(), target.cpu(), None if w is None else w.cpu(), coefs, OFFSET, -100)
        _assert_rows_close(grad.cpu().unsqueeze(0), expected.unsqueeze(0), GRAD_TOL[dtype], f"{layout} grad")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("layout", ["rows", "split_rows", "row_stride", "nd_split"])
def test_partial_ops_with_lm_options_match_fp64_reference(layout, dtype, device):
    """Statistics of z = f(x) and the gradient for z times dz/dx; z is computed in the kernels, so even the max
    and the target logit are compared within the tolerance."""
    logits, target, weight = _problem(layout, dtype, device)
    acc = fused_ce._core.library.lse_dtype(dtype)
    rows = (logits.shape[0],) + tuple(logits.shape[2:])
    g = torch.Generator().manual_seed(4)
    prob, tgt, klass = (torch.rand(rows, generator=g, dtype=torch.float64) + 0.5 for _ in range(3))
    for scale, cap in LM_OPTIONS:
        for w, smoothing in [(weight, True), (None, True), (weight, False)]:
            what = f"{layout} {scale} {cap} weighted={w is not None} smoothing={smoothing}"
            w_cpu = None if w is None else w.cpu()
            stats = ops().ce_partial_stats(logits, target, w, OFFSET, -100, smoothing, scale, cap)
            expected = partial_stats(logits.cpu(), target.cpu(), w_cpu, OFFSET, -100, smoothing, scale, cap)
            assert torch.equal(stats[P.TARGET_WEIGHT].cpu().double(), expected[P.TARGET_WEIGHT]), what
            _assert_rows_close(stats.cpu(), expected, ACC_TOL[dtype], what)
        lse = torch.logsumexp(transformed(logits.cpu(), scale, cap), 1) + 1.0
        coefs = torch.stack([lse, prob, tgt, klass]).to(acc)
        grad = ops().ce_partial_grad(logits, target, weight, coefs.to(device), OFFSET, -100, scale, cap)
        expected = partial_grad(logits.cpu(), target.cpu(), weight.cpu(), coefs, OFFSET, -100, scale, cap)
        _assert_rows_close(grad.cpu().unsqueeze(0), expected.unsqueeze(0), GRAD_TOL[dtype], f"{layout} grad")


@pytest.mark.parametrize("device", DEVICES)
def test_partial_stats_argument_checks(device):
    x = torch.randn(4, 5, device=device)
    y = torch.zeros(4, dtype=torch.long, device=device)
    with pytest.raises(RuntimeError, match=r"Expected target size \[4\], got \[3\]"):
        ops().ce_partial_stats(x, y[:3], None, 0, -100, False)
    with pytest.raises(RuntimeError, match="weight tensor should be defined either for all 5 classes"):
        ops().ce_partial_stats(x, y, torch.ones(6, device=device), 0, -100, True)
    with pytest.raises(RuntimeError, match=r"coefs must have shape \[4, 4\] and dtype Float"):
        ops().ce_partial_grad(x, y, None, torch.zeros(4, 3, device=device), 0, -100)
    softcap_error = r"fused_ce: softcap must be >= 0 \(0 turns it off\), got -1"
    with pytest.raises(RuntimeError, match=softcap_error):
        ops().ce_partial_stats(x, y, None, 0, -100, False, 1.0, -1.0)
    with pytest.raises(RuntimeError, match=softcap_error):
        ops().ce_partial_grad(x, y, None, torch.zeros(4, 4, device=device), 0, -100, 1.0, -1.0)


@parametrize_grid(OPCHECK_PARTIAL_STATS)
def test_opcheck_partial_stats(shape, smoothing, dtype, device):
    OPCHECK_PARTIAL_STATS.run(device, shape=shape, smoothing=smoothing, dtype=dtype)


@pytest.mark.parametrize("shape", [(40, 3000), (3, 50, 700)], ids=str)
def test_partial_ops_bitwise_identical_at_any_thread_count(shape):
    """Rows are spread over threads but each row is summed in one fixed order (CPU kernels)."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(shape, generator=g) * 4
    rows = (shape[0],) + tuple(shape[2:])
    y = torch.randint(0, 2 * shape[1], rows, generator=g)
    w = torch.rand(shape[1], generator=g) + 0.5
    coefs = torch.rand((4,) + rows, generator=g)
    before = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            results.append(
                (
                    torch.ops.fused_ce.ce_partial_stats(x, y, w, shape[1] // 2, -100, True),
                    torch.ops.fused_ce.ce_partial_grad(x, y, w, coefs, shape[1] // 2, -100),
                )
            )
    finally:
        torch.set_num_threads(before)
    for stats, grad in results[1:]:
        assert torch.equal(stats.view(torch.int32), results[0][0].view(torch.int32))
        assert torch.equal(grad.view(torch.int32), results[0][1].view(torch.int32))

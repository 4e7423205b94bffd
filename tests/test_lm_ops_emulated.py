"""The language-model options of class-index cross-entropy in fused_ce's CUDA kernels (logit_scale, softcap,
lse_square_scale = the z-loss, and the in-place backward), through the ops cross_entropy_lm_fwd / _bwd / _bwd_
of the emulated CUDA library on CPU tensors, against a float64 reference written here in plain torch: values
(loss, lse, z-loss) and gradients, for the three reductions, label smoothing, class weights and ignored rows,
on the kernels' tiling paths (one thread per row, rows split into chunks and merged, the N-D layout split
into chunks). The in-place gradient must equal the out-of-place one bit for bit, in the logits' storage.
"""

import pytest
import torch
import torch.nn.functional as F
from test_emulated_cuda import assert_matches, class_targets, logits, positive

import fused_ce.testing

pytestmark = [
    pytest.mark.skipif(
        not fused_ce.testing.emulated_cuda_available(),
        reason="the emulated CUDA extension is not built (FUSED_CE_EMULATED_CUDA=1)",
    ),
    pytest.mark.emulated_cuda,  # conftest.py: FUSED_CE_CUDA_CHECK_TARGETS=1
]

REDUCTION = {"none": 0, "mean": 1, "sum": 2}
IGNORE = -100
# Logits shapes on the kernels' paths (launchers.h, plan_tiling): rows of 7 classes, one thread each and
# off a 16-byte boundary (single loads); rows of 300 classes split into two chunks whose partial
# log-sum-exps are merged (vector loads); the N-D layout (N, C, S) with its 40 classes split into two chunks.
SHAPES = {"rows": (5, 7), "rows_split": (3, 300), "nd": (2, 40, 3)}
# (logit_scale, softcap, lse_square_scale, label_smoothing, weighted): each value of each option, with and
# without the others; the first row is the plain loss.
OPTIONS = [
    (1.0, 0.0, 0.0, 0.0, False),
    (0.7, 0.0, 1e-2, 0.0, True),
    (1.0, 5.0, 0.0, 0.1, True),
    (0.7, 5.0, 1e-2, 0.1, False),
    (1.0, 5.0, 1e-2, 0.0, False),
    (0.7, 0.0, 0.0, 0.1, True),
    (0.7, 5.0, 1e-2, 0.1, True),
]
ALL_OPTIONS = OPTIONS[-1]


def reference(x, target, weight, smoothing, reduction, scale, softcap, lse_square_scale):
    """(loss, lse, z_loss) in float64: torch's cross-entropy of z = scale * x (then softcap * tanh(z / softcap))
    plus lse_square_scale * logsumexp(z)^2 for every row that is not ignored; the z-loss's mean divides by the
    number of those rows."""
    z = x * scale
    if softcap > 0:
        z = softcap * torch.tanh(z / softcap)
    lse = torch.logsumexp(z, dim=1)
    counted = target != IGNORE
    z_rows = torch.where(counted, lse_square_scale * lse * lse, torch.zeros_like(lse))
    ce = F.cross_entropy(z, target, weight=weight, ignore_index=IGNORE, label_smoothing=smoothing, reduction=reduction)
    if reduction == "none":
        z_loss = z_rows
    elif reduction == "sum":
        z_loss = z_rows.sum()
    else:
        z_loss = z_rows.sum() / counted.sum()
    return ce + z_loss, lse, z_loss


def upstream(loss_shape, reduction):
    """A non-uniform gradient per row for 'none' (so each row's own scale is checked), else a scalar != 1."""
    if reduction != "none":
        return torch.tensor(0.75, dtype=torch.float64)
    g = torch.Generator().manual_seed(7)
    return torch.rand(loss_shape, generator=g, dtype=torch.float64) + 0.5


def problem(layout, dtype, weighted, seed=0):
    shape = SHAPES[layout]
    x = logits(shape, dtype, scale=4.0, seed=seed)  # large enough that the cap of 5 bends z (0.7 * 4 * 2 > 5)
    t = class_targets((shape[0],) + shape[2:], shape[1], ignore_share=0.3, seed=seed + 1)
    w = positive((shape[1],), dtype) if weighted else None
    return x, t, w


def bitwise(a):
    """a's bits, so that equal means bit-identical (0.0 and -0.0 differ, NaNs of the same bits match)."""
    ints = {2: torch.int16, 4: torch.int32, 8: torch.int64}
    return a.view(ints[a.element_size()])


def check_lm_ops(layout, reduction, options, dtype):
    scale, softcap, lss, smoothing, weighted = options
    x, t, w = problem(layout, dtype, weighted)
    lm = (IGNORE, smoothing, REDUCTION[reduction], scale, softcap, lss)
    loss, lse, z_loss = torch.ops.fused_ce_emulated_cuda.cross_entropy_lm_fwd(x, t, w, *lm)

    x64 = x.double().requires_grad_()
    ref_loss, ref_lse, ref_z = reference(
        x64, t, None if w is None else w.double(), smoothing, reduction, scale, softcap, lss
    )
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    assert (loss.dtype, lse.dtype, z_loss.dtype) == (dtype, torch.float64, acc)  # lse: the saved one, fp64
    assert_matches(loss, ref_loss, dtype, "loss")
    counted = t != IGNORE
    assert_matches(lse[counted], ref_lse[counted], acc, "lse")
    assert torch.equal(lse[~counted], torch.zeros_like(lse[~counted])), "lse of ignored rows"
    if lss == 0:
        assert torch.equal(z_loss, torch.zeros_like(z_loss)), "z-loss off"
    else:
        assert_matches(z_loss, ref_z, acc, "z_loss")

    go = upstream(ref_loss.shape, reduction)
    (ref_grad,) = torch.autograd.grad(ref_loss, x64, go)
    g = go.to(dtype)
    grad = torch.ops.fused_ce_emulated_cuda.cross_entropy_lm_bwd(g, x, t, w, lse, *lm)
    assert grad.dtype == dtype and grad.shape == x.shape
    assert_matches(grad, ref_grad, dtype, "gradient")

    x_inplace = x.clone()
    storage = x_inplace.data_ptr()
    assert torch.ops.fused_ce_emulated_cuda.cross_entropy_lm_bwd_(g, x_inplace, t, w, lse, *lm) is None
    assert x_inplace.data_ptr() == storage
    assert torch.equal(bitwise(x_inplace), bitwise(grad)), "in-place gradient differs from the out-of-place one"


@pytest.mark.parametrize(
    "options", OPTIONS, ids=lambda o: "scale{}-cap{}-z{}-eps{}-{}".format(*o[:4], "weighted" if o[4] else "unweighted")
)
@pytest.mark.parametrize("reduction", list(REDUCTION))
@pytest.mark.parametrize("layout", list(SHAPES))
def test_lm_options_fp64(layout, reduction, options):
    check_lm_ops(layout, reduction, options, torch.float64)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("reduction", list(REDUCTION))
@pytest.mark.parametrize("layout", list(SHAPES))
def test_lm_options_low_precision(layout, reduction, dtype):
    """All options at once in the dtypes that accumulate in fp32 (and, for bf16/fp16, round their results)."""
    check_lm_ops(layout, reduction, ALL_OPTIONS, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("reduction", list(REDUCTION))
@pytest.mark.parametrize("layout", list(SHAPES))
def test_default_options_are_the_plain_loss_bitwise(layout, reduction, dtype):
    """logit_scale 1, softcap 0 and no z-loss run the plain kernels' arithmetic: loss, lse and gradient bit
    for bit those of cross_entropy_fwd / _bwd."""
    ops = torch.ops.fused_ce_emulated_cuda
    x, t, w = problem(layout, dtype, weighted=True)
    plain = (w, IGNORE, 0.1, REDUCTION[reduction])
    loss, lse, z_loss = ops.cross_entropy_lm_fwd(x, t, *plain, 1.0, 0.0, 0.0)
    plain_loss, plain_lse = ops.cross_entropy_fwd(x, t, *plain)
    assert torch.equal(bitwise(loss), bitwise(plain_loss)) and torch.equal(bitwise(lse), bitwise(plain_lse))
    assert torch.equal(z_loss, torch.zeros_like(z_loss))
    g = upstream(loss.shape, reduction).to(dtype)
    grad = ops.cross_entropy_lm_bwd(g, x, t, w, lse, IGNORE, 0.1, REDUCTION[reduction], 1.0, 0.0, 0.0)
    assert torch.equal(bitwise(grad), bitwise(ops.cross_entropy_bwd(g, x, t, *plain[:1], lse, *plain[1:])))


def test_mean_over_no_counted_rows_is_nan():
    """'mean' of only ignored rows: both parts divide by zero (torch's NaN); 'sum' is 0."""
    ops = torch.ops.fused_ce_emulated_cuda
    x = logits((3, 9), torch.float32)
    t = torch.full((3,), IGNORE)
    loss, _, z_loss = ops.cross_entropy_lm_fwd(x, t, None, IGNORE, 0.0, REDUCTION["mean"], 0.7, 5.0, 1e-2)
    assert loss.isnan() and z_loss.isnan()
    loss, _, z_loss = ops.cross_entropy_lm_fwd(x, t, None, IGNORE, 0.0, REDUCTION["sum"], 0.7, 5.0, 1e-2)
    assert loss.item() == 0 and z_loss.item() == 0


def test_errors():
    ops = torch.ops.fused_ce_emulated_cuda
    x, t, _ = problem("rows", torch.float32, weighted=False)
    lse = ops.cross_entropy_lm_fwd(x, t, None, IGNORE, 0.0, 0, 1.0, 0.0, 0.0)[1]
    g = torch.ones(x.shape[0])
    with pytest.raises(RuntimeError, match=r"fused_ce: softcap must be >= 0 \(0 turns it off\), got -1"):
        ops.cross_entropy_lm_fwd(x, t, None, IGNORE, 0.0, 0, 1.0, -1.0, 0.0)
    with pytest.raises(RuntimeError, match=r"fused_ce: softcap must be >= 0 \(0 turns it off\), got -1"):
        ops.cross_entropy_lm_bwd(g, x, t, None, lse, IGNORE, 0.0, 0, 1.0, -1.0, 0.0)
    wide = torch.cat([x, x], 1)[:, : x.shape[1]]
    with pytest.raises(
        RuntimeError,
        match="fused_ce: cross_entropy_lm_bwd_ writes the gradient over the logits, which must be contiguous",
    ):
        ops.cross_entropy_lm_bwd_(g, wide, t, None, lse, IGNORE, 0.0, 0, 1.0, 0.0, 0.0)
    with pytest.raises(IndexError, match="Target 7 is out of bounds."):
        ops.cross_entropy_lm_fwd(x, torch.tensor([0, 7, 1, 2, 3]), None, IGNORE, 0.0, 1, 0.7, 5.0, 1e-2)

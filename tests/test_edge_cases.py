"""Edge cases of cross-entropy: ignored and empty batches, infinities and NaN in the logits, huge offsets,
fp16 N-D layouts, zero class weights, negative label smoothing."""

import pytest
import torch
import torch.nn.functional as F
from helpers import DEVICES, FLOAT_DTYPES, assert_close, assert_loss_of_no_rows, compare_with_torch, input_magnitude

import fused_ce

CE = fused_ce.cross_entropy
INF = float("inf")


def _both(x, y, **kwargs):
    return compare_with_torch(CE, F.cross_entropy, (x, y), grad_args=(0,), kwargs=kwargs)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("shape", [(4, 5), (2, 5, 3)])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.2])
@pytest.mark.parametrize("weighted", [False, True])
def test_all_targets_ignored(weighted, label_smoothing, shape, dtype, device):
    """mean -> NaN, sum -> 0, none -> zeros; the gradient is 0 and never NaN."""
    x = torch.randn(shape, dtype=dtype, device=device)
    y = torch.full((shape[0],) + shape[2:], -100, device=device)
    w = torch.rand(shape[1], dtype=dtype, device=device) + 0.1 if weighted else None
    for reduction in ("mean", "sum", "none"):
        out, (grad,) = _both(x, y, weight=w, reduction=reduction, label_smoothing=label_smoothing)
        assert_loss_of_no_rows(out, reduction)
        assert (grad == 0).all(), "gradient of an all-ignored batch must be 0, not NaN"


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("soft", [False, True])
@pytest.mark.parametrize("shape", [(0, 5), (0, 5, 3), (2, 5, 0)])
def test_empty_batch(shape, soft, reduction, device):
    """mean -> NaN, sum -> 0, none -> empty, as torch (for soft targets too)."""
    x = torch.randn(shape, device=device)
    y = (
        torch.rand(shape, device=device)
        if soft
        else torch.zeros((shape[0],) + shape[2:], dtype=torch.long, device=device)
    )
    out, _ = compare_with_torch(
        CE, F.cross_entropy, (x, y), grad_args=(0,) if reduction != "none" else (), kwargs={"reduction": reduction}
    )
    assert_loss_of_no_rows(out, reduction)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_unbatched_ignored_target(reduction, device):
    """A (C,) input whose target is ignored: NaN for mean (0/0) on CPU, as torch."""
    x = torch.randn(5, device=device)
    out, (grad,) = _both(x, torch.tensor(-100, device=device), reduction=reduction)
    assert_loss_of_no_rows(out, reduction)
    assert not grad.isnan().any()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("shape", [(3, 6), (3, 6, 2)])
def test_minus_inf_logits(shape, dtype, device):
    """-inf on a non-target logit is fine; on the target it gives inf; with smoothing any -inf gives inf."""
    x = torch.randn(shape, dtype=dtype, device=device)
    y = torch.zeros((shape[0],) + shape[2:], dtype=torch.long, device=device)
    x[0, 3] = -INF  # row 0: off-target
    x[1, 0] = -INF  # row 1: on the target
    x[2, 1:] = -INF  # row 2: every class but the target
    for reduction in ("none", "sum"):
        out, _ = _both(x, y, reduction=reduction)
        if reduction == "none":
            assert torch.isfinite(out[0]).all() and (out[1] == INF).all() and torch.isfinite(out[2]).all()
        out, _ = _both(x, y, reduction=reduction, label_smoothing=0.1)
        if reduction == "none":
            assert (out[0] == INF).all() and (out[1] == INF).all()
    soft = torch.softmax(torch.randn(shape, dtype=torch.float64), 1).to(dtype).to(device)
    compare_with_torch(CE, F.cross_entropy, (x, soft), grad_args=(0, 1), kwargs={"reduction": "none"})


def _compare_except_ignored_rows(x, y, ignore_index=-100, **kwargs):
    """Values as torch's fp64 result; gradients as torch's on the rows that count, and exactly 0 on
    ignored rows.

    Deliberate difference: torch's gradient of an ignored row is NaN when that row's logits hold a NaN
    or are all -inf (log_softmax's backward multiplies 0 by NaN); fused_ce writes 0 for every ignored
    row (Liger PR #1338), so one bad ignored row cannot poison the parameters."""
    xo = x.detach().requires_grad_()
    xr = x.detach().double().requires_grad_()
    kwargs64 = {k: v.double() if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
    out = CE(xo, y, ignore_index=ignore_index, **kwargs)
    ref = F.cross_entropy(xr, y, ignore_index=ignore_index, **kwargs64)
    scale = input_magnitude(x, *kwargs.values())
    assert_close(out, ref, msg="loss value", input_scale=scale)
    go = (torch.rand(ref.shape, dtype=torch.float64, device=x.device) + 0.5).to(out.dtype)
    (g,) = torch.autograd.grad(out, xo, go)
    (gr,) = torch.autograd.grad(ref, xr, go.double())
    ignored = y == ignore_index
    g_rows, gr_rows = g.movedim(1, -1), gr.movedim(1, -1)  # (N, d.., C): indexable by the row mask
    assert_close(g_rows[~ignored], gr_rows[~ignored], msg="gradient of the rows that count", input_scale=scale)
    assert (g_rows[ignored] == 0).all()
    return out, g


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("C", [5, 67])
def test_rows_mostly_and_entirely_minus_inf(C, dtype, device):
    """flash-attention#1930: rows that are mostly or entirely -inf (an all -inf row is NaN in torch)."""
    x = torch.randn(4, C, dtype=dtype, device=device)
    x[0, 1:] = -INF  # only the target finite
    x[1, :-1] = -INF  # only the last class finite, target 0 -> inf
    x[2, :] = -INF  # entire row
    y = torch.tensor([0, C - 1, 2, 1], device=device)
    for kwargs in ({"reduction": "none"}, {"reduction": "none", "label_smoothing": 0.1}, {"reduction": "sum"}):
        _both(x, y, **kwargs)
    out, _g = _compare_except_ignored_rows(x, y, ignore_index=2, reduction="none")
    assert out[2] == 0
    y2 = torch.tensor([0, C - 1, -100, 1], device=device)  # the all -inf row ignored: everything finite
    out, grad = _compare_except_ignored_rows(x, y2, reduction="sum")
    assert torch.isfinite(out) and torch.isfinite(grad).all()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("shape", [(4, 9), (4, 37), (2, 9, 3)])
@pytest.mark.parametrize("soft", [False, True])
def test_nan_logit_poisons_its_row_only(soft, shape, dtype, device):
    x = torch.randn(shape, dtype=dtype, device=device)
    x[1, 4] = float("nan")
    y = (
        torch.softmax(torch.randn(shape), 1).to(dtype).to(device)
        if soft
        else torch.zeros((shape[0],) + shape[2:], dtype=torch.long, device=device)
    )
    out, grads = compare_with_torch(CE, F.cross_entropy, (x, y), grad_args=(0,), kwargs={"reduction": "none"})
    assert out[1].isnan().any() and not out[0].isnan().any() and not out[2:].isnan().any()
    assert grads[0][1].isnan().any() and not grads[0][0].isnan().any()
    compare_with_torch(CE, F.cross_entropy, (x, y), grad_args=(0,), kwargs={"reduction": "mean"})


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("offset", [1e4, -1e4, 3e4])
@pytest.mark.parametrize("soft", [False, True])
def test_huge_logit_offsets(soft, offset, dtype, device):
    """Logits around +-1e4: no overflow in exp or in the smoothing sums. Values and gradients against
    torch's fp64 result; the bound grows with the logits' magnitude, as the fp32 log-sum-exp's rounding
    does (ulp(1e4) / 2 = 4.9e-4 in fp32: the loss of a row of 1e4 logits is 8.6e-5 off in absolute terms)."""
    base = torch.randn(6, 50, dtype=torch.float64) * 3
    x = (base + offset).to(dtype).to(device)
    y = (
        torch.softmax(torch.randn(6, 50, dtype=torch.float64), 1).to(dtype).to(device)
        if soft
        else torch.randint(0, 50, (6,), device=device)
    )
    for label_smoothing in (0.0, 0.3):
        for reduction in ("none", "mean"):
            out, grads = compare_with_torch(
                CE,
                F.cross_entropy,
                (x, y),
                grad_args=(0, 1) if soft else (0,),
                kwargs={"label_smoothing": label_smoothing, "reduction": reduction},
            )
            assert torch.isfinite(out).all() and all(torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("soft", [False, True])
def test_fp16_nd_layout_reduces_in_fp32(soft, reduction, device):
    """pytorch#85791: fp16 N-D inputs overflowed where the same data in 2-D did not. Logits of ~1e4
    (exp overflows fp16; sum-exp of 300 classes overflows without a max shift)."""
    x2d = (torch.randn(8 * 6, 300) * 3 + 1.0e4).half().to(device)
    xnd = x2d.view(8, 6, 300).permute(0, 2, 1).contiguous()  # (N, C, d) holding the same rows
    if soft:
        t2d = torch.softmax(torch.randn(48, 300), 1).half().to(device)
        tnd = t2d.view(8, 6, 300).permute(0, 2, 1).contiguous()
    else:
        t2d = torch.randint(0, 300, (48,), device=device)
        tnd = t2d.view(8, 6)
    out2d = CE(x2d, t2d, reduction=reduction, label_smoothing=0.1)
    outnd, grads = compare_with_torch(
        CE,
        F.cross_entropy,
        (xnd, tnd),
        grad_args=(0, 1) if soft else (0,),
        kwargs={"reduction": reduction, "label_smoothing": 0.1},
    )
    assert torch.isfinite(outnd).all() and all(torch.isfinite(g).all() for g in grads)
    # the same rows give the same values in either layout (both sum in fp32; the N-D kernel's vectors
    # run across positions, the 2-D kernel's across classes, so only the rounding may differ)
    assert_close(outnd.reshape(-1), out2d.reshape(-1).double(), msg="N-D against 2-D", input_scale=input_magnitude(x2d))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("soft", [False, True])
def test_zero_weight_classes(soft, dtype, device):
    """Classes of weight 0 contribute nothing; if every target has weight 0 the mean is NaN as torch."""
    x = torch.randn(6, 5, dtype=dtype, device=device)
    w = torch.tensor([0.0, 1.0, 0.0, 2.0, 0.5], dtype=dtype, device=device)
    y = (
        torch.softmax(torch.randn(6, 5), 1).to(dtype).to(device)
        if soft
        else torch.tensor([0, 1, 2, 3, 4, 0], device=device)
    )
    for reduction in ("mean", "sum", "none"):
        for label_smoothing in (0.0, 0.2):
            compare_with_torch(
                CE,
                F.cross_entropy,
                (x, y),
                grad_args=(0,),
                kwargs={"weight": w, "reduction": reduction, "label_smoothing": label_smoothing},
            )
    if not soft:
        out, (_grad,) = _both(x, torch.tensor([0, 2, 0, 2, 2, 0], device=device), weight=w)
        assert out.isnan()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("soft", [False, True])
def test_negative_label_smoothing_acts_as_zero(soft, device):
    x = torch.randn(5, 7, dtype=torch.float64, device=device)
    y = (
        torch.softmax(torch.randn(5, 7, dtype=torch.float64), 1).to(device)
        if soft
        else torch.randint(0, 7, (5,), device=device)
    )
    out, (grad,) = compare_with_torch(CE, F.cross_entropy, (x, y), grad_args=(0,), kwargs={"label_smoothing": -0.5})
    out0, (grad0,) = compare_with_torch(CE, F.cross_entropy, (x, y), grad_args=(0,))
    assert torch.equal(out, out0) and torch.equal(grad, grad0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_single_class(dtype, device):
    """C == 1: the loss is 0 (or the smoothing term), the gradient 0."""
    x = torch.randn(4, 1, dtype=dtype, device=device)
    y = torch.zeros(4, dtype=torch.long, device=device)
    for label_smoothing in (0.0, 0.5):
        _both(x, y, label_smoothing=label_smoothing, reduction="none")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", [(4, 6), (4, 6, 3)])
def test_ignored_rows_write_zero_and_never_read_sentinel(shape, device):
    """Liger PR #1338: ignored rows hold garbage logits (NaN, inf) yet their loss and gradient are 0."""
    x = torch.randn(shape, device=device)
    x[1] = float("nan")
    x[3] = INF
    y = torch.tensor([2, -100, 5, -100], device=device)
    if len(shape) == 3:
        y = y[:, None].expand(4, 3).contiguous()
    w = torch.rand(6, device=device) + 0.1
    for kwargs in (
        {"reduction": "none", "label_smoothing": 0.1, "weight": w},
        {"reduction": "mean"},
        {"reduction": "sum", "label_smoothing": 0.3},
    ):
        out, grad = _compare_except_ignored_rows(x, y, **kwargs)
        assert torch.isfinite(out).all() and torch.isfinite(grad).all()
        if kwargs["reduction"] == "none":
            assert (out[1] == 0).all() and (out[3] == 0).all()


@pytest.mark.parametrize("device", DEVICES)
def test_results_are_deterministic(device):
    """Fixed-order reductions (pytorch#17350): the same call twice gives bit-identical results."""
    x = torch.randn(3000, 257, device=device, requires_grad=True)
    y = torch.randint(0, 257, (3000,), device=device)
    first = CE(x, y, label_smoothing=0.1)
    (g1,) = torch.autograd.grad(first, x)
    for _ in range(3):
        again = CE(x, y, label_smoothing=0.1)
        (g2,) = torch.autograd.grad(again, x)
        assert torch.equal(first, again) and torch.equal(g1, g2)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("soft", [False, True])
@pytest.mark.parametrize("spike", ["first_class", "last_class"])
@pytest.mark.parametrize("shape", [(2, 4099), (2, 300, 3)])
def test_spike_far_above_later_blocks(shape, spike, soft, dtype, device):
    """The online log-sum-exp takes its classes in blocks (2048 per row under AVX-512, 128 in the N-D
    layout) and each block's max must start from the running max: a logit 100 above every later block
    would otherwise overflow exp(100) in fp32 (inf loss)."""
    x = torch.randn(shape, dtype=torch.float64) * 3
    x[:, 0 if spike == "first_class" else -1] += 100
    x = x.to(dtype).to(device)
    y = (
        torch.softmax(torch.randn(shape, dtype=torch.float64), 1).to(dtype).to(device)
        if soft
        else torch.randint(1, shape[1] - 1, (shape[0],) + shape[2:], device=device)
    )
    compare_with_torch(
        CE,
        F.cross_entropy,
        (x, y),
        grad_args=(0, 1) if soft else (0,),
        kwargs={"label_smoothing": 0.1, "reduction": "none"},
    )


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("soft", [False, True])
@pytest.mark.parametrize("shape", [(1, 2300, 2), (2, 4100)])
def test_long_smoothing_sums(shape, soft, device):
    """Label smoothing 1.0 adds w * t' * x over every class: over thousands of similar terms a plain
    running fp32 sum loses accuracy (measured with the kernels' blocked sums made plain: 4.2e-5 relative
    on the (1, 2300, 2) soft case, bound 2.8e-6), so the kernels add in blocks."""
    x = (torch.randn(shape, dtype=torch.float64) * 3).float().to(device)
    w = (torch.rand(shape[1], dtype=torch.float64) + 0.5).float().to(device)
    y = (
        torch.softmax(torch.randn(shape, dtype=torch.float64), 1).float().to(device)
        if soft
        else torch.randint(0, shape[1], (shape[0],) + shape[2:], device=device)
    )
    for weight in (None, w):
        compare_with_torch(
            CE,
            F.cross_entropy,
            (x, y),
            grad_args=(0,),
            kwargs={"label_smoothing": 1.0, "reduction": "none", "weight": weight},
        )


# Every zero-size combination: no classes (C == 0), no rows (N == 0 or a zero spatial size), unbatched
# (0,). Zero-size results are exact (0, -0, NaN or empty), so they are compared with torch's exactly.
ZERO_SIZE_CE_SHAPES = [(4, 0), (2, 0, 3), (0,), (0, 0), (0, 5), (0, 0, 3), (2, 3, 0), (0, 5, 2)]
ZERO_SIZE_BCE_SHAPES = [(0,), (4, 0), (0, 3), (2, 0, 3)]


def _run_or_raise(fn, args, grad_args, kwargs):
    """(loss, gradients w.r.t. args[i] for i in grad_args), or the exception fn raised."""
    leaves = [
        a.detach().requires_grad_(i in grad_args) if isinstance(a, torch.Tensor) else a for i, a in enumerate(args)
    ]
    try:
        out = fn(*leaves, **kwargs)
    except Exception as e:
        return e
    go = torch.full_like(out, 0.75)
    return out, torch.autograd.grad(out, [leaves[i] for i in grad_args], go, allow_unused=True)


def _assert_same_as_torch(ours_fn, torch_fn, args, grad_args, kwargs):
    case = f"shapes {[tuple(a.shape) for a in args if isinstance(a, torch.Tensor)]} {kwargs}"
    ref = _run_or_raise(torch_fn, args, grad_args, kwargs)
    ours = _run_or_raise(ours_fn, args, grad_args, kwargs)
    if isinstance(ref, Exception):
        assert type(ours) is type(ref), f"{case}: torch raises {ref!r}, fused_ce gives {ours!r}"
        return
    assert not isinstance(ours, Exception), f"{case}: fused_ce raises {ours!r}, torch gives {ref}"
    for what, a, b in [("loss", ours[0], ref[0])] + [
        (f"gradient {i}", g, r) for i, g, r in zip(grad_args, ours[1], ref[1])
    ]:
        assert (a is None) == (b is None), f"{case}: {what} {a} vs torch {b}"
        if a is not None:
            assert a.dtype == b.dtype and a.shape == b.shape, (
                f"{case}: {what} {a.dtype} {tuple(a.shape)}, torch {b.dtype} {tuple(b.shape)}"
            )
            torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True, msg=lambda m: f"{case}: {what}: {m}")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64], ids=str)
@pytest.mark.parametrize("shape", ZERO_SIZE_CE_SHAPES, ids=str)
def test_zero_size_cross_entropy(shape, dtype, device):
    """Issue 9, item 1: probability targets with C == 0 crashed the process (the kernels read a row's first
    logit). Every zero-size shape, hard targets (valid and ignored) and probability targets, with and
    without label smoothing and class weights, every reduction: values and gradients as torch's, or
    torch's exception. Also smoothing with C == 0, which torch makes NaN (0/0) for every reduction."""
    x = torch.randn(shape, dtype=dtype, device=device)
    C = shape[1] if len(shape) > 1 else shape[0]
    row_shape = (shape[0],) + shape[2:] if len(shape) > 1 else ()
    targets = [
        (torch.rand(shape, dtype=dtype, device=device), (0, 1)),
        (torch.zeros(row_shape, dtype=torch.long, device=device), (0,)),
        (torch.full(row_shape, -100, dtype=torch.long, device=device), (0,)),
    ]
    for y, grad_args in targets:
        # Deliberate difference: torch 2.13 fails N-D class-index inputs with C == 0 inside nll_loss2d
        # (RuntimeError "size mismatch (got input: [2, 0, 0, 0] , target: [2, 1, 3]"); fused_ce treats
        # them as the same rows in 2-D, which torch handles.
        reference = _ce_via_2d if len(shape) > 2 and C == 0 and not y.is_floating_point() else F.cross_entropy
        for weight in (None, torch.rand(C, dtype=dtype, device=device)):
            for reduction in ("mean", "sum", "none"):
                for label_smoothing in (0.0, 0.1):
                    _assert_same_as_torch(
                        CE,
                        reference,
                        (x, y),
                        grad_args,
                        {"weight": weight, "reduction": reduction, "label_smoothing": label_smoothing},
                    )


def _ce_via_2d(x, y, reduction, **kwargs):
    """torch's cross_entropy of N-D class-index inputs computed on their rows laid out in 2-D."""
    out = F.cross_entropy(x.movedim(1, -1).reshape(y.numel(), x.shape[1]), y.reshape(-1), reduction=reduction, **kwargs)
    return out.reshape(y.shape) if reduction == "none" else out


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64], ids=str)
@pytest.mark.parametrize("shape", ZERO_SIZE_BCE_SHAPES, ids=str)
def test_zero_size_bce_with_logits(shape, dtype, device):
    x = torch.randn(shape, dtype=dtype, device=device)
    y = torch.rand(shape, dtype=dtype, device=device)
    last = shape[-1:]
    for weight, pos_weight in (
        (None, None),
        (torch.rand(last, dtype=dtype, device=device), torch.rand(last, dtype=dtype, device=device)),
    ):
        for reduction in ("mean", "sum", "none"):
            _assert_same_as_torch(
                fused_ce.binary_cross_entropy_with_logits,
                F.binary_cross_entropy_with_logits,
                (x, y),
                (0, 1),
                {"weight": weight, "pos_weight": pos_weight, "reduction": reduction},
            )


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64], ids=str)
@pytest.mark.parametrize("shape", [(4, 5), (4, 5, 3)], ids=str)
def test_mean_over_zero_total_weight(shape, dtype, device):
    """Class-index mean whose rows have total weight 0 (all ignored; or every target of class weight 0,
    some rows ignored): torch gives NaN, also with label smoothing, whose term makes the sum non-zero (the
    kernels gave +inf there), and a NaN gradient on the rows that count, 0 on ignored rows."""
    x = torch.randn(shape, dtype=dtype, device=device)
    w = torch.tensor([0.0, 1.0, 0.0, 2.0, 0.5], dtype=dtype, device=device)
    row_shape = (shape[0],) + shape[2:]
    zero_weight = torch.tensor([0, 2, -100, 2], device=device).view((4,) + (1,) * (len(shape) - 2)).expand(row_shape)
    for y, weight in (
        (torch.full(row_shape, -100, device=device), None),
        (torch.full(row_shape, -100, device=device), w),
        (zero_weight.contiguous(), w),
    ):
        for label_smoothing in (0.0, 0.3):
            _assert_same_as_torch(
                CE,
                F.cross_entropy,
                (x, y),
                (0,),
                {"weight": weight, "reduction": "mean", "label_smoothing": label_smoothing},
            )

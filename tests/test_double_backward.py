"""Double backward against torch: for every loss and option, the gradient built with create_graph=True
and the Hessian-vector product (the gradient of <gradient, v> w.r.t. the inputs and the upstream
gradient) agree with torch's, in fp64, within helpers.error_bound. gradgradcheck (test_autograd.py) only
checks the double-backward formulas against their own finite differences: a wrong formula passes it.
"""

import pytest
import torch
import torch.nn.functional as F
from helpers import DEVICES, assert_close, input_magnitude, relative_error

import fused_ce

F64 = torch.float64
REDUCTIONS = ["mean", "sum", "none"]


def _hvp(fn, inputs, go, vs):
    """fn(*inputs), its gradients w.r.t. inputs for the upstream gradient go (with create_graph), and
    the gradients of sum_i <gradient_i, v_i> w.r.t. the inputs and go (zeros where unused)."""
    out = fn(*inputs)
    grads = torch.autograd.grad(out, inputs, go, create_graph=True)
    inner = sum((g * v).sum() for g, v in zip(grads, vs))
    wrt = [*inputs, go]
    second = torch.autograd.grad(inner, wrt, allow_unused=True)
    return [out, *grads, *(torch.zeros_like(w) if s is None else s for w, s in zip(wrt, second))]


def _names(inputs):
    firsts = [f"gradient w.r.t. input {i}" for i in range(len(inputs))]
    seconds = [f"Hessian-vector product w.r.t. input {i}" for i in range(len(inputs))]
    return ["loss value", *firsts, *seconds, "Hessian-vector product w.r.t. the upstream gradient"]


def compare_double_backward(ours_fn, torch_fn, inputs, constants=(), upstream=True):
    """ours_fn(*inputs) against torch_fn(*inputs) (same signature): loss, gradients and Hessian-vector
    products (the one w.r.t. the upstream gradient only if `upstream`). inputs: fp64 tensors to
    differentiate; constants: the other tensors the losses read, for the bound's input magnitude. torch's
    own fp32 result on the same inputs is the baseline of the bound. Returns fused_ce's results."""
    gen = torch.Generator().manual_seed(7)
    leaves = [t.detach().to(F64) for t in inputs]
    out_shape = torch_fn(*leaves).shape
    device = leaves[0].device
    go = (torch.rand(out_shape, generator=gen, dtype=F64) + 0.5).to(device)
    vs = [torch.randn(t.shape, generator=gen, dtype=F64).to(device) for t in leaves]

    def run(fn, dtype):
        args = [t.to(dtype).requires_grad_() for t in leaves]
        return _hvp(fn, args, go.to(dtype).requires_grad_(), [v.to(dtype) for v in vs])

    ours = run(ours_fn, F64)
    ref = run(torch_fn, F64)
    fp32 = run(lambda *a: torch_fn(*a, dtype=torch.float32), torch.float32)
    scale = input_magnitude(*leaves, *constants)
    terms = sum(t.numel() for t in leaves)  # the product with v sums this many terms
    for name, a, r, b in list(zip(_names(inputs), ours, ref, fp32))[: None if upstream else -1]:
        assert_close(a, r, msg=name, input_scale=scale, torch_error=relative_error(b, r)[0], terms=terms)
    return ours


def _cast(t, dtype):
    return t.to(dtype) if isinstance(t, torch.Tensor) and t.is_floating_point() else t


# ---- class-index targets ------------------------------------------------------------------------
def _hard_target(shape, ignore_index):
    """Random classes, none equal to ignore_index but the second row's (where there are more than two)."""
    rows = () if len(shape) == 1 else (shape[0],) + tuple(shape[2:])
    num_classes = shape[0] if len(shape) == 1 else shape[1]
    y = torch.randint(0, num_classes, rows)
    if ignore_index is None:
        return y
    y = y.masked_fill(y == ignore_index, (ignore_index + 1) % num_classes)
    if y.numel() > 2:
        y.view(-1)[1] = ignore_index
    return y


HARD_OPTIONS = {
    "plain": {},
    "weighted": {"weighted": True},
    "smoothing": {"label_smoothing": 0.2},
    "weighted_smoothing_ignored": {"weighted": True, "label_smoothing": 0.3, "ignore_index": -100},
    "ignore_index_in_range": {"ignore_index": 2},
}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("api", ["functional", "function_class"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("option", list(HARD_OPTIONS))
@pytest.mark.parametrize("shape", [(4, 6), (2, 5, 3), (6,)])
def test_hard_targets(shape, option, reduction, api, device):
    opts = HARD_OPTIONS[option]
    num_classes = shape[0] if len(shape) == 1 else shape[1]
    ignore_index = opts.get("ignore_index", -100)
    y = _hard_target(shape, opts.get("ignore_index")).to(device)
    w = (torch.rand(num_classes, dtype=F64) + 0.2).to(device) if opts.get("weighted") else None
    ls = opts.get("label_smoothing", 0.0)
    x = (torch.randn(shape, dtype=F64) * 2).to(device)

    def ours(x):
        if api == "functional":
            return fused_ce.cross_entropy(
                x, y, weight=w, ignore_index=ignore_index, reduction=reduction, label_smoothing=ls
            )
        return fused_ce.CrossEntropyFunction.apply(x, y, w, ignore_index, reduction, ls)

    def theirs(x, dtype=F64):
        return F.cross_entropy(
            x, y, weight=_cast(w, dtype), ignore_index=ignore_index, reduction=reduction, label_smoothing=ls
        )

    compare_double_backward(ours, theirs, (x,), (w,))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case,label_smoothing", [("all_ignored", 0.0), ("all_ignored", 0.2), ("zero_weight", 0.0)])
@pytest.mark.parametrize("shape", [(4, 6), (2, 6, 3)])
def test_hard_targets_mean_over_zero_weight(shape, case, label_smoothing, device):
    """A mean over a total weight of 0 is NaN: its gradient is 0 where every row is ignored, and NaN where
    the targets' classes weigh 0, as torch. Deliberate difference: with every row ignored the gradient
    is 0 whatever the upstream gradient, so its derivative w.r.t. the upstream gradient is 0; torch's is
    NaN (its formula divides by the total weight)."""
    x = (torch.randn(shape, dtype=F64) * 2).to(device)
    rows = (shape[0],) + shape[2:]
    w = torch.tensor([0.0, 1.0, 0.0, 2.0, 0.5, 0.7], dtype=F64, device=device)
    y = torch.full(rows, -100 if case == "all_ignored" else 2, device=device)
    kwargs = {"label_smoothing": label_smoothing}
    ours = compare_double_backward(
        lambda x: fused_ce.cross_entropy(x, y, weight=w, **kwargs),
        lambda x, dtype=F64: F.cross_entropy(x, y, weight=w.to(dtype), **kwargs),
        (x,),
        (w,),
        upstream=case != "all_ignored",
    )
    if case == "all_ignored":
        assert (ours[1] == 0).all() and ours[-1] == 0


# ---- class-probability targets, with the gradient w.r.t. the target ------------------------------
SOFT_OPTIONS = {
    "plain": {},
    "weighted": {"weighted": True},
    "smoothing": {"label_smoothing": 0.25},
    "weighted_smoothing": {"weighted": True, "label_smoothing": 0.4},
}


def _soft_case(shape, opts, device):
    class_dim = 0 if len(shape) == 1 else 1
    x = (torch.randn(shape, dtype=F64) * 2).to(device)
    t = torch.softmax(torch.randn(shape, dtype=F64), class_dim).to(device)
    w = (torch.rand(shape[class_dim], dtype=F64) + 0.2).to(device) if opts.get("weighted") else None
    return x, t, w, opts.get("label_smoothing", 0.0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("api", ["functional", "function_class"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("option", list(SOFT_OPTIONS))
@pytest.mark.parametrize("shape", [(3, 5), (2, 4, 3), (5,)])
def test_soft_targets(shape, option, reduction, api, device):
    x, t, w, ls = _soft_case(shape, SOFT_OPTIONS[option], device)

    def ours(x, t):
        if api == "functional":
            return fused_ce.cross_entropy(x, t, weight=w, reduction=reduction, label_smoothing=ls)
        return fused_ce.CrossEntropyFunction.apply(x, t, w, -100, reduction, ls)

    def theirs(x, t, dtype=F64):
        return F.cross_entropy(x, t, weight=_cast(w, dtype), reduction=reduction, label_smoothing=ls)

    compare_double_backward(ours, theirs, (x, t), (w,))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("wrt", ["logits", "target"])
def test_soft_targets_one_side(wrt, reduction, device):
    """Only the logits, or only the target, require grad: the other side is a constant."""
    x, t, w, ls = _soft_case((2, 4, 3), SOFT_OPTIONS["weighted_smoothing"], device)
    kwargs = {"reduction": reduction, "label_smoothing": ls}
    if wrt == "logits":
        ours = lambda x: fused_ce.cross_entropy(x, t, weight=w, **kwargs)  # noqa: E731
        theirs = lambda x, dtype=F64: F.cross_entropy(x, t.to(dtype), weight=w.to(dtype), **kwargs)  # noqa: E731
        compare_double_backward(ours, theirs, (x,), (t, w))
    else:
        ours = lambda t: fused_ce.cross_entropy(x, t, weight=w, **kwargs)  # noqa: E731
        theirs = lambda t, dtype=F64: F.cross_entropy(x.to(dtype), t, weight=w.to(dtype), **kwargs)  # noqa: E731
        compare_double_backward(ours, theirs, (t,), (x, w))


# ---- BCE with logits -----------------------------------------------------------------------------
def _operand(kind, shape):
    """An operand shape that broadcasts to `shape`: the last dim, one per row, a scalar or the full shape."""
    if kind == "last":
        return shape[-1:]
    if kind == "rows":
        return shape[:-1] + (1,) if shape else ()
    return () if kind == "scalar" else shape


BCE_OPTIONS = {
    "plain": (None, None),
    "weight": ("last", None),
    "pos_weight": (None, "last"),
    "weight_rows_pos_weight": ("rows", "last"),
    "scalar_weight_full_pos_weight": ("scalar", "full"),
}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("api", ["functional", "function_class"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("option", list(BCE_OPTIONS))
@pytest.mark.parametrize("shape", [(3, 4), (2, 3, 2), ()])
def test_bce(shape, option, reduction, api, device):
    w_kind, pw_kind = BCE_OPTIONS[option]
    x = (torch.randn(shape, dtype=F64) * 2).to(device)
    y = torch.rand(shape, dtype=F64).to(device)
    w = (torch.rand(_operand(w_kind, shape), dtype=F64) + 0.2).to(device) if w_kind else None
    pw = (torch.rand(_operand(pw_kind, shape), dtype=F64) * 3 + 0.2).to(device) if pw_kind else None

    def ours(x, y):
        if api == "functional":
            return fused_ce.binary_cross_entropy_with_logits(x, y, w, reduction=reduction, pos_weight=pw)
        return fused_ce.BCEWithLogitsFunction.apply(x, y, w, reduction, pw)

    def theirs(x, y, dtype=F64):
        return F.binary_cross_entropy_with_logits(
            x, y, _cast(w, dtype), reduction=reduction, pos_weight=_cast(pw, dtype)
        )

    compare_double_backward(ours, theirs, (x, y), (w, pw))


# ---- language-model options --------------------------------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("scale,cap,zscale", [(1.3, 2.5, 0.1), (0.7, 0.0, 0.0)], ids=str)
def test_lm_options(scale, cap, zscale, reduction, device):
    # The differentiable gradient of the options (create_graph) against torch ops on the transformed logits:
    # each option's factor in dz/dx (logit_scale also under a cap) shows in the gradient and the Hessian.
    x = (torch.randn(4, 6, dtype=F64) * 2).to(device)
    y = torch.tensor([1, -100, 5, 0], device=device)
    w = (torch.rand(6, dtype=F64) + 0.2).to(device)

    def ours(x):
        return fused_ce.cross_entropy(
            x,
            y,
            weight=w,
            reduction=reduction,
            label_smoothing=0.1,
            logit_scale=scale,
            softcap=cap,
            lse_square_scale=zscale,
        )

    def theirs(x, dtype=F64):
        z = x * scale
        z = cap * torch.tanh(z / cap) if cap else z
        loss = F.cross_entropy(z, y, weight=_cast(w, dtype), reduction=reduction, label_smoothing=0.1)
        counted = (y != -100).to(dtype)
        per_row = zscale * torch.logsumexp(z, 1) ** 2 * counted
        return loss + {"none": per_row, "sum": per_row.sum(), "mean": per_row.sum() / counted.sum()}[reduction]

    compare_double_backward(ours, theirs, (x,), (w,))

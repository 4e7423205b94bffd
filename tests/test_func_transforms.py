"""torch.func transforms over fused_ce (issue 9, item 6): grad, vmap(grad) per-sample gradients, jacrev,
jacfwd, hessian and vmap of the forward, for the functional API and the Function classes, compared with
the same transforms over torch.nn.functional's losses in float64 on every device of DEVICES; and the
vmap rules' promise: one kernel call per op, not one per sample."""

import pytest
import torch
import torch.nn.functional as F
import torch_compat
from helpers import DEVICES, assert_close, input_magnitude
from torch.func import grad, hessian, jacfwd, jacrev, jvp, vmap
from torch.utils._python_dispatch import TorchDispatchMode

import fused_ce
import fused_ce.testing

DT = torch.float64
REDUCTIONS = ["none", "mean", "sum"]


def close(actual, expected):
    torch.testing.assert_close(actual, expected, rtol=1e-9, atol=1e-11, equal_nan=True)


def loop(fn, in_dims=0):
    """What vmap(fn, in_dims) must give, computed sample by sample (torch's own losses do not vmap in
    every case: with ignore_index and label smoothing F.cross_entropy masks rows, which vmap refuses)."""

    def run(*args):
        dims = in_dims if isinstance(in_dims, tuple) else (in_dims,) * len(args)
        size = next(a.shape[d] for a, d in zip(args, dims) if d is not None)
        outs = [fn(*[a if d is None else a.select(d, i) for a, d in zip(args, dims)]) for i in range(size)]
        if isinstance(outs[0], tuple):
            return tuple(torch.stack(o) for o in zip(*outs))
        return torch.stack(outs)

    return run


def scalar(fn, reduction):
    """fn's loss as a scalar (torch.func.grad and hessian need one): summed for reduction='none'."""
    return (lambda *a: fn(*a).sum()) if reduction == "none" else fn


# ---- the functions compared -----------------------------------------------------------------------
def ce_apis(kwargs):
    """(fused functional, fused Function class, torch) cross-entropy of (input, target) with kwargs."""
    w, ii, red, ls = (
        kwargs.get("weight"),
        kwargs.get("ignore_index", -100),
        kwargs["reduction"],
        kwargs.get("label_smoothing", 0.0),
    )
    return {
        "functional": lambda x, y: fused_ce.cross_entropy(x, y, **kwargs),
        "function": lambda x, y: fused_ce.CrossEntropyFunction.apply(x, y, w, ii, red, ls),
    }, lambda x, y: F.cross_entropy(x, y, **kwargs)


def bce_apis(kwargs):
    w, red, pw = kwargs.get("weight"), kwargs["reduction"], kwargs.get("pos_weight")
    return {
        "functional": lambda x, y: fused_ce.binary_cross_entropy_with_logits(x, y, **kwargs),
        "function": lambda x, y: fused_ce.BCEWithLogitsFunction.apply(x, y, w, red, pw),
    }, lambda x, y: F.binary_cross_entropy_with_logits(x, y, **kwargs)


def ce_case(name, batch=None):
    """(input, target, kwargs builder, whether the target is differentiable) of a named case; with
    `batch`, B samples of it stacked in front."""
    lead = () if batch is None else (batch,)
    g = torch.Generator().manual_seed(7)
    C = 5
    x_shape, y_shape, soft = {
        "hard2d": ((4, C), (4,), False),
        "nd": ((3, C, 2, 2), (3, 2, 2), False),
        "unbatched": ((C,), (), False),
        "soft": ((4, C), (4, C), True),
        "soft_nd": ((3, C, 2), (3, C, 2), True),
    }[name]
    x = torch.randn(lead + x_shape, generator=g, dtype=DT) * 2
    if soft:
        y = torch.softmax(
            torch.randn(lead + y_shape, generator=g, dtype=DT), dim=len(lead) + (1 if len(x_shape) > 1 else 0)
        )
    else:
        y = torch.randint(0, C, lead + y_shape, generator=g)
        if y.dim() > 0:
            y.view(-1)[::3] = 1  # class 1 is ignored in the ignore_index variants: a third of the rows
    return x, y, soft


VARIANTS = {
    "plain": {},
    "weight": {"weight": torch.tensor([0.5, 2.0, 1.0, 3.0, 0.25], dtype=DT)},
    "ignore": {"ignore_index": 1},
    "smooth": {"label_smoothing": 0.2},
    "all": {"weight": torch.tensor([0.5, 2.0, 1.0, 3.0, 0.25], dtype=DT), "ignore_index": 1, "label_smoothing": 0.1},
}


def ce_params():
    for case in ["hard2d", "nd", "unbatched", "soft", "soft_nd"]:
        for variant, kw in VARIANTS.items():
            if case.startswith("soft") and "ignore_index" in kw:
                continue
            for red in REDUCTIONS:
                yield pytest.param(case, variant, red, id=f"{case}-{variant}-{red}")


def ce_kwargs(variant, reduction):
    return dict(VARIANTS[variant], reduction=reduction)


API = pytest.mark.parametrize("api", ["functional", "function"])


@pytest.mark.parametrize("device", DEVICES)
@API
@pytest.mark.parametrize("case,variant,reduction", list(ce_params()))
def test_cross_entropy_grad_jacobians_hessian(device, api, case, variant, reduction):
    x, y, soft = ce_case(case)
    apis, ref = ce_apis(ce_kwargs(variant, reduction))
    ours = apis[api]
    argnums = (0, 1) if soft else 0
    close(grad(scalar(ours, reduction), argnums=argnums)(x, y), grad(scalar(ref, reduction), argnums=argnums)(x, y))
    close(jacrev(ours, argnums=argnums)(x, y), jacrev(ref, argnums=argnums)(x, y))
    close(jacfwd(ours, argnums=argnums)(x, y), jacfwd(ref, argnums=argnums)(x, y))
    close(hessian(scalar(ours, reduction))(x, y), hessian(scalar(ref, reduction))(x, y))


@pytest.mark.parametrize("device", DEVICES)
@API
@pytest.mark.parametrize("case,variant,reduction", list(ce_params()))
def test_cross_entropy_per_sample_grads(device, api, case, variant, reduction):
    xb, yb, soft = ce_case(case, batch=3)
    apis, ref = ce_apis(ce_kwargs(variant, reduction))
    argnums = (0, 1) if soft else 0
    per_sample = vmap(grad(scalar(apis[api], reduction), argnums=argnums))(xb, yb)
    close(per_sample, loop(grad(scalar(ref, reduction), argnums=argnums))(xb, yb))
    close(vmap(apis[api])(xb, yb), loop(ref)(xb, yb))


def _with_weight(fn_of_kwargs, variant, reduction):
    """fn(x, y, w): the loss with the class weight as an argument, so that vmap can batch it."""

    def fn(x, y, w):
        return fn_of_kwargs(dict(ce_kwargs(variant, reduction), weight=w))(x, y)

    return fn


@pytest.mark.parametrize("device", DEVICES)
@API
@pytest.mark.parametrize("case", ["hard2d", "nd", "soft"])
@pytest.mark.parametrize("variant", ["weight", "all"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_cross_entropy_vmap_in_dims(device, api, case, variant, reduction):
    """Batched target only, batched weight only, everything batched, and grads under those."""
    if case == "soft" and variant == "all":
        variant = "weight"
    x, y, soft = ce_case(case)
    xb, yb, _ = ce_case(case, batch=4)
    w = VARIANTS[variant]["weight"]
    wb = torch.rand(4, w.shape[0], dtype=DT, generator=torch.Generator().manual_seed(3)) + 0.1
    ours = _with_weight(lambda kw: ce_apis(kw)[0][api], variant, reduction)
    ref = _with_weight(lambda kw: ce_apis(kw)[1], variant, reduction)
    for args, in_dims in [
        ((x, yb, w), (None, 0, None)),
        ((x, y, wb), (None, None, 0)),
        ((xb, y, wb), (0, None, 0)),
        ((xb, yb, wb), (0, 0, 0)),
        ((xb.movedim(0, -1), yb, wb.t()), (-1, 0, 1)),
    ]:
        close(vmap(ours, in_dims=in_dims)(*args), loop(ref, in_dims=in_dims)(*args))
        argnums = (0, 1) if soft else 0
        close(
            vmap(grad(scalar(ours, reduction), argnums=argnums), in_dims=in_dims)(*args),
            loop(grad(scalar(ref, reduction), argnums=argnums), in_dims=in_dims)(*args),
        )


def test_cross_entropy_vmap_all_ignored_sample():
    """'mean' divides per sample: a sample whose rows are all ignored is NaN with gradient 0, while its
    neighbours are finite (as a loop over torch's loss)."""
    xb, yb, _ = ce_case("hard2d", batch=3)
    yb[1] = -100
    out = vmap(fused_ce.cross_entropy)(xb, yb)
    assert out[1].isnan() and out[[0, 2]].isfinite().all()
    close(out, loop(F.cross_entropy)(xb, yb))
    close(vmap(grad(fused_ce.cross_entropy))(xb, yb), loop(grad(F.cross_entropy))(xb, yb))


# ---- BCE --------------------------------------------------------------------------------------------
BCE_VARIANTS = {
    "plain": lambda: {},
    "weight_row": lambda: {"weight": torch.tensor([0.5, 2.0, 1.5], dtype=DT)},
    "weight_full": lambda: {"weight": torch.rand(4, 3, dtype=DT, generator=torch.Generator().manual_seed(2))},
    "pos_weight": lambda: {"pos_weight": torch.tensor([3.0, 0.5, 1.0], dtype=DT)},
    "both": lambda: {
        "weight": torch.tensor([[0.5], [2.0], [1.0], [0.1]], dtype=DT),
        "pos_weight": torch.tensor([3.0, 0.5, 1.0], dtype=DT),
    },
}


def bce_case(batch=None):
    lead = () if batch is None else (batch,)
    g = torch.Generator().manual_seed(5)
    return torch.randn(lead + (4, 3), generator=g, dtype=DT) * 3, torch.rand(lead + (4, 3), generator=g, dtype=DT)


@pytest.mark.parametrize("device", DEVICES)
@API
@pytest.mark.parametrize("variant", list(BCE_VARIANTS))
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_bce_transforms(device, api, variant, reduction):
    kwargs = dict(BCE_VARIANTS[variant](), reduction=reduction)
    apis, ref = bce_apis(kwargs)
    ours = apis[api]
    x, y = bce_case()
    xb, yb = bce_case(batch=3)
    both = (0, 1)
    close(grad(scalar(ours, reduction), argnums=both)(x, y), grad(scalar(ref, reduction), argnums=both)(x, y))
    close(jacrev(ours, argnums=both)(x, y), jacrev(ref, argnums=both)(x, y))
    close(jacfwd(ours, argnums=both)(x, y), jacfwd(ref, argnums=both)(x, y))
    close(hessian(scalar(ours, reduction), argnums=both)(x, y), hessian(scalar(ref, reduction), argnums=both)(x, y))
    close(
        vmap(grad(scalar(ours, reduction), argnums=both))(xb, yb),
        loop(grad(scalar(ref, reduction), argnums=both))(xb, yb),
    )
    close(vmap(ours)(xb, yb), loop(ref)(xb, yb))
    close(vmap(ours, in_dims=(None, 0))(x, yb), loop(ref, in_dims=(None, 0))(x, yb))


@pytest.mark.parametrize("device", DEVICES)
@API
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_bce_vmap_batched_weights(device, api, reduction):
    xb, yb = bce_case(batch=3)
    g = torch.Generator().manual_seed(9)
    wb, pwb = torch.rand(3, 3, dtype=DT, generator=g), torch.rand(3, 3, dtype=DT, generator=g) * 3
    wfull = torch.rand(3, 4, 3, dtype=DT, generator=g)

    def make(fn_of_kwargs):
        return lambda x, y, w, pw: fn_of_kwargs({"weight": w, "pos_weight": pw, "reduction": reduction})(x, y)

    ours = make(lambda kw: bce_apis(kw)[0][api])
    ref = make(lambda kw: bce_apis(kw)[1])
    for args, in_dims in [
        ((xb, yb, wb, pwb), (0, 0, 0, 0)),
        ((xb[0], yb[0], wfull, pwb[0]), (None, None, 0, None)),
        ((xb, yb[0], wb[0], pwb.t()), (0, None, None, 1)),
    ]:
        close(vmap(ours, in_dims=in_dims)(*args), loop(ref, in_dims=in_dims)(*args))
        close(
            vmap(grad(scalar(ours, reduction), argnums=(0, 1)), in_dims=in_dims)(*args),
            loop(grad(scalar(ref, reduction), argnums=(0, 1)), in_dims=in_dims)(*args),
        )


# ---- one kernel call per op under vmap -------------------------------------------------------------
class CountOps(TorchDispatchMode):
    """Counts the fused_ce op calls that reach the kernels (below functorch's batching)."""

    def __init__(self):
        super().__init__()
        self.calls, self.namespaces = [], []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.namespace in ("fused_ce", "fused_ce_emulated_cuda"):
            self.calls.append(func._opname)
            self.namespaces.append(func.namespace)
        return func(*args, **(kwargs or {}))


@torch_compat.needs_register_vmap
@pytest.mark.parametrize("device", DEVICES)
@API
@pytest.mark.parametrize("case", ["hard2d", "soft", "bce"])
@pytest.mark.parametrize("batched_weight", [False, True], ids=["weight", "batched_weight"])
def test_vmap_makes_one_kernel_call(device, api, case, batched_weight):
    batch = 6
    if case == "bce":
        xb, yb = bce_case(batch=batch)
        w = torch.rand(batch, 3, dtype=DT) if batched_weight else torch.rand(3, dtype=DT)
        fn = bce_apis({"reduction": "mean"})[0][api]
        fn_w = (
            (lambda x, y, w: fused_ce.binary_cross_entropy_with_logits(x, y, w))
            if api == "functional"
            else (lambda x, y, w: fused_ce.BCEWithLogitsFunction.apply(x, y, w))
        )
        fwd, bwd = ["bce_with_logits_fwd"], ["bce_with_logits_bwd", "bce_with_logits_target_bwd"]
    else:
        xb, yb, _ = ce_case(case, batch=batch)
        w = torch.rand(batch, 5, dtype=DT) if batched_weight else torch.rand(5, dtype=DT)
        fn_w = (
            (lambda x, y, w: fused_ce.cross_entropy(x, y, w, ignore_index=-1))
            if api == "functional"
            else (lambda x, y, w: fused_ce.CrossEntropyFunction.apply(x, y, w, -1))
        )
        soft = case == "soft"
        fwd = ["cross_entropy_soft_fwd" if soft or batched_weight else "cross_entropy_fwd"]
        bwd = (
            ["cross_entropy_soft_bwd", "cross_entropy_soft_target_bwd"]
            if soft
            else ["cross_entropy_soft_bwd" if batched_weight else "cross_entropy_bwd"]
        )
    in_dims = (0, 0, 0 if batched_weight else None)
    with CountOps() as count:
        vmap(fn_w, in_dims=in_dims)(xb, yb, w)
    assert count.calls == fwd
    with CountOps() as count:
        vmap(grad(fn_w, argnums=(0, 1) if case != "hard2d" else 0), in_dims=in_dims)(xb, yb, w)
    assert sorted(count.calls) == sorted(fwd + bwd)


# ---- higher orders ----------------------------------------------------------------------------------
def _losses(api):
    """(ours, torch's) CE with smoothing and BCE, as functions of (input, target)."""
    ce_kw = {"label_smoothing": 0.1, "weight": VARIANTS["weight"]["weight"], "reduction": "mean"}
    bce_kw = dict(BCE_VARIANTS["both"](), reduction="sum")
    (ce_ours, ce_ref), (bce_ours, bce_ref) = ce_apis(ce_kw), bce_apis(bce_kw)
    return [
        (ce_ours[api], ce_ref, ce_case("hard2d")[:2], ce_case("hard2d", batch=3)[:2]),
        (bce_ours[api], bce_ref, bce_case(), bce_case(batch=3)),
    ]


@pytest.mark.parametrize("device", DEVICES)
@API
def test_second_orders_and_per_sample_hessians(device, api):
    """Every composition with reverse mode on one side: the backward runs as differentiable torch ops
    exactly where an outer transform differentiates it (fused_ce._core.transform_levels)."""
    second = {
        "jacrev(jacrev)": lambda f: jacrev(jacrev(f)),
        "jacrev(jacfwd)": lambda f: jacrev(jacfwd(f)),
        "grad(grad)": lambda f: grad(lambda x, y: grad(f)(x, y).sum()),
    }
    for ours, ref, (x, y), (xb, yb) in _losses(api):
        for name, transform in second.items():
            close(transform(ours)(x, y), transform(ref)(x, y))
        close(vmap(hessian(ours))(xb, yb), loop(hessian(ref))(xb, yb))


@pytest.mark.parametrize("device", DEVICES)
@API
def test_forward_over_forward_raises(device, api):
    """torch.func runs an autograd.Function's jvp rule with forward AD off, so jacfwd(jacfwd(f)) would be
    silently wrong: it raises instead, saying what to use."""
    for ours, _, (x, y), _ in _losses(api):
        with pytest.raises(NotImplementedError, match=r"jacfwd\(jacfwd\(f\)\).*Use reverse mode.*hessian"):
            jacfwd(jacfwd(ours))(x, y)
        with pytest.raises(NotImplementedError, match="forward-mode AD of forward-mode AD"):
            jvp(lambda u: jvp(lambda v: ours(v, y), (u,), (torch.ones_like(u),))[1], (x,), (torch.ones_like(x),))


@pytest.mark.parametrize("device", DEVICES)
def test_modules_under_transforms(device):
    """The modules call the functional API, so they take the same path (vmap(grad) and hessian shown)."""
    w = VARIANTS["weight"]["weight"]
    pairs = [
        (
            fused_ce.CrossEntropyLoss(weight=w, label_smoothing=0.1),
            torch.nn.CrossEntropyLoss(weight=w, label_smoothing=0.1),
            ce_case("nd"),
            ce_case("nd", batch=3),
        ),
        (
            fused_ce.BCEWithLogitsLoss(pos_weight=torch.tensor([2.0, 1.0, 0.5], dtype=DT)),
            torch.nn.BCEWithLogitsLoss(pos_weight=torch.tensor([2.0, 1.0, 0.5], dtype=DT)),
            bce_case(),
            bce_case(batch=3),
        ),
    ]
    for ours, ref, (x, y, *_), (xb, yb, *_) in pairs:
        close(vmap(grad(ours))(xb, yb), loop(grad(ref))(xb, yb))
        close(hessian(ours)(x, y), hessian(ref)(x, y))


@torch_compat.needs_register_vmap
@pytest.mark.parametrize("device", DEVICES)
@API
def test_vmap_batched_weight_out_of_range_target(device, api):
    """With a vmapped class weight the rule runs the probability-target kernel, which cannot see a class
    index: the rule itself raises torch's IndexError (CPU; CUDA with FUSED_CE_CUDA_CHECK_TARGETS=1, which
    the emulated_cuda cases set), rather than clamping the index into a wrong loss."""
    xb, yb, _ = ce_case("hard2d", batch=3)
    yb[1, 2] = 7
    wb = torch.rand(3, 5, dtype=DT) + 0.1
    fn = (
        (lambda x, y, w: fused_ce.cross_entropy(x, y, w))
        if api == "functional"
        else (lambda x, y, w: fused_ce.CrossEntropyFunction.apply(x, y, w))
    )
    with pytest.raises(IndexError) as expected:
        F.cross_entropy(xb[1], yb[1], wb[1])
    with pytest.raises(IndexError, match=f"^{expected.value}$"):
        vmap(fn)(xb, yb, wb)
    with pytest.raises(IndexError, match=f"^{expected.value}$"):
        vmap(grad(fn))(xb, yb, wb)


@pytest.mark.skipif(not fused_ce.testing.emulated_cuda_available(), reason="emulated CUDA extension not built")
def test_vmap_batched_weight_out_of_range_target_cuda_semantics(monkeypatch):
    """CUDA semantics (emulated), FUSED_CE_CUDA_CHECK_TARGETS unset: the bad row's loss is NaN, as the
    class-index kernels make it, and the other samples are unaffected."""
    monkeypatch.delenv("FUSED_CE_CUDA_CHECK_TARGETS", raising=False)
    xb, yb, _ = ce_case("hard2d", batch=3)
    yb[1, 2] = 7
    wb = torch.rand(3, 5, dtype=DT) + 0.1
    with fused_ce.testing.emulated_cuda():
        out = vmap(lambda x, y, w: fused_ce.cross_entropy(x, y, w, reduction="none"))(xb, yb, wb)
        plain = fused_ce.cross_entropy(xb[1], yb[1], wb[1], reduction="none")
    assert plain[2].isnan() and out[1, 2].isnan()
    keep = torch.ones_like(out, dtype=torch.bool)
    keep[1, 2] = False
    close(out[keep], loop(lambda x, y, w: F.cross_entropy(x, y.clamp(max=4), w, reduction="none"))(xb, yb, wb)[keep])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_vmap_low_precision_within_the_error_bound(device, dtype, reduction):
    """The rule's per-sample reductions (fp64 sums of per-row values of the input's dtype) and its
    per-row upstream gradients keep vmapped results within the suite's error bound against fp64."""
    g = torch.Generator().manual_seed(11)
    xb = (torch.randn(4, 64, 100, generator=g) * 3).to(dtype)
    yb = torch.randint(0, 100, (4, 64), generator=g)
    yb[:, ::5] = -100
    w = (torch.rand(100, generator=g) + 0.5).to(dtype)
    kw = {"reduction": reduction, "label_smoothing": 0.1}

    def ours(x, y):
        return fused_ce.cross_entropy(x, y, w, **kw)

    def ref(x, y):
        return F.cross_entropy(x.double(), y, w.double(), **kw)

    scale = input_magnitude(xb)
    assert_close(vmap(ours)(xb, yb), loop(ref)(xb, yb), input_scale=scale, terms=64, msg="loss")
    # the reference's gradient of fp64 logits: of the rounded ones it would be rounded to their dtype too
    assert_close(
        vmap(grad(lambda x, y: ours(x, y).sum()))(xb, yb),
        loop(grad(lambda x, y: ref(x, y).sum()))(xb.double(), yb),
        dtype=dtype,
        input_scale=scale,
        terms=64,
        msg="gradient",
    )


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_vmap_low_precision_bce_within_the_error_bound(device, dtype, reduction):
    g = torch.Generator().manual_seed(12)
    xb = (torch.randn(4, 64, 37, generator=g) * 3).to(dtype)
    yb = torch.rand(4, 64, 37, generator=g).to(dtype)
    pw = (torch.rand(37, generator=g) * 3).to(dtype)

    def ours(x, y):
        return fused_ce.binary_cross_entropy_with_logits(x, y, pos_weight=pw, reduction=reduction)

    def ref(x, y):
        return F.binary_cross_entropy_with_logits(x.double(), y.double(), pos_weight=pw.double(), reduction=reduction)

    scale = input_magnitude(xb, pw)
    both = (0, 1)
    assert_close(vmap(ours)(xb, yb), loop(ref)(xb, yb), input_scale=scale, terms=xb[0].numel(), msg="loss")
    for ours_g, ref_g, name in zip(
        vmap(grad(lambda x, y: ours(x, y).sum(), argnums=both))(xb, yb),
        loop(grad(lambda x, y: ref(x, y).sum(), argnums=both))(xb.double(), yb.double()),
        ["input", "target"],
    ):
        assert_close(ours_g, ref_g, dtype=dtype, input_scale=scale, terms=xb[0].numel(), msg=f"gradient {name}")


# ---- issue 27: probability targets with a per-sample class weight and label smoothing under vmap -----
@pytest.mark.parametrize("device", DEVICES)
@API
@pytest.mark.parametrize("case", ["soft", "soft_nd", "nd"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_vmap_per_sample_weight_and_smoothing_within_the_error_bound(device, api, case, dtype, reduction):
    """vmap over the batch with the class weight batched per sample (B, C) folds the weight and the smoothing
    into a probability target (fused_ce._core.vmap): for probability targets ('soft', 'soft_nd') and class indices
    with ignored rows ('nd'), the values, and torch.func.grad's gradients inside vmap (w.r.t. the logits, and
    the target where it has one), against a per-sample loop of torch's fp64 loss on the same rounded inputs,
    judged by the suite's bound for the dtype. (In fp16/bf16 a fold in the low precision rounds the target
    once more than the unbatched call: 1.08 times the bound for fp16 'none'.)"""
    xb, tb, soft = ce_case(case, batch=4)
    xb, tb = xb.to(dtype), tb.to(dtype) if soft else tb
    wb = (torch.rand(4, 5, dtype=DT, generator=torch.Generator().manual_seed(3)) * 2 + 0.1).to(dtype)
    eps = 0.2
    ignore_index = -100 if soft else 1  # class 1: a third of the class-index rows (ce_case)

    def ours(x, t, w):
        return {
            "functional": lambda: fused_ce.cross_entropy(
                x, t, w, ignore_index=ignore_index, reduction=reduction, label_smoothing=eps
            ),
            "function": lambda: fused_ce.CrossEntropyFunction.apply(x, t, w, ignore_index, reduction, eps),
        }[api]()

    def ref(x, t, w):
        return F.cross_entropy(x, t, w, ignore_index=ignore_index, reduction=reduction, label_smoothing=eps)

    exact = (xb.double(), tb.double() if soft else tb, wb.double())  # the same values: the reference is fp64
    judge = {"dtype": dtype, "input_scale": input_magnitude(xb, wb), "terms": xb[0].numel()}
    assert_close(vmap(ours)(xb, tb, wb), loop(ref)(*exact), msg="loss", **judge)
    argnums = (0, 1) if soft else (0,)
    for g, r, name in zip(
        vmap(grad(scalar(ours, reduction), argnums=argnums))(xb, tb, wb),
        loop(grad(scalar(ref, reduction), argnums=argnums))(*exact),
        ["logits", "target"],
    ):
        assert g.dtype == dtype
        assert_close(g, r, msg=f"gradient w.r.t. the {name}", **judge)

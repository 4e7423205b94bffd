"""Every pair of axis values of each public entry point, crossed at least once (docs/test_coverage.md): an all-pairs
covering array (tests/pairwise.py) over the axes of cross_entropy, binary_cross_entropy_with_logits,
linear_cross_entropy (their modules and Function classes too), fused_ce.parallel's two losses (on a one-rank gloo
group) and the transformers integration's losses, each row judged against torch in float64 by fused_ce.testing.parity's
rule (value and gradients, or the transform's result). The axes: API (functional,
module, Function class), dtype, the kernels' path (each CPU instruction set this CPU runs, the CUDA kernels under
emulation), target kind, class weight, label smoothing, reduction, ignored rows, the language-model options, shape
rank, and what is done with the loss (autograd, double backward, vmap, torch.func.grad, torch.compile, CPU autocast).
The product of these axes is 10^5 calls per entry point; the rows are a few dozen.

Left out here, because other tests own them: soft caps 30 and above, the composite language-model path (probability
targets, or torch.func transforms, with the options) on N-D inputs, vmap of probability targets with both a weight
and smoothing, fp16/bf16 in fused_ce.parallel.
"""

import contextlib

import pytest
import torch
import torch.nn.functional as F
import torch_compat
from cpu_isas import SUPPORTED_ISAS
from helpers import assert_close, compare_with_torch, input_magnitude, relative_error
from pairwise import covering_rows, pairs_of, required_pairs

import fused_ce
import fused_ce.linear
import fused_ce.parallel
import fused_ce.testing
from fused_ce.testing._parity_cases import make_hard_target, make_logits, make_soft_target, make_weight

F64 = torch.float64
LOW = (torch.bfloat16, torch.float16)
PATHS = [f"cpu-{isa}" for isa in SUPPORTED_ISAS] + (
    ["emulated_cuda"] if fused_ce.testing.emulated_cuda_available() else []
)
# (logit_scale, softcap, lse_square_scale) of each value of the language-model axis
LM = {
    "off": (1.0, 0.0, 0.0),
    "scale": (0.8, 0.0, 0.0),
    "softcap": (1.0, 3.0, 0.0),
    "z_loss": (1.0, 0.0, 1e-2),
    "all": (1.3, 4.0, 1e-2),
    "softcap_z": (1.0, 3.0, 1e-2),
}
SHAPES = {"1d": (7,), "2d": (6, 7), "nd": (3, 7, 2)}
SMOOTHING = {"off": 0.0, "on": 0.2}
TRANSFORMS = ["autograd", "double_backward", "vmap", "grad", "compile", "autocast"]
BATCH = 2  # samples under vmap


@contextlib.contextmanager
def kernel_path(path, monkeypatch):
    """Runs the block on one kernel path: a CPU instruction set (FUSED_CE_CPU_CAPABILITY, read at every call), or the
    CUDA kernels under the emulator, with out-of-range targets raising as on the CPU (conftest.py's setting)."""
    if path == "emulated_cuda":
        monkeypatch.setenv("FUSED_CE_CUDA_CHECK_TARGETS", "1")
        with fused_ce.testing.emulated_cuda():
            yield
    else:
        monkeypatch.setenv("FUSED_CE_CPU_CAPABILITY", path.split("-", 1)[1])
        yield


def describe(row):
    return "-".join(str(v) for v in row.values())


def lm_reference(x, target, weight=None, *, reduction, smoothing, ignore_index, lm):
    """torch's cross-entropy of z = softcap * tanh(logit_scale * x / softcap) (or logit_scale * x) plus the z-loss
    lse_square_scale * logsumexp(z)**2 per counted row (every row for probability targets), reduced like the loss
    ('mean' over the counted rows): in x's dtype, so that the judge can evaluate it in fp64 and fp32."""
    scale, cap, zscale = LM[lm]
    z = x * scale
    if cap:
        z = cap * torch.tanh(z / cap)
    loss = F.cross_entropy(z, target, weight, ignore_index=ignore_index, reduction=reduction, label_smoothing=smoothing)
    if zscale:
        lse = torch.logsumexp(z, dim=0 if x.dim() == 1 else 1)
        counted = torch.ones_like(lse) if target.is_floating_point() else (target != ignore_index).to(lse.dtype)
        per_row = zscale * lse * lse * counted
        loss = loss + {"none": per_row, "sum": per_row.sum(), "mean": per_row.sum() / counted.sum()}[reduction]
    return loss


def lm_kwargs(lm):
    scale, cap, zscale = LM[lm]
    return {"logit_scale": scale, "softcap": cap, "lse_square_scale": zscale} if lm != "off" else {}


# ---- the judges of each transform ----------------------------------------------------------------------------
def _sum_if_rows(fn):
    """fn's loss as a scalar (torch.func.grad needs one)."""

    def scalar(*args, **kwargs):
        return fn(*args, **kwargs).sum()

    return scalar


def judge_double_backward(ours_fn, torch_fn, args, kwargs, wrt=0):
    """The gradient w.r.t. args[wrt] built with create_graph=True, and the Hessian-vector product (its derivative
    along a random v), against torch's in fp64 on the same rounded inputs, torch's fp32 result as the baseline."""
    x = args[wrt]
    gen = torch.Generator().manual_seed(7)
    v = torch.randn(x.shape, generator=gen, dtype=F64).to(x.dtype)
    loss = ours_fn(*args, **kwargs)
    # the upstream gradient rounded to the loss's dtype, as fused_ce sees it, for the references too
    go = (torch.rand(loss.shape, generator=gen, dtype=F64) + 0.5).to(loss.dtype)

    def run(fn, dtype):
        def cast(t):
            return t.to(dtype) if dtype is not None and isinstance(t, torch.Tensor) and t.is_floating_point() else t

        leaves = [cast(a) for a in args]
        leaves[wrt] = leaves[wrt].detach().requires_grad_()
        out = fn(*leaves, **{k: cast(t) for k, t in kwargs.items()})
        (g,) = torch.autograd.grad(out, leaves[wrt], go.to(out.dtype), create_graph=True)
        (h,) = torch.autograd.grad((g * v.to(g.dtype)).sum(), leaves[wrt])
        return g, h

    ours, exact, fp32 = run(ours_fn, None), run(torch_fn, F64), run(torch_fn, torch.float32)
    scale = input_magnitude(*args, *kwargs.values())
    for name, o, e, b in zip(["gradient (create_graph)", "Hessian-vector product"], ours, exact, fp32):
        assert o.dtype == x.dtype, f"{name}: {o.dtype} for {x.dtype} input"
        assert_close(o, e, msg=name, input_scale=scale, torch_error=relative_error(b, e)[0], terms=x.numel())


def judge(transform, ours_fn, torch_fn, args, grad_args, kwargs, in_dims=None):
    """ours_fn against torch_fn (same signature, any dtype) under `transform`. in_dims: vmap's, for batched args."""
    if transform == "double_backward":
        judge_double_backward(ours_fn, torch_fn, args, kwargs)
    elif transform == "vmap":
        compare_with_torch(
            torch.vmap(ours_fn, in_dims=in_dims),
            torch.vmap(torch_fn, in_dims=in_dims),
            args,
            grad_args=grad_args,
            kwargs=kwargs,
        )
    elif transform == "grad":
        compare_with_torch(
            torch.func.grad(_sum_if_rows(ours_fn)), torch.func.grad(_sum_if_rows(torch_fn)), args, kwargs=kwargs
        )
    elif transform == "compile":
        compiled = torch.compile(ours_fn, fullgraph=True, backend="aot_eager")
        compare_with_torch(compiled, torch_fn, args, grad_args=grad_args, kwargs=kwargs)
    elif transform == "autocast":
        low = args[0].dtype in LOW
        with torch.autocast("cpu", dtype=torch.bfloat16):
            compare_with_torch(
                ours_fn,
                torch_fn,
                args,
                grad_args=grad_args,
                kwargs=kwargs,
                expected_dtype=torch.float32 if low else None,
            )
    else:
        compare_with_torch(ours_fn, torch_fn, args, grad_args=grad_args, kwargs=kwargs)


def batched(make, transform):
    """make() once, or BATCH times stacked along a new first dim for vmap."""
    if transform != "vmap":
        return make()
    samples = [make() for _ in range(BATCH)]
    return tuple(torch.stack(parts) for parts in zip(*samples))


# ---- cross_entropy, CrossEntropyLoss, CrossEntropyFunction ---------------------------------------------------
CE_AXES = {
    "api": ["functional", "module", "function"],
    "dtype": [F64, torch.float32, torch.bfloat16, torch.float16],
    "path": PATHS,
    "target": ["index", "probs"],
    "weight": [False, True],
    "smoothing": list(SMOOTHING),
    "reduction": ["mean", "sum", "none"],
    "ignore": ["absent", "some"],
    "lm": ["off", "scale", "softcap", "z_loss", "all"],
    "rank": list(SHAPES),
    "transform": TRANSFORMS,
}


def ce_allowed(row):
    g = row.get
    return not (
        (g("ignore") == "some" and (g("target") == "probs" or g("rank") == "1d"))  # 1-D: its one row, all ignored
        or (g("transform") == "compile" and g("api") == "function")  # a graph break by design (README)
        # the composite language-model path on N-D inputs, and vmap of probabilities with weight and smoothing:
        # other tests' (the module docstring)
        or (
            g("lm") not in (None, "off")
            and g("rank") == "nd"
            and (g("target") == "probs" or g("transform") in ("vmap", "grad"))
        )
        or (g("transform") == "vmap" and g("target") == "probs" and g("weight") is True and g("smoothing") == "on")
    )


CE_ROWS = covering_rows(CE_AXES, ce_allowed)


def _ce_functions(row, weight):
    kwargs = {"reduction": row["reduction"], "label_smoothing": SMOOTHING[row["smoothing"]], "ignore_index": -100}
    options = lm_kwargs(row["lm"])

    def reference(x, t, weight=None):
        return lm_reference(
            x,
            t,
            weight,
            reduction=kwargs["reduction"],
            smoothing=kwargs["label_smoothing"],
            ignore_index=-100,
            lm=row["lm"],
        )

    if row["api"] == "module":
        module = fused_ce.CrossEntropyLoss(weight=weight, **kwargs, **options)
        return (lambda x, t, weight=None: module(x, t)), reference
    if row["api"] == "function":
        return (
            lambda x, t, weight=None: fused_ce.CrossEntropyFunction.apply(
                x, t, weight, -100, kwargs["reduction"], kwargs["label_smoothing"], **options
            )
        ), reference
    return (lambda x, t, weight=None: fused_ce.cross_entropy(x, t, weight, **kwargs, **options)), reference


@pytest.mark.parametrize("row", CE_ROWS, ids=describe)
def test_cross_entropy_pairs(row, monkeypatch):
    dtype, shape, transform = row["dtype"], SHAPES[row["rank"]], row["transform"]
    probs = row["target"] == "probs"

    def make():
        x = make_logits(shape, dtype, "cpu")
        t = (
            make_soft_target(shape, dtype, "cpu")
            if probs
            else make_hard_target(shape, "cpu", -100 if row["ignore"] == "some" else None)
        )
        return x, t

    x, t = batched(make, transform)
    w = make_weight(shape[0 if len(shape) == 1 else 1], dtype, "cpu") if row["weight"] else None
    ours, reference = _ce_functions(row, w)
    with kernel_path(row["path"], monkeypatch):
        judge(transform, ours, reference, (x, t), (0, 1) if probs else (0,), {"weight": w}, in_dims=(0, 0))


# ---- binary_cross_entropy_with_logits, BCEWithLogitsLoss, BCEWithLogitsFunction -------------------------------
BCE_SHAPES = {"0d": (), "1d": (7,), "2d": (5, 7), "nd": (2, 3, 7)}
BCE_AXES = {
    "api": ["functional", "module", "function"],
    "dtype": [F64, torch.float32, torch.bfloat16, torch.float16],
    "path": PATHS,
    "target_dtype": ["same", "other"],
    "weight": ["none", "last_dim", "full"],
    "pos_weight": [False, True],
    "reduction": ["mean", "sum", "none"],
    "rank": list(BCE_SHAPES),
    "transform": TRANSFORMS,
}


def bce_allowed(row):
    return not (row.get("transform") == "compile" and row.get("api") == "function")


BCE_ROWS = covering_rows(BCE_AXES, bce_allowed)


@pytest.mark.parametrize("row", BCE_ROWS, ids=describe)
def test_bce_with_logits_pairs(row, monkeypatch):
    dtype, shape, transform = row["dtype"], BCE_SHAPES[row["rank"]], row["transform"]
    # "other": fp32 targets, or fp64 ones for fp32 inputs; torch returns the target's dtype
    target_dtype = dtype if row["target_dtype"] == "same" else (F64 if dtype == torch.float32 else torch.float32)

    def make():
        x = (torch.randn(shape, dtype=F64) * 4).to(dtype)
        return x, torch.rand(shape, dtype=F64).to(target_dtype)

    x, t = batched(make, transform)
    last = shape[-1:]
    positive = {"none": None, "last_dim": last, "full": shape}
    w = None if positive[row["weight"]] is None else (torch.rand(positive[row["weight"]], dtype=F64) + 0.1).to(dtype)
    pw = (torch.rand(last, dtype=F64) * 2 + 0.1).to(dtype) if row["pos_weight"] else None
    reduction = row["reduction"]
    if row["api"] == "module":
        module = fused_ce.BCEWithLogitsLoss(weight=w, pos_weight=pw, reduction=reduction)

        def ours(x, t, weight=None, pos_weight=None):
            return module(x, t)
    elif row["api"] == "function":

        def ours(x, t, weight=None, pos_weight=None):
            return fused_ce.BCEWithLogitsFunction.apply(x, t, weight, reduction, pos_weight)
    else:

        def ours(x, t, weight=None, pos_weight=None):
            return fused_ce.binary_cross_entropy_with_logits(x, t, weight, reduction=reduction, pos_weight=pos_weight)

    def reference(x, t, weight=None, pos_weight=None):
        return F.binary_cross_entropy_with_logits(x, t, weight, reduction=reduction, pos_weight=pos_weight)

    with kernel_path(row["path"], monkeypatch):
        judge(transform, ours, reference, (x, t), (0, 1), {"weight": w, "pos_weight": pw}, in_dims=(0, 0))


# ---- linear_cross_entropy, LinearCrossEntropyLoss -------------------------------------------------------------
LINEAR_N, LINEAR_H, LINEAR_V = 9, 6, 29
# A workspace too small for 32 (MIN_CHUNK_ROWS) whole rows: tiles of a few classes (_vocab/tiles.py).
TINY_WORKSPACE_MIB = 1000 / 2**20
LINEAR_AXES = {
    "api": ["functional", "module"],
    "dtype": [F64, torch.float32, torch.bfloat16, torch.float16],
    "path": PATHS,
    "bias": [False, True],
    "weight": [False, True],
    "smoothing": list(SMOOTHING),
    "reduction": ["mean", "sum", "none"],
    "ignore": ["absent", "some"],
    "lm": ["off", "softcap", "z_loss", "all"],
    "rank": ["1d", "2d"],
    "tiles": ["row_chunks", "vocab_tiles"],
    "transform": ["autograd", "grad", "compile", "autocast"],
}


def linear_allowed(row):
    return not (row.get("ignore") == "some" and row.get("rank") == "1d")


LINEAR_ROWS = covering_rows(LINEAR_AXES, linear_allowed)


def _linear_problem(row, gen):
    dtype = row["dtype"]
    rows = () if row["rank"] == "1d" else (LINEAR_N,)
    x = torch.randn(rows + (LINEAR_H,), generator=gen, dtype=F64).to(dtype)
    lw = (torch.randn(LINEAR_V, LINEAR_H, generator=gen, dtype=F64) * 0.7).to(dtype)
    b = torch.randn(LINEAR_V, generator=gen, dtype=F64).to(dtype) if row["bias"] else None
    t = torch.randint(0, LINEAR_V, rows, generator=gen)
    if row["ignore"] == "some":
        t[::3] = -100
    w = (torch.rand(LINEAR_V, generator=gen, dtype=F64) + 0.1).to(dtype) if row["weight"] else None
    return x, lw, b, t, w


def _judge_linear_low_precision(ours, reference, args, grad_args, kwargs, transform, tile_dtype):
    """bf16/fp16: the kernels read a logits tile that torch.mm rounded to tile_dtype, as torch's eager F.linear
    rounds its logits, and round its gradient to it in place before dX = dlogits W: results are judged with a
    baseline of the fp64 reference with the logits and their gradient rounded so (reference(..., tile_dtype)),
    the bound being at least torch_multiple times that baseline's error (tests/test_linear_cross_entropy.py holds
    the sharper rule: summed errors no larger than torch's eager ones)."""

    def results(fn, cast, *extra):
        leaves = [
            a.to(cast) if cast is not None and isinstance(a, torch.Tensor) and a.is_floating_point() else a
            for a in args
        ]
        leaves = [
            a.detach().requires_grad_(i in grad_args) if isinstance(a, torch.Tensor) else a
            for i, a in enumerate(leaves)
        ]
        kw = {k: v.to(cast) if cast is not None and isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
        if transform == "grad":
            return [torch.func.grad(_sum_if_rows(fn))(*leaves, *extra, **kw)]
        out = fn(*leaves, *extra, **kw)
        go = (torch.rand(out.shape, generator=torch.Generator().manual_seed(3), dtype=F64) + 0.5).to(out.dtype)
        return [out] + list(torch.autograd.grad(out, [leaves[i] for i in grad_args], go))

    context = torch.autocast("cpu", dtype=torch.bfloat16) if transform == "autocast" else contextlib.nullcontext()
    with context:
        if transform == "compile":
            ours = torch.compile(ours, fullgraph=True, backend="aot_eager")
        mine = results(ours, None)
        exact, rounded = results(reference, F64), results(reference, F64, tile_dtype)
    scale = input_magnitude(*args, *kwargs.values())
    for i, (o, e, b) in enumerate(zip(mine, exact, rounded)):
        assert_close(
            o, e, msg=f"result {i}", input_scale=scale, torch_error=relative_error(b, e)[0], terms=args[0].numel()
        )


def _linear_call(row, monkeypatch):
    """The row's problem, keyword arguments and options (vocabulary tiles by a tiny workspace, or row chunks that do
    not divide N), and its fp64 reference: reference(x, lw, b, t, tile_dtype=None, weight=None)."""
    x, lw, b, t, w = _linear_problem(row, torch.Generator().manual_seed(0))
    kwargs = dict(reduction=row["reduction"], label_smoothing=SMOOTHING[row["smoothing"]], **lm_kwargs(row["lm"]))
    options = None
    if row["tiles"] == "vocab_tiles":
        monkeypatch.setattr(fused_ce.linear, "workspace_mib", TINY_WORKSPACE_MIB)
    else:
        options = torch_compat.LinearCrossEntropyOptions(batch_chunk_size=4)

    def reference(x, lw, b, t, tile_dtype=None, weight=None):
        if tile_dtype is None:
            logits = F.linear(x, lw, b)
        else:  # the operands (cast by autocast), the tile and its gradient rounded as the kernels see them
            x, lw, b = (None if a is None else a.to(tile_dtype).to(F64) for a in (x, lw, b))
            logits = F.linear(x, lw, b).to(tile_dtype).to(F64)
        return lm_reference(
            logits,
            t,
            weight,
            reduction=row["reduction"],
            smoothing=kwargs["label_smoothing"],
            ignore_index=-100,
            lm=row["lm"],
        )

    return (x, lw, b, t, w), kwargs, options, reference


@pytest.mark.parametrize("row", LINEAR_ROWS, ids=describe)
def test_linear_cross_entropy_pairs(row, monkeypatch):
    (x, lw, b, t, w), kwargs, options, reference = _linear_call(row, monkeypatch)
    if row["api"] == "module":
        module = fused_ce.LinearCrossEntropyLoss(
            LINEAR_H, LINEAR_V, bias=row["bias"], weight=w, options=options, dtype=row["dtype"], **kwargs
        )

        def ours(x, lw, b, t, weight=None):
            params = {"linear.weight": lw, **({"linear.bias": b} if b is not None else {})}
            return torch.func.functional_call(module, params, (x, t))
    else:

        def ours(x, lw, b, t, weight=None):
            return fused_ce.linear_cross_entropy(x, lw, t, linear_bias=b, weight=weight, options=options, **kwargs)

    grad_args = (0, 1, 2) if b is not None else (0, 1)
    with kernel_path(row["path"], monkeypatch):
        if row["dtype"] in LOW:
            tile_dtype = torch.bfloat16 if row["transform"] == "autocast" else row["dtype"]
            _judge_linear_low_precision(
                ours, reference, (x, lw, b, t), grad_args, {"weight": w}, row["transform"], tile_dtype
            )
        else:
            judge(row["transform"], ours, reference, (x, lw, b, t), grad_args, {"weight": w})


# ---- fused_ce.parallel, on one rank --------------------------------------------------------------------------
PARALLEL_AXES = {
    "dtype": [F64, torch.float32],
    "path": PATHS,
    "weight": [False, True],
    "smoothing": list(SMOOTHING),
    "reduction": ["mean", "sum", "none"],
    "ignore": ["absent", "some"],
    "lm": ["off", "scale", "softcap", "z_loss", "all"],
    "rank": list(SHAPES),
}


def parallel_allowed(row):
    return not (row.get("ignore") == "some" and row.get("rank") == "1d")


PARALLEL_ROWS = covering_rows(PARALLEL_AXES, parallel_allowed)
PARALLEL_LINEAR_AXES = {
    "dtype": [F64, torch.float32],
    "path": PATHS,
    "bias": [False, True],
    "weight": [False, True],
    "smoothing": list(SMOOTHING),
    "reduction": ["mean", "sum", "none"],
    "ignore": ["absent", "some"],
    "lm": ["off", "softcap", "z_loss", "all"],
    "rank": ["1d", "2d"],
    "tiles": ["row_chunks", "vocab_tiles"],
}
PARALLEL_LINEAR_ROWS = covering_rows(PARALLEL_LINEAR_AXES, linear_allowed)


@pytest.mark.parametrize("row", PARALLEL_ROWS, ids=describe)
def test_parallel_cross_entropy_pairs(row, monkeypatch, one_rank_group):
    shape = SHAPES[row["rank"]]
    x = make_logits(shape, row["dtype"], "cpu")
    t = make_hard_target(shape, "cpu", -100 if row["ignore"] == "some" else None)
    w = make_weight(shape[0 if len(shape) == 1 else 1], row["dtype"], "cpu") if row["weight"] else None
    kwargs = {"reduction": row["reduction"], "label_smoothing": SMOOTHING[row["smoothing"]]}
    scale, cap, zscale = LM[row["lm"]]

    def ours(x, t, weight=None):
        return fused_ce.parallel.cross_entropy(
            x, t, weight=weight, logit_scale=scale, softcap=cap, lse_square_scale=zscale, **kwargs
        )

    def reference(x, t, weight=None):
        return lm_reference(
            x,
            t,
            weight,
            reduction=kwargs["reduction"],
            smoothing=kwargs["label_smoothing"],
            ignore_index=-100,
            lm=row["lm"],
        )

    with kernel_path(row["path"], monkeypatch):
        compare_with_torch(ours, reference, (x, t), grad_args=(0,), kwargs={"weight": w})


@pytest.mark.parametrize("row", PARALLEL_LINEAR_ROWS, ids=describe)
def test_parallel_linear_cross_entropy_pairs(row, monkeypatch, one_rank_group):
    (x, lw, b, t, w), kwargs, options, reference = _linear_call(row, monkeypatch)

    def ours(x, lw, b, t, weight=None):
        return fused_ce.parallel.linear_cross_entropy(x, lw, t, linear_bias=b, weight=weight, options=options, **kwargs)

    with kernel_path(row["path"], monkeypatch):
        compare_with_torch(
            ours, reference, (x, lw, b, t), grad_args=(0, 1, 2) if b is not None else (0, 1), kwargs={"weight": w}
        )


# ---- the transformers integration (use_fused_ce) --------------------------------------------------------------
HF_AXES = {
    "loss": ["ForCausalLM", "ForMaskedLM", "ForTokenClassification", "single_label", "multi_label"],
    "dtype": [F64, torch.float32, torch.bfloat16, torch.float16],
    "path": PATHS,
    "autocast": [False, True],
    "options": ["none", "smoothing", "lm"],
}
HF_OPTIONS = {"none": {}, "smoothing": {"label_smoothing": 0.2}, "lm": {"softcap": 3.0, "lse_square_scale": 1e-2}}
HF_ROWS = covering_rows(HF_AXES)


def _hf_losses():
    """{loss type: fused_ce's loss function}, as use_fused_ce gives them to models."""
    pytest.importorskip("transformers")
    from fused_ce.integrations.transformers import fused_loss_function

    return {
        kind: fused_loss_function(kind)
        for kind in ("ForCausalLM", "ForMaskedLM", "ForTokenClassification", "ForSequenceClassification")
    }


@pytest.mark.parametrize("row", HF_ROWS, ids=describe)
def test_transformers_losses_pairs(row, monkeypatch):
    """The stock losses upcast fp16/bf16 logits (and downcast fp64 ones) to fp32; fused_ce's compute from the
    logits as they are: each is judged against torch in fp64 on the same logits, the bound that of the logits'
    dtype (fused_ce rounds each row's loss to it, then sums the rows in fp32), with the stock loss's dtype."""
    transformers = pytest.importorskip("transformers")
    dtype, options, kind = row["dtype"], HF_OPTIONS[row["options"]], row["loss"]
    gen = torch.Generator().manual_seed(0)
    fused = _hf_losses()["ForSequenceClassification" if kind.endswith("label") else kind]
    config = transformers.PretrainedConfig(num_labels=5)
    lm = {"none": "off", "smoothing": "off", "lm": "softcap_z"}[row["options"]]
    if kind.endswith("label"):
        config.problem_type = f"{kind}_classification"
        logits = (torch.randn(3, 5, generator=gen, dtype=F64) * 3).to(dtype)
        labels = (
            torch.randint(0, 5, (3,), generator=gen)
            if kind == "single_label"
            else torch.rand(3, 5, generator=gen, dtype=F64).to(dtype)
        )

        def ours(logits):
            return fused.fused({**options}, labels=labels, pooled_logits=logits, config=config)

        def reference(logits):
            if kind == "multi_label":  # the options are cross-entropy options: BCE takes none
                return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))
            return lm_reference(
                logits,
                labels,
                smoothing=options.get("label_smoothing", 0.0),
                reduction="mean",
                ignore_index=-100,
                lm=lm,
            )
    else:
        logits = (torch.randn(2, 4, 5, generator=gen, dtype=F64) * 3).to(dtype)
        labels = torch.randint(0, 5, (2, 4), generator=gen)
        labels[0, 1] = -100
        # the causal LM's position t predicts token t + 1; the last position predicts nothing
        flat = (F.pad(labels, (0, 1), value=-100)[:, 1:] if kind == "ForCausalLM" else labels).reshape(-1)

        def ours(logits):
            if kind == "ForTokenClassification":
                return fused.fused({**options}, logits, labels, config)
            return fused.fused({**options}, logits, labels, vocab_size=5)

        def reference(logits):
            return lm_reference(
                logits.reshape(-1, 5),
                flat,
                smoothing=options.get("label_smoothing", 0.0),
                reduction="mean",
                ignore_index=-100,
                lm=lm,
            )

    x = logits.detach().requires_grad_()
    with kernel_path(row["path"], monkeypatch), torch.autocast("cpu", dtype=torch.bfloat16, enabled=row["autocast"]):
        loss = ours(x)
        expected = (
            fused.stock(labels, logits, config)
            if kind.endswith("label")
            else fused.stock(logits, labels, config)
            if kind == "ForTokenClassification"
            else fused.stock(logits, labels, vocab_size=5)
        )
    assert loss.dtype == expected.dtype, f"loss dtype {loss.dtype}, the stock loss gives {expected.dtype}"
    (grad,) = torch.autograd.grad(loss, x)
    exact = logits.double().requires_grad_()
    ref = reference(exact)
    (ref_grad,) = torch.autograd.grad(ref, exact)
    scale = input_magnitude(logits)
    # fp16/bf16: each row's loss is rounded to the logits' dtype (autocast or not), then summed in fp32; fp64: the
    # loss is returned in fp32, as transformers returns it.
    assert_close(
        loss, ref, dtype=dtype if dtype in LOW else loss.dtype, msg="loss", input_scale=scale, terms=logits.numel()
    )
    # One rounding of the gradient, as the stock loss on an fp32 copy of the logits: the rows' fp32 upstream
    # gradient reaches the kernels unrounded (fused_ce/_lm/row_loss_sum.py).
    assert_close(grad, ref_grad, msg="gradient", input_scale=scale, terms=logits.numel())


# ---- the arrays themselves ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "axes,allowed,rows",
    [
        (CE_AXES, ce_allowed, CE_ROWS),
        (BCE_AXES, bce_allowed, BCE_ROWS),
        (LINEAR_AXES, linear_allowed, LINEAR_ROWS),
        (PARALLEL_AXES, parallel_allowed, PARALLEL_ROWS),
        (PARALLEL_LINEAR_AXES, linear_allowed, PARALLEL_LINEAR_ROWS),
        (HF_AXES, lambda row: True, HF_ROWS),
    ],
    ids=["cross_entropy", "bce", "linear", "parallel", "parallel_linear", "transformers"],
)
def test_rows_cross_every_allowed_pair(axes, allowed, rows):
    """Each array holds every pair of values of two axes that the constraints allow, and only allowed rows."""
    assert all(allowed(row) for row in rows)
    covered = set().union(*(pairs_of(row, list(axes)) for row in rows))
    assert required_pairs(axes, allowed) <= covered

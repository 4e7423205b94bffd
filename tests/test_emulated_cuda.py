"""fused_ce's CUDA glue and kernels run on CPU tensors through the emulator (fused_ce.testing.emulated_cuda,
built with FUSED_CE_EMULATED_CUDA=1), against torch in float64, on every tiling path of the kernels: class
counts that give one thread, a group or a whole block per row, rows split into chunks and merged, the
N-D layout (also split), rows that do not start on a 16-byte boundary, every dtype and reduction,
smoothing x weight x ignore_index, soft targets, BCE with weight and pos_weight broadcasts. Also: the
emulator's own checks (each planted synchronization bug is reported, never hangs) and the public hook.

The rest of the suite runs here too: every test parametrized over DEVICES has an emulated_cuda case, and
tests/test_cuda.py runs its device-independent tests (special values, out-of-range targets, determinism
under the emulator's random block and thread orders, ...) on the emulator as well.
"""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from test_hypothesis import bce_problems, ce_problems, check_bce, check_cross_entropy

import fused_ce
import fused_ce.testing

pytestmark = [
    pytest.mark.skipif(
        not fused_ce.testing.emulated_cuda_available(),
        reason="the emulated CUDA extension is not built (FUSED_CE_EMULATED_CUDA=1)",
    ),
    pytest.mark.emulated_cuda,  # conftest.py: inside emulated_cuda(), FUSED_CE_CUDA_CHECK_TARGETS=1
]

DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]
REDUCTIONS = ["none", "mean", "sum"]
# Largest error allowed, relative to the largest magnitude of the float64 answer: results round to their
# dtype (bf16 keeps 8 bits, fp16 11) after fp32 accumulation.
REL_TOL = {torch.float64: 1e-12, torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def assert_matches(actual, expected, dtype, what, scale_floor=0.0):
    """actual (dtype) against the float64 answer: the same non-finite entries, and every finite entry
    within REL_TOL[dtype] of the largest finite magnitude (no absolute floor: a zero tensor fails).
    scale_floor: the size the answer has where its entries vanish (a gradient when C = 1)."""
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    a, e = actual.detach().double(), expected.detach().double()
    finite = torch.isfinite(e)
    assert torch.equal(torch.isfinite(a), finite), f"{what}: non-finite entries differ"
    assert torch.equal(a[~finite].nan_to_num(), e[~finite].nan_to_num()), f"{what}: inf/nan entries differ"
    if finite.any():
        scale = max(e[finite].abs().max().item(), scale_floor)
        err = (a[finite] - e[finite]).abs().max().item()
        assert err <= REL_TOL[dtype] * scale, (
            f"{what}: max error {err:.3g} > {REL_TOL[dtype]:g} x max |expected| {scale:.3g}"
        )


def upstream_like(loss, seed=7):
    """Non-uniform upstream gradient for 'none', so per-row scaling is checked; 1 for reduced losses."""
    if loss.dim() == 0:
        return torch.ones((), dtype=torch.float64)
    g = torch.Generator().manual_seed(seed)
    return torch.rand(loss.shape, generator=g, dtype=torch.float64) + 0.5


def check(ours_fn, ref_fn, inputs, grad_of, dtype, **kw):
    """ours_fn on `inputs` (emulated CUDA) and ref_fn on their float64 copies: loss and the gradients of
    inputs[i] for i in grad_of."""
    ours_in = [t.detach().requires_grad_(i in grad_of) if i in grad_of else t for i, t in enumerate(inputs)]
    ref_in = [(t.detach().double() if t.is_floating_point() else t) for t in inputs]
    ref_in = [t.requires_grad_(True) if i in grad_of else t for i, t in enumerate(ref_in)]
    ref_kw = {k: (v.double() if torch.is_tensor(v) and v.is_floating_point() else v) for k, v in kw.items()}
    loss = ours_fn(*ours_in, **kw)
    ref = ref_fn(*ref_in, **ref_kw)
    assert loss.dtype == dtype
    assert_matches(loss, ref, dtype, "loss")
    go = upstream_like(ref)
    grads = torch.autograd.grad(loss, [ours_in[i] for i in grad_of], go.to(loss.dtype))
    ref_grads = torch.autograd.grad(ref, [ref_in[i] for i in grad_of], go)
    # The size of one row's upstream gradient: what the gradients are made of.
    rows = inputs[0].numel() // inputs[0].shape[1] if inputs[0].dim() >= 2 else 1
    g_size = go.abs().max().item() / (rows if kw.get("reduction", "mean") == "mean" else 1)
    for i, g, rg in zip(grad_of, grads, ref_grads):
        assert g.dtype == inputs[i].dtype
        assert_matches(g, rg, dtype, f"gradient of input {i}", scale_floor=g_size)


def logits(shape, dtype, scale=3.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g, dtype=torch.float64) * scale).to(dtype)


def class_targets(rows_shape, C, ignore_share=0.0, seed=1):
    g = torch.Generator().manual_seed(seed)
    t = torch.randint(0, C, rows_shape, generator=g)
    if ignore_share > 0 and t.numel() > 1:
        mask = torch.rand(rows_shape, generator=g) < ignore_share
        mask.view(-1)[0] = True
        mask.view(-1)[-1] = False
        t = t.masked_fill(mask, -100)
    return t


def probabilities(shape, dtype, seed=2):
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(torch.randn(shape, generator=g, dtype=torch.float64) * 2, dim=1).to(dtype)


def positive(shape, dtype, seed=3):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(shape, generator=g, dtype=torch.float64) * 2 + 0.1).to(dtype)


def misaligned(x):
    """x's values in a tensor whose rows start one element after a 16-byte boundary."""
    flat = torch.empty(x.numel() + 1, dtype=x.dtype)[1:]
    return flat.view(x.shape).copy_(x)


# ---- the emulator's own checks -----------------------------------------------------------------
SELFTEST_ERRORS = {
    "early_return_before_barrier": "a barrier that not every thread of the block reaches",
    "shuffle_with_exited_lane": "__shfl_xor_sync waits for lane 5, which has returned",
    "divergent_sync": "threads wait at different synchronization points",
    "misaligned_vector_load": "is not aligned to 16 bytes",
    "shared_memory_overflow": "shared memory exceeds 49152 bytes",
    "invalid_configuration": "invalid configuration argument",
}


@pytest.mark.parametrize("case", list(SELFTEST_ERRORS))
def test_emulator_reports_synchronization_bugs(case):
    """Each kernel with a planted bug raises an error that names the kernel (or the launch), instead of
    hanging or returning garbage."""
    with pytest.raises(RuntimeError, match=r"(emulated CUDA: kernel \w+|CUDA error \(emulated\))") as e:
        torch.ops.fused_ce_emulated_cuda._emulator_selftest(case)
    assert SELFTEST_ERRORS[case] in str(e.value)


def test_emulator_interleaves_threads_and_poisons_shared_memory():
    """The same block sum is right with its barriers and NaN (the poison) without them: a thread reads a
    neighbour's shared slot before the neighbour wrote it."""
    ok = torch.ops.fused_ce_emulated_cuda._emulator_selftest("block_sum")
    assert ok[:4].tolist() == [128.0] * 4
    racy = torch.ops.fused_ce_emulated_cuda._emulator_selftest("block_sum_without_barriers")
    assert racy[:4].isnan().all()


# ---- the public hook -----------------------------------------------------------------------------
def test_emulated_cuda_is_required_by_the_hook(monkeypatch):
    monkeypatch.setattr(fused_ce._core.library, "EMULATED_AVAILABLE", False)
    with pytest.raises(RuntimeError, match="FUSED_CE_EMULATED_CUDA=1"):
        with fused_ce.testing.emulated_cuda():
            pass


def test_backward_of_a_graph_built_inside_runs_emulated_after_the_block(monkeypatch):
    """The backward op is chosen when the forward runs: a NaN row (emulated CUDA behaviour) appears in a
    gradient computed after the block has been left."""
    monkeypatch.delenv("FUSED_CE_CUDA_CHECK_TARGETS")
    x = logits((3, 6), torch.float32).requires_grad_()
    t = torch.tensor([1, 7, 2])
    loss = fused_ce.cross_entropy(x, t, reduction="sum")
    fused_ce._core.library.emulated_depth -= 1  # leave the block that conftest.py entered
    try:
        (g,) = torch.autograd.grad(loss, x)
    finally:
        fused_ce._core.library.emulated_depth += 1
    assert g[1].isnan().all() and g[0].isfinite().all()


@pytest.mark.parametrize("api", ["functional", "module", "function"])
def test_public_api_forward_backward_double_backward(api):
    x = logits((5, 7), torch.float64).requires_grad_()
    t = class_targets((5,), 7, ignore_share=0.3)
    w = positive((7,), torch.float64)
    kw = {"weight": w, "label_smoothing": 0.2}
    if api == "functional":
        fn = fused_ce.cross_entropy
    elif api == "module":

        def fn(x, t, weight, label_smoothing):
            return fused_ce.CrossEntropyLoss(weight=weight, label_smoothing=label_smoothing)(x, t)
    else:

        def fn(x, t, weight, label_smoothing):
            return fused_ce.CrossEntropyFunction.apply(x, t, weight, -100, "mean", label_smoothing)

    torch.autograd.gradcheck(lambda x: fn(x, t, **kw), (x,))
    torch.autograd.gradgradcheck(lambda x: fn(x, t, **kw), (x,))
    check(fn, F.cross_entropy, [x, t], [0], torch.float64, **kw)
    y = torch.rand(5, 7, dtype=torch.float64)
    bce = fused_ce.BCEWithLogitsFunction.apply if api == "function" else fused_ce.binary_cross_entropy_with_logits
    torch.autograd.gradcheck(lambda x, y: bce(x, y), (x, y.requires_grad_()))


# ---- tiling paths --------------------------------------------------------------------------------
# (N, C): one thread per row (C <= 8), a group of threads per row, a whole block per row, and rows split
# into chunks that are merged (few rows: C = 31 with one row splits already, 4097 into 3, 50,000 into
# 25, 262,144 into 64).
HARD_TILES = [(300, 1), (64, 2), (17, 3), (9, 7), (1, 31), (6, 31), (1, 4097), (3, 4097), (2, 50000), (1, 262144)]
# (smoothing, weighted, ignore share)
OPTIONS = [(0.0, False, 0.0), (0.1, True, 0.3), (1.0, False, 0.3), (0.2, True, 0.0)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("N,C", HARD_TILES)
def test_class_index_tiling(N, C, dtype):
    x = logits((N, C), dtype)
    for i, (smoothing, weighted, ignore) in enumerate(OPTIONS):
        t = class_targets((N,), C, ignore, seed=i)
        w = positive((C,), dtype) if weighted else None
        reduction = REDUCTIONS[i % 3]
        check(
            fused_ce.cross_entropy,
            F.cross_entropy,
            [x, t],
            [0],
            dtype,
            weight=w,
            label_smoothing=smoothing,
            reduction=reduction,
        )


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("N,C", [(9, 7), (6, 31), (3, 4097), (2, 50000)])
def test_soft_target_tiling(N, C, dtype):
    x = logits((N, C), dtype)
    p = probabilities((N, C), dtype)
    for i, (smoothing, weighted, _) in enumerate(OPTIONS):
        w = positive((C,), dtype) if weighted else None
        check(
            fused_ce.cross_entropy,
            F.cross_entropy,
            [x, p],
            [0, 1],
            dtype,
            weight=w,
            label_smoothing=smoothing,
            reduction=REDUCTIONS[i % 3],
        )


# N-D shapes (N, C, d1..dk): rows are (n, position) pairs, one thread per row walking the classes with
# stride S; with few rows the classes are split into chunks of at least 32 and merged.
ND_SHAPES = [(2, 3, 7), (3, 5, 4, 6), (2, 64, 5), (1, 4097, 3), (1, 2300, 2)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", ND_SHAPES)
def test_nd_tiling(shape, dtype):
    x = logits(shape, dtype)
    rows = (shape[0],) + shape[2:]
    C = shape[1]
    for i, (smoothing, weighted, ignore) in enumerate(OPTIONS):
        w = positive((C,), dtype) if weighted else None
        reduction = REDUCTIONS[i % 3]
        check(
            fused_ce.cross_entropy,
            F.cross_entropy,
            [x, class_targets(rows, C, ignore, seed=i)],
            [0],
            dtype,
            weight=w,
            label_smoothing=smoothing,
            reduction=reduction,
        )
        check(
            fused_ce.cross_entropy,
            F.cross_entropy,
            [x, probabilities(shape, dtype, seed=i)],
            [0, 1],
            dtype,
            weight=w,
            label_smoothing=smoothing,
            reduction=reduction,
        )


def test_nd_long_smoothing_sums_stay_accurate():
    """(1, 2300, 2) soft targets with smoothing 1.0: thousands of near-equal terms per row, where a plain
    running sum lost 2.7e-5 relative on the CPU (float32 against float64)."""
    x = logits((1, 2300, 2), torch.float32, scale=1.0)
    p = probabilities((1, 2300, 2), torch.float32)
    check(fused_ce.cross_entropy, F.cross_entropy, [x, p], [0, 1], torch.float32, label_smoothing=1.0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("layout", ["misaligned", "row_slice", "transposed"])
@pytest.mark.parametrize("C", [31, 1003])
def test_row_layouts(layout, C, dtype):
    """Rows that start off a 16-byte boundary (scalar head, then vectors, then a tail), rows of a wider
    tensor (row stride != C, read in place), and a transposed (copied) tensor."""
    N = 5
    base = logits((N, C), dtype)
    if layout == "misaligned":
        x = misaligned(base)
    elif layout == "row_slice":
        x = torch.cat([logits((N, 3), dtype), base, logits((N, 6), dtype)], 1)[:, 3 : 3 + C]
    else:
        x = base.t().contiguous().t()
    assert torch.equal(x, base)
    t = class_targets((N,), C, 0.3)
    for smoothing in (0.0, 0.3):
        check(fused_ce.cross_entropy, F.cross_entropy, [x, t], [0], dtype, label_smoothing=smoothing, reduction="none")
    check(fused_ce.cross_entropy, F.cross_entropy, [x, misaligned(probabilities((N, C), dtype))], [0, 1], dtype)
    y = torch.rand(N, C, dtype=torch.float64).to(dtype)
    check(
        fused_ce.binary_cross_entropy_with_logits,
        F.binary_cross_entropy_with_logits,
        [x, misaligned(y)],
        [0, 1],
        dtype,
        reduction="none",
    )


def test_uint8_targets():
    x = logits((40, 300), torch.float32)
    t = class_targets((40,), 255).to(torch.uint8)
    check(fused_ce.cross_entropy, F.cross_entropy, [x, t], [0], torch.float32, ignore_index=7, label_smoothing=0.1)


BCE_OPERANDS = {
    "none": lambda shape, dtype: None,
    "scalar": lambda shape, dtype: positive((), dtype),
    "last_dim": lambda shape, dtype: positive(shape[-1:], dtype),
    "column": lambda shape, dtype: positive(shape[:-1] + (1,), dtype),
    "full": lambda shape, dtype: positive(shape, dtype),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(7,), (5, 9), (3, 4, 130), (2, 8200)])
@pytest.mark.parametrize(
    "weight,pos_weight",
    [("none", "none"), ("scalar", "last_dim"), ("column", "none"), ("full", "last_dim"), ("last_dim", "scalar")],
)
def test_bce_tiling_and_broadcasts(shape, weight, pos_weight, dtype):
    """Elementwise tiles of 8192 elements (2 x 8200 crosses one), vector bodies and scalar tails, and every
    weight / pos_weight broadcast that the kernels read in place."""
    x = logits(shape, dtype, scale=4.0)
    y = torch.rand(shape, dtype=torch.float64).to(dtype)
    w, pw = BCE_OPERANDS[weight](shape, dtype), BCE_OPERANDS[pos_weight](shape, dtype)
    for reduction in REDUCTIONS:
        check(
            fused_ce.binary_cross_entropy_with_logits,
            F.binary_cross_entropy_with_logits,
            [x, y],
            [0, 1],
            dtype,
            weight=w,
            pos_weight=pw,
            reduction=reduction,
        )


# ---- property-based parity, with a small budget (the emulator is slow) -------------------------------
EMULATED_EXAMPLES = settings(
    max_examples=30,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


@EMULATED_EXAMPLES
@given(ce_problems())
def test_hypothesis_cross_entropy(p):
    """test_hypothesis.py's cross-entropy problems (layouts, uint8 targets, mixed dtypes, inf/NaN) on the
    CUDA kernels."""
    check_cross_entropy(dict(p, device="cpu"))


@EMULATED_EXAMPLES
@given(bce_problems())
def test_hypothesis_bce_with_logits(p):
    check_bce(dict(p, device="cpu"))

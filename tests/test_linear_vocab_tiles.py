"""fused_ce.linear_cross_entropy with vocabulary tiles (a workspace too small for MIN_CHUNK_ROWS whole rows of
logits, so each tile holds fewer classes: _vocab/tiles.py): fp64 parity with torch's F.linear_cross_entropy
for every combination of reduction, smoothing, bias, class weights and ignored rows; the language-model
options against the fp64 reference on each device (the CPU kernels and the CUDA kernels under emulation);
bf16 and fp16 errors no larger than torch's eager ones; gradcheck; torch's IndexError for a target out of range; and the tile shapes the workspace knob gives."""

import pytest
import torch
import torch.nn.functional as F
import torch_compat
from helpers import DEVICES, assert_close
from lm_reference import reference as lm_reference
from lm_reference import rel_err

import fused_ce
import fused_ce.linear

N, H, V = 37, 8, 300  # 37 rows: a chunk of 32 (MIN_CHUNK_ROWS) and one of 5


@pytest.fixture
def vocab_tiles(monkeypatch):
    """A workspace for 32-row tiles (MIN_CHUNK_ROWS) of 20 fp64 classes (their logits and gradient), 40 fp32 or
    bf16 ones: 15 or 8 tiles per row chunk, the last one narrower."""
    monkeypatch.setattr(fused_ce.linear, "workspace_mib", 32 * 20 * 16 / 2**20)
    for dtype in (torch.float64, torch.float32, torch.bfloat16):
        rows, classes = fused_ce.linear.tile_shape(N, V, dtype)
        assert rows == fused_ce.linear.MIN_CHUNK_ROWS and classes < V, (dtype, rows, classes)


def _problem(dtype=torch.float64, bias=True, weighted=False, ignore=False, n=N, v=V, seed=0, device="cpu"):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, H, generator=gen, dtype=torch.float64)
    w = torch.randn(v, H, generator=gen, dtype=torch.float64)
    b = torch.randn(v, generator=gen, dtype=torch.float64) if bias else None
    t = torch.randint(0, v, (n,), generator=gen)
    t[-1] = v - 1  # the last class, in the last tile
    if ignore:
        t[::4] = 3  # ignore_index=3 below: also a valid class, so it must be skipped by value
    cw = torch.rand(v, generator=gen, dtype=torch.float64) + 0.1 if weighted else None
    cast = lambda a: None if a is None else a.to(device=device, dtype=dtype)  # noqa: E731
    return cast(x), cast(w), cast(b), t.to(device), cast(cw)


def _losses_and_grads(fn, x, w, b, unit_scalar=False):
    leaves = [a.clone().requires_grad_() for a in (x, w, b) if a is not None]
    loss = fn(*leaves, *([None] if b is None else []))
    gen = torch.Generator().manual_seed(1)
    g = (torch.rand(loss.shape, generator=gen, dtype=torch.float64) + 0.5).to(loss)
    if unit_scalar and loss.dim() == 0:
        g = torch.ones_like(loss)
    return [loss] + list(torch.autograd.grad(loss, leaves, g))


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("smoothing", [0.0, 0.3])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("ignore", [False, True])
def test_fp64_parity_every_option(vocab_tiles, ignore, weighted, bias, smoothing, reduction):
    x, w, b, t, cw = _problem(bias=bias, weighted=weighted, ignore=ignore)
    kwargs = {"weight": cw, "reduction": reduction, "label_smoothing": smoothing, "ignore_index": 3 if ignore else None}
    ours = _losses_and_grads(
        lambda *a: fused_ce.linear_cross_entropy(a[0], a[1], t, linear_bias=a[2], **kwargs), x, w, b
    )
    ref = _losses_and_grads(
        lambda *a: torch_compat.linear_cross_entropy(a[0], a[1], t, linear_bias=a[2], **kwargs), x, w, b
    )
    for name, o, r in zip(["loss", "grad input", "grad linear_weight", "grad linear_bias"], ours, ref):
        assert o.dtype == x.dtype, name
        assert_close(o, r, msg=f"{name} ({reduction}, eps={smoothing})", input_scale=10.0, terms=N)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("scale,cap,zscale", [(1.0, 0.0, 1e-2), (0.7, 2.5, 0.0), (1.2, 4.0, 1e-3)], ids=str)
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_lm_options_match_the_reference(vocab_tiles, device, scale, cap, zscale, reduction):
    """logit_scale, softcap and z-loss with bias, class weights, smoothing and ignored rows, within 1e-9 of the
    fp64 reference; the lse of each counted row too."""
    x, w, b, t, cw = _problem(weighted=True, ignore=True, device=device)
    leaves = [a.clone().requires_grad_() for a in (x, w, b)]
    ref_leaves = [a.clone().requires_grad_() for a in (x, w, b)]
    loss, z_loss, lse = fused_ce.linear_cross_entropy(
        *leaves[:2],
        t,
        linear_bias=leaves[2],
        weight=cw,
        reduction=reduction,
        ignore_index=3,
        label_smoothing=0.2,
        logit_scale=scale,
        softcap=cap,
        lse_square_scale=zscale,
        return_z_loss=True,
        return_lse=True,
    )
    ref_loss, ref_z, ref_lse = lm_reference(F.linear(*ref_leaves), t, cw, reduction, 0.2, scale, cap, zscale, 3)
    counted = t != 3
    assert rel_err(loss, ref_loss) < 1e-9 and rel_err(lse[counted], ref_lse[counted]) < 1e-9
    assert rel_err(z_loss, ref_z) < 1e-9 if zscale else bool((z_loss == 0).all())
    g = torch.rand(ref_loss.shape, dtype=torch.float64).to(device) + 0.5
    for name, a, r in zip(
        ("input", "linear_weight", "linear_bias"),
        torch.autograd.grad(loss, leaves, g),
        torch.autograd.grad(ref_loss, ref_leaves, g),
    ):
        assert rel_err(a, r) < 1e-9, name


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_low_precision_error_no_larger_than_torch(vocab_tiles, reduction, dtype):
    """Against the fp64 result on the same rounded inputs, each result's relative error summed over 4 problems
    is at most that of torch's eager linear + cross_entropy in the same dtype (dX and dW are accumulated over
    the tiles in fp32)."""
    ours_total, torch_total = [0.0] * 4, [0.0] * 4
    for seed in range(4):
        x, w, b, t, _ = _problem(dtype=dtype, seed=seed)
        w = w * 0.3

        def ref(xi, wi, bi):
            return F.cross_entropy(F.linear(xi, wi, bi), t, reduction=reduction)

        exact = _losses_and_grads(ref, x.double(), w.double(), b.double(), unit_scalar=True)
        eager = _losses_and_grads(ref, x, w, b, unit_scalar=True)
        ours = _losses_and_grads(
            lambda *a: fused_ce.linear_cross_entropy(a[0], a[1], t, linear_bias=a[2], reduction=reduction),
            x,
            w,
            b,
            unit_scalar=True,
        )
        for i, (o, e, r) in enumerate(zip(ours, eager, exact)):
            assert o.dtype == dtype
            ours_total[i] += ((o.double() - r).abs().max() / r.abs().max()).item()
            torch_total[i] += ((e.double() - r).abs().max() / r.abs().max()).item()
    for name, o, e in zip(["loss", "dX", "dW", "db"], ours_total, torch_total):
        assert o <= e, f"{name}: summed error {o:.3g} > torch's {e:.3g}"


def test_gradcheck(monkeypatch):
    monkeypatch.setattr(fused_ce.linear, "workspace_mib", 2 * 2 * 16 / 2**20)  # 2-row tiles of 2 classes
    monkeypatch.setattr(fused_ce.linear, "MIN_CHUNK_ROWS", 2)
    x, w, b, t, cw = _problem(n=5, v=5, weighted=True)
    t[1] = -100
    for reduction, kwargs in [
        ("mean", {"weight": cw, "label_smoothing": 0.2, "lse_square_scale": 0.1}),
        ("none", {"softcap": 1.5}),
        ("sum", {"logit_scale": 0.5}),
    ]:

        def fn(xi, wi, bi):
            return fused_ce.linear_cross_entropy(xi, wi, t, linear_bias=bi, reduction=reduction, **kwargs)

        assert fused_ce.linear.tile_shape(5, 5, torch.float64) == (2, 2)
        assert torch.autograd.gradcheck(
            fn,
            (x[:, :3].clone().requires_grad_(), w[:, :3].clone().requires_grad_(), b.clone().requires_grad_()),
            eps=1e-6,
            atol=1e-8,
        )


def test_target_out_of_range_raises_torchs_index_error(vocab_tiles):
    x, w, b, t, _ = _problem()
    t[5] = V
    with pytest.raises(IndexError, match=f"Target {V} is out of bounds."):
        fused_ce.linear_cross_entropy(x, w, t, linear_bias=b)


def test_tile_shape_follows_the_workspace(monkeypatch):
    monkeypatch.setattr(fused_ce.linear, "workspace_mib", 1.0)
    # fp32, V=1000: 262 whole rows fit, so no vocabulary tiles.
    assert fused_ce.linear.tile_shape(10**6, 1000, torch.float32) == (2**20 // 4000, 1000)
    # V=10^6: not one row fits; 32 rows of 2^20 / (32 * 8) classes (logits and their gradient, fp32).
    assert fused_ce.linear.tile_shape(10**6, 10**6, torch.float32) == (32, 2**20 // 256)
    # bf16 tiles also hold an fp32 copy of the gradient: 2 + 2 + 4 bytes per logit.
    assert fused_ce.linear.tile_shape(10**6, 10**6, torch.bfloat16) == (32, 2**20 // 256)
    # Fewer rows than MIN_CHUNK_ROWS: no tiles if all of them fit whole, else tiles of all of them.
    assert fused_ce.linear.tile_shape(2, 10**5, torch.float32) == (2, 10**5)
    assert fused_ce.linear.tile_shape(3, 10**5, torch.float32) == (3, 2**20 // 24)
    # An explicit batch_chunk_size keeps whole rows.
    assert fused_ce.linear.tile_shape(
        100, 10**6, torch.float32, torch_compat.LinearCrossEntropyOptions(batch_chunk_size=7)
    ) == (7, 10**6)

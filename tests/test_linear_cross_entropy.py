"""fused_ce.linear_cross_entropy and LinearCrossEntropyLoss against torch 2.13's F.linear_cross_entropy
(reference path) and nn.LinearCrossEntropyLoss: values and the gradients of input, linear_weight and
linear_bias in fp64 for every option, chunk sizes that do not divide N, the CUDA kernels under emulation,
gradcheck, low precision against torch's own error, torch.compile, opcheck, the module's state_dict, and
the checks torch makes."""

import pytest
import torch
import torch.nn.functional as F
import torch_compat
from helpers import DEVICES, assert_close, parametrize_grid

import fused_ce
import fused_ce.linear
from fused_ce.testing._opcheck_cases import OPCHECK_LINEAR_CE

N, H, V = 37, 8, 29
OPTIONS = torch_compat.LinearCrossEntropyOptions


def _problem(dtype=torch.float64, bias=True, weighted=False, ignore=False, n=N, seed=0, device="cpu"):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, H, generator=gen, dtype=torch.float64).to(dtype)
    w = torch.randn(V, H, generator=gen, dtype=torch.float64).to(dtype)
    b = torch.randn(V, generator=gen, dtype=torch.float64).to(dtype) if bias else None
    t = torch.randint(0, V, (n,), generator=gen)
    if ignore:
        t[::4] = 3  # ignore_index=3 below: also a valid class, so the kernels must skip it by value
    cw = (torch.rand(V, generator=gen, dtype=torch.float64) + 0.1).to(dtype) if weighted else None
    return [None if a is None else a.to(device) for a in (x, w, b, t, cw)]


def _losses_and_grads(fn, x, w, b, grad_seed=1, unit_scalar=False):
    """fn's loss, and the gradients of (x, w, b) under a random upstream gradient of the loss's shape (1 for
    a scalar loss with unit_scalar)."""
    leaves = [x.clone().requires_grad_(), w.clone().requires_grad_()] + (
        [b.clone().requires_grad_()] if b is not None else []
    )
    loss = fn(*leaves, *([None] if b is None else []))
    gen = torch.Generator().manual_seed(grad_seed)
    g = (torch.rand(loss.shape, generator=gen, dtype=torch.float64) + 0.5).to(loss)
    if unit_scalar and loss.dim() == 0:
        g = torch.ones_like(loss)
    return [loss] + list(torch.autograd.grad(loss, leaves, g))


def _compare(x, w, b, t, cw, reduction, smoothing, ignore_index, chunk, tol_dtype=torch.float64):
    kwargs = {"weight": cw, "reduction": reduction, "label_smoothing": smoothing, "ignore_index": ignore_index}
    ours = _losses_and_grads(
        lambda xi, wi, bi: fused_ce.linear_cross_entropy(
            xi, wi, t, linear_bias=bi, options=OPTIONS(batch_chunk_size=chunk), **kwargs
        ),
        x,
        w,
        b,
    )
    ref = _losses_and_grads(
        lambda xi, wi, bi: torch_compat.linear_cross_entropy(
            xi.double(),
            wi.double(),
            t,
            linear_bias=None if bi is None else bi.double(),
            **{**kwargs, "weight": None if cw is None else cw.double()},
        ),
        x,
        w,
        b,
    )
    for name, o, r in zip(["loss", "grad input", "grad linear_weight", "grad linear_bias"], ours, ref):
        assert o.dtype == x.dtype, f"{name}: dtype {o.dtype}"
        assert_close(
            o,
            r,
            dtype=tol_dtype,
            msg=f"{name} ({reduction}, eps={smoothing}, chunk={chunk})",
            input_scale=10.0,
            terms=x.shape[0],
        )


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("smoothing", [0.0, 0.3])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("ignore", [False, True])
def test_fp64_parity_every_option(ignore, weighted, bias, smoothing, reduction):
    """Every combination, with 8-row chunks (37 rows: the last chunk is short) and, for 'none', a random
    per-token upstream gradient."""
    x, w, b, t, cw = _problem(bias=bias, weighted=weighted, ignore=ignore)
    _compare(x, w, b, t, cw, reduction, smoothing, 3 if ignore else None, chunk=8)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("reduction", ["mean", "none"])
@pytest.mark.parametrize("all_options", [False, True])
def test_parity_per_device(all_options, reduction, device):
    """The CPU kernels and the CUDA kernels (emulated_cuda: the CUDA glue and kernels, run on the CPU),
    one-row and uneven chunks."""
    x, w, b, t, cw = _problem(bias=all_options, weighted=all_options, ignore=all_options, n=11, device=device)
    for chunk in (1, 4):
        _compare(x, w, b, t, cw, reduction, 0.2 if all_options else 0.0, 3 if all_options else None, chunk)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_bf16_per_device(reduction, device):
    """bf16 tiles through each device's kernels (in place on the tile), against fp64 on the same rounded
    inputs: within a few bf16 roundings (the logits tile and dlogits are bf16, as torch's eager ones)."""
    x, w, b, t, cw = _problem(dtype=torch.bfloat16, bias=True, weighted=True, ignore=True, n=11, device=device)
    kwargs = {"weight": cw, "reduction": reduction, "label_smoothing": 0.1, "ignore_index": 3}
    ours = _losses_and_grads(
        lambda xi, wi, bi: fused_ce.linear_cross_entropy(
            xi, wi, t, linear_bias=bi, options=OPTIONS(batch_chunk_size=4), **kwargs
        ),
        x,
        w,
        b,
        unit_scalar=True,
    )
    ref = _losses_and_grads(
        lambda xi, wi, bi: torch_compat.linear_cross_entropy(
            xi, wi, t, linear_bias=bi, **{**kwargs, "weight": cw.double()}
        ),
        x.double(),
        w.double(),
        b.double(),
        unit_scalar=True,
    )
    for name, o, r in zip(["loss", "dX", "dW", "db"], ours, ref):
        assert o.dtype == torch.bfloat16
        err = ((o.double() - r).abs().max() / r.abs().max()).item()
        assert err <= 4 * 2**-8, f"{name}: error {err:.3g}"


def test_workspace_knob_sets_the_chunk_rows(monkeypatch):
    # fp32 at V=1000: 4000 bytes per row; bf16 adds the fp32 copy: 6000.
    monkeypatch.setattr(fused_ce.linear, "workspace_mib", 1.0)
    assert fused_ce.linear.chunk_rows(10**6, 1000, torch.float32) == 2**20 // 4000
    assert fused_ce.linear.chunk_rows(10**6, 1000, torch.bfloat16) == 2**20 // 6000
    assert fused_ce.linear.chunk_rows(100, 1000, torch.float32) == 100
    assert fused_ce.linear.chunk_rows(10**6, 10**7, torch.float32) == 1
    assert fused_ce.linear.chunk_rows(100, 1000, torch.float32, OPTIONS(batch_chunk_size=7)) == 7
    # A workspace of two rows of logits: the default path (no options) runs 19 chunks and is still right.
    monkeypatch.setattr(fused_ce.linear, "workspace_mib", 2 * V * 8 / 2**20)
    x, w, b, t, _cw = _problem()
    ours = _losses_and_grads(lambda *a: fused_ce.linear_cross_entropy(a[0], a[1], t, linear_bias=a[2]), x, w, b)
    ref = _losses_and_grads(lambda *a: torch_compat.linear_cross_entropy(a[0], a[1], t, linear_bias=a[2]), x, w, b)
    for o, r in zip(ours, ref):
        assert_close(o, r, input_scale=10.0, terms=N)


def test_gradcheck():
    x, w, b, t, cw = _problem(n=5, weighted=True)
    t = t.remainder(4)
    t[1] = -100
    for reduction, kwargs in [("mean", {"weight": cw[:4], "label_smoothing": 0.2}), ("none", {}), ("sum", {})]:

        def fn(xi, wi, bi):
            return fused_ce.linear_cross_entropy(
                xi, wi, t, linear_bias=bi, reduction=reduction, options=OPTIONS(batch_chunk_size=2), **kwargs
            )

        assert torch.autograd.gradcheck(
            fn,
            (x[:, :3].clone().requires_grad_(), w[:4, :3].clone().requires_grad_(), b[:4].clone().requires_grad_()),
            eps=1e-6,
            atol=1e-8,
        )


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_low_precision_error_no_larger_than_torch(reduction, dtype):
    """Against the fp64 result on the same rounded inputs, the relative error of each result (loss, dX, dW,
    db), summed over 8 random problems, is at most that of torch's eager linear + cross_entropy in the same
    dtype. (One problem's max-entry error is a draw: either side wins single problems by up to 1.4x.) The
    upstream gradient is 1 for 'mean', as in loss.backward(), and random per token for 'none'."""
    ours_total, torch_total = [0.0] * 4, [0.0] * 4
    for seed in range(8):
        gen = torch.Generator().manual_seed(seed)
        x = torch.randn(64, 32, generator=gen).to(dtype)
        w = (torch.randn(300, 32, generator=gen) * 0.3).to(dtype)
        b = torch.randn(300, generator=gen).to(dtype)
        t = torch.randint(0, 300, (64,), generator=gen)

        def ref(xi, wi, bi):
            return F.cross_entropy(F.linear(xi, wi, bi), t, reduction=reduction)

        exact = _losses_and_grads(ref, x.double(), w.double(), b.double(), unit_scalar=True)
        eager = _losses_and_grads(ref, x, w, b, unit_scalar=True)
        ours = _losses_and_grads(
            lambda xi, wi, bi: fused_ce.linear_cross_entropy(
                xi, wi, t, linear_bias=bi, reduction=reduction, options=OPTIONS(batch_chunk_size=24)
            ),
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


def test_fp32_weight_gradient_accumulates_in_fp32_for_bf16():
    """Many one-row chunks: dW summed in bf16 chunk by chunk would lose the small contributions."""
    x, w, b, t, _ = _problem(dtype=torch.bfloat16, n=256)
    ours = _losses_and_grads(
        lambda xi, wi, bi: fused_ce.linear_cross_entropy(
            xi, wi, t, linear_bias=bi, reduction="sum", options=OPTIONS(batch_chunk_size=1)
        ),
        x,
        w,
        b,
    )
    ref = _losses_and_grads(
        lambda xi, wi, bi: torch_compat.linear_cross_entropy(xi, wi, t, linear_bias=bi, reduction="sum"),
        x.double(),
        w.double(),
        b.double(),
    )
    for name, o, r in zip(["loss", "dX", "dW", "db"], ours, ref):
        err = ((o.double() - r).abs().max() / r.abs().max()).item()
        assert err <= 2 * 2**-8, f"{name}: error {err:.3g}"  # one bf16 rounding of an fp32-accurate result


def test_no_gradient_work_without_requires_grad(monkeypatch):
    """Under no_grad (or with nothing requiring grad) the op is asked for no gradient, and returns none."""
    seen = []
    real = fused_ce._core.library.kernel_ops

    class Spy:
        def __getattr__(self, name):
            op = getattr(real(), name)
            if name != "linear_cross_entropy_fwd":
                return op

            def call(*args):
                seen.append(args[9:12])  # need_input, need_weight, need_bias
                return op(*args)

            return call

    monkeypatch.setattr(fused_ce._core.library, "kernel_ops", lambda: Spy())
    x, w, b, t, _ = _problem()
    xg, wg = x.clone().requires_grad_(), w.clone().requires_grad_()
    with torch.no_grad():
        fused_ce.linear_cross_entropy(xg, wg, t, linear_bias=b)
    fused_ce.linear_cross_entropy(x, w, t, linear_bias=b)
    fused_ce.linear_cross_entropy(x, wg, t, linear_bias=b)
    assert seen == [(False, False, False), (False, False, False), (False, True, False)]
    monkeypatch.undo()
    out = fused_ce._core.library.kernel_ops().linear_cross_entropy_fwd(
        x, w, b, t, None, -100, 0.0, 1, 8, False, False, False
    )
    assert [g.numel() for g in out[1:4]] == [0, 0, 0]


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_backward_twice_and_scaled_upstream_gradient(reduction):
    """The first backward scales the gradients that forward computed (in place); a second one
    (retain_graph=True) finds them spent and runs the chunk loop again: both right."""
    x, w, b, t, cw = _problem(weighted=True, ignore=True)
    leaves = [a.clone().requires_grad_() for a in (x, w, b)]
    kwargs = {"linear_bias": leaves[2], "weight": cw, "ignore_index": 3, "reduction": reduction, "label_smoothing": 0.1}
    loss = fused_ce.linear_cross_entropy(*leaves[:2], t, options=OPTIONS(batch_chunk_size=5), **kwargs)
    ref = torch_compat.linear_cross_entropy(*leaves[:2], t, **kwargs)
    for g in (0.5, 3.0):
        grad = torch.tensor(g, dtype=x.dtype)
        ours = torch.autograd.grad(loss, leaves, grad, retain_graph=True)
        expected = torch.autograd.grad(ref, leaves, grad, retain_graph=True)
        for o, e in zip(ours, expected):
            assert_close(o, e, input_scale=10.0, terms=N)


def test_double_backward_raises():
    x, w, _b, t, _ = _problem()
    xg = x.clone().requires_grad_()
    loss = fused_ce.linear_cross_entropy(xg, w, t)
    with pytest.raises(RuntimeError, match="does not support double backward"):
        torch.autograd.grad(loss, xg, create_graph=True)


def test_unbatched_and_uint8_targets():
    x, w, b, t, _ = _problem(n=3)
    for i in range(3):
        for reduction in ("mean", "none"):
            ours = fused_ce.linear_cross_entropy(x[i], w, t[i], linear_bias=b, reduction=reduction)
            ref = torch_compat.linear_cross_entropy(x[i], w, t[i], linear_bias=b, reduction=reduction)
            assert ours.shape == ref.shape
            assert_close(ours, ref)
    assert_close(fused_ce.linear_cross_entropy(x, w, t.to(torch.uint8)), torch_compat.linear_cross_entropy(x, w, t))


@pytest.mark.parametrize("case", ["probabilities", "k_dim"])
def test_reference_path_cases(case):
    """Probability targets and K-dimensional linear weights take the reference path (fused_ce.cross_entropy
    on the linear's output), with torch's values and gradients."""
    x, w, b, t, _ = _problem(n=6)
    if case == "probabilities":
        t = torch.softmax(torch.randn(6, V, dtype=torch.float64), 1)
    else:
        w, b, t = w[:28].reshape(7, 4, H), b[:28].reshape(7, 4), t.remainder(7)[:, None].expand(6, 4).contiguous()
    ours = _losses_and_grads(
        lambda *a: fused_ce.linear_cross_entropy(a[0], a[1], t, linear_bias=a[2], label_smoothing=0.1), x, w, b
    )
    ref = _losses_and_grads(
        lambda *a: torch_compat.linear_cross_entropy(a[0], a[1], t, linear_bias=a[2], label_smoothing=0.1), x, w, b
    )
    for o, r in zip(ours, ref):
        assert_close(o, r)


ERROR_CASES = {
    "input 3-D": lambda x, w, t: (x[None], w, t, {}),
    "weight 1-D": lambda x, w, t: (x, w[0], t, {}),
    "in_features": lambda x, w, t: (x, w[:, :5], t, {}),
    "bias shape": lambda x, w, t: (x, w, t, {"linear_bias": torch.zeros(V + 1, dtype=x.dtype)}),
    "k-dim unbatched": lambda x, w, t: (x[0], w[:28].reshape(7, 4, H), t[0], {}),
    "ignore_index with probabilities": lambda x, w, t: (x, w, torch.rand(N, V, dtype=x.dtype), {"ignore_index": 1}),
    "smoothing above 1": lambda x, w, t: (x, w, t, {"label_smoothing": 1.5}),
    "reduction": lambda x, w, t: (x, w, t, {"reduction": "avg"}),
    "class weight size": lambda x, w, t: (x, w, t, {"weight": torch.ones(3, dtype=x.dtype)}),
    "target dtype": lambda x, w, t: (x, w, t.int(), {}),
    "target out of bounds": lambda x, w, t: (x, w, t.clone().fill_(V), {}),
    "dtype mix": lambda x, w, t: (x.float(), w, t, {}),
}


@torch_compat.needs_torch_linear_ce
@pytest.mark.parametrize("case", list(ERROR_CASES))
def test_errors_as_torch(case):
    x, w, _, t, _ = _problem()
    x, w, t, kwargs = ERROR_CASES[case](x, w, t)
    with pytest.raises(Exception) as expected:
        torch_compat.linear_cross_entropy(x, w, t, **kwargs)
    with pytest.raises(expected.type) as got:
        fused_ce.linear_cross_entropy(x, w, t, **kwargs)
    assert str(got.value) == str(expected.value)


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_compile_fullgraph(reduction):
    torch._dynamo.reset()
    x, w, b, t, cw = _problem(dtype=torch.float32, weighted=True, ignore=True)

    def step(xi, wi, bi):
        return fused_ce.linear_cross_entropy(
            xi,
            wi,
            t,
            linear_bias=bi,
            weight=cw,
            ignore_index=3,
            reduction=reduction,
            label_smoothing=0.1,
            options=OPTIONS(batch_chunk_size=10),
        )

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    eager = _losses_and_grads(step, x, w, b)
    for _ in range(2):
        got = _losses_and_grads(compiled, x, w, b)
        for o, e in zip(got, eager):
            assert torch.equal(o, e)


@parametrize_grid(OPCHECK_LINEAR_CE)
def test_opcheck(reduction, dtype, device):
    OPCHECK_LINEAR_CE.run(device, reduction=reduction, dtype=dtype)


def test_tile_op_in_place_gradient_matches_cross_entropy_bwd():
    """linear_ce_tile_ writes over its tile what cross_entropy_bwd returns (target entries included: the
    kernel must read x[y] before it overwrites it)."""
    ops = fused_ce._core.library.kernel_ops()
    logits = torch.randn(6, 11, dtype=torch.float64) * 3
    t = torch.tensor([0, 10, 5, -100, 5, 2])
    cw = torch.rand(11, dtype=torch.float64) + 0.1
    g = torch.rand(6, dtype=torch.float64) + 0.5
    tile = logits.clone()
    row_loss, _lse, _z_rows = ops.linear_ce_tile_(
        tile, t, cw, -100, 0.2, g, torch.tensor(4.0, dtype=torch.float64), True
    )
    expected_loss, expected_lse = ops.cross_entropy_fwd(logits, t, cw, -100, 0.2, 0)
    expected = ops.cross_entropy_bwd(g / 4, logits, t, cw, expected_lse, -100, 0.2, 0)
    assert torch.equal(tile, expected)
    assert torch.equal(row_loss, expected_loss)


def _torch_module(**kwargs):
    torch.manual_seed(5)
    return torch.nn.LinearCrossEntropyLoss(H, V, **kwargs)


@torch_compat.needs_torch_linear_ce
@pytest.mark.parametrize("bias", [False, True])
def test_module_matches_torch_and_state_dict_loads_both_ways(bias):
    cw = torch.rand(V) + 0.1
    kwargs = {"bias": bias, "weight": cw, "label_smoothing": 0.1, "ignore_index": 2, "reduction": "sum"}
    ref = _torch_module(**kwargs)
    ours = fused_ce.LinearCrossEntropyLoss(H, V, **kwargs)
    assert list(ours.state_dict()) == list(ref.state_dict())
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in ref.named_parameters()]
    ours.load_state_dict(ref.state_dict())
    x, t = torch.randn(N, H), torch.randint(0, V, (N,))
    assert_close(ours(x, t), ref(x, t).double(), input_scale=10.0, terms=N)
    ref2 = torch.nn.LinearCrossEntropyLoss(H, V, **kwargs)
    ref2.load_state_dict(ours.state_dict())
    for (n, a), (_, c) in zip(ours.state_dict().items(), ref2.state_dict().items()):
        assert torch.equal(a, c), n
    ours(x, t).backward()
    ref(x, t).backward()
    for (n, p), (_, q) in zip(ours.named_parameters(), ref.named_parameters()):
        assert_close(p.grad, q.grad.double(), input_scale=10.0, terms=N, msg=n)


def test_autocast_bf16_matches_torch():
    x, w, b, t, _ = _problem(dtype=torch.float32)
    leaves = [a.clone().requires_grad_() for a in (x, w, b)]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours = fused_ce.linear_cross_entropy(*leaves[:2], t, linear_bias=leaves[2])
        ref = torch_compat.linear_cross_entropy(
            x.bfloat16().double(), w.bfloat16().double(), t, linear_bias=b.bfloat16().double()
        )
    assert ours.dtype == torch.float32
    ours.backward()
    for leaf in leaves:
        assert leaf.grad.dtype == torch.float32
    # the logits are bf16 (rounded once from the exact product): a few bf16 roundings off the fp64 loss
    assert abs(ours.item() - ref.item()) <= 4 * 2**-8 * abs(ref.item())


def test_all_rows_ignored_and_no_rows():
    x, w, _b, t, _ = _problem(n=4)
    t.fill_(-100)
    xg = x.clone().requires_grad_()
    mean = fused_ce.linear_cross_entropy(xg, w, t)
    assert mean.isnan()
    mean.backward()
    assert (xg.grad == 0).all()
    assert fused_ce.linear_cross_entropy(x[:0], w, t[:0], reduction="sum") == 0
    assert fused_ce.linear_cross_entropy(x[:0], w, t[:0]).isnan()


@pytest.mark.parametrize("workspace_bytes", [64 * V * 8, 32 * 8 * 16], ids=["whole_rows", "vocabulary_tiles"])
def test_bitwise_identical_at_one_and_two_threads(monkeypatch, workspace_bytes):
    """The chunks (from the workspace knob: 64 whole rows, or 32-row tiles of 8 classes) are the same and run
    in a fixed order whatever the number of threads, and so do the reductions."""
    monkeypatch.setattr(fused_ce.linear, "workspace_mib", workspace_bytes / 2**20)
    x, w, b, t, cw = _problem(n=300, weighted=True)
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            results.append(
                _losses_and_grads(
                    lambda *a: fused_ce.linear_cross_entropy(
                        a[0], a[1], t, linear_bias=a[2], weight=cw, label_smoothing=0.1
                    ),
                    x,
                    w,
                    b,
                )
            )
    finally:
        torch.set_num_threads(threads)
    for name, one, two in zip(["loss", "dX", "dW", "db"], *results):
        assert torch.equal(one, two), name

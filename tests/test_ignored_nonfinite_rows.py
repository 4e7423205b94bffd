"""An ignored row (target == ignore_index) counts for nothing whatever its logits hold: all -inf, +inf, NaN. Its
loss is 0 and it changes no reduction (none, mean, sum), and its gradient is exactly 0, on every path: the plain
loss (every CPU instruction set, the CUDA kernels under emulation), the linear loss (whole rows and vocabulary
tiles), the vocabulary-parallel loss and linear loss (world sizes 1 and 2 over gloo), torch.func.vmap over the
loss (with a shared and a per-sample class weight), and the torch-op paths used where no kernel applies: the
language-model options under torch.func transforms, and the differentiable gradient of a double backward. Also
the slice op ce_partial_grad itself, whatever coefficients it gets for such a row.

The answer is torch's in fp64 (lm_reference.py with the language-model options) on the same inputs with the
ignored rows' logits replaced by 0: those rows count for nothing, so nothing else changes, and torch's loss on
the inputs themselves is that (asserted where there are no options; with the z-loss the reference's own
0 * lse**2 is NaN there). Its gradient on the inputs themselves is NaN for those rows (README, "Differences from
PyTorch"), 0 here. A row whose lse is +-inf or NaN turns any term multiplied by 0 into NaN: the paths must
select such rows away, not scale them by 0.
"""

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from cpu_isas import SUPPORTED_ISAS
from helpers import DEVICES, EMULATED_CUDA, assert_close, input_magnitude, random_grad_output
from lm_reference import reference
from partial_stats_reference import partial_grad

import fused_ce
import fused_ce.linear
import fused_ce.testing

INF, NAN = float("inf"), float("nan")
C, H = 37, 6
TARGET = torch.tensor([0, -100, C - 1, -100, 3, -100, 1])
IGNORED = TARGET == -100
REDUCTIONS = ["none", "mean", "sum"]
# fused_ce.cross_entropy's options; `weighted` passes the class weights.
# "z_loss" squares the ignored rows' lse of -inf, inf, NaN; the cap of "lm" makes the +-inf logits finite.
OPTIONS = {
    "plain": {},
    "smoothing_weight": {"label_smoothing": 0.1, "weighted": True},
    "z_loss": {"lse_square_scale": 1e-2, "logit_scale": 0.7},
    "lm": {"label_smoothing": 0.1, "weighted": True, "lse_square_scale": 1e-2, "logit_scale": 1.3, "softcap": 6.0},
}
# The class slices of two ranks; each holds non-finite logits of the +inf and the NaN row.
SIZES = [17, 20]
# 448 bytes: the linear losses take the 7 fp64 rows in tiles of 4 classes (linear.tile_shape).
TILED_WORKSPACE_MIB = 448 / 2**20

# Every CPU instruction set (the plain and linear kernels are built for each), the CUDA kernels under the
# emulator, and a GPU where one is visible.
BACKENDS = (
    [pytest.param(("cpu", isa), id=f"cpu-{isa}") for isa in SUPPORTED_ISAS]
    + (
        [pytest.param(("cpu", None), id=EMULATED_CUDA, marks=pytest.mark.emulated_cuda)]
        if fused_ce.testing.emulated_cuda_available()
        else []
    )
    + ([pytest.param(("cuda", None), id="cuda")] if torch.cuda.is_available() else [])
)


@pytest.fixture(params=BACKENDS)
def backend(request, monkeypatch):
    """The device of a BACKENDS entry, with FUSED_CE_CPU_CAPABILITY set to its instruction set (CPU only)."""
    device, isa = request.param
    if isa is not None:
        monkeypatch.setenv("FUSED_CE_CPU_CAPABILITY", isa)
    return device


def logits_problem():
    """fp64 logits (7, C), class weights: rows 1, 3 and 5 are ignored and hold all -inf, +inf (in both slices
    of SIZES), and NaN with -inf."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(len(TARGET), C, dtype=torch.float64, generator=g) * 2
    x[1] = -INF
    x[3, [1, C - 2]] = INF
    x[5, [0, C - 1]] = NAN
    x[5, 3] = -INF
    return x, torch.rand(C, dtype=torch.float64, generator=g) + 0.5


def linear_problem():
    """fp64 input (7, H), head weight (C, H), bias, class weights. The ignored rows' logits leave fp64's range
    from finite inputs: column 0 of the head weight lies in [2, 3], so 1e308 in column 0 of an input row makes all
    its logits +inf (row 3), -1e308 all -inf (row 1); the gradients of the head stay finite and exact (0 x 1e308).
    NaN logits cannot be made so (with FMA the sum of two overflowing products of opposite signs stays inf): row
    5's input holds a NaN, which also makes column 0 of the head weight's gradient 0 * NaN = NaN in any matrix
    product, torch's too (that column is left out of the comparison)."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(len(TARGET), H, dtype=torch.float64, generator=g)
    w = torch.randn(C, H, dtype=torch.float64, generator=g)
    w[:, 0] = torch.rand(C, dtype=torch.float64, generator=g) + 2
    x[1, 0], x[3, 0], x[5, 0] = -1e308, 1e308, NAN
    return x, w, torch.randn(C, dtype=torch.float64, generator=g), torch.rand(C, dtype=torch.float64, generator=g) + 0.5


def _split(options, weight):
    """(fused_ce keyword arguments, lm_reference arguments) of an OPTIONS entry."""
    kwargs = {k: v for k, v in options.items() if k != "weighted"}
    kwargs["weight"] = weight if options.get("weighted") else None
    ref = (
        kwargs["weight"],
        kwargs.get("label_smoothing", 0.0),
        kwargs.get("logit_scale", 1.0),
        kwargs.get("softcap") or 0.0,
        kwargs.get("lse_square_scale", 0.0),
    )
    return kwargs, ref


def torch_answer(x, target, reduction, ref_args, go, linear=None):
    """The fp64 loss and gradient (of x, and of the head weight and bias when `linear` = (weight, bias)) of
    lm_reference.reference, the loss being sum(loss * go), on x with the ignored rows replaced by 0. Without
    options that is torch's cross_entropy on x itself, which is asserted."""
    ignored = target == -100
    xs = torch.where(ignored.unsqueeze(-1), 0.0, x.double()).requires_grad_()
    leaves = [xs] + ([t.double().clone().requires_grad_() for t in linear] if linear else [])
    logits = F.linear(xs, *leaves[1:]) if linear else xs
    weight, eps, scale, cap, z = ref_args
    weight = None if weight is None else weight.double()
    loss = reference(logits, target, weight, reduction, eps, scale, cap, z)[0]
    if (scale, cap, z) == (1.0, 0.0, 0.0):
        raw = F.linear(x.double(), *(t.double() for t in linear)) if linear else x.double()
        assert_close(
            F.cross_entropy(raw, target, weight, reduction=reduction, label_smoothing=eps),
            loss,
            msg="torch's loss on the inputs themselves",
            input_scale=input_magnitude(logits),
        )
    grads = torch.autograd.grad(loss, leaves, go.double())
    return loss.detach(), grads, input_magnitude(logits)


def on(device, kwargs):
    """fused_ce keyword arguments with the class weights on `device`."""
    return dict(kwargs, weight=None if kwargs["weight"] is None else kwargs["weight"].to(device))


def check(what, out, grad, expected, expected_grad, scale, ignored=IGNORED):
    """The loss and a gradient against the fp64 answer, and the ignored rows' gradient exactly 0."""
    out, grad = out.detach().cpu(), grad.detach().cpu()
    assert_close(out, expected, msg=f"{what}: loss", input_scale=scale, terms=ignored.numel())
    assert_close(grad, expected_grad, msg=f"{what}: gradient", input_scale=scale, terms=ignored.numel())
    assert torch.equal(grad[ignored], torch.zeros_like(grad[ignored])), f"{what}: ignored rows' gradient"


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("options", list(OPTIONS))
def test_cross_entropy(options, dtype, backend):
    x, weight = (t.to(dtype) for t in logits_problem())
    kwargs, ref_args = _split(OPTIONS[options], weight)
    for reduction in REDUCTIONS:
        leaf = x.to(backend).requires_grad_()
        out = fused_ce.cross_entropy(leaf, TARGET.to(backend), reduction=reduction, **on(backend, kwargs))
        go = random_grad_output(out).to(dtype)
        (grad,) = torch.autograd.grad(out, leaf, go)
        expected, (expected_grad,), scale = torch_answer(x, TARGET, reduction, ref_args, go.cpu())
        check(f"{reduction} {dtype}", out, grad, expected, expected_grad, scale)


@pytest.mark.parametrize("tiles", ["whole_rows", "vocabulary_tiles"])
@pytest.mark.parametrize("options", ["smoothing_weight", "lm"])
def test_linear_cross_entropy(options, tiles, backend, monkeypatch):
    if tiles == "vocabulary_tiles":
        monkeypatch.setattr(fused_ce.linear, "workspace_mib", TILED_WORKSPACE_MIB)
        assert fused_ce.linear.tile_shape(len(TARGET), C, torch.float64) == (len(TARGET), 4)
    x, w, b, cw = linear_problem()
    kwargs, ref_args = _split(OPTIONS[options], cw)
    for reduction in REDUCTIONS:
        leaves = [t.to(backend).requires_grad_() for t in (x, w, b)]
        out = fused_ce.linear_cross_entropy(
            leaves[0], leaves[1], TARGET.to(backend), linear_bias=leaves[2], reduction=reduction, **on(backend, kwargs)
        )
        go = random_grad_output(out)
        gx, gw, gb = (g.cpu() for g in torch.autograd.grad(out, leaves, go))
        expected, (ex, ew, eb), scale = torch_answer(x, TARGET, reduction, ref_args, go.cpu(), linear=(w, b))
        what = f"{tiles} {reduction}"
        check(what, out, gx, expected, ex, scale)
        assert_close(gw[:, 1:], ew[:, 1:], msg=f"{what}: head weight's gradient", input_scale=scale, terms=len(x))
        assert_close(gb, eb, msg=f"{what}: bias gradient", input_scale=scale, terms=len(x))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", ["shared_weight", "per_sample_weight", "lm"])
def test_vmap(case, device):
    """torch.func.vmap over two samples: one kernel call per op (_core/vmap.py), a per-sample weight folded into a
    probability target, and with the language-model options the torch-op composite (_lm_options.py)."""
    x, weight = logits_problem()
    xb = torch.stack([x, x.flip(1)]).to(device)
    tb = torch.stack([TARGET, TARGET.flip(0)]).to(device)
    wb = torch.stack([weight, weight.flip(0)]).to(device)
    options = {k: v for k, v in OPTIONS["lm" if case == "lm" else "smoothing_weight"].items() if k != "weighted"}
    for reduction in REDUCTIONS:
        leaf = xb.clone().requires_grad_()
        if case == "per_sample_weight":
            out = torch.func.vmap(
                lambda xi, ti, wi: fused_ce.cross_entropy(xi, ti, wi, reduction=reduction, **options)
            )(leaf, tb, wb)
        else:
            out = torch.func.vmap(lambda xi, ti: fused_ce.cross_entropy(xi, ti, wb[0], reduction=reduction, **options))(
                leaf, tb
            )
        go = random_grad_output(out)
        (grad,) = torch.autograd.grad(out, leaf, go)
        for s in range(2):
            _, ref_args = _split(dict(options, weighted=True), wb[s if case == "per_sample_weight" else 0].cpu())
            expected, (expected_grad,), scale = torch_answer(xb[s].cpu(), tb[s].cpu(), reduction, ref_args, go[s].cpu())
            check(f"{reduction} sample {s}", out[s], grad[s], expected, expected_grad, scale, tb[s].cpu() == -100)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("options", ["smoothing_weight", "lm"])
def test_double_backward(options, device):
    """create_graph=True: the gradient is written with differentiable torch ops (_core/double_backward.py); it and
    the Hessian-vector product are 0 on the ignored rows and torch's elsewhere."""
    x, weight = logits_problem()
    kwargs, (weight, *ref_args) = _split(OPTIONS[options], weight)
    v = torch.randn(x.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    for reduction in REDUCTIONS:
        leaf = x.to(device).requires_grad_()
        out = fused_ce.cross_entropy(leaf, TARGET.to(device), reduction=reduction, **on(device, kwargs))
        go = random_grad_output(out)
        (grad,) = torch.autograd.grad(out, leaf, go, create_graph=True)
        (hvp,) = torch.autograd.grad(grad, leaf, v.to(device))
        xs = torch.where(IGNORED.unsqueeze(1), 0.0, x).requires_grad_()
        loss = reference(xs, TARGET, weight, reduction, *ref_args)[0]
        (expected_grad,) = torch.autograd.grad(loss, xs, go.cpu(), create_graph=True)
        (expected_hvp,) = torch.autograd.grad(expected_grad, xs, v)
        scale = input_magnitude(x)
        check(reduction, out, grad, loss.detach(), expected_grad.detach(), scale)
        check(f"{reduction}: Hessian-vector product", out, hvp, loss.detach(), expected_hvp, scale)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("transform", [(1.0, 0.0), (1.3, 6.0)])
def test_partial_grad_writes_zero_for_ignored_rows(transform, device):
    """ce_partial_grad (the vocabulary-parallel backward) writes 0 for an ignored row whatever its logits and
    coefficients hold (here an lse of -inf, inf or NaN and nonzero coefficients), the formula elsewhere."""
    x, weight = logits_problem()
    g = torch.Generator().manual_seed(2)
    coefs = torch.rand(4, len(TARGET), dtype=torch.float64, generator=g) + 0.5
    coefs[0] = torch.logsumexp(torch.where(IGNORED.unsqueeze(1), 0.0, x), 1)
    coefs[0, IGNORED] = torch.tensor([-INF, INF, NAN], dtype=torch.float64)
    ops = fused_ce._core.library.kernel_ops()
    grad = ops.ce_partial_grad(
        x.to(device), TARGET.to(device), weight.to(device), coefs.to(device), 0, -100, *transform
    ).cpu()
    assert torch.equal(grad[IGNORED], torch.zeros_like(grad[IGNORED]))
    expected = partial_grad(x, TARGET, weight, coefs, 0, -100, *transform)
    assert_close(grad, expected, msg="rows that count", input_scale=input_magnitude(x))


# ---- the vocabulary-parallel losses: one process group per world size runs every case ----
def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# The parallel linear loss with the whole slice in one tile, and in tiles of 4 classes.
LINEAR_WORKSPACES = {"whole_slice": fused_ce.linear.workspace_mib, "vocabulary_tiles": TILED_WORKSPACE_MIB}


def _parallel_cases():
    for reduction in REDUCTIONS:
        for options in OPTIONS:
            yield reduction, options


def _worker(rank, world, port, out_dir):
    from fused_ce import parallel

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    sizes = SIZES if world == 2 else [C]
    lo, hi = sum(sizes[:rank]), sum(sizes[: rank + 1])
    x, weight = logits_problem()
    lx, lw, lb, lcw = linear_problem()
    backends = ["cpu"] + ([EMULATED_CUDA] if fused_ce.testing.emulated_cuda_available() else [])
    results = {}
    for backend in backends:
        with fused_ce.testing.emulated_cuda() if backend == EMULATED_CUDA else torch.enable_grad():
            for reduction, options in _parallel_cases():
                kwargs, _ = _split(OPTIONS[options], weight[lo:hi])
                shard = x[:, lo:hi].clone().requires_grad_()
                out = parallel.cross_entropy(shard, TARGET, reduction=reduction, **kwargs)
                (grad,) = torch.autograd.grad(out, shard, random_grad_output(out))
                results[backend, "cross_entropy", reduction, options] = (out.detach(), grad)
                kwargs, _ = _split(OPTIONS[options], lcw[lo:hi])
                for tiles, workspace in LINEAR_WORKSPACES.items():
                    fused_ce.linear.workspace_mib = workspace
                    leaves = [
                        lx.clone().requires_grad_(),
                        lw[lo:hi].clone().requires_grad_(),
                        lb[lo:hi].clone().requires_grad_(),
                    ]
                    out = parallel.linear_cross_entropy(
                        leaves[0], leaves[1], TARGET, linear_bias=leaves[2], reduction=reduction, **kwargs
                    )
                    grads = torch.autograd.grad(out, leaves, random_grad_output(out))
                    results[backend, "linear", tiles, reduction, options] = (out.detach(),) + grads
    torch.save(results, os.path.join(out_dir, f"{rank}.pt"))
    dist.destroy_process_group()


@pytest.mark.parametrize("world", [1, 2])
def test_parallel(world, tmp_path):
    mp.spawn(_worker, args=(world, _free_port(), str(tmp_path)), nprocs=world)
    sizes = SIZES if world == 2 else [C]
    x, weight = logits_problem()
    lx, lw, lb, lcw = linear_problem()
    for rank in range(world):
        results = torch.load(os.path.join(tmp_path, f"{rank}.pt"))
        lo, hi = sum(sizes[:rank]), sum(sizes[: rank + 1])
        backends = sorted({k[0] for k in results})
        assert backends == sorted(["cpu"] + ([EMULATED_CUDA] if fused_ce.testing.emulated_cuda_available() else []))
        for backend in backends:
            for reduction, options in _parallel_cases():
                what = f"rank {rank} {backend} {reduction} {options}"
                out, grad = results[backend, "cross_entropy", reduction, options]
                _, ref_args = _split(OPTIONS[options], weight)
                expected, (expected_grad,), scale = torch_answer(
                    x, TARGET, reduction, ref_args, random_grad_output(out)
                )
                check("cross_entropy " + what, out, grad, expected, expected_grad[:, lo:hi], scale)
                _, ref_args = _split(OPTIONS[options], lcw)
                for tiles in LINEAR_WORKSPACES:
                    out, gx, gw, gb = results[backend, "linear", tiles, reduction, options]
                    expected, (ex, ew, eb), scale = torch_answer(
                        lx, TARGET, reduction, ref_args, random_grad_output(out), linear=(lw, lb)
                    )
                    check(f"linear {tiles} {what}", out, gx, expected, ex, scale)
                    assert_close(
                        gw[:, 1:],
                        ew[lo:hi, 1:],
                        msg=f"linear {tiles} {what}: head weight's gradient",
                        input_scale=scale,
                        terms=len(lx),
                    )
                    assert_close(
                        gb, eb[lo:hi], msg=f"linear {tiles} {what}: bias gradient", input_scale=scale, terms=len(lx)
                    )

"""fused_ce.parallel.cross_entropy over gloo, world sizes 2, 3 and 4 with uneven and one-class slices: on every
rank the loss and the gradient of the rank's slice match torch on the full logits (fp64, and fp32 against the
fp64 answer), and single-process fused_ce, for (N, C), N-D and unbatched logits, every reduction, smoothing,
class weights, z-loss, the logits transform (logit_scale, softcap) and ignored rows, on the CPU kernels and on
the emulated CUDA kernels. Each rank's fused
ce_partial_stats is checked against the torch-op statistics of partial_stats_reference.py; the forward runs 3
collectives (2 with class_offsets) and backward none; bad arguments raise torch's errors.

One process group per world size runs every case, to keep the spawns (the slow part) few.
"""

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
import torch_compat
from helpers import random_grad_output
from lm_reference import reference
from partial_stats_reference import partial_stats

import fused_ce
import fused_ce.testing

CASES = [
    # (reduction, label_smoothing, weighted, lse_square_scale, logit_scale, softcap)
    ("mean", 0.0, False, 0.0, 1.0, None),
    ("sum", 0.1, True, 0.0, 1.0, None),
    ("none", 0.2, True, 0.0, 1.0, None),
    ("mean", 0.1, True, 0.0, 1.0, None),
    ("mean", 0.0, False, 1e-2, 1.0, None),
    ("none", 0.0, True, 1e-2, 1.0, None),
    # every option at once (the cap bends the logits, about 5 +- 9, without flattening them), and a scale alone
    ("mean", 0.1, True, 1e-2, 1.3, 6.0),
    ("none", 0.0, False, 0.0, 0.7, None),
]
# The options of the LM-options case, for the fused statistics of each slice.
LM_TRANSFORM = (1.3, 6.0)
LAYOUTS = ["rows", "nd", "unbatched"]
# Error relative to the largest magnitude of the fp64 answer: fp64 logits, and fp32 logits (fp32 accumulation).
TOL = {torch.float64: 1e-12, torch.float32: 2e-5}


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _problem(layout, C):
    """Full fp64 logits (class dim 1, or 0 when unbatched), class weights and global targets: the first and the
    last class, ignored rows and the middle class."""
    g = torch.Generator().manual_seed(0)
    if layout == "unbatched":
        return (
            torch.randn(C, dtype=torch.float64, generator=g) * 3 + 5,
            torch.rand(C, dtype=torch.float64, generator=g) + 0.5,
            torch.tensor(C - 1),
        )
    shape = (7, C) if layout == "rows" else (3, C, 2)
    logits = torch.randn(shape, dtype=torch.float64, generator=g) * 3 + 5
    weight = torch.rand(C, dtype=torch.float64, generator=g) + 0.5
    flat = torch.tensor([0, C - 1, -100, 1, C - 1, 0, C // 2])
    return logits, weight, flat if layout == "rows" else flat[:6].view(3, 2)


def _slice(t, lo, hi, layout):
    return t[lo:hi] if layout == "unbatched" else t[:, lo:hi]


def _errors(call):
    """(type name, message) of each bad call, in order."""
    out = []
    for f in call:
        try:
            f()
            out.append(None)
        except Exception as e:
            out.append((type(e).__name__, str(e)))
    return out


def _bad_calls(ce, logits, target, weight_slice):
    """The same bad arguments for a cross-entropy function: ce(logits, target, **kwargs)."""
    return [
        lambda: ce(logits, target.int()),  # target dtype
        lambda: ce(logits, target[:5]),  # batch size
        lambda: ce(logits, target, reduction="avg"),  # reduction string
        lambda: ce(logits, torch.where(target == 0, 10**3, target)),  # out-of-range global target
        lambda: ce(logits, target, weight=torch.cat([weight_slice, weight_slice[:1]])),  # weight size per slice
    ]


def _worker(rank, world, port, sizes, out_dir):
    from fused_ce import parallel

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    calls = {"n": 0}
    orig_ar, orig_ag = dist.all_reduce, dist.all_gather

    def count(fn):
        def wrapped(*a, **k):
            calls["n"] += 1
            return fn(*a, **k)

        return wrapped

    dist.all_reduce, dist.all_gather = count(orig_ar), count(orig_ag)
    C = sum(sizes)
    lo, hi = sum(sizes[:rank]), sum(sizes[: rank + 1])
    offsets = [sum(sizes[:r]) for r in range(world + 1)]
    backends = ["cpu"] + (["emulated_cuda"] if fused_ce.testing.emulated_cuda_available() else [])
    results = {}
    for backend in backends:
        with fused_ce.testing.emulated_cuda() if backend == "emulated_cuda" else torch.enable_grad():
            ops = fused_ce._core.library.kernel_ops()
            for layout in LAYOUTS:
                logits, weight, target = _problem(layout, C)
                for dtype in (torch.float64, torch.float32):
                    for case in CASES:
                        reduction, eps, weighted, z, scale, cap = case
                        shard = _slice(logits, lo, hi, layout).to(dtype).clone().requires_grad_()
                        w = weight[lo:hi].to(dtype) if weighted else None
                        calls["n"] = 0
                        loss = parallel.cross_entropy(
                            shard,
                            target,
                            weight=w,
                            reduction=reduction,
                            label_smoothing=eps,
                            lse_square_scale=z,
                            logit_scale=scale,
                            softcap=cap,
                        )
                        n_forward = calls["n"]
                        # A non-uniform upstream gradient: backward must scale each row by its own.
                        loss.backward(random_grad_output(loss).to(dtype))
                        results[backend, layout, dtype, case] = (
                            loss.detach(),
                            shard.grad,
                            n_forward,
                            calls["n"] - n_forward,
                        )
                # The fused statistics of this rank's slice against the torch-op ones.
                x = _slice(logits, lo, hi, layout)
                x, t = (x, target) if layout != "unbatched" else (x.unsqueeze(0), target.unsqueeze(0))
                results[backend, layout, "stats"] = (
                    ops.ce_partial_stats(x, t, weight[lo:hi], lo, -100, True),
                    partial_stats(x, t, weight[lo:hi], lo, -100, True),
                )
                results[backend, layout, "lm_stats"] = (
                    ops.ce_partial_stats(x, t, weight[lo:hi], lo, -100, True, *LM_TRANSFORM),
                    partial_stats(x, t, weight[lo:hi], lo, -100, True, *LM_TRANSFORM),
                )
        logits, _, target = _problem("rows", C)
        calls["n"] = 0
        parallel.cross_entropy(_slice(logits, lo, hi, "rows"), target, class_offsets=offsets)
        results[backend, "collectives_with_offsets"] = calls["n"]
    logits, weight, target = _problem("rows", C)
    results["errors"] = _errors(
        _bad_calls(parallel.cross_entropy, _slice(logits, lo, hi, "rows"), target, weight[lo:hi])
    )
    ignored = _slice(logits, lo, hi, "rows").clone().requires_grad_()
    all_ignored_loss = parallel.cross_entropy(ignored, torch.full_like(target, -100), label_smoothing=0.1)
    all_ignored_loss.backward()
    results["all_ignored"] = (all_ignored_loss.detach(), ignored.grad)
    results["offsets_error"] = _errors(
        [lambda: parallel.cross_entropy(_slice(logits, lo, hi, "rows"), target, class_offsets=offsets[:-1])]
    )
    results["softcap_error"] = _errors(
        [lambda: parallel.cross_entropy(_slice(logits, lo, hi, "rows"), target, softcap=-1.0)]
    )
    torch.save(results, os.path.join(out_dir, f"{rank}.pt"))
    dist.destroy_process_group()


def _torch_reference(logits, target, weight, reduction, eps, z, scale, cap):
    """Loss and gradient on the full logits of lm_reference.reference (plain torch in fp64: cross-entropy of
    the transformed logits plus the z-loss); unbatched logits as one row."""
    x = logits.clone().requires_grad_()
    rows, t = (x, target) if x.dim() > 1 else (x.unsqueeze(0), target.unsqueeze(0))
    loss = reference(rows, t, weight, reduction, eps, scale, cap, z)[0]
    loss = loss.squeeze(0) if x.dim() == 1 and reduction == "none" else loss
    loss.backward(random_grad_output(loss))
    return loss.detach(), x.grad


def _fused_reference(logits, target, weight, reduction, eps, z, scale, cap):
    """Loss and gradient of single-process fused_ce.cross_entropy on the full logits."""
    x = logits.clone().requires_grad_()
    loss = fused_ce.cross_entropy(
        x,
        target,
        weight=weight,
        reduction=reduction,
        label_smoothing=eps,
        lse_square_scale=z,
        logit_scale=scale,
        softcap=cap,
    )
    loss.backward(random_grad_output(loss))
    return loss.detach(), x.grad


def _assert_close(actual, expected, tol, what):
    assert actual.shape == expected.shape, what
    scale = expected.abs().max().item()
    err = (actual.double() - expected).abs().max().item() if expected.numel() else 0.0
    assert err <= tol * scale, f"{what}: error {err:.3g} > {tol:g} x {scale:.3g}"


@pytest.mark.parametrize("sizes", [[3, 5], [1, 4, 2], [2, 1, 3, 1]])
def test_parallel_cross_entropy_matches_torch(sizes, tmp_path):
    world = len(sizes)
    mp.spawn(_worker, args=(world, _free_port(), sizes, str(tmp_path)), nprocs=world)
    C = sum(sizes)
    logits, weight, target = _problem("rows", C)
    # fused_ce raises torch 2.13's errors; an older torch words some of them differently (torch_compat.py)
    reference = F.cross_entropy if torch_compat.FOLLOWS_CURRENT_TORCH else fused_ce.cross_entropy
    torch_errors = _errors(_bad_calls(reference, logits, target, weight))
    for rank in range(world):
        results = torch.load(os.path.join(tmp_path, f"{rank}.pt"))
        lo, hi = sum(sizes[:rank]), sum(sizes[: rank + 1])
        backends = sorted({k[0] for k in results if isinstance(k, tuple)})
        assert backends == (["cpu", "emulated_cuda"] if fused_ce.testing.emulated_cuda_available() else ["cpu"])
        for backend in backends:
            for layout in LAYOUTS:
                logits, weight, target = _problem(layout, C)
                for stats in ("stats", "lm_stats"):
                    fused, expected = results[backend, layout, stats]
                    _assert_close(fused, expected, 1e-12, f"{backend} {layout} partial {stats}, rank {rank}")
                for case in CASES:
                    w = weight if case[2] else None
                    ref_loss, ref_grad = _torch_reference(logits, target, w, case[0], case[1], *case[3:])
                    fused_loss, fused_grad = _fused_reference(logits, target, w, case[0], case[1], *case[3:])
                    ref_slice, fused_slice = _slice(ref_grad, lo, hi, layout), _slice(fused_grad, lo, hi, layout)
                    for dtype in (torch.float64, torch.float32):
                        loss, grad, n, n_backward = results[backend, layout, dtype, case]
                        what = f"{backend} {layout} {dtype} {case} rank {rank}"
                        assert n == 3, "all_gather of sizes + all_reduce MAX + all_reduce SUM"
                        assert n_backward == 0, "backward needs no collective"
                        assert loss.dtype == dtype and grad.dtype == dtype, what
                        _assert_close(loss, ref_loss, TOL[dtype], "loss " + what)
                        _assert_close(loss, fused_loss, TOL[dtype], "loss vs fused_ce " + what)
                        _assert_close(grad, ref_slice, TOL[dtype], "grad " + what)
                        _assert_close(grad, fused_slice.double(), TOL[dtype], "grad vs fused_ce " + what)
            assert results[backend, "collectives_with_offsets"] == 2
        parallel_errors = results["errors"]
        assert parallel_errors[:4] == torch_errors[:4]
        assert parallel_errors[4] == (
            "RuntimeError",
            "weight tensor should be defined either for all "
            f"{hi - lo} classes or no classes but got weight tensor of shape: [{hi - lo + 1}]",
        )
        rows_logits, _, rows_target = _problem("rows", C)
        x = rows_logits.clone().requires_grad_()
        F.cross_entropy(x, torch.full_like(rows_target, -100), label_smoothing=0.1).backward()
        loss, grad = results["all_ignored"]
        assert loss.isnan() and torch.equal(grad, x.grad[:, lo:hi]), "mean over no counted row: NaN, gradient 0"
        ((kind, message),) = results["offsets_error"]
        assert kind == "ValueError" and message.startswith(f"class_offsets must hold {world + 1} increasing offsets")
        assert results["softcap_error"] == _errors(
            [lambda: fused_ce.cross_entropy(rows_logits, rows_target, softcap=-1.0)]
        )
        assert results["softcap_error"][0][0] == "ValueError"

"""fused_ce.parallel.linear_cross_entropy over gloo, world sizes 2, 3 and 4 with uneven and one-class slices,
some cut into several vocabulary tiles by a small workspace: on every rank the loss, the input's gradient and
the gradients of the rank's linear_weight and linear_bias slices match the fp64 reference on the full head
(tests/lm_reference.py: torch's cross_entropy of F.linear plus the language-model options) and single-process
fused_ce.linear_cross_entropy, in fp64 and fp32 (against the fp64 answer), for every reduction, smoothing,
class weights, bias, z-loss, logit scale and soft-capping, with targets in the first and last slice and ignored
rows, on the CPU kernels and on the emulated CUDA kernels. Forward runs 3 collectives (2 with class_offsets),
backward one (the input's gradient).
"""

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from lm_reference import reference, rel_err

import fused_ce
import fused_ce.linear
import fused_ce.testing

N, H = 37, 6
CASES = [
    # (reduction, label_smoothing, weighted, bias, lse_square_scale, logit_scale, softcap)
    ("mean", 0.0, False, False, 0.0, 1.0, None),
    ("sum", 0.1, True, True, 0.0, 1.0, None),
    ("none", 0.2, True, True, 1e-2, 1.0, None),
    ("mean", 0.1, True, True, 1e-3, 0.7, 2.5),
    ("none", 0.0, False, True, 0.0, 1.3, 4.0),
]
# Error relative to the largest magnitude of the fp64 answer.
TOL = {torch.float64: 1e-10, torch.float32: 3e-5}
# 4 KiB: 32-row tiles of 8 fp64 (16 fp32) classes for slices wider than 12 (25) classes, whole rows below.
WORKSPACE_MIB = 4096 / 2**20


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _problem(V):
    """fp64 input, full head weight, bias, class weights, upstream gradient for 'none', and global targets:
    the first and the last class, the last class of the first slice and ignored rows."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, H, dtype=torch.float64, generator=g)
    w = torch.randn(V, H, dtype=torch.float64, generator=g)
    b = torch.randn(V, dtype=torch.float64, generator=g)
    cw = torch.rand(V, dtype=torch.float64, generator=g) + 0.5
    t = torch.randint(0, V, (N,), generator=g)
    t[:4] = torch.tensor([0, V - 1, -100, 1])
    t[-3:] = torch.tensor([-100, V - 1, 0])
    grad = torch.rand(N, dtype=torch.float64, generator=g) + 0.5
    return x, w, b, cw, t, grad


def _run(case, x, w, b, cw, t, grad, fn, **kwargs):
    """Loss and the gradients of (x, w, b) under fn (a linear cross-entropy)."""
    reduction, eps, weighted, bias, z, scale, cap = case
    leaves = [x.clone().requires_grad_(), w.clone().requires_grad_()] + ([b.clone().requires_grad_()] if bias else [])
    loss = fn(
        leaves[0],
        leaves[1],
        t,
        linear_bias=leaves[2] if bias else None,
        weight=cw if weighted else None,
        reduction=reduction,
        label_smoothing=eps,
        lse_square_scale=z,
        logit_scale=scale,
        softcap=cap,
        **kwargs,
    )
    loss.backward(grad.to(loss.dtype) if reduction == "none" else None)
    return [loss.detach()] + [leaf.grad for leaf in leaves]


def _worker(rank, world, port, sizes, out_dir):
    from fused_ce import parallel

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    fused_ce.linear.workspace_mib = WORKSPACE_MIB
    calls = {"n": 0}
    orig_ar, orig_ag = dist.all_reduce, dist.all_gather

    def count(fn):
        def wrapped(*a, **k):
            calls["n"] += 1
            return fn(*a, **k)

        return wrapped

    dist.all_reduce, dist.all_gather = count(orig_ar), count(orig_ag)
    lo, hi = sum(sizes[:rank]), sum(sizes[: rank + 1])
    x, w, b, cw, t, grad = _problem(sum(sizes))
    backends = ["cpu"] + (["emulated_cuda"] if fused_ce.testing.emulated_cuda_available() else [])
    results = {}
    for backend in backends:
        with fused_ce.testing.emulated_cuda() if backend == "emulated_cuda" else torch.enable_grad():
            for dtype in (torch.float64, torch.float32):
                for case in CASES:

                    def fn(*a, **k):
                        calls["n"] = 0
                        loss = parallel.linear_cross_entropy(*a, **k)
                        results[backend, dtype, case, "forward collectives"] = calls["n"]
                        calls["n"] = 0
                        return loss

                    out = _run(
                        case, x.to(dtype), w[lo:hi].to(dtype), b[lo:hi].to(dtype), cw[lo:hi].to(dtype), t, grad, fn
                    )
                    results[backend, dtype, case] = out
                    results[backend, dtype, case, "backward collectives"] = calls["n"]
        calls["n"] = 0
        parallel.linear_cross_entropy(x, w[lo:hi], t, class_offsets=[sum(sizes[:r]) for r in range(world + 1)])
        results[backend, "collectives with offsets"] = calls["n"]
    # Unbatched: one row, 0-dim target.
    leaf = x[5].clone().requires_grad_()
    loss = parallel.linear_cross_entropy(leaf, w[lo:hi], t[5], reduction="none")
    loss.backward()
    results["unbatched"] = (loss.detach(), leaf.grad)
    torch.save(results, os.path.join(out_dir, f"{rank}.pt"))
    dist.destroy_process_group()


@pytest.mark.parametrize("sizes", [[30, 7], [40, 1, 25], [9, 20, 1, 13]])
def test_parallel_linear_cross_entropy_matches_the_reference(sizes, tmp_path):
    world = len(sizes)
    mp.spawn(_worker, args=(world, _free_port(), sizes, str(tmp_path)), nprocs=world)
    V = sum(sizes)
    x, w, b, cw, t, grad = _problem(V)

    def ref_fn(xi, wi, ti, linear_bias, weight, reduction, label_smoothing, lse_square_scale, logit_scale, softcap):
        return reference(
            F.linear(xi, wi, linear_bias),
            ti,
            weight,
            reduction,
            label_smoothing,
            logit_scale,
            softcap or 0.0,
            lse_square_scale,
        )[0]

    expected = {case: _run(case, x, w, b, cw, t, grad, ref_fn) for case in CASES}
    single = {case: _run(case, x, w, b, cw, t, grad, fused_ce.linear_cross_entropy) for case in CASES}
    ref_unbatched = [x[5].clone().requires_grad_()]
    ref_loss = F.cross_entropy(F.linear(ref_unbatched[0], w), t[5], reduction="none")
    ref_loss.backward()
    for rank in range(world):
        results = torch.load(os.path.join(tmp_path, f"{rank}.pt"))
        lo, hi = sum(sizes[:rank]), sum(sizes[: rank + 1])
        backends = sorted({k[0] for k in results if isinstance(k, tuple)})
        assert backends == (["cpu", "emulated_cuda"] if fused_ce.testing.emulated_cuda_available() else ["cpu"])
        for backend in backends:
            for dtype in (torch.float64, torch.float32):
                for case in CASES:
                    what = f"{backend} {dtype} {case} rank {rank}"
                    ours = results[backend, dtype, case]
                    assert results[backend, dtype, case, "forward collectives"] == 3, what
                    assert results[backend, dtype, case, "backward collectives"] == 1, what
                    for name, o, r, s in zip(
                        ["loss", "dX", "dW slice", "db slice"], ours, expected[case], single[case]
                    ):
                        if name != "loss" and name != "dX":
                            r, s = r[lo:hi], s[lo:hi]
                        assert o.dtype == dtype and o.shape == r.shape, f"{name} {what}"
                        assert rel_err(o, r) <= TOL[dtype], f"{name} {what}: {rel_err(o, r):.3g}"
                        assert rel_err(o, s) <= TOL[dtype], f"{name} vs fused_ce {what}: {rel_err(o, s):.3g}"
            assert results[backend, "collectives with offsets"] == 2
        loss, grad_x = results["unbatched"]
        assert loss.shape == () and rel_err(loss, ref_loss) < 1e-12 and rel_err(grad_x, ref_unbatched[0].grad) < 1e-12

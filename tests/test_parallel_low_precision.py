"""fused_ce.parallel.cross_entropy and fused_ce.parallel.linear_cross_entropy with fp16 and bf16 inputs, over gloo
with 2 ranks and uneven slices, on the CPU kernels and the emulated CUDA kernels: each rank's loss and
gradients against the fp64 reference on the whole vocabulary (tests/lm_reference.py), judged by the suite's
error bound for the dtype. The rows' statistics and the input's gradient are added over the ranks in fp32; a
sum in the low precision rounds every rank's share.

One process group runs every case (spawns are the slow part).

The linear head's logits tile and its gradient (dlogits) are held in the input's dtype, as in torch's eager
linear layer; the problem is chosen so that this rounds no logit (small dyadic inputs and weights: the logits are
exact in fp16 and bf16), and the reference of the gradients rounds the exact dlogits once to the dtype, as
ce_partial_grad does, before the products with the input and the weight, which are exact in fp64. The input's
hidden feature 0 is 0 while the weight's column 0 is 8 plus a little: the logits do not see it, but each rank's
share of the input's gradient in that column is about 8 times the whole (the shares cancel), so one rounding of
the shares to the dtype is several times the bound.
"""

import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from helpers import assert_close, input_magnitude, random_grad_output
from lm_reference import reference

import fused_ce
import fused_ce.linear
import fused_ce.testing

SIZES = [20, 17]  # classes of rank 0 and rank 1
N, H = 37, 7
DTYPES = (torch.float16, torch.bfloat16)
CASES = [
    # (reduction, label_smoothing, weighted, lse_square_scale, logit_scale, softcap)
    ("mean", 0.0, False, 0.0, 1.0, None),
    ("sum", 0.1, True, 0.0, 1.0, None),
    ("none", 0.1, True, 1e-2, 1.3, 4.0),
    ("mean", 0.2, True, 1e-3, 0.7, 3.0),
]
# 4 KiB: the linear loss's slices are cut into several vocabulary tiles.
WORKSPACE_MIB = 4096 / 2**20


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _problem():
    """fp64 values exact in fp16 and bf16: logits (N, C) with class weights and global targets (the first and
    the last class, ignored rows), and the same logits with every target's 6 above its row's largest (confident
    predictions: losses near 0.01, on which an error of the log-sum-exp shows); an LM head's input (N, H),
    weight (C, H) and bias whose products are exact too."""
    g = torch.Generator().manual_seed(0)
    C = sum(SIZES)
    logits = (torch.randn(N, C, generator=g, dtype=torch.float64) * 3).to(torch.bfloat16).double()
    weight = (torch.rand(C, generator=g, dtype=torch.float64) + 0.5).to(torch.bfloat16).double()
    target = torch.randint(0, C, (N,), generator=g)
    target[:4] = torch.tensor([0, C - 1, -100, SIZES[0]])
    target[-2] = -100
    counted = (target != -100).nonzero().squeeze(1)
    confident = logits.clone()
    confident[counted, target[counted]] = logits[counted].max(1).values + 6
    confident = confident.to(torch.bfloat16).double()
    x = torch.randint(-2, 3, (N, H), generator=g).double() / 2  # multiples of 1/2 up to 1
    x[:, 0] = 0
    w = torch.randint(-4, 5, (C, H), generator=g).double() / 8  # multiples of 1/8 up to 1/2
    w[:, 0] += 8
    b = torch.randint(-8, 9, (C,), generator=g).double() / 8
    return {"random": logits, "confident": confident}, weight, target, x, w, b


def _upstream(reduction, dtype):
    """The upstream gradient of the loss: random per row for 'none' (rounded to the dtype), else 1."""
    if reduction != "none":
        return torch.ones((), dtype=dtype)
    return random_grad_output(torch.empty(N), seed=7).to(dtype)


def _worker(rank, world, port, out_dir):
    from fused_ce import parallel

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    fused_ce.linear.workspace_mib = WORKSPACE_MIB
    lo, hi = sum(SIZES[:rank]), sum(SIZES[: rank + 1])
    logits, weight, target, x, w, b = _problem()
    backends = ["cpu"] + (["emulated_cuda"] if fused_ce.testing.emulated_cuda_available() else [])
    results = {}
    for backend in backends:
        with fused_ce.testing.emulated_cuda() if backend == "emulated_cuda" else torch.enable_grad():
            for dtype in DTYPES:
                for case in CASES:
                    reduction, eps, weighted, z, scale, cap = case
                    options = {
                        "reduction": reduction,
                        "label_smoothing": eps,
                        "lse_square_scale": z,
                        "logit_scale": scale,
                        "softcap": cap,
                        "weight": weight[lo:hi].to(dtype) if weighted else None,
                    }
                    for kind, full in logits.items():
                        shard = full[:, lo:hi].to(dtype).requires_grad_()
                        loss = parallel.cross_entropy(shard, target, **options)
                        loss.backward(_upstream(reduction, dtype))
                        results[backend, dtype, case, kind] = (loss.detach(), shard.grad)
                    leaves = [t.to(dtype).requires_grad_() for t in (x, w[lo:hi], b[lo:hi])]
                    loss = parallel.linear_cross_entropy(leaves[0], leaves[1], target, linear_bias=leaves[2], **options)
                    loss.backward(_upstream(reduction, dtype))
                    results[backend, dtype, case, "linear"] = [loss.detach()] + [t.grad for t in leaves]
    torch.save(results, os.path.join(out_dir, f"{rank}.pt"))
    dist.destroy_process_group()


def _reference(logits, target, weight, case, dtype):
    """The fp64 loss and its gradient w.r.t. the logits under _upstream, on the whole vocabulary."""
    reduction, eps, weighted, z, scale, cap = case
    leaf = logits.clone().requires_grad_()
    loss = reference(leaf, target, weight if weighted else None, reduction, eps, scale, cap or 0.0, z)[0]
    loss.backward(_upstream(reduction, dtype).double())
    return loss.detach(), leaf.grad


def test_fp16_and_bf16_match_the_fp64_reference(tmp_path):
    mp.spawn(_worker, args=(len(SIZES), _free_port(), str(tmp_path)), nprocs=len(SIZES))
    logits, weight, target, x, w, b = _problem()
    head_logits = x @ w.t() + b
    for dtype in DTYPES:  # so the reference's inputs are the ranks' inputs, and the head's logits are not rounded
        for t in (*logits.values(), weight, x, w, b, head_logits):
            assert torch.equal(t.to(dtype).double(), t), f"a value of the problem is not exact in {dtype}"
    for rank in range(len(SIZES)):
        results = torch.load(os.path.join(tmp_path, f"{rank}.pt"))
        lo, hi = sum(SIZES[:rank]), sum(SIZES[: rank + 1])
        backends = sorted({k[0] for k in results})
        assert backends == (["cpu", "emulated_cuda"] if fused_ce.testing.emulated_cuda_available() else ["cpu"])
        for backend in backends:
            for dtype in DTYPES:
                for case in CASES:
                    what = f"{backend} {dtype} {case} rank {rank}"
                    for kind, full in logits.items():
                        judge = {"dtype": dtype, "input_scale": input_magnitude(full, weight), "terms": full.numel()}
                        loss, grad = results[backend, dtype, case, kind]
                        ref_loss, ref_grad = _reference(full, target, weight, case, dtype)
                        assert loss.dtype == dtype and grad.dtype == dtype, what
                        assert_close(loss, ref_loss, msg=f"loss, {kind} logits, {what}", **judge)
                        assert_close(grad, ref_grad[:, lo:hi], msg=f"logits' gradient, {kind} logits, {what}", **judge)

                    loss, gx, gw, gb = results[backend, dtype, case, "linear"]
                    ref_loss, dlogits = _reference(head_logits, target, weight, case, dtype)
                    dlogits = dlogits.to(dtype).double()  # as ce_partial_grad rounds them
                    judge = {"dtype": dtype, "input_scale": input_magnitude(x, w, b, weight), "terms": x.numel()}
                    assert all(t.dtype == dtype for t in (loss, gx, gw, gb)), what
                    assert_close(loss, ref_loss, msg=f"linear loss, {what}", **judge)
                    assert_close(gx, dlogits @ w, msg=f"linear input's gradient, {what}", **judge)
                    assert_close(gw, (dlogits.t() @ x)[lo:hi], msg=f"linear weight's gradient, {what}", **judge)
                    assert_close(gb, dlogits.sum(0)[lo:hi], msg=f"linear bias's gradient, {what}", **judge)

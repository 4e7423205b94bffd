"""fused_ce.parallel.cross_entropy over gloo: loss and gradient slices match torch on the full logits (fp64)."""
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

CASES = [
    # (reduction, label_smoothing, weighted, lse_square_scale)
    ("mean", 0.0, False, 0.0), ("sum", 0.1, True, 0.0), ("none", 0.2, True, 0.0), ("mean", 0.1, True, 0.0),
    ("mean", 0.0, False, 1e-2),
]


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
    g = torch.Generator().manual_seed(0)
    C = sum(sizes)
    logits = torch.randn(7, C, dtype=torch.float64, generator=g) * 3
    weight = torch.rand(C, dtype=torch.float64, generator=g) + 0.5
    target = torch.tensor([0, C - 1, -100, 1, C - 1, 0, C // 2])
    lo = sum(sizes[:rank])
    results = []
    for reduction, eps, weighted, z in CASES:
        shard = logits[:, lo:lo + sizes[rank]].clone().requires_grad_()
        calls["n"] = 0
        loss = parallel.cross_entropy(shard, target, weight=weight[lo:lo + sizes[rank]] if weighted else None,
                                      reduction=reduction, label_smoothing=eps, lse_square_scale=z)
        n_collectives = calls["n"]
        loss.sum().backward()
        results.append((loss.detach(), shard.grad[:, :], n_collectives, calls["n"] - n_collectives))
    torch.save(results, os.path.join(out_dir, f"{rank}.pt"))
    dist.destroy_process_group()


def _reference(logits, target, weight, reduction, eps, z):
    x = logits.clone().requires_grad_()
    loss = F.cross_entropy(x, target, weight=weight, reduction=reduction, label_smoothing=eps)
    if z:
        valid = target != -100
        zrow = z * torch.logsumexp(x, -1) ** 2 * valid
        loss = loss + {"none": zrow, "sum": zrow.sum(), "mean": zrow.sum() / valid.sum()}[reduction]
    loss.sum().backward()
    return loss.detach(), x.grad


@pytest.mark.parametrize("sizes", [[3, 5], [1, 4, 2], [2, 1, 3, 1]])
def test_parallel_cross_entropy_matches_torch(sizes, tmp_path):
    world = len(sizes)
    mp.spawn(_worker, args=(world, _free_port(), sizes, str(tmp_path)), nprocs=world)
    g = torch.Generator().manual_seed(0)
    C = sum(sizes)
    logits = torch.randn(7, C, dtype=torch.float64, generator=g) * 3
    weight = torch.rand(C, dtype=torch.float64, generator=g) + 0.5
    target = torch.tensor([0, C - 1, -100, 1, C - 1, 0, C // 2])
    for rank in range(world):
        results = torch.load(os.path.join(tmp_path, f"{rank}.pt"))
        lo = sum(sizes[:rank])
        for (reduction, eps, weighted, z), (loss, grad, n, n_backward) in zip(CASES, results):
            ref_loss, ref_grad = _reference(logits, target, weight if weighted else None, reduction, eps, z)
            assert n == 3, "all_gather of sizes + all_reduce MAX + all_reduce SUM"
            assert n_backward == 0, "backward needs no collective"
            torch.testing.assert_close(loss, ref_loss, rtol=1e-12, atol=1e-12 * ref_loss.abs().max().item())
            torch.testing.assert_close(grad, ref_grad[:, lo:lo + sizes[rank]], rtol=1e-10, atol=1e-12)

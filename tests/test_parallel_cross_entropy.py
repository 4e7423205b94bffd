"""fused_ce.parallel.cross_entropy against torch on the full logits, world sizes 2 and 3 (gloo, spawn)."""
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F


def _worker(rank, world, port, queue):
    from fused_ce import parallel
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    gen = torch.Generator().manual_seed(0)
    bounds = {2: [0, 1, 6], 3: [0, 2, 3, 6]}[world]  # uneven slices, one-class slices
    x = torch.randn(5, 6, dtype=torch.float64, generator=gen)
    t = torch.tensor([0, 5, -100, 3, 1])
    w = torch.rand(6, dtype=torch.float64, generator=gen) + 0.5
    errs = []
    calls = []
    for name in ("all_reduce", "all_gather"):
        real = getattr(dist, name)
        setattr(dist, name, lambda *a, _real=real, _name=name, **k: (calls.append(_name), _real(*a, **k))[1])
    for red in ("none", "mean", "sum"):
        for eps in (0.0, 0.2):
            for wt in (None, w):
                xf = x.clone().requires_grad_()
                ref = F.cross_entropy(xf, t, weight=wt, reduction=red, label_smoothing=eps)
                ref.sum().backward()
                xs = x[:, bounds[rank]:bounds[rank + 1]].clone().requires_grad_()
                ws = None if wt is None else wt[bounds[rank]:bounds[rank + 1]]
                calls.clear()
                got = parallel.cross_entropy(xs, t, weight=ws, reduction=red, label_smoothing=eps)
                errs.append(0.0 if calls == ["all_gather", "all_reduce", "all_reduce"] else 1.0)
                calls.clear()
                got.sum().backward()
                errs.append(1.0 if calls else 0.0)  # backward must not communicate
                errs.append(float((got - ref).abs().max()))
                errs.append(float((xs.grad - xf.grad[:, bounds[rank]:bounds[rank + 1]]).abs().max()))
    queue.put((rank, max(errs)))
    dist.destroy_process_group()


@pytest.mark.parametrize("world", [2, 3])
def test_matches_torch(world):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    ctx_procs = mp.start_processes(_worker, args=(world, port, queue), nprocs=world, join=False, start_method="spawn")
    results = [queue.get(timeout=120) for _ in range(world)]
    ctx_procs.join()
    for _, err in results:
        assert err < 1e-12

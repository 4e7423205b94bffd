"""One speed line per device: fused_ce's cross-entropy against torch's eager one, forward and backward,
fp32, class-index targets, mean reduction, on one standard language-model shape (32000 classes; more rows on
a GPU, where fewer would time kernel launches). The median of a few runs after a warm-up; CUDA events on a
GPU, the wall clock on the CPU. The emulated CUDA build is not timed: the emulator's speed says nothing of a
GPU's. A report, not a test: the verdict does not depend on it."""

import statistics
import time

import torch
import torch.nn.functional as F

from .. import functional

SHAPES = {"cpu": (1024, 32000), "cuda": (8192, 32000)}
RUNS = {"quick": 3, "full": 10}


def _step(loss_fn, x, y):
    x.grad = None
    loss_fn(x, y).backward()


def _median_ms(loss_fn, x, y, runs):
    _step(loss_fn, x, y)  # warm-up: first-touch of the gradient's memory, CUDA context, caches
    times = []
    for _ in range(runs):
        if x.is_cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            _step(loss_fn, x, y)
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            _step(loss_fn, x, y)
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def measure(target, quick):
    """{'shape', 'dtype', 'torch_ms', 'fused_ce_ms', 'speedup'} on `target`, or {'skipped': why}."""
    if target.emulated:
        return {"skipped": "emulator: its speed is not a GPU's"}
    shape = SHAPES[target.device.type]
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=gen).mul_(3).to(target.device).requires_grad_()
    y = torch.randint(0, shape[1], (shape[0],), generator=gen).to(target.device)
    runs = RUNS["quick" if quick else "full"]
    torch_ms = _median_ms(F.cross_entropy, x, y, runs)
    ours_ms = _median_ms(functional.cross_entropy, x, y, runs)
    return {
        "op": "cross_entropy forward+backward, mean",
        "shape": list(shape),
        "dtype": "float32",
        "runs": runs,
        "torch_ms": round(torch_ms, 3),
        "fused_ce_ms": round(ours_ms, 3),
        "speedup": round(torch_ms / ours_ms, 2),
    }

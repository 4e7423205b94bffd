"""The first forward+backward at a new size against warm calls, and the memory kept after del (CPU).

    python benchmarks/first_call.py [--shape 8192x128256] [--dtype bfloat16] [--pretouch-gb 0]

Each provider runs in a fresh process with THP_MEM_ALLOC_ENABLE=1 (torch at its best): it makes the inputs,
times the first call, then three more, deletes the gradient and reports the RSS above the RSS before the first
call. fused_ce's gradient gets a fresh huge-page mapping at every call (csrc/cpu/large_buffers.cpp), so the
first call pays nothing that later calls do not; what it may pay is the machine's own first touch of memory:
on a VM, the host backs guest memory that the guest has never used at its first touch, at seconds per GB.
--pretouch-gb G touches and frees G GB in a separate process first, so that the measured calls do not land on
never-used memory (compare a run with and without it to see the machine's share).
"""

import argparse
import os
import subprocess
import sys
import time

PROVIDERS = ("fused_ce", "torch")


def child(provider, n, c, dtype_name):
    import timing
    import torch

    import fused_ce

    loss_fn = fused_ce.cross_entropy if provider == "fused_ce" else torch.nn.functional.cross_entropy
    dtype = getattr(torch, dtype_name)
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(n, c, generator=gen, dtype=torch.float32 if dtype == torch.float64 else dtype)
    x = x.to(dtype).requires_grad_()
    target = torch.randint(0, c, (n,), generator=gen)
    warm_x = torch.randn(8, 64, dtype=dtype, requires_grad=True)  # loads kernels and thread pools, not the size
    loss_fn(warm_x, torch.randint(0, 64, (8,))).backward()
    baseline = timing._rss_bytes("VmRSS")
    times = []
    for _ in range(4):
        start = time.perf_counter()
        loss_fn(x, target).backward()
        times.append((time.perf_counter() - start) * 1e3)
        x.grad = None
    kept = timing._rss_bytes("VmRSS") - baseline
    print(
        f"{provider:9s} first {times[0]:8.1f} ms   warm {min(times[1:]):7.1f}-{max(times[1:]):7.1f} ms   "
        f"RSS kept after del {kept / 2**20:7.1f} MiB"
    )


def pretouch(gigabytes):
    import torch

    held = [torch.empty(1 << 30, dtype=torch.uint8).fill_(1) for _ in range(int(gigabytes))]  # all at once
    del held  # freed when the process ends; the guest keeps the pages backed by the host


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", default="8192x128256")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--pretouch-gb", type=float, default=0)
    ap.add_argument("--child", choices=PROVIDERS, help=argparse.SUPPRESS)
    args = ap.parse_args()
    n, c = (int(s) for s in args.shape.lower().split("x"))
    if args.child:
        return child(args.child, n, c, args.dtype)
    env = dict(os.environ, THP_MEM_ALLOC_ENABLE="1")
    here = os.path.dirname(os.path.abspath(__file__))
    print(f"{args.dtype} {n}x{c} forward+backward, a fresh process per provider, THP_MEM_ALLOC_ENABLE=1")
    for provider in PROVIDERS:
        if args.pretouch_gb:
            subprocess.run(
                [sys.executable, "-c", f"import first_call; first_call.pretouch({args.pretouch_gb})"],
                cwd=here,
                env=env,
                check=True,
            )
        subprocess.run(
            [
                sys.executable,
                os.path.join(here, "first_call.py"),
                "--child",
                provider,
                "--shape",
                args.shape,
                "--dtype",
                args.dtype,
            ],
            cwd=here,
            env=env,
            check=True,
        )


if __name__ == "__main__":
    main()

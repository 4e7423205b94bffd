"""What writing into fresh memory costs on this machine, next to the same work into memory already in use (CPU).

    python benchmarks/fresh_memory.py [--mib 64,256] [--rounds 15]

An out-of-place backward writes its gradient into a new buffer. The kernel hands every new page over zeroed, so
the first write to it comes after the kernel's own write of the whole buffer: that zeroing is in the time of
every out-of-place backward (fused_ce's and torch's alike) but not in the benchmark's byte floor, which counts
the bytes the loss must move. This script measures both halves, in a process with THP_MEM_ALLOC_ENABLE=1 (so
torch's buffers, like fused_ce's gradients, sit on fresh huge pages):
  * a copy of an fp32 buffer into an existing one, and into a fresh one (torch.empty_like, then copy_);
  * fused_ce's cross-entropy backward of a (rows, 8000) fp32 input of the same size, into a fresh gradient
    (the default) and into the logits' own storage (inplace_backward=True, no new memory).
Rounds alternate the variants (A B A B ...); medians are reported, with GB/s counting what the operation must
read and write (2x the buffer for a copy and for a backward without its forward).
"""

import argparse
import os
import statistics
import sys
import time


def timed(fn, rounds, variants):
    """Median of fn(name), which returns the seconds its timed part took, over alternating rounds after two
    warm-up rounds."""
    times = {name: [] for name in variants}
    for r in range(rounds + 2):
        for name in variants:
            elapsed = fn(name)
            if r >= 2:
                times[name].append(elapsed)
    return {name: statistics.median(ts) for name, ts in times.items()}


def measure(mib, rounds):
    import torch

    import fused_ce

    n = (mib << 20) // 4
    src = torch.rand(n)
    dst = torch.empty_like(src).fill_(1.0)

    def copy(name):
        start = time.perf_counter()
        out = dst if name == "existing" else torch.empty_like(src)
        out.copy_(src)
        return time.perf_counter() - start

    copies = timed(copy, rounds, ("existing", "fresh"))

    classes = 8000
    rows = n // classes
    gen = torch.Generator().manual_seed(0)
    base = torch.randn(rows, classes, generator=gen)
    target = torch.randint(0, classes, (rows,), generator=gen)
    leaf = base.requires_grad_()

    def backward(name):
        # In place, the gradient goes into the logits' storage: a non-leaf made (and first touched) untimed.
        logits = leaf if name == "fresh" else leaf * 1.0
        loss = fused_ce.cross_entropy(logits, target, inplace_backward=name != "fresh")
        start = time.perf_counter()
        (grad,) = torch.autograd.grad(loss, logits)
        elapsed = time.perf_counter() - start
        del grad, loss, logits
        return elapsed

    bwd = timed(backward, rounds, ("fresh", "in place"))
    nbytes = 2 * n * 4
    gbs = lambda s: nbytes / s / 1e9
    print(
        f"{mib} MiB fp32: copy into existing memory {copies['existing'] * 1e3:.2f} ms ({gbs(copies['existing']):.1f} GB/s), "
        f"into fresh memory {copies['fresh'] * 1e3:.2f} ms ({gbs(copies['fresh']):.1f} GB/s)"
    )
    print(
        f"{mib} MiB fp32: fused_ce backward ({rows}, {classes}) into a fresh gradient {bwd['fresh'] * 1e3:.2f} ms "
        f"({gbs(bwd['fresh']):.1f} GB/s), into the logits' storage {bwd['in place'] * 1e3:.2f} ms "
        f"({gbs(bwd['in place']):.1f} GB/s)",
        flush=True,
    )


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mib", default="64,256", help="comma list of buffer sizes in MiB")
    ap.add_argument("--rounds", type=int, default=15)
    args = ap.parse_args()
    if os.environ.get("THP_MEM_ALLOC_ENABLE") != "1":
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, "THP_MEM_ALLOC_ENABLE": "1"})
    import torch

    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, THP_MEM_ALLOC_ENABLE=1")
    for mib in (int(m) for m in args.mib.split(",")):
        measure(mib, args.rounds)


if __name__ == "__main__":
    main()

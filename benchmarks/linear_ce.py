"""Fused linear cross-entropy (the LM head and the loss): time and peak extra memory of forward + backward.

    python benchmarks/linear_ce.py [--shape 4096x512x32000] [--dtype fp32] [--repeats 3]
                                   [--providers fused_ce,torch,torch_chunked,torch_compile,liger]

Shapes are N x H x V: input (N, H), linear weight (V, H), class-index targets (N). Each step computes the
loss and the gradients of the input and the weight (torch.autograd.grad). Providers:
  fused_ce       fused_ce.linear_cross_entropy (row chunks, default workspace: fused_ce.linear.workspace_mib)
  torch          eager F.cross_entropy(F.linear(x, w), target): holds the N x V logits and their gradient
  torch_chunked  torch's F.linear_cross_entropy with options=LinearCrossEntropyOptions() (its chunked path)
  torch_compile  torch.compile of the eager step's loss
  liger          Liger-Kernel's LigerFusedLinearCrossEntropyLoss (GPU only)
Time: ms per step, median [p20-p80], providers timed in interleaved rounds after a warm-up round; the CPU
time other processes took meanwhile is printed (a busy machine slows every provider).
On CPU, torch at its best is timed too: the torch providers again in a second process that starts with
THP_MEM_ALLOC_ENABLE=1 (torch's switch for transparent huge pages in its CPU allocator, read once at its first
allocation), right after the main process's rounds; their rows are marked "(THP)". --no-thp skips it.
Peak extra memory: each provider in a fresh process; on CPU the RSS high-water mark minus the RSS once the
inputs exist (and, for torch_compile, once it has compiled); on GPU max_memory_allocated minus the allocation
then. The same step (loss and both gradients) is measured.
"""

import argparse
import json
import os
import subprocess
import sys
import time

import load
import timing
import torch
import torch.nn.functional as F

import fused_ce

ALL = ("fused_ce", "torch", "torch_chunked", "torch_compile", "liger")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
MiB = 1 << 20


class Unavailable(Exception):
    pass


def make_inputs(n, h, v, dtype, device, seed=0):
    gen = torch.Generator(device=device).manual_seed(seed)
    x = torch.randn(n, h, device=device, generator=gen).to(dtype).requires_grad_()
    w = (torch.randn(v, h, device=device, generator=gen) * h**-0.5).to(dtype).requires_grad_()
    target = torch.randint(0, v, (n,), device=device, generator=gen)
    return x, w, target


def _eager(x, w, target):
    return F.cross_entropy(F.linear(x, w), target)


def build(provider, device):
    """loss(x, w, target) of `provider`."""
    if provider == "fused_ce":
        return fused_ce.linear_cross_entropy
    if provider == "torch":
        return _eager
    if provider == "torch_chunked":
        options = torch.nn.LinearCrossEntropyOptions()
        return lambda x, w, target: F.linear_cross_entropy(x, w, target, options=options)
    if provider == "torch_compile":
        return torch.compile(_eager, dynamic=False)
    if provider == "liger":
        if device != "cuda":
            raise Unavailable("Liger-Kernel is Triton, GPU only")
        try:
            from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss
        except Exception as e:
            raise Unavailable(f"liger_kernel not importable ({type(e).__name__})") from None
        module = LigerFusedLinearCrossEntropyLoss()
        return lambda x, w, target: module(w, x, target)
    raise ValueError(f"unknown provider {provider!r}; choose from {', '.join(ALL)}")


def step(fn, x, w, target):
    loss = fn(x, w, target)
    return (loss,) + torch.autograd.grad(loss, (x, w))


def _sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def measure_memory(provider, n, h, v, dtype, device):
    """Runs in a fresh process: peak extra bytes of one step (after one warm-up step for torch_compile)."""
    timing._fixed_mmap_threshold()
    x, w, target = make_inputs(n, h, v, dtype, device)
    fn = build(provider, device)
    fused_ce.linear_cross_entropy(x[:2].detach(), w.detach(), target[:2])  # loads the ops before the baseline
    if provider == "torch_compile":
        step(fn, x, w, target)
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        baseline = torch.cuda.memory_allocated()
        out = step(fn, x, w, target)
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - baseline
    baseline = timing._rss_bytes("VmRSS")
    if not timing._reset_rss_peak():
        raise RuntimeError("cannot reset the RSS high-water mark (/proc/self/clear_refs)")
    out = step(fn, x, w, target)
    del out
    return timing._rss_bytes("VmHWM") - baseline


def time_providers(fns, x, w, target, repeats, device):
    """Seconds per step of each provider, in interleaved rounds after a warm-up round."""
    for fn in fns.values():
        step(fn, x, w, target)
        _sync(device)
    samples = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            _sync(device)
            t0 = time.perf_counter()
            out = step(fn, x, w, target)
            _sync(device)
            samples[name].append(time.perf_counter() - t0)
            del out
    return samples


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", default="4096x512x32000", help="N x H x V")
    ap.add_argument("--dtype", default="fp32", choices=list(DTYPES))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--providers", default=",".join(ALL))
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--no-thp", action="store_true", help="on CPU, do not time torch again with THP_MEM_ALLOC_ENABLE=1")
    ap.add_argument("--memory-of", help=argparse.SUPPRESS)  # one child process
    ap.add_argument("--time-only", action="store_true", help=argparse.SUPPRESS)  # the THP child: samples as JSON
    args = ap.parse_args()
    n, h, v = (int(s) for s in args.shape.lower().split("x"))
    dtype = DTYPES[args.dtype]
    if args.memory_of:
        print(json.dumps(measure_memory(args.memory_of, n, h, v, dtype, args.device)))
        return
    if args.time_only:
        x, w, target = make_inputs(n, h, v, dtype, args.device)
        fns = {name: build(name, args.device) for name in args.providers.split(",")}
        print(json.dumps(time_providers(fns, x, w, target, args.repeats, args.device)))
        return
    names = [p.strip() for p in args.providers.split(",") if p.strip()]
    fns, skipped = {}, {}
    for name in names:
        try:
            fns[name] = build(name, args.device)
        except Unavailable as e:
            skipped[name] = str(e)
    x, w, target = make_inputs(n, h, v, dtype, args.device)
    logits_mib = n * v * x.element_size() / MiB
    print(
        f"linear CE {args.dtype} N={n} H={h} V={v} on {args.device}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; one N x V tensor is {logits_mib:.0f} MiB; fused_ce workspace "
        f"{fused_ce.linear.workspace_mib:g} MiB (chunk of {fused_ce.linear.chunk_rows(n, v, dtype)} rows)"
    )
    start = load.snapshot()
    samples = time_providers(fns, x, w, target, args.repeats, args.device)
    busy = load.window(start, load.snapshot())
    other = "unknown" if busy.other_cores is None else f"{busy.other_cores:.2f}"
    print(
        f"while timed ({busy.seconds:.0f} s): other processes used {other} cores on average; 1-minute load "
        f"average {load._fmt(busy.load_before)} before, {load._fmt(busy.load_after)} after"
    )
    del x, w, target
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.abspath(__file__)))
    thp_names = [name for name in ("torch", "torch_chunked", "torch_compile") if name in fns]
    thp_rows = {}
    if args.device == "cpu" and not args.no_thp and thp_names:
        out = subprocess.run(
            [
                sys.executable,
                __file__,
                "--shape",
                args.shape,
                "--dtype",
                args.dtype,
                "--device",
                "cpu",
                "--repeats",
                str(args.repeats),
                "--providers",
                ",".join(thp_names),
                "--time-only",
            ],
            check=True,
            capture_output=True,
            text=True,
            env=dict(env, THP_MEM_ALLOC_ENABLE="1"),
        ).stdout
        thp_rows = {f"{name} (THP)": s for name, s in json.loads(out.strip().splitlines()[-1]).items()}
    print("| provider | ms p50 [p20–p80] | × vs torch eager | × vs torch eager (THP) | peak extra MiB |")
    print("|---|---|---|---|---|")
    eager = timing.quantiles(samples["torch"])[1] if "torch" in samples else None
    eager_thp = timing.quantiles(thp_rows["torch (THP)"])[1] if "torch (THP)" in thp_rows else None
    for name, s in thp_rows.items():
        p20, p50, p80 = timing.quantiles(s)
        print(
            f"| {name} | {p50 * 1e3:.0f} [{p20 * 1e3:.0f}–{p80 * 1e3:.0f}] | {eager / p50:.2f}× | "
            f"{eager_thp / p50:.2f}× | not measured |"
            if eager and eager_thp
            else f"| {name} | {p50 * 1e3:.0f} [{p20 * 1e3:.0f}–{p80 * 1e3:.0f}] | – | – | not measured |"
        )
    for name in names:
        if name in skipped:
            print(f"| {name} | skipped: {skipped[name]} | – | – |")
            continue
        p20, p50, p80 = timing.quantiles(samples[name])
        out = subprocess.run(
            [
                sys.executable,
                __file__,
                "--shape",
                args.shape,
                "--dtype",
                args.dtype,
                "--device",
                args.device,
                "--memory-of",
                name,
            ],
            check=True,
            capture_output=True,
            text=True,
            env=env,
        ).stdout
        peak = json.loads(out.strip().splitlines()[-1]) / MiB
        ratio = f"{eager / p50:.2f}×" if eager else "–"
        ratio_thp = f"{eager_thp / p50:.2f}×" if eager_thp else "–"
        print(
            f"| {name} | {p50 * 1e3:.0f} [{p20 * 1e3:.0f}–{p80 * 1e3:.0f}] | {ratio} | {ratio_thp} | {peak:.0f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()

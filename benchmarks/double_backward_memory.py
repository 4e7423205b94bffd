"""Peak extra CPU memory of fused_ce's cross-entropy gradient with and without create_graph=True.

    python benchmarks/double_backward_memory.py [--shape 1024x32000] [--dtype fp32]

A first-order backward runs the fused kernel; with create_graph=True (double backward) the gradient is
built from differentiable, unfused torch ops (python_pkg/fused_ce/_double_backward.py), which hold N x C
intermediates. Each variant runs in a fresh process and reports the RSS high-water mark minus the RSS once
the inputs exist (the benchmark's CPU method, timing.py), in MiB:
  backward         loss, then torch.autograd.grad(loss, x)
  create_graph     loss, then torch.autograd.grad(loss, x, create_graph=True)
  hessian_vector   the same, then the gradient of (grad * v).sum() w.r.t. x (a Hessian-vector product)
"""

import argparse
import subprocess
import sys

import timing
import torch

import fused_ce

VARIANTS = ("backward", "create_graph", "hessian_vector")
MiB = 1 << 20


def measure(variant, n, c, dtype_name):
    timing._fixed_mmap_threshold()
    gen = torch.Generator().manual_seed(0)
    dtype = getattr(torch, dtype_name)
    x = torch.randn(n, c, generator=gen).to(dtype).requires_grad_()
    target = torch.randint(0, c, (n,), generator=gen)
    v = torch.randn(n, c, generator=gen).to(dtype)
    fused_ce.cross_entropy(x[:2], target[:2])  # loads the extension and its ops before the baseline
    baseline = timing._rss_bytes("VmRSS")
    if not timing._reset_rss_peak():
        raise RuntimeError("cannot reset the RSS high-water mark (/proc/self/clear_refs)")
    loss = fused_ce.cross_entropy(x, target)
    (g,) = torch.autograd.grad(loss, x, create_graph=variant != "backward")
    if variant == "hessian_vector":
        torch.autograd.grad((g * v).sum(), x)
    return timing._rss_bytes("VmHWM") - baseline


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", default="1024x32000")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)  # one child process
    args = ap.parse_args()
    n, c = (int(s) for s in args.shape.lower().split("x"))
    if args.variant:
        print(measure(args.variant, n, c, args.dtype))
        return
    grad_mib = n * c * torch.empty((), dtype=getattr(torch, args.dtype)).element_size() / MiB
    print(f"{args.shape} {args.dtype}: one N x C tensor is {grad_mib:.0f} MiB")
    for variant in VARIANTS:
        out = subprocess.run(
            [sys.executable, __file__, "--shape", args.shape, "--dtype", args.dtype, "--variant", variant],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        print(f"{variant:15s} peak extra memory {int(out) / MiB:7.0f} MiB")


if __name__ == "__main__":
    main()

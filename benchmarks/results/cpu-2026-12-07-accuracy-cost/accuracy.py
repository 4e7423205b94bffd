"""fp32 loss and gradient of fused_ce.cross_entropy against fp64, next to torch's fp32 composite, on the inputs of
issue 27 (randn(256, 1024) * 2, reduction='none', summed for the gradient), caps none / 30 / 300 / 3000, on every
CPU instruction set given (argv) and emulated CUDA ("emu"). Max error relative to the largest entry.
    python accuracy.py default avx2 avx512 emu"""

import os
import sys

import torch
import torch.nn.functional as F

import fused_ce
import fused_ce.testing

gen = torch.Generator().manual_seed(0)
x = (torch.randn(256, 1024, dtype=torch.float64, generator=gen) * 2).float()
y = torch.randint(0, 1024, (256,), generator=gen)


def loss_and_grad(fn, inp):
    inp = inp.clone().requires_grad_()
    loss = fn(inp)
    loss.sum().backward()
    return loss.detach(), inp.grad


def rel(a, r):
    return ((a.double() - r).abs().max() / r.abs().max()).item()


for path in sys.argv[1:]:
    for cap in [0.0, 30.0, 300.0, 3000.0]:

        def composite(z):
            return F.cross_entropy(cap * torch.tanh(z / cap) if cap else z, y, reduction="none")

        ref_loss, ref_grad = loss_and_grad(composite, x.double())
        t_loss, t_grad = loss_and_grad(composite, x)

        def fused():
            return loss_and_grad(lambda z: fused_ce.cross_entropy(z, y, reduction="none", softcap=cap), x)

        if path == "emu":
            with fused_ce.testing.emulated_cuda():
                f_loss, f_grad = fused()
        else:
            os.environ["FUSED_CE_CPU_CAPABILITY"] = path
            f_loss, f_grad = fused()
        print(
            f"{path:8s} cap {cap:6.0f}: loss {rel(f_loss, ref_loss):.2e} (torch {rel(t_loss, ref_loss):.2e}), "
            f"grad {rel(f_grad, ref_grad):.2e} (torch {rel(t_grad, ref_grad):.2e})"
        )

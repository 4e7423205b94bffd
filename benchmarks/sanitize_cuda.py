"""Runs every fused_ce CUDA op once on small inputs that reach each kernel path (row groups of 1 to 256
threads, split rows, the N-D layout, misaligned and strided rows, ignored and out-of-range targets,
every reduction), for compute-sanitizer's memcheck and racecheck (benchmarks/gpu_run.sh)."""

import torch

import fused_ce

ops = torch.ops.fused_ce


def ce_paths(dev):
    for shape in [(5, 1), (9, 3), (33, 1000), (2, 70000), (3, 17, 5), (2, 3000, 4)]:
        for dtype in (torch.float32, torch.bfloat16, torch.float64, torch.float16):
            C = shape[1]
            x = torch.randn(shape, device=dev, dtype=dtype)
            t = torch.randint(0, C, (shape[0],) + shape[2:], device=dev)
            t.view(-1)[0] = -100
            w = torch.rand(C, device=dev, dtype=dtype)
            p = torch.softmax(torch.randn(shape, device=dev), 1).to(dtype)
            for red in (0, 1, 2):
                g = torch.ones(t.shape if red == 0 else (), device=dev, dtype=dtype)
                for weight, eps in ((None, 0.0), (w, 0.1)):
                    loss, lse = ops.cross_entropy_fwd(x, t, weight, -100, eps, red)
                    ops.cross_entropy_bwd(g, x, t, weight, lse, -100, eps, red)
                    _loss, lse = ops.cross_entropy_soft_fwd(x, p, weight, eps, red)
                    ops.cross_entropy_soft_bwd(g, x, p, weight, lse, eps, red)
                    ops.cross_entropy_soft_target_bwd(g, x, weight, lse, eps, red)


def layouts(dev):
    x = torch.randn(7 * 1001 + 1, device=dev)[1:].view(7, 1001)  # misaligned rows
    t = torch.randint(0, 1001, (7,), device=dev)
    fused_ce.cross_entropy(x.requires_grad_(), t).backward()
    x = torch.randn(7, 1200, device=dev)[:, 3:1003].requires_grad_()  # strided rows
    fused_ce.cross_entropy(x, t[:7] % 1000, label_smoothing=0.2).backward()
    bad = torch.tensor([0, 5, -7, -100], device=dev)  # out-of-range targets: NaN, never an index
    x = torch.randn(4, 5, device=dev, requires_grad=True)
    fused_ce.cross_entropy(x, bad).backward()


def bce_paths(dev):
    for shape in [(7,), (5, 9), (3, 4, 130), (1 << 15) + 3]:
        shape = shape if isinstance(shape, tuple) else (shape,)
        for dtype in (torch.float32, torch.bfloat16, torch.float64, torch.float16):
            x = torch.randn(shape, device=dev, dtype=dtype)
            y = torch.rand(shape, device=dev, dtype=dtype)
            pw = torch.rand(shape[-1], device=dev, dtype=dtype)
            w = torch.rand(shape[:-1] + (1,), device=dev, dtype=dtype)
            for red in (0, 1, 2):
                g = torch.ones(shape if red == 0 else (), device=dev, dtype=dtype)
                ops.bce_with_logits_fwd(x, y, w, pw, red)
                ops.bce_with_logits_bwd(g, x, y, w, pw, red)
                ops.bce_with_logits_target_bwd(g, x, y, None, pw, red)
    x = torch.randn(1001, device=dev)[1:]  # misaligned
    ops.bce_with_logits_fwd(x, x.sigmoid(), None, None, 1)


if __name__ == "__main__":
    dev = "cuda"
    ce_paths(dev)
    layouts(dev)
    bce_paths(dev)
    torch.cuda.synchronize()
    print("sanitize_cuda: all ops ran")

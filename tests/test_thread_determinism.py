"""Every op gives bitwise the same loss and gradients with 1, 2 and 3 threads, under each CPU instruction
set: the kernels split work across threads but reduce in an order fixed by the sizes alone (rows in
blocks of 4096, BCE in chunks of 8192 elements), never by the number of threads (pytorch#17350), and
round the same way in every thread. The shapes give each op more parallel tasks than threads: rows of
2-D inputs go 32768 elements to a task, N-D positions in vectors of them."""

import pytest
import torch

import fused_ce

THREADS = [1, 2, 3]
# 2-D with long rows, 2-D with more than 3 blocks of 4096 rows (the reduction's blocks), N-D
# (64, 1000): the shape of the issue (2 tasks of 32 rows).
CE_SHAPES = [(40, 3000), (64, 1000), (13000, 5), (3, 50, 700)]
BCE_SHAPE = (5, 8200)  # 5 chunks of 8192 elements, the last one short


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def _results_per_thread_count(run, inputs):
    """{threads: (loss, *gradients)} of run() with 1, 2 and 3 threads."""
    results = {}
    for threads in THREADS:
        torch.set_num_threads(threads)
        leaves = [t.detach().requires_grad_(t.is_floating_point()) for t in inputs]
        out = run(*leaves)
        go = torch.rand(out.shape, generator=torch.Generator().manual_seed(0), dtype=out.dtype).to(out.device) + 0.5
        grads = torch.autograd.grad(out, [t for t in leaves if t.requires_grad], go)
        results[threads] = (out, *grads)
    return results


def _assert_bitwise_equal(results, case):
    first = results[THREADS[0]]
    for threads, res in results.items():
        for i, (a, b) in enumerate(zip(first, res)):
            # bitwise: compare the bytes, so that NaN payloads and -0.0 count too
            same = torch.equal(
                a.view(-1).view(torch.uint8) if a.numel() else a, b.view(-1).view(torch.uint8) if b.numel() else b
            )
            assert same, (
                f"{case}: output {i} with {threads} threads differs from {THREADS[0]} thread: "
                f"max |diff| {(a.double() - b.double()).abs().max().item():.3g}"
            )


# Every option that changes the kernels' code path: class weights and label smoothing, each alone and together.
CE_OPTIONS = [{}, {"weight": True}, {"label_smoothing": 0.1}, {"weight": True, "label_smoothing": 0.1}]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("soft", [False, True], ids=["hard", "soft"])
@pytest.mark.parametrize("shape", CE_SHAPES, ids=str)
def test_cross_entropy(shape, soft, reduction, dtype, isa_device, restore_threads):
    """Forward and backward of every cross-entropy op (class indices: cross_entropy_fwd/bwd; probability
    targets: cross_entropy_soft_fwd, soft_bwd for the logits and soft_target_bwd for the target), with
    and without weights and smoothing. Issue 9, item 3: the soft-target logits gradient without weights
    or smoothing at (64, 1000) differed by 1 ulp between 1 and 2 threads in 38 of 64 rows."""
    device, _ = isa_device
    gen = torch.Generator().manual_seed(1)
    x = (torch.randn(shape, generator=gen, dtype=torch.float64) * 3).to(dtype).to(device)
    w = (torch.rand(shape[1], generator=gen, dtype=torch.float64) + 0.5).to(dtype).to(device)
    if soft:
        t = torch.softmax(torch.randn(shape, generator=gen, dtype=torch.float64), 1).to(dtype).to(device)
    else:
        t = torch.randint(0, shape[1], (shape[0],) + shape[2:], generator=gen)
        t.view(-1)[::7] = -100
        t = t.to(device)
    for options in CE_OPTIONS:

        def run(x, t):
            return fused_ce.cross_entropy(
                x,
                t,
                weight=w if options.get("weight") else None,
                reduction=reduction,
                label_smoothing=options.get("label_smoothing", 0.0),
            )

        _assert_bitwise_equal(_results_per_thread_count(run, [x, t]), options)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_bce_with_logits(reduction, dtype, isa_device, restore_threads):
    """Forward, input gradient and target gradient, without weights and with weight and pos_weight."""
    device, _ = isa_device
    gen = torch.Generator().manual_seed(2)
    x = (torch.randn(BCE_SHAPE, generator=gen, dtype=torch.float64) * 4).to(dtype).to(device)
    y = torch.rand(BCE_SHAPE, generator=gen, dtype=torch.float64).to(dtype).to(device)
    w = (torch.rand(BCE_SHAPE[1], generator=gen, dtype=torch.float64) + 0.5).to(dtype).to(device)
    pw = (torch.rand(BCE_SHAPE[0], 1, generator=gen, dtype=torch.float64) * 2 + 0.5).to(dtype).to(device)
    for weights in ({}, {"weight": w, "pos_weight": pw}):

        def run(x, y):
            return fused_ce.binary_cross_entropy_with_logits(x, y, reduction=reduction, **weights)

        _assert_bitwise_equal(_results_per_thread_count(run, [x, y]), sorted(weights))

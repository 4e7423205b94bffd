"""Single-thread forward and backward times (min of 10 calls) of fused_ce.cross_entropy on shapes the accuracy
changes of issue 27 touch apart from the large-vocabulary rows: many short rows (21 classes), 1000-class rows,
plain and soft-capped, and N-D positions (64, 1024, 64) plain and capped, and a segmentation-like (16, 21, 128, 128).
Run with each build's venv: THP_MEM_ALLOC_ENABLE=1 python shapes_check.py."""

import time

import torch

import fused_ce

torch.set_num_threads(1)
torch.manual_seed(0)
CASES = [
    ((262144, 21), None),
    ((65536, 1000), None),
    ((65536, 1000), 30.0),
    ((64, 1024, 64), None),
    ((64, 1024, 64), 30.0),
    ((16, 21, 128, 128), None),
]
out = []
for shape, cap in CASES:
    x = torch.randn(*shape).requires_grad_()
    t = torch.randint(0, shape[1], (shape[0],) + shape[2:])
    kw = {} if cap is None else {"softcap": cap}
    fw, bw = [], []
    for _ in range(10):
        t0 = time.perf_counter()
        loss = fused_ce.cross_entropy(x, t, **kw)
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        x.grad = None
        fw.append(t1 - t0)
        bw.append(t2 - t1)
    out.append(f"{tuple(shape)} softcap={cap}: fwd {min(fw) * 1e3:.2f} ms, bwd {min(bw) * 1e3:.2f} ms")
print("\n".join(out))

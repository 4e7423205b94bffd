"""Single-thread check of the CPU kernels before and after (min of 15 calls, forward and backward apart, 1024 x 32000,
randn logits times SCALE): run with each build's venv, e.g. THP_MEM_ALLOC_ENABLE=1 python single_thread_check.py 20.
SCALE 1 keeps every |x| / 30 below the tanh polynomial's bound 0.625; SCALE 20 puts a lane above it in nearly every
vector, where the kernels compute both forms of the tanh."""

import sys
import time

import torch

import fused_ce

SCALE = float(sys.argv[1]) if len(sys.argv) > 1 else 1.0
torch.set_num_threads(1)
torch.manual_seed(0)
cases = [(torch.float32, 30.0), (torch.bfloat16, 30.0)]
if SCALE == 1.0:
    cases = [(torch.float32, None), (torch.bfloat16, None)] + cases
out = []
for dtype, cap in cases:
    x = (torch.randn(1024, 32000) * SCALE).to(dtype).requires_grad_()
    t = torch.randint(0, 32000, (1024,))
    kw = {} if cap is None else {"softcap": cap, "lse_square_scale": 1e-4}
    fw, bw = [], []
    for _ in range(15):
        t0 = time.perf_counter()
        loss = fused_ce.cross_entropy(x, t, **kw)
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        x.grad = None
        fw.append(t1 - t0)
        bw.append(t2 - t1)
    out.append(f"{str(dtype)[6:]} softcap={cap}: fwd {min(fw) * 1e3:.2f} ms, bwd {min(bw) * 1e3:.2f} ms")
print(f"scale {SCALE:g}: " + " | ".join(out))

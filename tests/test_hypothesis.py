"""Property-based parity with torch: hypothesis draws shapes (unbatched, 2-D, N-D), dtypes and options
(weight, share of ignored rows, smoothing, reduction, hard/soft targets) and compares values and
gradients with torch."""
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fused_ce
from helpers import FLOAT_DTYPES, TENSOR_DEVICES, compare_with_torch

SETTINGS = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def ce_problems(draw):
    ndim = draw(st.integers(1, 4))
    num_classes = draw(st.integers(1, 70))
    shape = [num_classes] if ndim == 1 else \
        [draw(st.integers(0 if ndim > 1 else 1, 6)), num_classes] + [draw(st.integers(1, 5)) for _ in range(ndim - 2)]
    return dict(
        shape=tuple(shape),
        dtype=draw(st.sampled_from(FLOAT_DTYPES)),
        device=draw(st.sampled_from(TENSOR_DEVICES)),
        soft=draw(st.booleans()),
        weighted=draw(st.booleans()),
        ignore_share=draw(st.sampled_from([0.0, 0.3, 1.0])),
        ignore_index=draw(st.sampled_from([-100, -1, 0])),
        label_smoothing=draw(st.sampled_from([0.0, 0.05, 0.5, 1.0])),
        reduction=draw(st.sampled_from(["mean", "sum", "none"])),
        scale=draw(st.sampled_from([0.1, 3.0, 30.0])),
        seed=draw(st.integers(0, 2 ** 16)),
    )


@SETTINGS
@given(ce_problems())
def test_cross_entropy_matches_torch(p):
    gen = torch.Generator().manual_seed(p["seed"])
    shape, dtype, device = p["shape"], p["dtype"], p["device"]
    class_dim = 0 if len(shape) == 1 else 1
    x = (torch.randn(shape, generator=gen, dtype=torch.float64) * p["scale"]).to(dtype).to(device)
    w = (torch.rand(shape[class_dim], generator=gen, dtype=torch.float64) + 0.1).to(dtype).to(device) \
        if p["weighted"] else None
    kwargs = dict(weight=w, reduction=p["reduction"], label_smoothing=p["label_smoothing"])
    if p["soft"]:
        t = torch.softmax(torch.randn(shape, generator=gen, dtype=torch.float64), class_dim).to(dtype).to(device)
        compare_with_torch(fused_ce.cross_entropy, F.cross_entropy, (x, t), grad_args=(0, 1), kwargs=kwargs)
        return
    rows = () if len(shape) == 1 else (shape[0],) + shape[2:]
    y = torch.randint(0, shape[class_dim], rows, generator=gen)
    ignored = torch.rand(rows, generator=gen) < p["ignore_share"]
    y = torch.where(ignored, torch.full_like(y, p["ignore_index"]), y).to(device)
    compare_with_torch(fused_ce.cross_entropy, F.cross_entropy, (x, y), grad_args=(0,),
                       kwargs=dict(kwargs, ignore_index=p["ignore_index"]))


@st.composite
def bce_problems(draw):
    shape = tuple(draw(st.lists(st.integers(0, 6), min_size=0, max_size=3)))
    # an operand shape that broadcasts to `shape` without growing it: drop leading dims, set some to 1
    def operand():
        if not draw(st.booleans()):
            return None
        keep = draw(st.integers(0, len(shape)))
        return tuple(1 if draw(st.booleans()) else s for s in shape[len(shape) - keep:])
    return dict(shape=shape, dtype=draw(st.sampled_from(FLOAT_DTYPES)), device=draw(st.sampled_from(TENSOR_DEVICES)),
                weight=operand(), pos_weight=operand(), reduction=draw(st.sampled_from(["mean", "sum", "none"])),
                scale=draw(st.sampled_from([0.5, 5.0, 50.0])), seed=draw(st.integers(0, 2 ** 16)))


@SETTINGS
@given(bce_problems())
def test_bce_with_logits_matches_torch(p):
    gen = torch.Generator().manual_seed(p["seed"])
    shape, dtype, device = p["shape"], p["dtype"], p["device"]

    def rand(s, lo=0.0, scale=1.0):
        return (torch.rand(s, generator=gen, dtype=torch.float64) * scale + lo).to(dtype).to(device)
    x = (torch.randn(shape, generator=gen, dtype=torch.float64) * p["scale"]).to(dtype).to(device)
    y = rand(shape)
    w = rand(p["weight"], 0.1, 2.0) if p["weight"] is not None else None
    pw = rand(p["pos_weight"], 0.1, 3.0) if p["pos_weight"] is not None else None
    compare_with_torch(fused_ce.binary_cross_entropy_with_logits, F.binary_cross_entropy_with_logits, (x, y),
                       grad_args=(0, 1), kwargs=dict(weight=w, pos_weight=pw, reduction=p["reduction"]))

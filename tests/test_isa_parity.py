"""The parity matrix that every CPU instruction-set build runs (default, AVX2, AVX-512, where this CPU has
them; the `isa_device` fixture switches FUSED_CE_CPU_CAPABILITY per case): every kernel variant (class
indices with and without smoothing and weights, uint8 indices, soft targets with both gradients, BCE with
each kind of broadcast operand) in every dtype, on shapes that reach each layout's vector tail, partial
vector and blocks. The rest of the suite runs the build this CPU picks by itself."""

import pytest
import torch
import torch.nn.functional as F
from helpers import FLOAT_DTYPES, compare_with_torch

import fused_ce

# (7, 3): no full vector, only the scalar tail; (5, 37): vectors and a tail; (3, 1029): several blocks and
# flushes for fp64 under the 32-byte builds; (2, 19, 5) and (2, 9, 33): N-D with fewer positions than
# lanes, and several vectors of positions ending in a partial one.
SHAPES = [(7, 3), (5, 37), (3, 1029), (2, 19, 5), (2, 9, 33)]
HARD_OPTIONS = {
    "plain_mean": {},
    "weight_smoothing_ignored_none": {"weight": True, "label_smoothing": 0.1, "ignore": -100, "reduction": "none"},
    "ignore_in_class_range_sum": {"ignore": 2, "reduction": "sum"},
    "weight_mean": {"weight": True, "ignore": -100},
    "uint8_smoothing1_sum": {"uint8": True, "label_smoothing": 1.0, "reduction": "sum"},
}
SOFT_OPTIONS = {
    "weight_smoothing_mean": {"weight": True, "label_smoothing": 0.2},
    "plain_none": {"reduction": "none"},
}


def _data(shape, dtype, device, seed):
    gen = torch.Generator().manual_seed(seed)
    x = (torch.randn(shape, generator=gen, dtype=torch.float64) * 4).to(dtype).to(device)
    w = (torch.rand(shape[1], generator=gen, dtype=torch.float64) + 0.1).to(dtype).to(device)
    return gen, x, w


def _torch_ce_long_target(x, y, **kwargs):
    """torch rejects uint8 targets for N-D inputs and with weight or smoothing: the reference uses int64."""
    return F.cross_entropy(x, y.long(), **kwargs)


@pytest.mark.parametrize("option", list(HARD_OPTIONS))
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
def test_class_index_targets(dtype, shape, option, isa_device):
    device, _ = isa_device
    o = HARD_OPTIONS[option]
    gen, x, w = _data(shape, dtype, device, seed=0)
    y = torch.randint(0, shape[1], (shape[0],) + shape[2:], generator=gen)
    if "ignore" in o:
        y.view(-1)[::3] = o["ignore"]
    kwargs = {
        "weight": w if o.get("weight") else None,
        "label_smoothing": o.get("label_smoothing", 0.0),
        "reduction": o.get("reduction", "mean"),
        "ignore_index": o.get("ignore", -100),
    }
    y = y.to(torch.uint8 if o.get("uint8") else torch.int64).to(device)
    compare_with_torch(fused_ce.cross_entropy, _torch_ce_long_target, (x, y), grad_args=(0,), kwargs=kwargs)


@pytest.mark.parametrize("option", list(SOFT_OPTIONS))
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
def test_probability_targets(dtype, shape, option, isa_device):
    device, _ = isa_device
    o = SOFT_OPTIONS[option]
    gen, x, w = _data(shape, dtype, device, seed=1)
    t = torch.softmax(torch.randn(shape, generator=gen, dtype=torch.float64), 1).to(dtype).to(device)
    kwargs = {
        "weight": w if o.get("weight") else None,
        "label_smoothing": o.get("label_smoothing", 0.0),
        "reduction": o.get("reduction", "mean"),
    }
    compare_with_torch(fused_ce.cross_entropy, F.cross_entropy, (x, t), grad_args=(0, 1), kwargs=kwargs)


# input shape -> (weight shape, pos_weight shape): contiguous runs that wrap, constant runs, scalars, none
BCE_CASES = {
    (5, 37): ((5, 1), (37,)),
    (2, 9, 33): ((9, 1), (33,)),
    (3, 1029): (None, ()),
    (2, 19, 5): ((19, 5), None),
}


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("shape", list(BCE_CASES), ids=str)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
def test_bce_with_logits(dtype, shape, reduction, isa_device):
    device, _ = isa_device
    gen, x, _ = _data(shape, dtype, device, seed=2)
    y = torch.rand(shape, generator=gen, dtype=torch.float64).to(dtype).to(device)

    def operand(s):
        return None if s is None else (torch.rand(s, generator=gen, dtype=torch.float64) * 2 + 0.2).to(dtype).to(device)

    w_shape, pw_shape = BCE_CASES[shape]
    compare_with_torch(
        fused_ce.binary_cross_entropy_with_logits,
        F.binary_cross_entropy_with_logits,
        (x, y),
        grad_args=(0, 1),
        kwargs={"weight": operand(w_shape), "pos_weight": operand(pw_shape), "reduction": reduction},
    )

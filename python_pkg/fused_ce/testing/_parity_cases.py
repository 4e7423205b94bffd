"""The parity cases: fused_ce's losses against torch's, values and gradients, judged by fused_ce._parity's
rule. Each family is one function and its grid (fused_ce.testing.case_grid.Family). The test suite runs every
family over its whole grid (tests/test_cross_entropy_parity.py, tests/test_bce_parity.py) and the installed
self-check (python -m fused_ce.check) runs the same families, so there is one list of parity cases.

Inputs are drawn from torch's global generator: seed it (torch.manual_seed) before each case to draw the
same inputs as the tests.
"""

import torch
import torch.nn.functional as F

from .. import functional
from .case_grid import Family
from .parity import FLOAT_DTYPES, _expect, compare_with_torch

SMALL_SHAPES = [(7,), (6, 5), (4, 5, 3), (2, 5, 3, 4), (3, 1)]
REDUCTIONS = ["mean", "sum", "none"]
SMOOTHINGS = [0.0, 0.1, 1.0]
# name -> (ignore_index passed, value written into some targets or None)
IGNORE = {
    "absent": (-100, None),
    "some_rows": (-100, -100),
    "minus_one": (-1, -1),
    "in_class_range": (2, 2),
}
CE = functional.cross_entropy
BCE = functional.binary_cross_entropy_with_logits


# ---- inputs -------------------------------------------------------------------------------------
def make_logits(shape, dtype, device, scale=3.0):
    return (torch.randn(shape, dtype=torch.float64) * scale).to(dtype).to(device)


def make_hard_target(shape, device, ignore_value=None, share=0.3):
    num_classes = num_classes_of(shape)
    rows = () if len(shape) == 1 else (shape[0],) + tuple(shape[2:])
    target = torch.randint(0, num_classes, rows)
    if ignore_value is not None:
        mask = torch.rand(rows) < share
        if len(rows) == 0 or mask.numel() > 1:
            mask.view(-1)[0] = True  # at least one ignored row; and not all (below)
            if mask.numel() > 1:
                mask.view(-1)[-1] = False
        target = torch.where(mask, torch.full_like(target, ignore_value), target)
    return target.to(device)


def make_weight(num_classes, dtype, device):
    return (torch.rand(num_classes, dtype=torch.float64) * 2 + 0.1).to(dtype).to(device)


def make_soft_target(shape, dtype, device):
    class_dim = 0 if len(shape) == 1 else 1
    return torch.softmax(torch.randn(shape, dtype=torch.float64) * 2, dim=class_dim).to(dtype).to(device)


def num_classes_of(shape):
    return shape[0] if len(shape) == 1 else shape[1]


def make_bce_input(shape, dtype, device, scale=4.0):
    return (torch.randn(shape, dtype=torch.float64) * scale).to(dtype).to(device)


def make_bce_target(shape, dtype, device):
    return torch.rand(shape, dtype=torch.float64).to(dtype).to(device)


def make_positive(shape, dtype, device):
    return (torch.rand(shape, dtype=torch.float64) * 2 + 0.1).to(dtype).to(device)


# ---- non-contiguous layouts of the same values ----------------------------------------------------
def _transposed(x):
    return x.t().contiguous().t()


def _row_stride_gt_c(x):
    pad = torch.zeros(x.shape[0], 9, dtype=x.dtype, device=x.device)
    return torch.cat([x, pad], dim=1)[:, : x.shape[1]]


def _every_other_row(x):
    return x.repeat_interleave(2, dim=0)[::2]


def _expanded(x):
    return x[:1].expand(x.shape)


def channels_last(x):
    return x.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)


def _offset_storage(x):
    return torch.cat([torch.zeros(3, dtype=x.dtype, device=x.device), x.flatten()])[3:].view(x.shape)


LAYOUTS_2D = {
    "transposed": _transposed,
    "row_stride_gt_C": _row_stride_gt_c,
    "every_other_row": _every_other_row,
    "expanded": _expanded,
    "storage_offset": _offset_storage,
}


# ---- cross-entropy --------------------------------------------------------------------------------
def ce_hard_targets(device, shape, weighted, ignore, label_smoothing, reduction, dtype):
    ignore_index, ignore_value = IGNORE[ignore]
    x = make_logits(shape, dtype, device)
    y = make_hard_target(shape, device, ignore_value)
    w = make_weight(num_classes_of(shape), dtype, device) if weighted else None
    compare_with_torch(
        CE,
        F.cross_entropy,
        (x, y),
        grad_args=(0,),
        kwargs={"weight": w, "ignore_index": ignore_index, "reduction": reduction, "label_smoothing": label_smoothing},
    )


def ce_soft_targets(device, shape, weighted, label_smoothing, reduction, dtype):
    x = make_logits(shape, dtype, device)
    t = make_soft_target(shape, dtype, device)
    w = make_weight(num_classes_of(shape), dtype, device) if weighted else None
    compare_with_torch(
        CE,
        F.cross_entropy,
        (x, t),
        grad_args=(0, 1),
        kwargs={"weight": w, "reduction": reduction, "label_smoothing": label_smoothing},
    )


def ce_odd_shapes(device, shape, soft, dtype):
    """Weighted, smoothed, with ignored rows (class-index) or a gradient to the target (probabilities)."""
    x = make_logits(shape, dtype, device)
    w = make_weight(shape[1], dtype, device)
    if soft:
        t = make_soft_target(shape, dtype, device)
        compare_with_torch(CE, F.cross_entropy, (x, t), grad_args=(0, 1), kwargs={"weight": w, "label_smoothing": 0.1})
    else:
        y = make_hard_target(shape, device, ignore_value=-100)
        compare_with_torch(CE, F.cross_entropy, (x, y), grad_args=(0,), kwargs={"weight": w, "label_smoothing": 0.1})


# Language-model sizes (they dominate the runtime: few cases). name -> (shape, dtype, soft, options)
LM_SHAPES = {
    # Liger's B x T x V = 3 x 423 x 32000, flattened to (B*T, V) as language models do
    "liger_fp32_weighted_mean": (
        (3 * 423, 32000),
        torch.float32,
        False,
        {"weighted": True, "ignore_value": -100, "label_smoothing": 0.1, "reduction": "mean"},
    ),
    "liger_bf16_none": (
        (3 * 423, 32000),
        torch.bfloat16,
        False,
        {"weighted": False, "ignore_value": None, "label_smoothing": 0.0, "reduction": "none"},
    ),
    "soft_fp32": ((48, 32000), torch.float32, True, {"weighted": True, "label_smoothing": 0.1, "reduction": "mean"}),
    "soft_fp16": ((48, 32000), torch.float16, True, {"weighted": True, "label_smoothing": 0.1, "reduction": "mean"}),
}


def ce_lm_shapes(device, variant):
    shape, dtype, soft, options = LM_SHAPES[variant]
    x = make_logits(shape, dtype, device)
    w = make_weight(shape[1], dtype, device) if options["weighted"] else None
    kwargs = {"weight": w, "reduction": options["reduction"], "label_smoothing": options["label_smoothing"]}
    if soft:
        t = make_soft_target(shape, dtype, device)
        compare_with_torch(CE, F.cross_entropy, (x, t), grad_args=(0, 1), kwargs=kwargs)
    else:
        y = make_hard_target(shape, device, options["ignore_value"])
        compare_with_torch(CE, F.cross_entropy, (x, y), grad_args=(0,), kwargs=kwargs)


def ce_non_contiguous_2d(device, layout, soft, dtype):
    x = LAYOUTS_2D[layout](make_logits((6, 37), dtype, device))
    _expect(layout == "storage_offset" or not x.is_contiguous(), f"layout {layout} gave a contiguous tensor")
    w = make_weight(37, dtype, device)
    if soft:
        t = LAYOUTS_2D[layout](make_soft_target((6, 37), dtype, device))
        compare_with_torch(CE, F.cross_entropy, (x, t), grad_args=(0, 1), kwargs={"weight": w, "label_smoothing": 0.1})
    else:
        y = make_hard_target((12, 37), device, ignore_value=-100)[::2]  # a strided target too
        compare_with_torch(
            CE,
            F.cross_entropy,
            (x, y),
            grad_args=(0,),
            kwargs={"weight": w, "label_smoothing": 0.1, "reduction": "none"},
        )


def ce_non_contiguous_nd(device, soft, dtype):
    x = channels_last(make_logits((2, 7, 3, 5), dtype, device))
    _expect(not x.is_contiguous(), "channels_last gave a contiguous tensor")
    if soft:
        t = channels_last(make_soft_target((2, 7, 3, 5), dtype, device))
        compare_with_torch(CE, F.cross_entropy, (x, t), grad_args=(0, 1))
    else:
        y = make_hard_target((2, 7, 5, 3), device, ignore_value=-100).transpose(1, 2)
        compare_with_torch(
            CE, F.cross_entropy, (x, y), grad_args=(0,), kwargs={"label_smoothing": 0.2, "reduction": "sum"}
        )


CE_HARD = Family(
    "ce_hard_targets",
    ce_hard_targets,
    {
        "shape": SMALL_SHAPES,
        "weighted": [False, True],
        "ignore": list(IGNORE),
        "label_smoothing": SMOOTHINGS,
        "reduction": REDUCTIONS,
        "dtype": FLOAT_DTYPES,
    },
)
CE_SOFT = Family(
    "ce_soft_targets",
    ce_soft_targets,
    {
        "shape": SMALL_SHAPES,
        "weighted": [False, True],
        "label_smoothing": SMOOTHINGS,
        "reduction": REDUCTIONS,
        "dtype": FLOAT_DTYPES,
    },
)
# Liger's 9 x 7 x 41 (flat and N-D), a true N-D (3, 41, 7, 5), sizes around vector/block boundaries
# (C = 4099, S = 65537 spatial positions), and a vocabulary above 32K (GPT-2's 50257: odd, > 2^15).
CE_ODD_SHAPES = Family(
    "ce_odd_shapes",
    ce_odd_shapes,
    {
        "shape": [(63, 41), (9, 41, 7), (3, 41, 7, 5), (2, 1000, 33), (37, 4099), (2, 3, 65537), (4, 50257)],
        "soft": [False, True],
        "dtype": FLOAT_DTYPES,
    },
    quick={"shape": [(9, 41, 7), (37, 4099), (4, 50257)]},
)
CE_LM_SHAPES = Family("ce_lm_shapes", ce_lm_shapes, {"variant": list(LM_SHAPES)}, quick={"variant": []})
CE_NON_CONTIGUOUS_2D = Family(
    "ce_non_contiguous_2d",
    ce_non_contiguous_2d,
    {"layout": list(LAYOUTS_2D), "soft": [False, True], "dtype": FLOAT_DTYPES},
)
CE_NON_CONTIGUOUS_ND = Family(
    "ce_non_contiguous_nd", ce_non_contiguous_nd, {"soft": [False, True], "dtype": FLOAT_DTYPES}
)


# ---- BCE-with-logits ------------------------------------------------------------------------------
# input shape -> broadcastable operand shapes (for weight and pos_weight)
BCE_OPERAND_SHAPES = {
    (): [None, ()],
    (7,): [None, (), (1,), (7,)],
    (5, 4): [None, (), (4,), (5, 1), (1, 4), (5, 4)],
    (2, 3, 4): [None, (4,), (3, 1), (2, 1, 1), (1, 3, 4), (2, 3, 4)],
}
BCE_SHAPE_CASES = [(shape, w) for shape, ws in BCE_OPERAND_SHAPES.items() for w in ws]


def bce_weight_and_pos_weight(device, case, which, reduction, dtype):
    shape, op_shape = case
    x, y = make_bce_input(shape, dtype, device), make_bce_target(shape, dtype, device)
    op = None if op_shape is None else make_positive(op_shape, dtype, device)
    # "both": pos_weight along the last dim, weight of the case's shape
    pw_both = make_positive(shape[-1:] if shape else (), dtype, device)
    kwargs = {
        "reduction": reduction,
        "weight": op if which in ("weight", "both") else None,
        "pos_weight": op if which == "pos_weight" else (pw_both if which == "both" else None),
    }
    compare_with_torch(BCE, F.binary_cross_entropy_with_logits, (x, y), grad_args=(0, 1), kwargs=kwargs)


def bce_larger_shapes(device, shape, reduction):
    """Sizes around the vector width and the 8192-element partial-sum chunk."""
    x, y = make_bce_input(shape, torch.float32, device), make_bce_target(shape, torch.float32, device)
    compare_with_torch(
        BCE,
        F.binary_cross_entropy_with_logits,
        (x, y),
        grad_args=(0, 1),
        kwargs={
            "reduction": reduction,
            "weight": make_positive(shape[-1:], torch.float32, device),
            "pos_weight": make_positive(shape[-1:], torch.float32, device),
        },
    )


def bce_non_contiguous(device, reduction, dtype):
    base = make_bce_input((6, 10), dtype, device)
    x = base.t()  # transposed
    y = make_bce_target((20, 6), dtype, device)[::2]  # strided rows
    w = make_positive((1, 6), dtype, device).expand(10, 6)  # expanded, stride 0
    pw = make_positive((12,), dtype, device)[::2]  # strided vector
    compare_with_torch(
        BCE,
        F.binary_cross_entropy_with_logits,
        (x, y),
        grad_args=(0, 1),
        kwargs={"weight": w, "pos_weight": pw, "reduction": reduction},
    )


BCE_WEIGHTS = Family(
    "bce_weight_and_pos_weight",
    bce_weight_and_pos_weight,
    {
        "case": BCE_SHAPE_CASES,
        "which": ["weight", "pos_weight", "both"],
        "reduction": REDUCTIONS,
        "dtype": FLOAT_DTYPES,
    },
)
BCE_LARGER_SHAPES = Family(
    "bce_larger_shapes", bce_larger_shapes, {"shape": [(3, 1000, 7), (4099,), (8193, 3)], "reduction": REDUCTIONS}
)
BCE_NON_CONTIGUOUS = Family(
    "bce_non_contiguous", bce_non_contiguous, {"reduction": ["mean", "none"], "dtype": FLOAT_DTYPES}
)

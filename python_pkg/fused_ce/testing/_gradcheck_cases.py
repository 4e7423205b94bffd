"""torch.autograd.gradcheck and gradgradcheck in fp64 on small inputs, for every loss and option, through
the functional API and the public autograd.Function classes. One family per loss (fused_ce._case_grid),
run by tests/test_autograd.py and by python -m fused_ce.check. A failure raises
torch.autograd.gradcheck.GradcheckError.
"""

import torch
from torch.autograd import gradcheck, gradgradcheck

from .. import functional
from ..autograd import BCEWithLogitsFunction, CrossEntropyFunction
from .case_grid import Family

F64 = torch.float64
REDUCTIONS = ["mean", "sum", "none"]


def _x(shape, device):
    return torch.randn(shape, dtype=F64, device=device, requires_grad=True)


def _hard_target(shape, device, ignore=True):
    rows = () if len(shape) == 1 else (shape[0],) + tuple(shape[2:])
    num_classes = shape[0] if len(shape) == 1 else shape[1]
    y = torch.randint(0, num_classes, rows, device=device)
    if ignore and y.numel() > 2:
        y.view(-1)[1] = -100
    return y


def soft_target(shape, device, requires_grad):
    t = torch.softmax(torch.randn(shape, dtype=F64), dim=0 if len(shape) == 1 else 1).to(device)
    return t.requires_grad_(requires_grad)


def _weight(num_classes, device):
    return torch.rand(num_classes, dtype=F64, device=device) + 0.2


def check_both(fn, inputs):
    """gradcheck and gradgradcheck; each raises GradcheckError on a mismatch."""
    gradcheck(fn, inputs, raise_exception=True)
    gradgradcheck(fn, inputs, raise_exception=True)


HARD_OPTIONS = [
    {},
    {"weighted": True},
    {"label_smoothing": 0.2},
    {"weighted": True, "label_smoothing": 0.3, "ignore": True},
    {"ignore": True, "ignore_index": 2},
]
SOFT_OPTIONS = [{}, {"weighted": True, "label_smoothing": 0.25}]
BCE_OPTIONS = [
    {},
    {"weight": (4,)},
    {"pos_weight": (4,)},
    {"weight": (3, 1), "pos_weight": (4,)},
    {"weight": (), "pos_weight": (3, 4)},
]
APIS = ["functional", "function_class"]


def hard_targets(device, api, shape, options, reduction):
    x = _x(shape, device)
    ignore_index = options.get("ignore_index", -100)
    y = _hard_target(shape, device, ignore=options.get("ignore", False) and len(shape) > 1)
    if ignore_index != -100:
        y = y.masked_fill(y == -100, ignore_index)
    w = _weight(x.shape[0 if len(shape) == 1 else 1], device) if options.get("weighted") else None
    ls = options.get("label_smoothing", 0.0)
    if api == "functional":

        def fn(x):
            return functional.cross_entropy(
                x, y, weight=w, ignore_index=ignore_index, reduction=reduction, label_smoothing=ls
            )
    else:

        def fn(x):
            return CrossEntropyFunction.apply(x, y, w, ignore_index, reduction, ls)

    check_both(fn, (x,))


def soft_targets(device, api, shape, options, reduction):
    x = _x(shape, device)
    t = soft_target(shape, device, requires_grad=True)
    w = _weight(shape[0 if len(shape) == 1 else 1], device) if options.get("weighted") else None
    ls = options.get("label_smoothing", 0.0)
    if api == "functional":

        def fn(x, t):
            return functional.cross_entropy(x, t, weight=w, reduction=reduction, label_smoothing=ls)
    else:

        def fn(x, t):
            return CrossEntropyFunction.apply(x, t, w, -100, reduction, ls)

    check_both(fn, (x, t))


def bce(device, api, options, reduction):
    x = _x((3, 4), device)
    y = torch.rand(3, 4, dtype=F64, device=device, requires_grad=True)
    w = torch.rand(options["weight"], dtype=F64, device=device) + 0.2 if "weight" in options else None
    pw = torch.rand(options["pos_weight"], dtype=F64, device=device) + 0.2 if "pos_weight" in options else None
    if api == "functional":

        def fn(x, y):
            return functional.binary_cross_entropy_with_logits(x, y, w, reduction=reduction, pos_weight=pw)
    else:

        def fn(x, y):
            return BCEWithLogitsFunction.apply(x, y, w, reduction, pw)

    check_both(fn, (x, y))


GRADCHECK_CE_HARD = Family(
    "gradcheck_ce_hard_targets",
    hard_targets,
    {"api": APIS, "shape": [(4, 5), (2, 4, 3), (5,)], "options": HARD_OPTIONS, "reduction": REDUCTIONS},
)
GRADCHECK_CE_SOFT = Family(
    "gradcheck_ce_soft_targets",
    soft_targets,
    {"api": APIS, "shape": [(3, 4), (2, 3, 2), (4,)], "options": SOFT_OPTIONS, "reduction": REDUCTIONS},
)
GRADCHECK_BCE = Family("gradcheck_bce", bce, {"api": APIS, "options": BCE_OPTIONS, "reduction": REDUCTIONS})

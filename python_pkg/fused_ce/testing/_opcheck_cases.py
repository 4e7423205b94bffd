"""torch.library.opcheck on every op of the library the public API calls (fused_ce, or the emulated CUDA
build's inside fused_ce.testing.emulated_cuda()): schema, fake kernel, autograd registration and
aot_dispatch, over dtypes and reductions, with and without requires_grad. One family per loss
(fused_ce._case_grid), run by tests/test_ops.py and by python -m fused_ce.check. A failure raises
torch.testing._internal.optests.OpCheckError.
"""

import torch

from .._core.library import kernel_ops, lse_dtype
from .._core.reductions import NAMES, NONE
from .case_grid import Family

DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]
REDUCTIONS = {name: code for code, name in enumerate(NAMES)}
ALL_OPS = {
    "cross_entropy_fwd",
    "cross_entropy_bwd",
    "cross_entropy_soft_fwd",
    "cross_entropy_soft_bwd",
    "cross_entropy_lm_fwd",
    "cross_entropy_lm_bwd",
    "cross_entropy_lm_bwd_",
    "linear_ce_tile_",
    "linear_cross_entropy_fwd",
    "linear_cross_entropy_bwd",
    "cross_entropy_soft_target_bwd",
    "bce_with_logits_fwd",
    "bce_with_logits_bwd",
    "bce_with_logits_target_bwd",
    "ce_partial_stats",
    "ce_partial_grad",
}
SHAPES = [(4, 7), (2, 5, 3)]


def registered_ops(library):
    """The public ops of `library` (private ones, like the emulator's self-test, start with '_'). The
    dispatcher's list, not dir(namespace): a namespace lists only the ops that some earlier code looked up."""
    return {
        name.split("::", 1)[1]
        for name in torch._C._dispatch_get_all_op_names()
        if name.startswith(library + "::") and not name.split("::", 1)[1].startswith("_")
    }


def every_op_covered(device):
    """Every public op of the library the API calls has its opcheck family here (a new op needs one)."""
    library = kernel_ops().name
    registered = registered_ops(library)
    if registered != ALL_OPS:
        raise AssertionError(
            f"ops of {library} without an opcheck case: {sorted(registered - ALL_OPS)}; "
            f"covered but not registered: {sorted(ALL_OPS - registered)}"
        )


def _grad(reduction, rows, device):
    return torch.rand(rows if reduction == NONE else (), dtype=torch.float32, device=device) + 0.5


def cross_entropy(device, requires_grad, shape, reduction, dtype):
    ops, red = kernel_ops(), REDUCTIONS[reduction]
    x = torch.randn(shape, dtype=dtype, device=device, requires_grad=requires_grad)
    rows = (shape[0],) + tuple(shape[2:])
    y = torch.randint(0, shape[1], rows, device=device)
    y.view(-1)[0] = -100
    w = torch.rand(shape[1], dtype=dtype, device=device) + 0.1
    torch.library.opcheck(ops.cross_entropy_fwd.default, (x, y, w, -100, 0.1, red))
    torch.library.opcheck(ops.cross_entropy_fwd.default, (x, y, None, -100, 0.0, red))
    if not requires_grad:
        _, lse = ops.cross_entropy_fwd(x, y, w, -100, 0.1, red)
        g = _grad(red, y.shape, device).to(dtype)
        torch.library.opcheck(ops.cross_entropy_bwd.default, (g, x, y, w, lse, -100, 0.1, red))
    # The language-model options (logit_scale, softcap, z-loss) and the in-place backward.
    lm = (0.8, 3.0, 0.01)
    torch.library.opcheck(ops.cross_entropy_lm_fwd.default, (x, y, w, -100, 0.1, red) + lm)
    if not requires_grad:
        _, lse, _ = ops.cross_entropy_lm_fwd(x, y, w, -100, 0.1, red, *lm)
        torch.library.opcheck(ops.cross_entropy_lm_bwd.default, (g, x, y, w, lse, -100, 0.1, red) + lm)
        torch.library.opcheck(ops.cross_entropy_lm_bwd_.default, (g, x.clone(), y, w, lse, -100, 0.1, red) + lm)


def cross_entropy_soft(device, requires_grad, shape, reduction, dtype):
    ops, red = kernel_ops(), REDUCTIONS[reduction]
    x = torch.randn(shape, dtype=dtype, device=device, requires_grad=requires_grad)
    t = torch.softmax(torch.randn(shape), 1).to(dtype).to(device).requires_grad_(requires_grad)
    w = torch.rand(shape[1], dtype=dtype, device=device) + 0.1
    torch.library.opcheck(ops.cross_entropy_soft_fwd.default, (x, t, w, 0.2, red))
    torch.library.opcheck(ops.cross_entropy_soft_fwd.default, (x, t, None, 0.0, red))
    if not requires_grad:
        _, lse = ops.cross_entropy_soft_fwd(x, t, w, 0.2, red)
        g = _grad(red, lse.shape, device).to(dtype)
        torch.library.opcheck(ops.cross_entropy_soft_bwd.default, (g, x, t, w, lse, 0.2, red))
        torch.library.opcheck(ops.cross_entropy_soft_target_bwd.default, (g, x, w, lse, 0.2, red))


def bce(device, requires_grad, operands, reduction, dtype):
    ops, red = kernel_ops(), REDUCTIONS[reduction]
    x = torch.randn(4, 6, dtype=dtype, device=device, requires_grad=requires_grad)
    y = torch.rand(4, 6, dtype=dtype, device=device, requires_grad=requires_grad)
    w = pw = None
    if operands == "weight_col_pos_weight_row":
        w, pw = torch.rand(4, 1, dtype=dtype, device=device), torch.rand(6, dtype=dtype, device=device) + 0.5
    elif operands == "scalar_and_full":
        w, pw = torch.tensor(0.7, dtype=dtype, device=device), torch.rand(4, 6, dtype=dtype, device=device) + 0.5
    torch.library.opcheck(ops.bce_with_logits_fwd.default, (x, y, w, pw, red))
    if not requires_grad:
        g = (torch.rand(4, 6, device=device) if red == NONE else torch.tensor(0.8, device=device)).to(dtype)
        torch.library.opcheck(ops.bce_with_logits_bwd.default, (g, x, y, w, pw, red))
        torch.library.opcheck(ops.bce_with_logits_target_bwd.default, (g, x, y, w, pw, red))


def _linear_problem(dtype, device, n=9, hidden=8, vocab=29):
    """Hidden states, linear weight and bias, class-index targets (every 4th is ignore_index 3, also a valid
    class) and class weights, drawn from one seeded generator."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, hidden, generator=gen, dtype=torch.float64).to(dtype)
    w = torch.randn(vocab, hidden, generator=gen, dtype=torch.float64).to(dtype)
    b = torch.randn(vocab, generator=gen, dtype=torch.float64).to(dtype)
    t = torch.randint(0, vocab, (n,), generator=gen)
    t[::4] = 3
    cw = (torch.rand(vocab, generator=gen, dtype=torch.float64) + 0.1).to(dtype)
    return [a.to(device) for a in (x, w, b, t, cw)]


def linear_cross_entropy(device, reduction, dtype):
    ops, red = kernel_ops(), REDUCTIONS[reduction]
    x, w, b, t, cw = _linear_problem(dtype, device)
    x, w, b = (a.requires_grad_() for a in (x, w, b))
    torch.library.opcheck(ops.linear_cross_entropy_fwd.default, (x, w, b, t, cw, 3, 0.1, red, 4, True, True, True))
    torch.library.opcheck(
        ops.linear_cross_entropy_fwd.default, (x.detach(), w, None, t, None, -100, 0.0, red, 9, False, True, False)
    )
    g = torch.rand(
        9 if red == NONE else (), dtype=torch.float64 if dtype == torch.float64 else torch.float32, device=device
    )
    torch.library.opcheck(
        ops.linear_cross_entropy_bwd.default,
        (g, x.detach(), w.detach(), b.detach(), t, cw, 3, 0.1, red, 4, True, True, True),
    )
    # The language-model options (logit_scale, softcap, z-loss).
    torch.library.opcheck(
        ops.linear_cross_entropy_fwd.default, (x, w, b, t, cw, 3, 0.1, red, 4, True, True, True, 0.8, 3.0, 0.01)
    )
    torch.library.opcheck(
        ops.linear_cross_entropy_bwd.default,
        (g, x.detach(), w.detach(), b.detach(), t, cw, 3, 0.1, red, 4, True, True, True, 0.8, 3.0, 0.01),
    )
    tile = torch.nn.functional.linear(x, w, b).detach()
    den = torch.tensor(5.0, dtype=torch.float64, device=device)
    torch.library.opcheck(ops.linear_ce_tile_.default, (tile, t, cw, 3, 0.1, None, den, True))
    torch.library.opcheck(ops.linear_ce_tile_.default, (tile, t, cw, 3, 0.1, None, den, True, 0.8, 3.0, 0.01, den))


def partial_stats(device, shape, smoothing, dtype):
    """The vocabulary-parallel slice ops (parallel.py): targets below, in and above the slice [2, 2 + C); also
    with the language-model options (logit_scale, softcap)."""
    ops = kernel_ops()
    x = torch.randn(shape, dtype=dtype, device=device)
    rows = (shape[0],) + tuple(shape[2:])
    y = torch.randint(0, shape[1] + 4, rows, device=device)
    y.view(-1)[0] = -100
    w = torch.rand(shape[1], dtype=dtype, device=device) + 0.1
    torch.library.opcheck(ops.ce_partial_stats.default, (x, y, w, 2, -100, smoothing))
    torch.library.opcheck(ops.ce_partial_stats.default, (x, y, None, 2, -100, smoothing))
    torch.library.opcheck(ops.ce_partial_stats.default, (x, y, w, 2, -100, smoothing, 0.8, 3.0))
    coefs = torch.rand((4,) + rows, dtype=lse_dtype(dtype), device=device)
    torch.library.opcheck(ops.ce_partial_grad.default, (x, y, w, coefs, 2, -100))
    torch.library.opcheck(ops.ce_partial_grad.default, (x, y, w, coefs, 2, -100, 0.8, 3.0))


# requires_grad first: the --quick walk then alternates it, so it reaches the backward ops (False) early.
OPS_COVERED = Family("every_op_has_an_opcheck_case", every_op_covered, {})
OPCHECK_CE = Family(
    "opcheck_cross_entropy",
    cross_entropy,
    {"requires_grad": [False, True], "shape": SHAPES, "reduction": list(REDUCTIONS), "dtype": DTYPES},
)
OPCHECK_CE_SOFT = Family(
    "opcheck_cross_entropy_soft",
    cross_entropy_soft,
    {"requires_grad": [False, True], "shape": SHAPES, "reduction": list(REDUCTIONS), "dtype": DTYPES},
)
OPCHECK_BCE = Family(
    "opcheck_bce",
    bce,
    {
        "requires_grad": [False, True],
        "operands": ["none", "weight_col_pos_weight_row", "scalar_and_full"],
        "reduction": list(REDUCTIONS),
        "dtype": DTYPES,
    },
)
OPCHECK_LINEAR_CE = Family(
    "opcheck_linear_cross_entropy",
    linear_cross_entropy,
    {"reduction": list(REDUCTIONS), "dtype": [torch.float32, torch.float64, torch.bfloat16]},
)
OPCHECK_PARTIAL_STATS = Family(
    "opcheck_partial_stats", partial_stats, {"shape": SHAPES, "smoothing": [False, True], "dtype": DTYPES}
)

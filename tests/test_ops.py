"""torch.library.opcheck on every op of torch.ops.fused_ce (schema, fake kernel, autograd registration,
aot_dispatch) over dtypes and reductions (the families of fused_ce.testing._opcheck_cases, which python -m
fused_ce.check runs too), and the fake kernels' shapes, strides and dtypes under FakeTensorMode."""

import ast
import re
import subprocess
import sys

import pytest
import torch
from helpers import parametrize_grid
from torch._subclasses.fake_tensor import FakeTensorMode

import fused_ce
import fused_ce.testing
from fused_ce.testing._opcheck_cases import (
    ALL_OPS,
    DTYPES,
    OPCHECK_BCE,
    OPCHECK_CE,
    OPCHECK_CE_SOFT,
    REDUCTIONS,
    registered_ops,
)


def ops():
    """The library under test: fused_ce's, or the emulated CUDA build's in emulated_cuda cases."""
    return fused_ce._core.library.kernel_ops()


def test_every_op_is_covered():
    assert registered_ops("fused_ce") == ALL_OPS
    if fused_ce.testing.emulated_cuda_available():
        assert registered_ops("fused_ce_emulated_cuda") == ALL_OPS


def test_importing_fused_ce_alone_defines_every_op():
    """`import fused_ce`, and nothing else, defines every op: none waits for a module that some other import
    happens to load (the linear cross-entropy's ops are defined from Python, by fused_ce._linear.ops)."""
    code = (
        "import torch, fused_ce\n"
        "names = {n.split('::', 1)[1] for n in torch._C._dispatch_get_all_op_names() if n.startswith('fused_ce::')}\n"
        "print(sorted(names))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert ALL_OPS <= set(ast.literal_eval(proc.stdout.strip())), proc.stdout


@parametrize_grid(OPCHECK_CE)
def test_opcheck_cross_entropy(requires_grad, shape, reduction, dtype, device):
    OPCHECK_CE.run(device, requires_grad=requires_grad, shape=shape, reduction=reduction, dtype=dtype)


@parametrize_grid(OPCHECK_CE_SOFT)
def test_opcheck_cross_entropy_soft(requires_grad, shape, reduction, dtype, device):
    OPCHECK_CE_SOFT.run(device, requires_grad=requires_grad, shape=shape, reduction=reduction, dtype=dtype)


@parametrize_grid(OPCHECK_BCE)
def test_opcheck_bce(requires_grad, operands, reduction, dtype, device):
    OPCHECK_BCE.run(device, requires_grad=requires_grad, operands=operands, reduction=reduction, dtype=dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduction", list(REDUCTIONS))
@pytest.mark.parametrize("shape", [(4, 7), (2, 5, 3, 2), (0, 3)])
def test_fake_tensor_shapes(shape, reduction, dtype):
    red = REDUCTIONS[reduction]
    rows = (shape[0],) + tuple(shape[2:])
    with FakeTensorMode():
        x = torch.empty(shape, dtype=dtype)
        y = torch.empty(rows, dtype=torch.long)
        loss, lse = ops().cross_entropy_fwd(x, y, None, -100, 0.0, red)
        assert loss.shape == (rows if red == 0 else ()) and loss.dtype == dtype
        assert lse.shape == rows and lse.dtype == torch.float64
        g = torch.empty(loss.shape, dtype=dtype)
        gx = ops().cross_entropy_bwd(g, x, y, None, lse, -100, 0.0, red)
        assert gx.shape == x.shape and gx.dtype == dtype

        t = torch.empty(shape, dtype=dtype)
        loss, lse = ops().cross_entropy_soft_fwd(x, t, None, 0.1, red)
        assert loss.shape == (rows if red == 0 else ()) and lse.shape == rows and lse.dtype == torch.float64
        assert ops().cross_entropy_soft_bwd(g, x, t, None, lse, 0.1, red).shape == x.shape
        assert ops().cross_entropy_soft_target_bwd(g, x, None, lse, 0.1, red).shape == x.shape

        b = ops().bce_with_logits_fwd(x, t, None, None, red)
        assert b.shape == (x.shape if red == 0 else ()) and b.dtype == dtype
        gb = torch.empty(b.shape, dtype=dtype)
        assert ops().bce_with_logits_bwd(gb, x, t, None, None, red).shape == x.shape
        assert ops().bce_with_logits_target_bwd(gb, x, t, None, None, red).shape == x.shape


def test_fake_kernels_reject_bad_shapes():
    """With the C++ glue's messages (op_common.h): a fake call fails as the real one does."""
    with FakeTensorMode():
        x = torch.empty(4, 7)
        with pytest.raises(RuntimeError, match=re.escape("Expected target size [4], got [3]")):
            ops().cross_entropy_fwd(x, torch.empty(3, dtype=torch.long), None, -100, 0.0, 1)
        with pytest.raises(
            RuntimeError,
            match=re.escape("fused_ce: probability targets must have the logits' shape and dtype, got [4, 6] Float"),
        ):
            ops().cross_entropy_soft_fwd(x, torch.empty(4, 6), None, 0.0, 1)
        with pytest.raises(RuntimeError, match=re.escape("Target size ([7]) must be the same as input size ([4, 7])")):
            ops().bce_with_logits_fwd(x, torch.empty(7), None, None, 1)


def test_public_api_traces_to_the_ops():
    """The functional API reaches the registered ops (what torch.compile sees), not a Python fallback."""
    gm = torch.fx.experimental.proxy_tensor.make_fx(lambda x, y: fused_ce.cross_entropy(x, y, label_smoothing=0.1))(
        torch.randn(3, 4), torch.tensor([0, 1, 2])
    )
    assert any(n.target is ops().cross_entropy_fwd.default for n in gm.graph.nodes)


def _backward_ops(x, y, t, g, lse):
    """Every backward op of the class-index, probability-target, BCE and LM losses on the same arguments."""
    lm_args = (-100, 0.0, 1, 1.3, 2.0, 0.1)
    return [
        ops().cross_entropy_bwd(g, x, y, None, lse, -100, 0.0, 1),
        ops().cross_entropy_soft_bwd(g, x, t, None, lse, 0.0, 1),
        ops().cross_entropy_soft_target_bwd(g, x, None, lse, 0.0, 1),
        ops().bce_with_logits_bwd(g, x, t, None, None, 1),
        ops().bce_with_logits_target_bwd(g, x, t, None, None, 1),
        ops().cross_entropy_lm_bwd(g, x, y, None, lse, *lm_args),
    ]


def test_fake_gradients_have_the_real_strides():
    """The backward ops write their gradient contiguous whatever the logits' layout; the fake kernels must say
    so, since a compiled graph reads the real gradient with the strides its fake one had (transposed rows,
    a permuted N-D layout)."""
    for x in (torch.randn(7, 5).t(), torch.randn(2, 4, 3).permute(0, 2, 1)):  # (5, 7) and (2, 3, 4)
        y = torch.zeros((x.shape[0],) + tuple(x.shape[2:]), dtype=torch.long)
        t = torch.softmax(torch.randn(x.shape), 1)
        g, lse = torch.ones(()), ops().cross_entropy_fwd(x, y, None, -100, 0.0, 1)[1]
        real = _backward_ops(x, y, t, g, lse)
        with FakeTensorMode() as mode:
            fake = _backward_ops(*(mode.from_tensor(a) for a in (x, y, t, g, lse)))
        for i, (r, f) in enumerate(zip(real, fake)):
            assert (f.shape, f.stride(), f.dtype) == (r.shape, r.stride(), r.dtype), f"op {i}, logits {tuple(x.shape)}"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduction", list(REDUCTIONS))
def test_fake_lm_forward_matches_the_real_outputs(reduction, dtype):
    """cross_entropy_lm_fwd's (loss, lse, z_loss): the fake kernel's shapes and dtypes are the kernel's (the lse
    and z-loss in fp32 for fp16/bf16 logits), so that return_z_loss under torch.compile keeps them."""
    x = torch.randn(3, 5, 2).to(dtype)
    y = torch.tensor([[0, 4], [-100, 2], [1, 3]])
    args = (None, -100, 0.0, REDUCTIONS[reduction], 1.2, 3.0, 1e-2)
    real = ops().cross_entropy_lm_fwd(x, y, *args)
    with FakeTensorMode() as mode:
        fake = ops().cross_entropy_lm_fwd(mode.from_tensor(x), mode.from_tensor(y), *args)
    assert [(f.shape, f.dtype) for f in fake] == [(r.shape, r.dtype) for r in real]

"""torch.library.opcheck on every op of torch.ops.fused_ce (schema, fake kernel, autograd registration,
aot_dispatch) over dtypes and reductions, and the fake kernels' shapes under FakeTensorMode."""
import re

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import fused_ce
import fused_ce.testing
from helpers import DEVICES
DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]
REDUCTIONS = {"none": 0, "mean": 1, "sum": 2}
ALL_OPS = {"cross_entropy_fwd", "cross_entropy_bwd", "cross_entropy_soft_fwd", "cross_entropy_soft_bwd",
           "linear_ce_tile_", "linear_cross_entropy_fwd", "linear_cross_entropy_bwd",
           "cross_entropy_soft_target_bwd", "bce_with_logits_fwd", "bce_with_logits_bwd",
           "bce_with_logits_target_bwd"}


def ops():
    """The library under test: fused_ce's, or the emulated CUDA build's in emulated_cuda cases."""
    return fused_ce._ops.kernel_ops()


def _registered(library):
    """The public ops of `library` (private ones, like the emulator's self-test, start with '_')."""
    return {name.split("::", 1)[1] for name in torch._C._dispatch_get_all_op_names()
            if name.startswith(library + "::") and not name.split("::", 1)[1].startswith("_")}


def test_every_op_is_covered():
    # The dispatcher's list, not dir(namespace): a namespace only lists ops that some earlier code looked
    # up, so the test failed when run on its own.
    assert _registered("fused_ce") == ALL_OPS
    if fused_ce.testing.emulated_cuda_available():
        assert _registered("fused_ce_emulated_cuda") == ALL_OPS


def _ce_args(shape, dtype, device, requires_grad, weighted):
    x = torch.randn(shape, dtype=dtype, device=device, requires_grad=requires_grad)
    rows = (shape[0],) + tuple(shape[2:])
    y = torch.randint(0, shape[1], rows, device=device)
    y.view(-1)[0] = -100
    w = torch.rand(shape[1], dtype=dtype, device=device) + 0.1 if weighted else None
    return x, y, w


def _grad(reduction, rows, device):
    return torch.rand(rows if reduction == 0 else (), dtype=torch.float32, device=device) + 0.5


def _acc(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


SHAPES = [(4, 7), (2, 5, 3)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduction", list(REDUCTIONS))
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("requires_grad", [False, True])
def test_opcheck_cross_entropy(requires_grad, shape, reduction, dtype, device):
    red = REDUCTIONS[reduction]
    x, y, w = _ce_args(shape, dtype, device, requires_grad, weighted=True)
    torch.library.opcheck(ops().cross_entropy_fwd.default, (x, y, w, -100, 0.1, red))
    torch.library.opcheck(ops().cross_entropy_fwd.default, (x, y, None, -100, 0.0, red))
    if not requires_grad:
        _, lse = ops().cross_entropy_fwd(x, y, w, -100, 0.1, red)
        g = _grad(red, y.shape, device).to(dtype)
        torch.library.opcheck(ops().cross_entropy_bwd.default, (g, x, y, w, lse, -100, 0.1, red))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduction", list(REDUCTIONS))
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("requires_grad", [False, True])
def test_opcheck_cross_entropy_soft(requires_grad, shape, reduction, dtype, device):
    red = REDUCTIONS[reduction]
    x = torch.randn(shape, dtype=dtype, device=device, requires_grad=requires_grad)
    t = torch.softmax(torch.randn(shape), 1).to(dtype).to(device).requires_grad_(requires_grad)
    w = torch.rand(shape[1], dtype=dtype, device=device) + 0.1
    torch.library.opcheck(ops().cross_entropy_soft_fwd.default, (x, t, w, 0.2, red))
    torch.library.opcheck(ops().cross_entropy_soft_fwd.default, (x, t, None, 0.0, red))
    if not requires_grad:
        _, lse = ops().cross_entropy_soft_fwd(x, t, w, 0.2, red)
        g = _grad(red, lse.shape, device).to(dtype)
        torch.library.opcheck(ops().cross_entropy_soft_bwd.default, (g, x, t, w, lse, 0.2, red))
        torch.library.opcheck(ops().cross_entropy_soft_target_bwd.default, (g, x, w, lse, 0.2, red))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduction", list(REDUCTIONS))
@pytest.mark.parametrize("operands", ["none", "weight_col_pos_weight_row", "scalar_and_full"])
@pytest.mark.parametrize("requires_grad", [False, True])
def test_opcheck_bce(requires_grad, operands, reduction, dtype, device):
    red = REDUCTIONS[reduction]
    x = torch.randn(4, 6, dtype=dtype, device=device, requires_grad=requires_grad)
    y = torch.rand(4, 6, dtype=dtype, device=device, requires_grad=requires_grad)
    w = pw = None
    if operands == "weight_col_pos_weight_row":
        w, pw = torch.rand(4, 1, dtype=dtype, device=device), torch.rand(6, dtype=dtype, device=device) + 0.5
    elif operands == "scalar_and_full":
        w, pw = torch.tensor(0.7, dtype=dtype, device=device), torch.rand(4, 6, dtype=dtype, device=device) + 0.5
    torch.library.opcheck(ops().bce_with_logits_fwd.default, (x, y, w, pw, red))
    if not requires_grad:
        g = (torch.rand(4, 6, device=device) if red == 0 else torch.tensor(0.8, device=device)).to(dtype)
        torch.library.opcheck(ops().bce_with_logits_bwd.default, (g, x, y, w, pw, red))
        torch.library.opcheck(ops().bce_with_logits_target_bwd.default, (g, x, y, w, pw, red))


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
        assert lse.shape == rows and lse.dtype == _acc(dtype)
        g = torch.empty(loss.shape, dtype=dtype)
        gx = ops().cross_entropy_bwd(g, x, y, None, lse, -100, 0.0, red)
        assert gx.shape == x.shape and gx.dtype == dtype

        t = torch.empty(shape, dtype=dtype)
        loss, lse = ops().cross_entropy_soft_fwd(x, t, None, 0.1, red)
        assert loss.shape == (rows if red == 0 else ()) and lse.shape == rows and lse.dtype == _acc(dtype)
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
        with pytest.raises(RuntimeError, match=re.escape("fused_ce: probability targets must have the logits' shape and dtype, got [4, 6] Float")):
            ops().cross_entropy_soft_fwd(x, torch.empty(4, 6), None, 0.0, 1)
        with pytest.raises(RuntimeError, match=re.escape("Target size ([7]) must be the same as input size ([4, 7])")):
            ops().bce_with_logits_fwd(x, torch.empty(7), None, None, 1)


def test_public_api_traces_to_the_ops():
    """The functional API reaches the registered ops (what torch.compile sees), not a Python fallback."""
    gm = torch.fx.experimental.proxy_tensor.make_fx(
        lambda x, y: fused_ce.cross_entropy(x, y, label_smoothing=0.1))(torch.randn(3, 4), torch.tensor([0, 1, 2]))
    assert any(n.target is ops().cross_entropy_fwd.default for n in gm.graph.nodes)

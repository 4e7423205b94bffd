"""Parity on PyTorch's own test inputs: the OpInfo sample inputs of
nn.functional.cross_entropy and nn.functional.binary_cross_entropy_with_logits, and the ModuleInfo
inputs and error inputs of nn.CrossEntropyLoss and nn.BCEWithLogitsLoss (torch.testing._internal, shipped in the torch
wheel; it needs the `expecttest` package). They are the cases PyTorch itself tests these losses with, so
each must give the same value, gradients, dtype and shape, or the same exception type and message.
"""

import pytest
import torch
import torch.nn.functional as F
from helpers import DEVICES, FLOAT_DTYPES, compare_with_torch

import fused_ce

pytest.importorskip("expecttest", reason="torch.testing._internal needs expecttest (scripts/test.sh installs it)")
from torch.testing._internal.common_methods_invocations import op_db
from torch.testing._internal.common_modules import ModuleErrorEnum, module_db

OURS = {
    "nn.functional.cross_entropy": fused_ce.cross_entropy,
    "nn.functional.binary_cross_entropy_with_logits": fused_ce.binary_cross_entropy_with_logits,
}
OPINFOS = {op.name: op for op in op_db if op.name in OURS}
MODULES = {
    torch.nn.CrossEntropyLoss: fused_ce.CrossEntropyLoss,
    torch.nn.BCEWithLogitsLoss: fused_ce.BCEWithLogitsLoss,
}
MODULEINFOS = [m for m in module_db if m.module_cls in MODULES]


def test_torch_knows_both_losses():
    """Guards the tests below against silently running on nothing if torch renames its entries."""
    assert set(OPINFOS) == set(OURS)
    assert {m.module_cls for m in MODULEINFOS} == set(MODULES)


def _grad_positions(args):
    return tuple(
        i for i, a in enumerate(args) if isinstance(a, torch.Tensor) and a.is_floating_point() and a.requires_grad
    )


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("name", sorted(OURS))
def test_opinfo_sample_inputs(name, dtype, device):
    op = OPINFOS[name]
    if dtype not in op.supported_dtypes(device):
        pytest.skip(f"torch's {name} does not support {dtype} on {device}")
    samples = list(op.sample_inputs(device, dtype, requires_grad=True))
    assert samples, "torch gave no sample inputs"
    for k, s in enumerate(samples):
        args = (s.input, *s.args)
        where = (
            f"sample {k}: input {tuple(s.input.shape)}, args {[getattr(a, 'shape', a) for a in s.args]}, "
            f"kwargs {s.kwargs}"
        )
        try:
            compare_with_torch(
                OURS[name], getattr(F, name.split(".")[-1]), args, _grad_positions(args), dtype=dtype, kwargs=s.kwargs
            )
        except AssertionError as e:
            raise AssertionError(f"{where}\n{e}") from None


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("info", MODULEINFOS, ids=lambda m: m.module_cls.__name__)
def test_moduleinfo_inputs(info, dtype, device):
    inputs = info.module_inputs_func(info, device=device, dtype=dtype, requires_grad=True, training=True)
    assert inputs, "torch gave no module inputs"
    for k, mi in enumerate(inputs):
        ctor = mi.constructor_input
        theirs = info.module_cls(*ctor.args, **ctor.kwargs).to(device)
        ours = MODULES[info.module_cls](*ctor.args, **ctor.kwargs).to(device)
        assert ours.state_dict().keys() == theirs.state_dict().keys()
        args = tuple(mi.forward_input.args)
        where = (
            f"module input {k} ({getattr(mi, 'desc', '')}): constructor {ctor.kwargs}, "
            f"forward {[getattr(a, 'shape', a) for a in args]}"
        )
        try:
            compare_with_torch(ours, theirs, args, _grad_positions(args), dtype=dtype, kwargs=mi.forward_input.kwargs)
        except AssertionError as e:
            raise AssertionError(f"{where}\n{e}") from None


ERROR_INFOS = [m for m in MODULEINFOS if m.module_error_inputs_func is not None]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("info", ERROR_INFOS, ids=lambda m: m.module_cls.__name__)
def test_moduleinfo_error_inputs(info, device):
    """torch's own bad-input cases raise the same exception type with a message matching torch's regex."""
    errors = info.module_error_inputs_func(info, device=device, dtype=torch.float32, requires_grad=False, training=True)
    assert errors, "torch gave no error inputs"
    for e in errors:
        mi = e.module_error_input
        ctor, fwd = mi.constructor_input, mi.forward_input
        with pytest.raises(e.error_type, match=e.error_regex):
            module = MODULES[info.module_cls](*ctor.args, **ctor.kwargs).to(device)
            assert e.error_on == ModuleErrorEnum.FORWARD_ERROR, "torch expected the constructor to raise"
            module(*fwd.args, **fwd.kwargs)

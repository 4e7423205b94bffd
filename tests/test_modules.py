"""fused_ce.CrossEntropyLoss / BCEWithLogitsLoss against torch's modules: constructor arguments, legacy
size_average/reduce with the same deprecation warning, buffers, state_dict keys, loading a torch
module's state_dict, repr, and outputs."""

import warnings

import pytest
import torch
from helpers import DEVICES, compare_with_torch

import fused_ce

CE_KWARGS = [
    {},
    {"weight": torch.tensor([0.5, 1.0, 2.0, 1.5, 0.1])},
    {"ignore_index": 1, "reduction": "sum"},
    {"reduction": "none", "label_smoothing": 0.2},
    {"weight": torch.tensor([0.5, 1.0, 2.0, 1.5, 0.1]), "label_smoothing": 0.1, "ignore_index": -1},
]
BCE_KWARGS = [
    {},
    {"weight": torch.tensor([0.5, 1.0, 2.0, 1.5, 0.1])},
    {"pos_weight": torch.tensor([3.0, 1.0, 2.0, 0.5, 1.0])},
    {"weight": torch.rand(4, 1), "pos_weight": torch.rand(5) + 0.5, "reduction": "sum"},
    {"reduction": "none"},
]


def _pair(kind, kwargs):
    if kind == "ce":
        return fused_ce.CrossEntropyLoss(**kwargs), torch.nn.CrossEntropyLoss(**kwargs)
    return fused_ce.BCEWithLogitsLoss(**kwargs), torch.nn.BCEWithLogitsLoss(**kwargs)


def _inputs(kind, device):
    x = torch.randn(4, 5, device=device, requires_grad=True)
    if kind == "ce":
        return x, torch.tensor([0, 1, 1, 4], device=device)
    return x, torch.rand(4, 5, device=device)


CASES = [("ce", k) for k in CE_KWARGS] + [("bce", k) for k in BCE_KWARGS]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind,kwargs", CASES, ids=[f"{k}-{i}" for i, (k, _) in enumerate(CASES)])
def test_module_matches_torch(kind, kwargs, device):
    ours, ref = _pair(kind, kwargs)
    ours, ref = ours.to(device), ref.to(device)
    assert isinstance(ours, type(ref))
    assert repr(ours).replace("fused_ce.", "") == repr(ref)
    assert repr(ours) == repr(ref)  # same class name, same extra_repr
    assert list(ours.state_dict()) == list(ref.state_dict())
    assert dict(ours.named_buffers()).keys() == dict(ref.named_buffers()).keys()
    for name, buf in ref.named_buffers():
        torch.testing.assert_close(getattr(ours, name), buf)
    for attr in ("reduction", "ignore_index", "label_smoothing"):
        assert getattr(ours, attr, None) == getattr(ref, attr, None)
    compare_with_torch(ours, ref, _inputs(kind, device), grad_args=(0,))


@pytest.mark.parametrize("kind", ["ce", "bce"])
def test_weight_buffer_only_when_given(kind):
    ours, ref = _pair(kind, {})
    assert "weight" not in ours.state_dict() and "weight" not in ref.state_dict()
    assert ours.weight is None
    ours, ref = _pair(kind, {"weight": torch.ones(5)})
    assert "weight" in ours.state_dict() and "weight" in ref.state_dict()


@pytest.mark.parametrize(
    "kind,kwargs", [("ce", {"weight": torch.ones(5)}), ("bce", {"weight": torch.ones(5), "pos_weight": torch.ones(5)})]
)
def test_load_torch_state_dict(kind, kwargs):
    ours, ref = _pair(kind, kwargs)
    trained = {k: torch.rand_like(v) + 0.1 for k, v in ref.state_dict().items()}
    ref.load_state_dict(trained)
    ours.load_state_dict(ref.state_dict())
    for k, v in trained.items():
        torch.testing.assert_close(ours.state_dict()[k], v)
    x, y = _inputs(kind, "cpu")
    torch.testing.assert_close(ours(x, y), ref(x, y))
    # and the other way round
    ref2 = _pair(kind, kwargs)[1]
    ref2.load_state_dict(ours.state_dict())
    torch.testing.assert_close(ref2(x, y), ref(x, y))


@pytest.mark.parametrize("kind", ["ce", "bce"])
@pytest.mark.parametrize(
    "size_average,reduce,expected",
    [(False, None, "sum"), (None, False, "none"), (True, True, "mean"), (False, True, "sum")],
)
def test_legacy_size_average_and_reduce(kind, size_average, reduce, expected):
    with warnings.catch_warnings(record=True) as ref_warnings:
        warnings.simplefilter("always")
        ref = _pair(kind, {})[1].__class__(size_average=size_average, reduce=reduce)
    with warnings.catch_warnings(record=True) as our_warnings:
        warnings.simplefilter("always")
        ours = (fused_ce.CrossEntropyLoss if kind == "ce" else fused_ce.BCEWithLogitsLoss)(
            size_average=size_average, reduce=reduce
        )
    assert [str(w.message) for w in our_warnings] == [str(w.message) for w in ref_warnings]
    assert [w.category for w in our_warnings] == [w.category for w in ref_warnings]
    assert ref_warnings and "deprecated" in str(ref_warnings[0].message)
    assert ours.reduction == ref.reduction == expected
    x, y = _inputs(kind, "cpu")
    torch.testing.assert_close(ours(x, y), ref(x, y))


def test_module_validation_errors_as_torch():
    with pytest.raises(ValueError, match="avg is not a valid value for reduction"):
        fused_ce.CrossEntropyLoss(reduction="avg")(torch.randn(2, 3), torch.tensor([0, 1]))
    with pytest.raises(
        RuntimeError, match="label_smoothing must be between 0.0 and 1.0. Got: 2$"
    ):  # as torch prints 2.0
        fused_ce.CrossEntropyLoss(label_smoothing=2.0)(torch.randn(2, 3), torch.tensor([0, 1]))


@pytest.mark.parametrize("device", DEVICES)
def test_module_moves_buffers_with_to(device):
    ours = fused_ce.BCEWithLogitsLoss(pos_weight=torch.ones(5), weight=torch.ones(5)).to(device, torch.float64)
    assert ours.pos_weight.dtype == torch.float64 and ours.weight.device.type == device
    x = torch.randn(3, 5, dtype=torch.float64, device=device)
    assert ours(x, torch.rand_like(x)).dtype == torch.float64

"""fused_ce.LinearCrossEntropyLoss's base on a torch without nn.LinearCrossEntropyLoss (older than 2.13): the
stand-in must hold the state torch's class holds, so that checkpoints move between the two. Where torch has the
class, the stand-in is compared with it directly; the module's own behaviour is tested on every torch."""

import pytest
import torch
import torch_compat
from helpers import assert_close

import fused_ce
from fused_ce._core import torch_features as _torch_features
from fused_ce._linear.loss_base import LinearCrossEntropyLossBase, StandaloneLinearCrossEntropyLoss

H, V = 6, 5
KWARGS = [
    {},
    {"bias": True, "weight": torch.rand(V) + 0.1, "reduction": "sum", "ignore_index": 2, "label_smoothing": 0.2},
    {"out_features": (3, 2), "bias": True},
    {"dtype": torch.float64},
]


def test_base_is_torchs_class_where_torch_has_it():
    expected = torch.nn.LinearCrossEntropyLoss if _torch_features.LINEAR_CE_MODULE else StandaloneLinearCrossEntropyLoss
    assert LinearCrossEntropyLossBase is expected
    assert isinstance(fused_ce.LinearCrossEntropyLoss(H, V), expected)


@torch_compat.needs_torch_linear_ce
@pytest.mark.parametrize("kwargs", KWARGS, ids=str)
def test_standalone_base_holds_torchs_state(kwargs):
    torch.manual_seed(3)
    ref = torch.nn.LinearCrossEntropyLoss(H, V, **kwargs)
    torch.manual_seed(3)
    ours = StandaloneLinearCrossEntropyLoss(H, V, **kwargs)
    assert repr(ours).split("(", 1)[1] == repr(ref).split("(", 1)[1]
    assert list(ours.state_dict()) == list(ref.state_dict())
    for (name, a), (_, b) in zip(ours.state_dict().items(), ref.state_dict().items()):
        assert a.dtype == b.dtype and torch.equal(a, b), name  # same initialisation from the same seed
    for attr in ("num_classes", "out_features", "reduction", "ignore_index", "label_smoothing", "options"):
        assert getattr(ours, attr) == getattr(ref, attr), attr


@torch_compat.needs_torch_linear_ce
@pytest.mark.parametrize(
    "kwargs", [{"weight": torch.ones(V + 1)}, {"label_smoothing": 1.5}, {"label_smoothing": -0.1}], ids=str
)
def test_standalone_base_raises_as_torch(kwargs):
    with pytest.raises(Exception) as expected:
        torch.nn.LinearCrossEntropyLoss(H, V, **kwargs)
    with pytest.raises(expected.type) as got:
        StandaloneLinearCrossEntropyLoss(H, V, **kwargs)
    assert str(got.value) == str(expected.value)


@pytest.mark.parametrize("kwargs", KWARGS[:2], ids=str)
def test_module_on_this_torch_matches_the_linear_then_cross_entropy(kwargs):
    module = fused_ce.LinearCrossEntropyLoss(
        H, V, dtype=torch.float64, **{k: v for k, v in kwargs.items() if k != "weight"}
    )
    x, t = torch.randn(9, H, dtype=torch.float64), torch.randint(0, V, (9,))
    logits = module.linear(x)
    ref = torch.nn.functional.cross_entropy(
        logits,
        t,
        reduction=module.reduction,
        ignore_index=-100 if module.ignore_index is None else module.ignore_index,
        label_smoothing=module.label_smoothing,
    )
    assert_close(module(x, t), ref)

"""Tests written for the survivors of the issue-27 mutation round (tests/mutants/mutants.toml, section 'issue 27:
fresh mutation round'; docs/mutation_testing.md): shapes of the parts returned for unbatched inputs, torch's
error for class weights that require grad in linear_cross_entropy, and transformers' problem_type inference."""

import types

import pytest
import torch
import torch.nn.functional as F
from helpers import DEVICES, assert_close
from lm_reference import reference

import fused_ce

F64 = torch.float64


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("reduction", ["none", "mean"])
def test_unbatched_logits_return_0_dim_lse_and_z_loss(reduction, device):
    # An unbatched (C,) input has one row and no row dimension: its lse and z-loss are 0-dim, as the loss is.
    gen = torch.Generator().manual_seed(0)
    x = (torch.randn(11, generator=gen, dtype=F64) * 2).to(device)
    y = torch.tensor(4, device=device)
    loss, z_loss, lse = fused_ce.cross_entropy(
        x,
        y,
        reduction=reduction,
        logit_scale=1.3,
        softcap=5.0,
        lse_square_scale=1e-2,
        return_z_loss=True,
        return_lse=True,
    )
    ref = [
        r.squeeze(0) if r.dim() else r
        for r in reference(x.unsqueeze(0), y.unsqueeze(0), None, reduction, 0.0, 1.3, 5.0, 1e-2)
    ]
    for what, actual, expected in zip(("loss", "z_loss", "lse"), (loss, z_loss, lse), ref):
        assert_close(actual, expected, msg=what, input_scale=x.abs().max().item())


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("reduction", ["none", "sum"])
def test_linear_unbatched_input_returns_0_dim_lse_and_z_loss(reduction, device):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(6, generator=gen, dtype=F64).to(device)
    w = torch.randn(13, 6, generator=gen, dtype=F64).to(device)
    y = torch.tensor(9, device=device)
    loss, z_loss, lse = fused_ce.linear_cross_entropy(
        x, w, y, reduction=reduction, logit_scale=0.8, lse_square_scale=1e-2, return_z_loss=True, return_lse=True
    )
    ref = [
        r.squeeze(0) if r.dim() else r
        for r in reference(F.linear(x, w).unsqueeze(0), y.unsqueeze(0), None, reduction, 0.0, 0.8, 0.0, 1e-2)
    ]
    for what, actual, expected in zip(("loss", "z_loss", "lse"), (loss, z_loss, lse), ref):
        assert_close(actual, expected, msg=what, input_scale=F.linear(x, w).abs().max().item())


@pytest.mark.parametrize("device", DEVICES)
def test_linear_class_weight_requiring_grad_raises_torchs_error(device):
    # torch's loss cannot differentiate class weights and says so; computing the loss without their gradient
    # would silently train nothing into them.
    x, w = torch.randn(4, 3, device=device), torch.randn(5, 3, device=device)
    y = torch.tensor([0, 4, 2, 1], device=device)
    cw = torch.rand(5, device=device).requires_grad_()
    with pytest.raises(RuntimeError) as theirs:
        F.cross_entropy(F.linear(x, w), y, weight=cw)
    with pytest.raises(RuntimeError) as ours:
        fused_ce.linear_cross_entropy(x, w, y, weight=cw)
    assert str(ours.value) == str(theirs.value)


def test_sequence_classification_int32_labels_are_single_label_as_in_transformers():
    # transformers takes int32 labels for class indices (single-label classification), not multi-label targets.
    transformers = pytest.importorskip("transformers")
    from transformers.loss import loss_utils

    from fused_ce.integrations.transformers import use_fused_ce

    logits, labels = torch.randn(2, 3), torch.tensor([0, 2], dtype=torch.int32)
    stock_config, fused_config = (types.SimpleNamespace(num_labels=3, problem_type=None) for _ in range(2))
    model = use_fused_ce(
        transformers.LlamaForSequenceClassification(
            transformers.LlamaConfig(
                vocab_size=11,
                hidden_size=8,
                intermediate_size=16,
                num_hidden_layers=1,
                num_attention_heads=2,
                num_key_value_heads=1,
                num_labels=3,
                pad_token_id=0,
            )
        )
    )
    outcomes = []
    for fn, config in ((loss_utils.ForSequenceClassificationLoss, stock_config), (model.loss_function, fused_config)):
        try:
            outcomes.append(("loss", fn(labels=labels, pooled_logits=logits, config=config)))
        except Exception as error:  # torch's cross-entropy refuses int32 class indices: the same error is expected
            outcomes.append((type(error).__name__, str(error)))
    assert fused_config.problem_type == stock_config.problem_type == "single_label_classification"
    assert outcomes[0] == outcomes[1]

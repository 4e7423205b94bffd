"""fused_ce.integrations.transformers' causal-LM loss with num_items_in_batch as the Trainer passes it (a tensor,
as current transformers does, or an int, as custom training loops may) and without it, for fp32, fp16 and bf16
logits: against transformers' own ForCausalLMLoss evaluated in fp64, judged by the suite's error bound. The
counts include one above fp16's largest finite value (65504), as gradient accumulation over many micro-batches
gives: the count must not be rounded to the logits' dtype."""

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")

from helpers import DEVICES, assert_close, input_magnitude  # noqa: E402

from fused_ce.integrations.transformers import use_fused_ce  # noqa: E402

VOCAB, BATCH, SEQ = 101, 2, 64
# None (a mean over the batch's tokens), a small count and one beyond fp16's range, each as an int and as a tensor
NUM_ITEMS = [pytest.param(None, id="none")] + [
    pytest.param(make(count), id=f"{kind}_{count}")
    for count in (97, 70001)
    for kind, make in (("int", int), ("tensor", torch.tensor))
]


def _loss_function():
    config = transformers.LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=8,
        intermediate_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        pad_token_id=0,
    )
    return use_fused_ce(transformers.LlamaForCausalLM(config)).loss_function


def _problem(dtype):
    gen = torch.Generator().manual_seed(3)
    logits = (3 * torch.randn(BATCH, SEQ, VOCAB, generator=gen, dtype=torch.float64)).to(dtype)
    labels = torch.randint(0, VOCAB, (BATCH, SEQ), generator=gen)
    labels[torch.rand(BATCH, SEQ, generator=gen) < 0.3] = -100
    return logits, labels


def _transformers_in_fp64(monkeypatch, logits, labels, num_items):
    """transformers' ForCausalLMLoss itself, with its upcast of the logits (logits.float()) made an fp64 one, on the
    fp64 values of the same logits: the exact loss of those logits, reduced as transformers reduces it."""
    with monkeypatch.context() as patch:
        patch.setattr(torch.Tensor, "float", torch.Tensor.double)
        return transformers.loss.loss_utils.ForCausalLMLoss(
            logits=logits.double(), labels=labels, vocab_size=VOCAB, num_items_in_batch=num_items
        )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("num_items", NUM_ITEMS)
def test_causal_lm_loss_with_num_items_in_batch(monkeypatch, dtype, num_items):
    """The loss is fp32 (as transformers returns it) and within the bound of the logits' dtype: fp16/bf16 per-row
    losses are rounded once to it, then summed in fp32 and divided by the count."""
    logits, labels = _problem(dtype)
    loss = _loss_function()(logits=logits, labels=labels, vocab_size=VOCAB, num_items_in_batch=num_items)
    expected = _transformers_in_fp64(monkeypatch, logits, labels, num_items)
    assert loss.dtype == torch.float32 and expected.dtype == torch.float64
    assert_close(
        loss,
        expected,
        dtype=dtype,
        input_scale=input_magnitude(logits),
        terms=logits.numel(),
        msg=f"loss, num_items_in_batch={num_items!r}",
    )


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("num_items", NUM_ITEMS)
def test_causal_lm_gradient_with_num_items_in_batch(monkeypatch, dtype, num_items, device):
    """The logits' gradient against that of transformers' loss in fp64, within one rounding to the logits' dtype:
    fp16/bf16 logits get their exact gradient rounded once (the per-row losses' fp32 upstream gradient, 1 / count,
    reaches the kernels unrounded: in fp16 it is subnormal for counts above 16384)."""
    logits, labels = _problem(dtype)
    logits, labels = logits.to(device), labels.to(device)
    leaf = logits.clone().requires_grad_()
    _loss_function()(logits=leaf, labels=labels, vocab_size=VOCAB, num_items_in_batch=num_items).backward()
    exact = logits.double().requires_grad_()
    _transformers_in_fp64(monkeypatch, exact, labels, num_items).backward()
    assert leaf.grad.dtype == dtype
    assert_close(
        leaf.grad,
        exact.grad,
        input_scale=input_magnitude(logits),
        terms=logits.numel(),
        msg=f"logits' gradient, num_items_in_batch={num_items!r}",
    )

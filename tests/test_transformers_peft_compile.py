"""The fused causal-LM forward under PEFT/LoRA, in both orders (use_fused_ce then get_peft_model, and
get_peft_model then use_fused_ce on the PEFT model), with a LoRA-wrapped head (the head's weight is no longer a
plain matrix: the loss comes from the logits), and under torch.compile: the loss and the trained parameters'
gradients equal the stock model's."""

import copy
import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

from helpers import relative_error, spy_on  # noqa: E402

import fused_ce.linear  # noqa: E402
from fused_ce.integrations.transformers import use_fused_ce  # noqa: E402

VOCAB = 211


def _llama():
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        initializer_range=0.5,
    )
    return transformers.LlamaForCausalLM(config).train()


def _batch():
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(3, VOCAB, (2, 12), generator=gen)
    return {"input_ids": ids, "labels": ids.masked_fill(torch.rand(ids.shape, generator=gen) < 0.2, -100)}


def _lora(model, targets):
    torch.manual_seed(3)  # the same LoRA initialization for every twin
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=targets, task_type="CAUSAL_LM", init_lora_weights=False)
    return peft.get_peft_model(model, config)


def _loss_and_grads(model, call=None):
    loss = (model if call is None else call)(**_batch()).loss
    loss.backward()
    return loss, {name: p.grad for name, p in model.named_parameters() if p.requires_grad}


def _assert_same(actual, expected):
    (loss, grads), (stock_loss, stock_grads) = actual, expected
    error, problem = relative_error(loss, stock_loss)
    assert problem is None and error <= 1e-5, f"loss: {error:.3g}"
    assert grads.keys() == stock_grads.keys() and grads
    for name, grad in grads.items():
        error, problem = relative_error(grad, stock_grads[name])
        assert problem is None and error <= 1e-4, f"{name}: {error:.3g}"


@pytest.fixture
def from_hidden(monkeypatch):
    return spy_on(monkeypatch, [(fused_ce.linear, "summed_in_fp32")], lambda name, args: name)


@pytest.mark.parametrize("order", ["patch_then_wrap", "wrap_then_patch"])
def test_lora_in_either_order(order, from_hidden):
    targets = ["q_proj", "v_proj"]
    expected = _loss_and_grads(_lora(_llama(), targets))
    if order == "patch_then_wrap":
        model = _lora(use_fused_ce(_llama()), targets)
    else:
        model = use_fused_ce(_lora(_llama(), targets))
        assert isinstance(model, peft.PeftModel)
    _assert_same(_loss_and_grads(model), expected)
    assert from_hidden == ["summed_in_fp32"]


def test_lora_on_the_head_falls_back_to_the_logits(from_hidden):
    targets = ["q_proj", "lm_head"]
    expected = _loss_and_grads(_lora(_llama(), targets))
    _assert_same(_loss_and_grads(use_fused_ce(_lora(_llama(), targets))), expected)
    assert from_hidden == []


def test_compiled_fused_model(from_hidden):
    """Dynamo and AOT autograd trace the fused forward (inductor's code generation, slow on a CPU, adds nothing
    to what is checked here: the graph and the ops' fake implementations)."""
    stock = _llama()
    fused = use_fused_ce(copy.deepcopy(stock))
    compiled = torch.compile(fused, backend="aot_eager")
    _assert_same(_loss_and_grads(fused, compiled), _loss_and_grads(stock))
    assert compiled(**_batch()).logits is None and from_hidden

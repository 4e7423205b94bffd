"""fused_ce.integrations.transformers refuses what it cannot do right, with a message that names the model and
what to do: a soft-cap or logit scale that the model's config already applies (Gemma 2's cap twice), models
whose loss it cannot replace (computed inline), and objects that are not transformers models."""

import os
import sys

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))

import hf_families  # noqa: E402

from fused_ce.integrations.transformers import restore, use_fused_ce  # noqa: E402

VOCAB, HIDDEN = 97, 16


def _batch():
    ids = torch.randint(3, VOCAB, (2, 8), generator=torch.Generator().manual_seed(0))
    return {"input_ids": ids, "labels": ids}


@pytest.mark.parametrize(
    "family, option, match",
    [
        (
            "gemma2",
            {"softcap": 30.0},
            "Gemma2ForCausalLM's config already applies a softcap of 5 .*final_logit_softcapping",
        ),
        ("gemma3", {"softcap": 30.0}, "Gemma3ForCausalLM's config already applies a softcap of 7"),
        (
            "cohere",
            {"logit_scale": 2.0},
            "CohereForCausalLM's config already applies a logit_scale of 0.5 .*logit_scale",
        ),
        (
            "granite",
            {"logit_scale": 2.0},
            "GraniteForCausalLM's config already applies a logit_scale of 0.25 .*logits_scaling",
        ),
    ],
)
def test_transform_the_config_applies_cannot_be_given_again(family, option, match):
    if family not in hf_families.FAMILIES:
        pytest.skip(f"transformers {transformers.__version__} has no {family}")
    model = hf_families.build(family, VOCAB, HIDDEN)
    with pytest.raises(ValueError, match=match):
        use_fused_ce(model, **option)
    try:  # the global form: when the model's loss is asked for
        use_fused_ce(**option)
        created = hf_families.build(family, VOCAB, HIDDEN)
        for candidate in (model, created):
            with pytest.raises(ValueError, match=match):
                candidate(**_batch())
    finally:
        restore()


def test_transform_on_a_model_without_one_is_applied():
    """Llama applies no cap of its own: a softcap option caps its logits once, inside fused_ce."""
    torch.manual_seed(0)
    model = use_fused_ce(hf_families.build("llama", VOCAB, HIDDEN), softcap=2.0)
    batch = _batch()
    loss = model(**batch).loss
    logits = model.eval()(input_ids=batch["input_ids"]).logits.double()
    capped = 2.0 * torch.tanh(logits[:, :-1] / 2.0)
    expected = torch.nn.functional.cross_entropy(capped.reshape(-1, VOCAB), batch["labels"][:, 1:].reshape(-1))
    torch.testing.assert_close(loss.double(), expected, rtol=1e-5, atol=0)


def _bert():
    return transformers.BertForMaskedLM(
        transformers.BertConfig(
            vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32
        )
    )


def test_inline_loss_models_are_refused_by_name():
    with pytest.raises(
        ValueError, match="BertForMaskedLM computes its loss inside its forward.*fused_ce.cross_entropy"
    ):
        use_fused_ce(_bert())
    gpt2 = transformers.GPT2ForSequenceClassification(
        transformers.GPT2Config(vocab_size=VOCAB, n_embd=HIDDEN, n_layer=1, n_head=2, num_labels=3, pad_token_id=0)
    )
    with pytest.raises(ValueError, match="GPT2ForSequenceClassification computes its loss inside its forward"):
        use_fused_ce(gpt2)


def test_inline_loss_models_warn_under_the_global_form():
    try:
        use_fused_ce()
        with pytest.warns(UserWarning, match="BertForMaskedLM computes its loss inside its forward"):
            _bert()
    finally:
        restore()


def test_not_a_transformers_model():
    with pytest.raises(TypeError, match="Linear is not a transformers PreTrainedModel .*PEFT.*transformers 4.50"):
        use_fused_ce(torch.nn.Linear(2, 2))

"""Tiny randomly initialized transformers causal LMs of each family the transformers integration covers, built
from configs (no downloads): the integration's tests and benchmarks/hf_training_step.py share them.

Each entry builds a model of a given vocabulary and hidden size. Families whose logits go through a transform
after the head set it in their config (Gemma 2's final soft-cap, Gemma 3's when given, Cohere's logit scale,
Granite's logits divisor), so that the fused forward must take it from there. GPT-2 ties its head to the
embedding, as does the 'llama_tied' entry.
"""

import transformers

LAYERS, HEADS = 2, 4


def _common(vocab, hidden):
    return {
        "vocab_size": vocab,
        "hidden_size": hidden,
        "intermediate_size": 2 * hidden,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "num_key_value_heads": 2,
        "max_position_embeddings": 1024,
        "pad_token_id": 0,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "initializer_range": 0.5,
    }


def _llama(vocab, hidden, **extra):
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(**_common(vocab, hidden), **extra))


def _gemma2(vocab, hidden):
    return transformers.Gemma2ForCausalLM(
        transformers.Gemma2Config(
            **_common(vocab, hidden), head_dim=hidden // HEADS, final_logit_softcapping=5.0, sliding_window=8
        )
    )


def _gemma3(vocab, hidden):
    return transformers.Gemma3ForCausalLM(
        transformers.Gemma3TextConfig(
            **_common(vocab, hidden), head_dim=hidden // HEADS, final_logit_softcapping=7.0, sliding_window=8
        )
    )


def _gpt2(vocab, hidden):
    return transformers.GPT2LMHeadModel(
        transformers.GPT2Config(
            vocab_size=vocab,
            n_embd=hidden,
            n_layer=LAYERS,
            n_head=HEADS,
            n_positions=1024,
            initializer_range=0.5,
            bos_token_id=1,
            eos_token_id=2,
        )
    )


def _gpt_neox(vocab, hidden):
    return transformers.GPTNeoXForCausalLM(
        transformers.GPTNeoXConfig(
            vocab_size=vocab,
            hidden_size=hidden,
            intermediate_size=2 * hidden,
            num_hidden_layers=LAYERS,
            num_attention_heads=HEADS,
            max_position_embeddings=1024,
            initializer_range=0.5,
            bos_token_id=1,
            eos_token_id=2,
        )
    )


def _simple(model_class, config_class, **extra):
    return lambda vocab, hidden: getattr(transformers, model_class)(
        getattr(transformers, config_class)(**_common(vocab, hidden), **extra)
    )


# family: (the transformers classes it needs, its builder)
_ALL = {
    "llama": (["LlamaForCausalLM"], _llama),
    "llama_tied": (["LlamaForCausalLM"], lambda vocab, hidden: _llama(vocab, hidden, tie_word_embeddings=True)),
    "mistral": (["MistralForCausalLM"], _simple("MistralForCausalLM", "MistralConfig")),
    "qwen2": (["Qwen2ForCausalLM"], _simple("Qwen2ForCausalLM", "Qwen2Config")),
    "qwen3": (["Qwen3ForCausalLM"], _simple("Qwen3ForCausalLM", "Qwen3Config")),
    "gemma2": (["Gemma2ForCausalLM"], _gemma2),
    "gemma3": (["Gemma3ForCausalLM"], _gemma3),
    "phi3": (["Phi3ForCausalLM"], _simple("Phi3ForCausalLM", "Phi3Config")),
    "gpt2": (["GPT2LMHeadModel"], _gpt2),
    "gpt_neox": (["GPTNeoXForCausalLM"], _gpt_neox),
    # Through the generic path: families with the same layout and a logit scale in their config.
    "cohere": (["CohereForCausalLM"], _simple("CohereForCausalLM", "CohereConfig", logit_scale=0.5)),
    "granite": (["GraniteForCausalLM"], _simple("GraniteForCausalLM", "GraniteConfig", logits_scaling=4.0)),
}
# The families the installed transformers has (Qwen3 came after the integration's minimum version, for one).
FAMILIES = {
    family: build for family, (classes, build) in _ALL.items() if all(hasattr(transformers, name) for name in classes)
}


def build(family, vocab, hidden):
    return FAMILIES[family](vocab, hidden)

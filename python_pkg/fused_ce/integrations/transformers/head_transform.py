"""What a causal LM does to its logits after the head, read from its config, and the guard against applying it
twice.

Gemma 2 and 3 soft-cap the logits (`final_logit_softcapping`: cap * tanh(logits / cap)), Cohere multiplies them
(`logit_scale`), Granite divides them (`logits_scaling`). The fused forward never builds the logits, so it applies
the same transform inside fused_ce's kernels; the logits a model returns are already transformed, so a softcap or
logit_scale option on top of the config's would transform them twice.
"""

import math


def _text_config(config):
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def config_transform(config):
    """{'logit_scale': s, 'softcap': c} for fused_ce: the model's logits are c * tanh(s * x / c) (or s * x)."""
    config = _text_config(config)
    transform = {}
    cap = getattr(config, "final_logit_softcapping", None)
    if cap:
        transform["softcap"] = float(cap)
    scale = getattr(config, "logit_scale", None)
    if isinstance(scale, (int, float)) and scale != 1:
        transform["logit_scale"] = float(scale)
    divisor = getattr(config, "logits_scaling", None)
    if isinstance(divisor, (int, float)) and divisor != 1:
        transform["logit_scale"] = transform.get("logit_scale", 1.0) / float(divisor)
    return transform


def _sets(name, value):
    if name == "softcap":
        return value is not None and value != 0
    return not math.isclose(float(value), 1.0)


def check_options(model_name, config, options):
    """ValueError when `options` set a soft-cap or logit scale that the model's config already applies."""
    applied = config_transform(config)
    for name in ("softcap", "logit_scale"):
        if name in options and _sets(name, options[name]) and name in applied:
            raise ValueError(
                f"use_fused_ce: {model_name}'s config already applies a {name} of {applied[name]:g} to its logits "
                f"(through {_config_attribute(name, config)}); the {name}={options[name]!r} option would apply "
                f"one again. Leave {name} out: fused_ce takes the model's own from its config."
            )


def _config_attribute(name, config):
    config = _text_config(config)
    if name == "softcap":
        return "final_logit_softcapping"
    return "logits_scaling" if getattr(config, "logits_scaling", None) not in (None, 1) else "logit_scale"


def fused_options(config, options):
    """The options of the fused forward's loss: the user's, plus the transform the model's config applies."""
    return {**options, **config_transform(config)}

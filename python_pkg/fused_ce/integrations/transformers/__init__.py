"""Hugging Face transformers models with their losses computed by fused_ce, the Trainer seeing what it sees with
stock transformers (needs transformers MIN_TRANSFORMERS_VERSION or newer; importing this package does not
import transformers).

    from fused_ce.integrations.transformers import use_fused_ce
    model = use_fused_ce(AutoModelForCausalLM.from_pretrained(name))   # this model (or a PEFT model)
    use_fused_ce()                                                      # or every model

Modules: losses.py (the loss functions, the same values as transformers'), causal_lm_forward.py (the causal-LM
forward that never builds the logits in training), head_transform.py (soft-cap and logit scale from the config,
and the guard against applying them twice), inline_losses.py (models whose loss cannot be replaced),
label_smoothing.py (the Trainer's label_smoothing_factor), patching.py (use_fused_ce and restore).
"""

from ._requirements import MIN_TRANSFORMERS_VERSION
from .losses import FusedLoss, fused_loss_function
from .patching import restore, use_fused_ce

__all__ = ["MIN_TRANSFORMERS_VERSION", "FusedLoss", "fused_loss_function", "restore", "use_fused_ce"]

"""Models whose forward computes its loss itself (e.g. BertForMaskedLM's CrossEntropyLoss) rather than through
`self.loss_function`: replacing their loss function changes nothing, so the integration must say so.

The test is on the forward's code: a forward that calls `self.loss_function` names it among its attribute
lookups (`co_names`), through transformers' decorators (functools.wraps, so inspect.unwrap reaches it).
"""

import inspect


def takes_labels(model_class):
    return "labels" in inspect.signature(model_class.forward).parameters


def uses_loss_function(model_class):
    """Whether the class's forward reads self.loss_function."""
    forward = inspect.unwrap(model_class.forward)
    code = getattr(forward, "__code__", None)
    return code is not None and "loss_function" in code.co_names


def message(model_class):
    name = model_class.__name__
    return (
        f"use_fused_ce: {name} computes its loss inside its forward, not through model.loss_function, so "
        f"fused_ce cannot replace it. Call {name} without labels and compute the loss from outputs.logits "
        "with fused_ce.cross_entropy (or fused_ce.linear_cross_entropy from the hidden states)."
    )

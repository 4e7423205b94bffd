"""The fused forward of a causal LM: with labels in training, the loss comes from the final hidden states through
fused_ce's linear cross-entropy, and the N x V logits are never built.

One mechanism for every family with transformers' causal-LM layout (a decoder reached as `model.base_model` or
`model.model`, a linear head from `model.get_output_embeddings()`, a forward taking `logits_to_keep`): the
model's own forward runs with `labels=None` and `logits_to_keep` an empty tensor of positions, so its decoder,
masks, caches and keyword plumbing are its own and its head computes nothing; a hook on the decoder keeps the
hidden states, and the loss is transformers' causal-LM loss of them (label shift or `shift_labels`, ignore_index,
`num_items_in_batch`), with the logit scale and soft-cap the config applies (head_transform.py). Tied embeddings
need nothing: the head's weight is the embedding's.

The first fused call of each model keeps one position's logits instead of none and checks them against the
head and transform applied here: a family that changes its logits some other way gets an error, not a wrong loss.
Outside training, without labels, with a `logits_to_keep`, with `keep_logits`, or with a head that is not a plain
nn.Linear (a LoRA-wrapped head), the model's own forward runs and its loss is the fused loss of its logits.
"""

import inspect

import torch

from ... import linear
from . import head_transform, losses

# Options of fused_ce.cross_entropy that the linear cross-entropy takes too; inplace_backward has no logits to
# write into here, and is dropped.
_LINEAR_OPTIONS = {"weight", "label_smoothing", "logit_scale", "softcap", "lse_square_scale"}
_DROPPED_OPTIONS = {"inplace_backward"}


def head_of(model):
    """The model's head as an nn.Linear, or None where the fused forward cannot read its weight."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return head if isinstance(head, torch.nn.Linear) else None


def decoder_of(model):
    """The module whose output is the final hidden states: `model.base_model`, or, where a class's
    base_model_prefix does not name its decoder (Gemma 3 in transformers 4.50), the standard `model.model`."""
    for decoder in (getattr(model, "base_model", model), getattr(model, "model", None)):
        if isinstance(decoder, torch.nn.Module) and decoder is not model:
            return decoder
    return None


def supports(model):
    """Whether `model` has the layout the fused forward needs."""
    config = getattr(model, "config", None)
    return (
        config is not None
        and not getattr(config, "is_encoder_decoder", False)
        and decoder_of(model) is not None
        and "logits_to_keep" in inspect.signature(type(model).forward).parameters
        and head_of(model) is not None
    )


def _first_tensor(output):
    return output[0] if isinstance(output, (tuple, list)) or hasattr(output, "to_tuple") else output


def _without_logits(output, loss):
    """The model's output with the loss set and no logits, in its own form (ModelOutput or tuple)."""
    if isinstance(output, tuple):  # return_dict=False: (logits, ...) since the inner call had no labels
        return (loss,) + output[1:]
    fields = {name: value for name, value in output.items() if name != "logits"}
    return type(output)(loss=loss, **{name: value for name, value in fields.items() if name != "loss"})


class FusedCausalLMForward:
    """Set as a model's `forward` (an instance attribute, which deepcopy and PEFT wrapping keep): the fused
    forward where it applies, else the class's own. Its signature is the class forward's, for the Trainer's
    inspection of the model (label names, unused dataset columns, loss kwargs)."""

    def __init__(self, model, keep_logits=False):
        self.model, self.keep_logits, self.checked = model, keep_logits, False

    @property
    def __signature__(self):
        return inspect.signature(self._own_forward())

    def _own_forward(self):
        return type(self.model).forward.__get__(self.model)

    def _fused_loss(self):
        """The model's FusedLoss for a causal LM, or None (restored, another loss, or no longer fused)."""
        current = self.model.loss_function
        if isinstance(current, losses.FusedLoss) and current.fused is losses.causal_lm:
            return current
        return None

    def __call__(self, *args, **kwargs):
        own = self._own_forward()
        fused_loss = self._fused_loss()
        head = head_of(self.model)
        if (
            fused_loss is None
            or self.keep_logits
            or not self.model.training
            or head is None
            or not set(fused_loss.options) <= _LINEAR_OPTIONS | _DROPPED_OPTIONS
        ):
            return own(*args, **kwargs)
        bound = inspect.signature(own).bind(*args, **kwargs)
        logits_to_keep = bound.arguments.get("logits_to_keep", 0)
        if bound.arguments.get("labels") is None or not (isinstance(logits_to_keep, int) and logits_to_keep == 0):
            return own(*args, **kwargs)
        return self._fused(own, bound, head, fused_loss.options)

    def _fused(self, own, bound, head, options):
        arguments = bound.arguments
        labels = arguments["labels"]
        loss_kwargs = next(
            (
                value
                for name, value in arguments.items()
                if inspect.signature(own).parameters[name].kind == inspect.Parameter.VAR_KEYWORD
            ),
            {},
        )
        check = not self.checked and not torch.compiler.is_compiling()
        arguments["labels"] = None
        # No position's logits, or the last one's for the check.
        positions = [labels.shape[-1] - 1] if check else []
        arguments["logits_to_keep"] = torch.tensor(positions, dtype=torch.long, device=labels.device)
        captured = []
        handle = decoder_of(self.model).register_forward_hook(lambda _m, _i, out: captured.append(_first_tensor(out)))
        try:
            output = own(*bound.args, **bound.kwargs)
        finally:
            handle.remove()
        hidden = captured[-1]
        options = head_transform.fused_options(
            self.model.config, {k: v for k, v in options.items() if k in _LINEAR_OPTIONS}
        )
        if check:
            _check_logits(self.model, hidden[:, -1:], head, _first_tensor(output))
            self.checked = True
        ignore_index = loss_kwargs.get("ignore_index", -100)
        target = losses.shifted_labels(labels, loss_kwargs.get("shift_labels"), ignore_index).to(hidden.device)
        rows = hidden.reshape(-1, hidden.shape[-1])
        loss_sum = linear.summed_in_fp32(
            rows, head.weight, target, linear_bias=head.bias, ignore_index=ignore_index, **options
        )
        loss = losses.divide_by_items(loss_sum, loss_kwargs.get("num_items_in_batch"), target, ignore_index)
        return _without_logits(output, loss.to(torch.float32))


def _check_logits(model, hidden, head, model_logits):
    """RuntimeError unless the model's logits for these positions are its head followed by its config's transform."""
    declared = head_transform.config_transform(model.config)
    logits = head(hidden).double() * declared.get("logit_scale", 1.0)
    cap = declared.get("softcap")
    if cap:
        logits = cap * torch.tanh(logits / cap)
    expected = model_logits.detach().double()
    tolerance = 1e-4 if model_logits.dtype in (torch.float32, torch.float64) else 3e-2
    scale = expected.abs().max().clamp_min(1.0)
    if logits.shape != expected.shape or ((logits.detach() - expected).abs().max() > tolerance * scale):
        raise RuntimeError(
            f"use_fused_ce: {type(model).__name__}'s logits are not its output embedding's projection of its "
            f"decoder's hidden states followed by the transform its config declares ({declared or 'none'}); "
            "fused_ce cannot compute its loss without the logits. Call use_fused_ce(model, keep_logits=True) to "
            "compute the loss with fused_ce from the model's own logits."
        )


def install(model, keep_logits=False):
    """Gives `model` the fused forward (again, with these settings, if it had it)."""
    model.forward = FusedCausalLMForward(model, keep_logits)


def uninstall(model):
    if isinstance(model.__dict__.get("forward"), FusedCausalLMForward):
        del model.__dict__["forward"]

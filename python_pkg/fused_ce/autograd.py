"""Public torch.autograd.Function classes over the fused ops, for code that composes losses by hand.

The functional API and the modules go through the registered ops, which torch.compile traces best; these
classes share the same validation and backward code (fused_ce._core.functions has the nodes).
"""

from . import functional
from ._core.functions import BCEWithLogitsFunction, CrossEntropyWithLse
from ._lm import options as lm_options


class CrossEntropyFunction(CrossEntropyWithLse):
    """CrossEntropyFunction.apply(input, target, weight=None, ignore_index=-100, reduction='mean',
    label_smoothing=0.0, *, logit_scale=1.0, softcap=None, lse_square_scale=0.0, return_z_loss=False,
    return_lse=False, inplace_backward=False): torch.nn.functional.cross_entropy as one autograd node
    (CrossEntropyWithLse, of which apply returns the loss only). The keyword-only language-model options are
    fused_ce.cross_entropy's; with class-index targets they run as one node too (fused_ce._lm.ops.CrossEntropyLm),
    with probability targets (or inside torch.func transforms) as cross_entropy composes them."""

    @classmethod
    def apply(
        cls,
        *args,
        logit_scale=1.0,
        softcap=None,
        lse_square_scale=0.0,
        return_z_loss=False,
        return_lse=False,
        inplace_backward=False,
        **kwargs,
    ):
        softcap = 0.0 if softcap is None else softcap
        if lm_options.has_options(logit_scale, softcap, lse_square_scale, return_z_loss, return_lse, inplace_backward):
            return functional.cross_entropy(
                *_bind_ce_args(*args, **kwargs),
                logit_scale=logit_scale,
                softcap=softcap,
                lse_square_scale=lse_square_scale,
                return_z_loss=return_z_loss,
                return_lse=return_lse,
                inplace_backward=inplace_backward,
            )
        # Not super().apply: torch.func calls the apply of the class it was given at its lowest level, and
        # that must be the node's own, which returns both outputs.
        return CrossEntropyWithLse.apply(*args, **kwargs)[0]


def _bind_ce_args(input, target, weight=None, ignore_index=-100, reduction="mean", label_smoothing=0.0):
    """CrossEntropyFunction's positional arguments, in cross_entropy's order."""
    return input, target, weight, None, ignore_index, None, reduction, label_smoothing


# Its public home: where users import it from, and where its repr, pickles and the API reference point.
BCEWithLogitsFunction.__module__ = __name__

__all__ = ["BCEWithLogitsFunction", "CrossEntropyFunction"]

"""What the self-check runs: one group per line of its table, each a list of case families
(fused_ce.testing.case_grid.Family) that the test suite runs too. A later feature adds its families to a group, or
a group of its own, here.
"""

from dataclasses import dataclass

from ..testing import _gradcheck_cases as gradcheck_cases
from ..testing import _opcheck_cases as opcheck_cases
from ..testing import _parity_cases as parity


@dataclass(frozen=True)
class Group:
    name: str
    what: str
    families: tuple


GROUPS = [
    Group(
        "ce_class_index",
        "cross-entropy, class-index targets: shapes x weight x ignore_index x smoothing x reduction x dtype",
        (parity.CE_HARD,),
    ),
    Group("ce_probability", "cross-entropy, probability targets (gradient to the target too)", (parity.CE_SOFT,)),
    Group(
        "ce_shapes",
        "odd shapes, N-D, vocabularies of 4099 and 50257 classes (--full: 32000-class LM shapes)",
        (parity.CE_ODD_SHAPES, parity.CE_LM_SHAPES),
    ),
    Group(
        "ce_non_contiguous",
        "strided, transposed, expanded and channels-last logits and targets",
        (parity.CE_NON_CONTIGUOUS_2D, parity.CE_NON_CONTIGUOUS_ND),
    ),
    Group(
        "bce_with_logits",
        "BCE-with-logits: weight / pos_weight broadcasts x reduction x dtype, chunk sizes, non-contiguous operands",
        (parity.BCE_WEIGHTS, parity.BCE_LARGER_SHAPES, parity.BCE_NON_CONTIGUOUS),
    ),
    Group(
        "gradcheck",
        "torch.autograd.gradcheck and gradgradcheck in fp64",
        (gradcheck_cases.GRADCHECK_CE_HARD, gradcheck_cases.GRADCHECK_CE_SOFT, gradcheck_cases.GRADCHECK_BCE),
    ),
    Group(
        "opcheck",
        "torch.library.opcheck on every op",
        (
            opcheck_cases.OPS_COVERED,
            opcheck_cases.OPCHECK_CE,
            opcheck_cases.OPCHECK_CE_SOFT,
            opcheck_cases.OPCHECK_BCE,
            opcheck_cases.OPCHECK_LINEAR_CE,
            opcheck_cases.OPCHECK_PARTIAL_STATS,
        ),
    ),
]

"""Runs the groups' cases on one target and records each case's outcome (an exception of any kind is a
failure, recorded with its type and message)."""

import time
import traceback
from dataclasses import dataclass, field

import torch

from ..testing.case_grid import describe

MESSAGE_CHARS = 2000


@dataclass
class CaseResult:
    family: str
    case: str
    passed: bool
    seconds: float
    error: str = None


@dataclass
class GroupResult:
    target: str
    group: str
    cases: list = field(default_factory=list)

    @property
    def failed(self):
        return [c for c in self.cases if not c.passed]

    @property
    def seconds(self):
        return sum(c.seconds for c in self.cases)


def run_group(group, target, quick):
    """Every case of `group` on `target`, each from torch's generator seeded with 0 (the tests' inputs)."""
    result = GroupResult(target.label, group.name)
    for family in group.families:
        for point in family.points(quick):
            result.cases.append(_run_case(family, point, target))
    return result


def _run_case(family, point, target):
    torch.manual_seed(0)
    start = time.perf_counter()
    try:
        with target.active():
            family.run(target.device, **point)
    except Exception as e:
        message = f"{type(e).__name__}: {e}"
        if not isinstance(e, AssertionError):
            where = traceback.extract_tb(e.__traceback__)[-1]
            message += f" (at {where.filename}:{where.lineno})"
        return CaseResult(family.name, describe(point), False, time.perf_counter() - start, message[:MESSAGE_CHARS])
    return CaseResult(family.name, describe(point), True, time.perf_counter() - start)

"""A family of checks: one function run over a grid of parameters. The test suite parametrizes a family
over its whole grid; python -m fused_ce.check runs the whole grid (--full) or a covering walk through it
(--quick: every value of every parameter at least once, in max(len(values)) cases instead of the product).
"""

import itertools
from dataclasses import dataclass, field
from typing import Callable

import torch


@dataclass(frozen=True)
class Family:
    name: str
    run: Callable  # run(device, **one point of the grid)
    grid: dict  # parameter -> its values
    quick: dict = field(default_factory=dict)  # parameter -> the values --quick walks instead ([]: none)

    def points(self, quick=False):
        """The grid's points (dicts), all of them or the covering walk."""
        grid = {k: self.quick.get(k, v) for k, v in self.grid.items()} if quick else self.grid
        if any(len(v) == 0 for v in grid.values()):
            return []
        if not quick:
            return [dict(zip(grid, values)) for values in itertools.product(*grid.values())]
        walk = max((len(v) for v in grid.values()), default=1)
        return [{k: v[i % len(v)] for k, v in grid.items()} for i in range(walk)]


def describe(point):
    """A short, readable name of one point: 'shape=(6, 5) dtype=bf16 reduction=mean'."""
    return " ".join(f"{k}={short_name(v)}" for k, v in point.items())


def short_name(value):
    """A value's name in case descriptions and test ids: fp32 for torch.float32, (5, 4) for a shape."""
    if isinstance(value, torch.dtype):
        return {torch.float64: "fp64", torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}.get(
            value, str(value).replace("torch.", "")
        )
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{short_name(v)}" for k, v in value.items()) + "}"
    return str(value)

"""All-pairs covering arrays: a short list of test cases (rows) over several axes in which every pair of values of
two different axes appears in some row, as far as the constraints allow; the product of the axes would be
thousands of times longer. tests/test_pairwise_axes.py runs one per public entry point (docs/test_coverage.md).

Constraints are a function `allowed(row)` of a partial row (a dict holding some of the axes) that returns False
only when the values already chosen cannot go together. Every partial row it accepts must extend to a whole row it
accepts, which holds when each constraint has a way out (a value of some axis that lifts it, such as LM options
off); the generator then never backtracks. The result is deterministic: the same axes give the same rows.
"""

import itertools


def required_pairs(axes, allowed):
    """Every ((axis, value), (axis, value)) pair of two axes (in the axes' order) that the constraints allow."""
    names = list(axes)
    return {
        ((a, va), (b, vb))
        for a, b in itertools.combinations(names, 2)
        for va in axes[a]
        for vb in axes[b]
        if allowed({a: va, b: vb})
    }


def pairs_of(row, names):
    return {((a, row[a]), (b, row[b])) for a, b in itertools.combinations(names, 2)}


def covering_rows(axes, allowed=lambda row: True):
    """A list of whole rows (dicts over every axis, in the axes' order) that holds every required pair: greedy,
    one row at a time, each row started from the first pair still missing and then completed axis by axis with
    the allowed value that covers the most missing pairs (ties: the value listed first)."""
    names = list(axes)
    missing = required_pairs(axes, allowed)
    order = {(a, v): (i, j) for i, a in enumerate(names) for j, v in enumerate(axes[a])}
    rows = []
    while missing:
        first, second = min(missing, key=lambda p: (order[p[0]], order[p[1]]))
        row = dict([first, second])
        for name in names:
            if name in row:
                continue

            def gain(value):
                return sum(
                    ((c, row[c]), (name, value)) in missing or ((name, value), (c, row[c])) in missing for c in row
                )

            choices = [v for v in axes[name] if allowed({**row, name: v})]
            if not choices:
                raise ValueError(f"no value of {name} goes with {row}: a constraint without a way out")
            row[name] = max(choices, key=gain)  # max keeps the first of equal gains
        row = {name: row[name] for name in names}
        rows.append(row)
        missing -= pairs_of(row, names)
    return rows

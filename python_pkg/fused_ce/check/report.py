"""The self-check's output: a table with one line per device and group, a speed line per device, a verdict
line; and the full record for --json."""

import dataclasses

FAILURE_CHARS = 160


class Table:
    """The readable report, printed a line at a time as the groups finish (a --full check takes minutes)."""

    def __init__(self, labels, group_names):
        self.width = max([len(label) for label in labels] + [6])
        self.group_width = max([len(name) for name in group_names] + [5])

    def header(self):
        return f"{'device':<{self.width}}  {'group':<{self.group_width}}  {'passed':>9}  {'time':>7}  first failure"

    def group(self, r):
        passed = f"{len(r.cases) - len(r.failed)}/{len(r.cases)}"
        first = ""
        if r.failed:
            case = r.failed[0]
            first = f"{case.family} [{case.case}]: {case.error}"
            first = first if len(first) <= FAILURE_CHARS else first[: FAILURE_CHARS - 3] + "..."
        return f"{r.target:<{self.width}}  {r.group:<{self.group_width}}  {passed:>9}  {r.seconds:6.1f}s  {first}"

    def speed(self, label, speed):
        start = f"{label:<{self.width}}  {'speed':<{self.group_width}}  "
        if "skipped" in speed:
            return start + f"not timed ({speed['skipped']})"
        if "error" in speed:
            return start + f"failed: {speed['error']}"
        return (
            start + f"{speed['op']} {speed['dtype']} {tuple(speed['shape'])}: torch eager "
            f"{speed['torch_ms']:.1f} ms, fused_ce {speed['fused_ce_ms']:.1f} ms: {speed['speedup']:.2f}x"
        )


def verdict(results):
    total = sum(len(r.cases) for r in results)
    failed = [r for r in results if r.failed]
    devices = ", ".join(dict.fromkeys(r.target for r in results))
    if not failed:
        return f"PASS: all {total} cases passed on {devices}"
    count = sum(len(r.failed) for r in failed)
    groups = ", ".join(f"{r.target}/{r.group}" for r in failed)
    return f"FAIL: {count} of {total} cases failed, in {groups}"


def record(environment, mode, results, speeds, seconds, descriptions):
    """The --json record: where it ran, what each group checks, then every case's outcome."""
    return {
        **environment,
        "mode": mode,
        "group_descriptions": descriptions,
        "seconds": round(seconds, 2),
        "passed": all(not r.failed for r in results),
        "verdict": verdict(results),
        "speed": speeds,
        "groups": [
            {
                "device": r.target,
                "group": r.group,
                "passed": not r.failed,
                "cases_total": len(r.cases),
                "cases_failed": len(r.failed),
                "seconds": round(r.seconds, 3),
                "cases": [dataclasses.asdict(c) | {"seconds": round(c.seconds, 4)} for c in r.cases],
            }
            for r in results
        ],
    }

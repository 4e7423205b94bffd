"""The self-check's output: a table with one line per device and group, the speed lines, a verdict line;
and the full record for --json."""
import dataclasses

FAILURE_CHARS = 160


def table(results, speeds):
    """The readable report (a list of lines)."""
    width = max([len(r.target) for r in results] + [6])
    group_width = max([len(r.group) for r in results] + [5])
    lines = [f"{'device':<{width}}  {'group':<{group_width}}  {'passed':>9}  {'time':>7}  first failure"]
    for r in results:
        passed = f"{len(r.cases) - len(r.failed)}/{len(r.cases)}"
        first = ""
        if r.failed:
            case = r.failed[0]
            first = f"{case.family} [{case.case}]: {case.error}"
            first = first if len(first) <= FAILURE_CHARS else first[:FAILURE_CHARS - 3] + "..."
        lines.append(f"{r.target:<{width}}  {r.group:<{group_width}}  {passed:>9}  {r.seconds:6.1f}s  {first}")
    for label, speed in speeds.items():
        if "skipped" in speed:
            lines.append(f"{label:<{width}}  {'speed':<{group_width}}  not timed ({speed['skipped']})")
        elif "error" in speed:
            lines.append(f"{label:<{width}}  {'speed':<{group_width}}  failed: {speed['error']}")
        else:
            lines.append(f"{label:<{width}}  {'speed':<{group_width}}  {speed['op']} {speed['dtype']} "
                         f"{tuple(speed['shape'])}: torch eager {speed['torch_ms']:.1f} ms, fused_ce "
                         f"{speed['fused_ce_ms']:.1f} ms: {speed['speedup']:.2f}x")
    lines.append(verdict(results))
    return lines


def verdict(results):
    total = sum(len(r.cases) for r in results)
    failed = [r for r in results if r.failed]
    devices = ", ".join(dict.fromkeys(r.target for r in results))
    if not failed:
        return f"PASS: all {total} cases passed on {devices}"
    count = sum(len(r.failed) for r in failed)
    groups = ", ".join(f"{r.target}/{r.group}" for r in failed)
    return f"FAIL: {count} of {total} cases failed, in {groups}"


def record(environment, mode, results, speeds, seconds):
    """The --json record: where it ran, then every case's outcome."""
    return {
        **environment,
        "mode": mode,
        "seconds": round(seconds, 2),
        "passed": all(not r.failed for r in results),
        "verdict": verdict(results),
        "speed": speeds,
        "groups": [{"device": r.target, "group": r.group, "passed": not r.failed, "cases_total": len(r.cases),
                    "cases_failed": len(r.failed), "seconds": round(r.seconds, 3),
                    "cases": [dataclasses.asdict(c) | {"seconds": round(c.seconds, 4)} for c in r.cases]}
                   for r in results],
    }

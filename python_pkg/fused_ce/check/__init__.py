"""python -m fused_ce.check: does this installed fused_ce give torch's results on this machine?

    python -m fused_ce.check [--device all|cpu|emulated_cuda|cuda|cuda:N] [--quick|--full] [--json PATH]

On each device (the CPU, the emulated CUDA build when it is installed, each visible GPU; or the one named)
it runs the test suite's own parity cases with the suite's own error bounds (values and gradients against
torch for cross-entropy with class-index and probability targets and for BCE-with-logits), gradcheck and
gradgradcheck in fp64, and torch.library.opcheck on every op; then times fused_ce against torch eager on
one shape. It prints one line per device and group, then a verdict, and exits 0 only when every case
passed (1 when one failed, 2 for a device that is not there). --quick (the default) walks each grid so that
every value of every parameter is met at least once; --full runs the whole grids, as the test suite does.
--json writes the full record: versions, build flags, devices, and every case's outcome.
Needs only torch and fused_ce.
"""

import argparse
import json
import sys
import time

from . import environment, groups, report, runner, speed, targets

__all__ = ["main"]


def _arguments(argv):
    parser = argparse.ArgumentParser(
        prog="python -m fused_ce.check",
        description=__doc__.split("\n\n")[0],
        epilog="groups: " + "; ".join(f"{g.name}: {g.what}" for g in groups.GROUPS),
    )
    parser.add_argument(
        "--device",
        default="all",
        help="all (default: every device present), cpu (with the emulated CUDA build when "
        "installed), emulated_cuda, cuda (the current GPU) or cuda:N",
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--quick",
        dest="mode",
        action="store_const",
        const="quick",
        help="every parameter value at least once (the default; about half a minute on 2 CPU cores)",
    )
    mode.add_argument("--full", dest="mode", action="store_const", const="full", help="the test suite's whole grids")
    parser.add_argument("--json", metavar="PATH", help="write the full record as JSON to PATH")
    parser.set_defaults(mode="quick")
    return parser.parse_args(argv)


def _built_for(built):
    """What the build recorded (fused_ce.build_info()), in words."""
    if built is None:
        return "build not recorded"
    cuda = f", CUDA {built['cuda_toolkit']} for archs {built['cuda_arch_list']}" if built["cuda_kernels"] else ""
    return f"built for torch {built['torch']}{cuda}"


def _print_environment(env):
    v, b = env["versions"], env["build"]
    version = b["built_for"]["version"] if b["built_for"] else v["fused_ce"]
    print(
        f"fused_ce {version} ({v['fused_ce_path']}; {_built_for(b['built_for'])}), torch {v['torch']} "
        f"(CUDA {v['torch_cuda']}), python {v['python']}; CPU kernels built for {', '.join(b['cpu_isas_built'])}, using "
        f"{b['cpu_isa_chosen']}; CUDA kernels: {'yes' if b['cuda_kernels'] else 'no'}; emulated CUDA build: "
        f"{'yes' if b['emulated_cuda'] else 'no'}"
    )
    for label, device in env["devices"].items():
        print(f"  {label}: " + ", ".join(f"{k} {val}" for k, val in device.items()))


def main(argv=None):
    """Runs the check; returns the exit code (0: everything passed)."""
    args = _arguments(argv)
    try:
        chosen = targets.select(args.device)
    except ValueError as e:
        print(f"fused_ce.check: {e}", file=sys.stderr)
        return 2
    quick = args.mode == "quick"
    start = time.perf_counter()
    env = {
        "versions": environment.versions(),
        "build": environment.build_flags(),
        "devices": {t.label: environment.describe_device(t) for t in chosen},
    }
    _print_environment(env)
    print(f"{args.mode} check", flush=True)
    table = report.Table([t.label for t in chosen], [g.name for g in groups.GROUPS])
    print(table.header(), flush=True)
    results, speeds = [], {}
    for target in chosen:
        for group in groups.GROUPS:
            results.append(runner.run_group(group, target, quick))
            print(table.group(results[-1]), flush=True)
        try:
            speeds[target.label] = speed.measure(target, quick)
        except Exception as e:
            speeds[target.label] = {"error": f"{type(e).__name__}: {e}"}
        print(table.speed(target.label, speeds[target.label]), flush=True)
    print(report.verdict(results))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                report.record(
                    env,
                    args.mode,
                    results,
                    speeds,
                    time.perf_counter() - start,
                    {g.name: g.what for g in groups.GROUPS},
                ),
                f,
                indent=1,
            )
        print(f"record written to {args.json}")
    return 0 if all(not r.failed for r in results) else 1

"""Benchmark of fused_ce against eager torch, torch.compile and (on GPU) Liger-Kernel.

    python benchmarks/run.py                      # the embedded sweep for the device
    python benchmarks/run.py --quick --out /tmp/b # tiny shapes, seconds
    python benchmarks/run.py --shapes 4096x32000,16384x1000 --dtypes fp32,bf16 --modes forward,full

Writes results.csv, results.md and PNG plots into --out, prints the table and a SUMMARY line, and exits
non-zero when fused_ce disagrees with torch on any case. See benchmarks/README.md.
"""

import argparse
import datetime
import os
import sys
import time

import cases as cases_mod
import correctness
import load
import providers as providers_mod
import report
import thp
import timing
import torch
from tqdm import tqdm

import fused_ce
from fused_ce.check.environment import cpu_name

CPU_COPY_BYTES = 256 << 20
CUDA_COPY_BYTES = 1 << 30


def parse_args(argv=None):
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtypes", help=f"comma list of {', '.join(cases_mod.DTYPES)} (default fp32)")
    ap.add_argument("--shapes", help="comma list of NxC, e.g. 4096x32000,16384x1000")
    ap.add_argument("--losses", help="comma list of ce, bce (default ce)")
    ap.add_argument(
        "--features",
        help="comma list of none, weight, smoothing[=eps], ignore[=share], soft, softcap_zloss, "
        "pos_weight (bce) (default none)",
    )
    ap.add_argument("--modes", help="comma list of forward, backward, full (default full)")
    ap.add_argument(
        "--providers",
        help=f"comma list of {', '.join(providers_mod.ALL)} (default: "
        f"{','.join(providers_mod.DEFAULTS['cpu'])} on CPU, "
        f"{','.join(providers_mod.DEFAULTS['cuda'])} on CUDA)",
    )
    ap.add_argument("--repeats", type=int, help="timed repeats per case (default: per case, 5 or more)")
    ap.add_argument("--warmup", type=int, help="untimed calls before timing (default 1 on CPU, 5 on CUDA)")
    ap.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    ap.add_argument("--quick", action="store_true", help="tiny shapes and 3 repeats: a smoke run")
    ap.add_argument("--out", default="bench_out", help="output folder (default ./bench_out)")
    ap.add_argument("--seed", type=int, default=0)
    return ap.parse_args(argv)


def environment(device):
    cuda = device == "cuda"
    return {
        "device": device,
        "device_name": torch.cuda.get_device_name() if cuda else cpu_name(),
        "torch_version": torch.__version__,
        "fused_ce_version": getattr(fused_ce, "__version__", "unknown"),
        "cuda_version": torch.version.cuda or "",
        "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "threads": torch.get_num_threads(),
        "memory_note": (
            "peak extra memory: torch.cuda.max_memory_allocated minus the allocation before the measured call"
            if cuda
            else "peak extra memory: RSS high-water mark over two calls minus RSS after the inputs exist "
            "(after compilation for torch_compile), one fresh process per provider and case; not "
            "measured for the THP providers"
        ),
    }


def run_group(group, providers, device, args, bar, thp_worker, probe=None):
    """All cases sharing one set of inputs: check once, build each provider once, time every mode with the
    providers interleaved (and on CUDA measure their memory); then the THP providers in their process."""
    first = group[0]
    results = [report.CaseResult(c) for c in group]
    if device == "cuda":
        torch.cuda.empty_cache()
    torch._dynamo.reset()
    inputs = cases_mod.make_inputs(first, device, args.seed)
    check = correctness.check(first, inputs, device)
    warmup = args.warmup if args.warmup is not None else (5 if device == "cuda" else 1)
    warmup = max(warmup, 1)
    fns = {}
    for r in results:
        r.check = check
    thp_names = [p for p in providers if p in providers_mod.THP]
    for p in providers:
        if p in providers_mod.THP:
            if thp_worker is None:
                for r in results:
                    r.notes[p] = "skipped: THP_MEM_ALLOC_ENABLE is a switch of torch's CPU allocator"
            continue
        try:
            fns[p] = providers_mod.build(p, first, inputs, device)
        except providers_mod.Unavailable as e:
            for r in results:
                r.notes[p] = f"skipped: {e}"
    if thp_worker is not None:
        thp_worker.ready()  # its start-up (a compilation) must not overlap a timing
    for r in results:
        c = r.case
        bar.set_postfix_str(c.label)
        started = []
        samples, errors = timing.time_interleaved(
            fns,
            inputs,
            c.mode,
            c.repeats,
            warmup,
            device,
            on_timing_start=lambda: started.append(load.snapshot()),
            probe=probe,
        )
        r.load = load.window(started[0], load.snapshot())
        copy_samples = samples.pop(timing.COPY, None)
        if copy_samples:
            r.copy_bandwidth = probe.bandwidth(copy_samples)
        # A failure (a compile error, an unsupported option) shows up in the provider's first call.
        for p, e in errors.items():
            r.notes[p] = f"failed: {providers_mod.describe_error(e)}"
        for p, s in samples.items():
            r.times[p] = timing.quantiles(s)
            if device == "cuda" and not args.no_memory:
                try:
                    r.memory[p] = timing.measure_cuda(fns[p], inputs, c.mode)
                except Exception as e:
                    r.notes[p] = f"memory measurement failed: {providers_mod.describe_error(e)}"
    del fns, inputs
    if thp_worker is not None and thp_names:
        bar.set_postfix_str(f"{first.label} ({', '.join(thp_names)})")
        time_thp(results, thp_names, thp_worker, warmup, args.seed)
    return results


def time_thp(results, names, worker, warmup, seed):
    """Fills in the THP providers' times of one group from the worker process."""
    try:
        per_case = worker.time_group([r.case for r in results], names, warmup, seed)
    except RuntimeError as e:
        for r in results:
            for p in names:
                r.notes[p] = f"failed: {e}"
        return
    for r, (samples, errors, window) in zip(results, per_case):
        for p, e in errors.items():
            r.notes[p] = f"failed: {e}"
        for p, s in samples.items():
            r.times[p] = timing.quantiles(s)
        r.load = load.busier(r.load, window)


def thp_note(switch, huge_page_bytes):
    huge = "(unknown)" if huge_page_bytes is None else f"{huge_page_bytes >> 20} MiB"
    return (
        f"THP providers: a separate process with {thp.ENV}={switch}; of a fresh {thp.PROBE_BYTES >> 20} MiB "
        f"tensor there, {huge} sat on huge pages"
    )


def measure_cpu_memory(results, seed):
    """CPU peak memory, one fresh process per (provider, case), after all timing: starting and tearing down
    those processes takes CPU time that would otherwise land in the timings on a machine with few cores."""
    meter = timing.CpuMemoryMeter()
    jobs = [(r, p) for r in results for p in r.times if p not in providers_mod.THP]
    try:
        with tqdm(total=len(jobs), file=sys.stderr, desc="memory", unit="run", dynamic_ncols=True) as bar:
            for r, p in jobs:
                bar.set_postfix_str(f"{r.case.label} {p}")
                try:
                    r.memory[p] = meter.measure(p, r.case, seed)
                except Exception as e:
                    r.notes[p] = f"memory measurement failed: {providers_mod.describe_error(e)}"
                bar.update(1)
    finally:
        meter.close()


def main(argv=None):
    args = parse_args(argv)
    device = args.device
    if device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda but torch.cuda.is_available() is False")
    if args.providers:
        providers = [p.strip() for p in args.providers.split(",") if p.strip()]
    else:
        providers = list(providers_mod.DEFAULTS[device])
    for p in providers:
        if p not in providers_mod.ALL:
            sys.exit(f"unknown provider {p!r}; choose from {', '.join(providers_mod.ALL)}")
    if providers_mod.ALL[0] not in providers:
        providers.insert(0, providers_mod.ALL[0])
    # Table columns in a fixed order: fused_ce, then torch at its best, then the rest.
    providers.sort(key=providers_mod.ALL.index)
    try:
        cases, notes = cases_mod.build_cases(
            device, args.quick, args.losses, args.dtypes, args.shapes, args.features, args.modes, args.repeats
        )
    except ValueError as e:
        sys.exit(str(e))
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    os.makedirs(args.out, exist_ok=True)
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)

    start = time.perf_counter()
    # Started first: its start-up overlaps this process making and checking the first group's inputs; nothing
    # is timed before it is ready.
    thp_worker = thp.Worker() if device == "cpu" and any(p in providers_mod.THP for p in providers) else None
    meta = environment(device)
    meta["load_start"] = load.load_average()
    meta["copy_bytes"] = CUDA_COPY_BYTES if device == "cuda" else CPU_COPY_BYTES

    groups = {}
    for c in cases:
        groups.setdefault(c.input_key, []).append(c)
    results = []
    probe = timing.CopyProbe(device, meta["copy_bytes"]) if device == "cpu" else None
    try:
        with tqdm(total=len(cases), file=sys.stderr, desc="bench", unit="case", dynamic_ncols=True) as bar:
            for group in groups.values():
                results += run_group(group, providers, device, args, bar, thp_worker, probe)
                bar.update(len(group))
        if thp_worker is not None:
            meta["thp_note"] = thp_note(*thp_worker.ready())
    finally:
        if thp_worker is not None:
            thp_worker.close()
    del probe
    # After the timings, so that it cannot overlap the THP worker's start-up; warm, in the same run. On CPU the
    # byte floors use each case's own copy bandwidth (the probe); this one is for cases without it.
    meta["copy_bandwidth"] = timing.copy_bandwidth(device, meta["copy_bytes"])
    meta["load_end"] = load.load_average()
    meta["load_warning"] = load.describe(
        [r.load for r in results if r.load], meta["load_start"], meta["load_end"], meta["threads"]
    )
    if meta["load_warning"]:
        print(meta["load_warning"], file=sys.stderr)
    if device == "cpu" and not args.no_memory:
        measure_cpu_memory(results, args.seed)

    table = report.markdown(results, meta, providers)
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write(table)
    report.write_csv(os.path.join(args.out, "results.csv"), report.csv_rows(results, meta, providers))
    pngs = report.plots(results, args.out, providers)
    print(table)
    print(
        f"wrote {os.path.join(args.out, 'results.csv')}, results.md and {len(pngs)} plot(s) "
        f"in {time.perf_counter() - start:.0f} s"
    )
    print(report.summary(results, providers, meta["copy_bandwidth"]))
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())

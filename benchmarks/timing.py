"""Timers and memory measurement.

Time: CUDA events on GPU; time.perf_counter wall clock after warm-up on CPU. `forward` times the loss call,
`backward` times torch.autograd.grad alone on a loss computed fresh (untimed) each repeat, `full` times both.
Providers are timed in interleaved rounds (A B A B ...), one sample of each per round.

Peak extra memory: on GPU, torch.cuda.max_memory_allocated minus the allocation after the inputs exist; on
CPU, the RSS high-water mark (VmHWM) minus the RSS after the inputs exist, over two calls, in a fresh process
per (provider, case) forked from a server that has torch and fused_ce imported already. For `backward`, the
forward's saved tensors are part of the baseline; for torch.compile, so is the compilation.
"""

import concurrent.futures
import ctypes
import ctypes.util
import gc
import multiprocessing
import time

import cases as cases_mod
import numpy as np
import providers
import torch

MIN_WARMUP_S = 0.2


def quantiles(samples):
    """(p20, p50, p80) of a list of numbers."""
    p20, p50, p80 = np.percentile(np.asarray(samples, dtype=np.float64), [20, 50, 80])
    return float(p20), float(p50), float(p80)


def _sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def _step(fn, inputs, mode, pre_loss=None):
    """One call in `mode`; `pre_loss` is the already computed loss for mode backward."""
    if mode == "forward":
        return fn(inputs.x, inputs.target)
    loss = pre_loss if mode == "backward" else fn(inputs.x, inputs.target)
    return torch.autograd.grad(loss, inputs.x)


def run_once(fn, inputs, mode):
    """An untimed call (warm-up, compilation)."""
    pre = fn(inputs.x, inputs.target) if mode == "backward" else None
    _step(fn, inputs, mode, pre)


# The key of time_interleaved's samples that holds the copy probe's seconds.
COPY = "copy"


class CopyProbe:
    """dst.copy_(src) of `nbytes`: the copy behind every bandwidth figure. On CPU it is also timed once per round
    beside the providers: the memory bandwidth the machine gave while each case ran. On the 2-core VM it swung between about 44 and 78 GB/s within minutes
    (other tenants), so one copy timed at the end of the run could halve or double every case's byte floor."""

    def __init__(self, device, nbytes):
        self.src = torch.ones(nbytes // 4, device=device, dtype=torch.float32)
        self.dst = torch.empty_like(self.src)
        self.dst.copy_(self.src)

    def __call__(self):
        self.dst.copy_(self.src)

    @property
    def bytes_moved(self):
        """Bytes one copy reads and writes."""
        return 2 * self.src.numel() * self.src.element_size()

    def bandwidth(self, samples):
        """Bytes/s (read + write) at the median of `samples` (seconds): the providers' times are medians of the
        same rounds, so a floor from the fastest copy would set one lucky round against a typical one."""
        return self.bytes_moved / float(np.median(samples))


def time_interleaved(fns, inputs, mode, repeats, warmup, device, on_timing_start=None, probe=None):
    """Seconds per call of each provider in `fns` (name -> callable), timed in rounds that call every
    provider once (A B A B ...), so that a burst of other work on the machine lands on all of them alike
    rather than on whichever happened to be timed during it. Returns (samples, errors): name -> list of
    seconds, and name -> exception for providers whose first call failed (they are left out).

    Warm-up: each provider's first call runs alone (torch.compile compiles there), then interleaved rounds
    until every provider made `warmup` calls and the rounds took MIN_WARMUP_S per provider: the first calls
    pay for cold caches and sleeping threads. `on_timing_start` is called after the first calls, so a load
    reading can skip the compilation (which runs in worker processes of its own). A `probe` (CopyProbe, CPU
    only) is timed once per timed round too; its seconds come back under samples[COPY]."""
    errors = {}
    live = {}
    for name, fn in fns.items():
        try:
            run_once(fn, inputs, mode)
            _sync(device)
            live[name] = fn
        except Exception as e:
            errors[name] = e
    if on_timing_start:
        on_timing_start()
    t0 = time.perf_counter()
    rounds = 1
    while rounds < warmup or time.perf_counter() - t0 < MIN_WARMUP_S * len(live):
        for fn in live.values():
            run_once(fn, inputs, mode)
            _sync(device)
        rounds += 1
    samples = {name: [] for name in live}
    if device == "cuda":
        events = {name: [] for name in live}
        for _ in range(repeats):
            for name, fn in live.items():
                pre = fn(inputs.x, inputs.target) if mode == "backward" else None
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                out = _step(fn, inputs, mode, pre)
                end.record()
                events[name].append((start, end))
                del out, pre
        torch.cuda.synchronize()
        samples = {name: [s.elapsed_time(e) / 1e3 for s, e in ev] for name, ev in events.items()}
    else:
        for _ in range(repeats):
            for name, fn in live.items():
                pre = fn(inputs.x, inputs.target) if mode == "backward" else None
                t0 = time.perf_counter()
                out = _step(fn, inputs, mode, pre)
                samples[name].append(time.perf_counter() - t0)
                del out, pre
            if probe is not None:
                t0 = time.perf_counter()
                probe()
                samples.setdefault(COPY, []).append(time.perf_counter() - t0)
    return samples, errors


def copy_bandwidth(device, nbytes, repeats=9):
    """Measured copy bandwidth in bytes/s, counting read + write, from the fastest of `repeats` copies: what the
    machine can reach, so that other processes' memory traffic during one copy cannot lower the byte floor
    (and raise fused_ce's share of it)."""
    probe = CopyProbe(device, nbytes)
    _sync(device)
    samples = []
    for _ in range(repeats):
        if device == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            probe()
            end.record()
            end.synchronize()
            samples.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            probe()
            samples.append(time.perf_counter() - t0)
    return probe.bytes_moved / min(samples)


# ---- memory ----------------------------------------------------------------------------------------------


def _rss_bytes(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_rss_peak():
    """Make VmHWM equal to the current RSS (Linux >= 4.0). False where the kernel refuses."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _fixed_mmap_threshold():
    """glibc raises its mmap threshold after large frees, so a buffer freed in the warm-up can be reused from
    the heap and hide from the peak; a fixed threshold returns every large buffer to the OS on free."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        libc.mallopt(-3, 128 * 1024)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass


def _measure_cpu_child(provider, case_dict, seed):
    """Runs in a fresh process: peak RSS above the RSS after the inputs exist, over the measured calls."""
    _fixed_mmap_threshold()
    case = cases_mod.Case(**case_dict)
    inputs = cases_mod.make_inputs(case, "cpu", seed)
    fn = providers.build(provider, case, inputs, "cpu")
    if provider in providers.COMPILED:
        # Compilation is a one-time cost: its memory goes into the baseline, not into the per-call peak.
        run_once(fn, inputs, case.mode)
        gc.collect()
    pre = fn(inputs.x, inputs.target) if case.mode == "backward" else None
    # Buffers a provider keeps for reuse across calls stay in the peak: the baseline is taken before any
    # call (or after compilation) and the high-water mark spans two calls.
    baseline = _rss_bytes("VmRSS")
    if not _reset_rss_peak():
        raise RuntimeError("cannot reset the RSS high-water mark (/proc/self/clear_refs)")
    out = _step(fn, inputs, case.mode, pre)
    del out, pre
    if case.mode != "backward":
        out = _step(fn, inputs, case.mode)
        del out
    return _rss_bytes("VmHWM") - baseline


class CpuMemoryMeter:
    """Forks one fresh process per measurement from a forkserver that has the heavy imports done."""

    def __init__(self):
        ctx = multiprocessing.get_context("forkserver")
        # "__main__" too: otherwise every child re-imports the main script (and matplotlib with it).
        ctx.set_forkserver_preload(["__main__", "torch", "fused_ce", "cases", "providers", "timing"])
        self._pool = concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=ctx, max_tasks_per_child=1)

    def measure(self, provider, case, seed):
        return self._pool.submit(_measure_cpu_child, provider, case.to_dict(), seed).result()

    def close(self):
        self._pool.shutdown()


def measure_cuda(fn, inputs, mode):
    """Peak allocated bytes above what is allocated before the measured call (inputs, saved tensors)."""
    run_once(fn, inputs, mode)
    pre = fn(inputs.x, inputs.target) if mode == "backward" else None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    baseline = torch.cuda.memory_allocated()
    out = _step(fn, inputs, mode, pre)
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - baseline
    del out, pre
    return peak

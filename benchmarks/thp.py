"""Torch at its best on CPU: the eager and torch.compile providers timed in a separate process that starts with
THP_MEM_ALLOC_ENABLE=1, torch's switch for transparent huge pages in its CPU allocator. Torch reads the switch
once, at its first allocation, so it cannot be turned on in the main process, which has allocated by then.

The worker is started once per run (torch imported once), gets one group of same-input cases at a time, and
times its providers in interleaved rounds like the main process does. The main process waits meanwhile, so
the two never share the CPU; each group is timed by both back to back, the worker right after the main process.
"""

import multiprocessing
import os

import cases as cases_mod
import load
import providers
import timing
import torch

ENV = "THP_MEM_ALLOC_ENABLE"
PROBE_BYTES = 64 << 20


def _anon_huge_pages_bytes():
    """AnonHugePages of this process (bytes), or None where /proc/self/smaps_rollup is unreadable."""
    try:
        with open("/proc/self/smaps_rollup") as f:
            for line in f:
                if line.startswith("AnonHugePages:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _probe():
    """How many bytes of a fresh, written PROBE_BYTES tensor the kernel backs with huge pages: 0 means the
    switch had no effect (transparent huge pages disabled on the machine)."""
    before = _anon_huge_pages_bytes()
    t = torch.ones(PROBE_BYTES // 4)
    after = _anon_huge_pages_bytes()
    del t
    return None if before is None or after is None else max(0, after - before)


def _warm_compiler():
    """One tiny compiled loss call: imports and starts torch.compile's machinery (many seconds on a busy 2-core
    machine) while the main process is still importing, instead of inside the first group."""
    case = cases_mod.Case("ce", "full", "fp32", 2, 3)
    inputs = cases_mod.make_inputs(case, "cpu")
    timing.run_once(providers.build("torch_compile", case, inputs, "cpu"), inputs, case.mode)
    torch._dynamo.reset()


def _time_group(case_dicts, names, warmup, seed):
    group = [cases_mod.Case(**d) for d in case_dicts]
    torch._dynamo.reset()
    inputs = cases_mod.make_inputs(group[0], "cpu", seed)
    fns = {name: providers.build(providers.THP[name], group[0], inputs, "cpu") for name in names}
    results = []
    for c in group:
        started = []
        samples, errors = timing.time_interleaved(
            fns, inputs, c.mode, c.repeats, warmup, "cpu", on_timing_start=lambda: started.append(load.snapshot())
        )
        errors = {name: providers.describe_error(e) for name, e in errors.items()}
        results.append((samples, errors, load.window(started[0], load.snapshot())))
    return results


def _serve(conn, recompile_limit):
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, recompile_limit)
    probe = _probe()
    _warm_compiler()
    conn.send((os.environ.get(ENV), probe))
    while True:
        request = conn.recv()
        if request is None:
            return
        try:
            conn.send(("ok", _time_group(*request)))
        except Exception as e:
            conn.send(("error", providers.describe_error(e)))


class Worker:
    """The THP process. `huge_page_bytes` says whether the switch took effect (see _probe)."""

    def __init__(self):
        ctx = multiprocessing.get_context("spawn")  # a fresh interpreter: no allocation before the switch
        self._conn, child = ctx.Pipe()
        previous = os.environ.get(ENV)
        os.environ[ENV] = "1"
        try:
            self._proc = ctx.Process(target=_serve, args=(child, torch._dynamo.config.recompile_limit), daemon=True)
            self._proc.start()
        finally:
            if previous is None:
                del os.environ[ENV]
            else:
                os.environ[ENV] = previous
        child.close()
        self._ready = None

    def ready(self):
        """(value of the switch in the worker, huge-page bytes of the probe); waits for the worker to start."""
        if self._ready is None:
            self._ready = self._conn.recv()
        return self._ready

    def time_group(self, group, names, warmup, seed):
        """Per case of `group`: (samples, errors, load window), as timing.time_interleaved gives them.
        Raises RuntimeError with the worker's message when the group failed as a whole."""
        self.ready()
        self._conn.send(([c.to_dict() for c in group], list(names), warmup, seed))
        status, payload = self._conn.recv()
        if status != "ok":
            raise RuntimeError(payload)
        return payload

    def close(self):
        try:
            self._conn.send(None)
        except OSError:
            pass
        self._proc.join(timeout=30)
        if self._proc.is_alive():
            self._proc.kill()

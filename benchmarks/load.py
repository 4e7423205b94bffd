"""How busy the machine is while the benchmark runs.

Two readings: the kernel's 1-minute load average (os.getloadavg), recorded around every case and the
whole run, and the CPU time that processes other than this one took while a case was being timed
(/proc/stat's busy time of all CPUs minus this process's own CPU time, over the wall time), in cores.
The load average counts this benchmark's own threads and lags by a minute; the second reading excludes
this process and covers exactly the timed window, so it is the one that flags a case as busy. Both count
the whole machine (or VM) as the kernel reports it: in a container on a larger host, other tenants'
work shows up too.
"""

import os
import resource
import time
from dataclasses import dataclass

# Other processes' CPU use, averaged over a case's timed window, above which the case is flagged busy: on
# a machine whose cores all run the benchmark's threads, every such share is time a thread waits for.
BUSY_OTHER_CORES = 0.25
# /proc/stat counts in ticks, so a reading over a short window is coarse: windows shorter than this are
# reported but never flag a case.
MIN_WINDOW_S = 0.3


def load_average():
    """The 1-minute load average, or None where the platform has none."""
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def _machine_busy_s():
    """Seconds of CPU time all CPUs spent busy since boot (user, nice, system, irq, softirq, steal), or None."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu":
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[1:9])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _own_cpu_s():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


@dataclass(frozen=True)
class Snapshot:
    wall: float
    machine_busy: float  # None where /proc/stat is unreadable
    own: float
    load: float


def snapshot():
    return Snapshot(time.perf_counter(), _machine_busy_s(), _own_cpu_s(), load_average())


@dataclass(frozen=True)
class Window:
    """Load over one timed window."""

    load_before: float
    load_after: float
    other_cores: float  # CPU used by other processes, in cores; None where unknown
    seconds: float

    @property
    def busy(self):
        return self.other_cores is not None and self.seconds >= MIN_WINDOW_S and self.other_cores > BUSY_OTHER_CORES


def window(start, end):
    seconds = end.wall - start.wall
    other = None
    if start.machine_busy is not None and end.machine_busy is not None and seconds > 0:
        other = max(0.0, ((end.machine_busy - start.machine_busy) - (end.own - start.own)) / seconds)
    return Window(start.load, end.load, other, seconds)


def busier(a, b):
    """Of two windows over the same case (the main process's and the THP worker's), the one where other
    processes took more CPU (a busy one first); either may be None."""
    windows = [w for w in (a, b) if w is not None]
    return max(windows, key=lambda w: (w.busy, w.other_cores or 0.0), default=None)


def describe(windows, load_start, load_end, threads):
    """A warning (str) when the machine was busy during any timed window, else None."""
    busy = [w for w in windows if w.busy]
    if not busy:
        return None
    worst = max(w.other_cores for w in busy)
    return (
        f"WARNING: the machine was busy: other processes used up to {worst:.2f} cores (above "
        f"{BUSY_OTHER_CORES}) while {len(busy)} of {len(windows)} cases were timed, against this benchmark's "
        f"{threads} threads; 1-minute load average {_fmt(load_start)} at the start, {_fmt(load_end)} at the "
        "end. Their timings (marked busy) can be far slower than on an idle machine, for every provider; "
        "rerun on an idle machine before trusting them."
    )


def _fmt(v):
    return "unknown" if v is None else f"{v:.2f}"

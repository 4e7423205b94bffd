"""The benchmark's timing and load bookkeeping, without timing anything real: providers are timed in
interleaved rounds, a provider that fails its first call is reported and left out, and a case is flagged
busy only when other processes took CPU time over a long enough window."""

import os
import sys
from types import SimpleNamespace

import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
import load
import timing


def _recorder(name, calls):
    def fn(x, target):
        calls.append(name)
        return x.sum()

    return fn


def test_providers_are_timed_in_interleaved_rounds(monkeypatch):
    monkeypatch.setattr(timing, "MIN_WARMUP_S", 0.0)
    calls = []
    inputs = SimpleNamespace(x=torch.ones(3, requires_grad=True), target=None)

    def broken(x, target):
        raise ValueError("no such option")

    fns = {"a": _recorder("a", calls), "broken": broken, "b": _recorder("b", calls)}
    marks = []
    samples, errors = timing.time_interleaved(
        fns, inputs, "forward", repeats=4, warmup=3, device="cpu", on_timing_start=lambda: marks.append(len(calls))
    )
    assert set(samples) == {"a", "b"} and all(len(s) == 4 and min(s) > 0 for s in samples.values())
    assert set(errors) == {"broken"} and isinstance(errors["broken"], ValueError)
    assert marks == [2], "the load window must start after every provider's first (compiling) call"
    assert calls == ["a", "b"] * (3 + 4), calls  # 3 warm-up calls each, then 4 timed rounds: A B A B ...


def test_the_copy_probe_is_timed_once_in_every_timed_round(monkeypatch):
    monkeypatch.setattr(timing, "MIN_WARMUP_S", 0.0)
    calls = []
    inputs = SimpleNamespace(x=torch.ones(3, requires_grad=True), target=None)
    probe = timing.CopyProbe("cpu", 1 << 20)

    def probe_call():
        calls.append("copy")
        probe()

    fns = {"a": _recorder("a", calls), "b": _recorder("b", calls)}
    samples, errors = timing.time_interleaved(
        fns, inputs, "forward", repeats=4, warmup=2, device="cpu", probe=probe_call
    )
    assert errors == {} and len(samples[timing.COPY]) == 4 and min(samples[timing.COPY]) > 0
    assert calls == ["a", "b"] * 2 + ["a", "b", "copy"] * 4, calls  # not in the warm-up rounds
    assert probe.bandwidth([0.5, 0.002, 0.001]) == pytest.approx(2 * (1 << 20) / 0.002)  # the median copy


def _snap(wall, machine_busy, own, load_avg=1.0):
    return load.Snapshot(wall, machine_busy, own, load_avg)


def test_other_processes_cpu_share_flags_a_busy_case():
    # 2 s of wall time: the machine was busy for 3 CPU-seconds, 1 of them this process's: 1 core of others.
    w = load.window(_snap(10.0, 100.0, 5.0, 0.5), _snap(12.0, 103.0, 6.0, 1.5))
    assert abs(w.other_cores - 1.0) < 1e-12 and w.busy
    assert (w.load_before, w.load_after) == (0.5, 1.5)
    quiet = load.window(_snap(10.0, 100.0, 5.0), _snap(12.0, 102.0, 6.9))  # others: 0.05 cores
    assert not quiet.busy
    short = load.window(_snap(10.0, 100.0, 5.0), _snap(10.1, 100.2, 5.0))  # too short for tick counts
    assert short.other_cores > load.BUSY_OTHER_CORES and not short.busy
    unknown = load.window(_snap(10.0, None, 5.0), _snap(12.0, None, 6.0))  # no /proc/stat
    assert unknown.other_cores is None and not unknown.busy


def test_warning_names_the_busy_cases_only_when_there_are_some():
    quiet = load.window(_snap(0.0, 0.0, 0.0), _snap(1.0, 1.0, 1.0))
    busy = load.window(_snap(0.0, 0.0, 0.0), _snap(1.0, 2.5, 1.0))
    assert load.describe([quiet, quiet], 0.1, 0.2, threads=2) is None
    text = load.describe([quiet, busy], 0.1, 3.0, threads=2)
    assert "busy" in text and "1.50 cores" in text and "1 of 2 cases" in text


def test_live_readings_are_sane():
    a = load.snapshot()
    sum(range(200000))
    b = load.snapshot()
    assert b.wall > a.wall and b.own >= a.own
    w = load.window(a, b)
    assert w.other_cores is None or w.other_cores >= 0

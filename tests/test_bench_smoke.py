"""Smoke test of the benchmark CLI: a --quick run on tiny shapes writes its table, CSV and plots, and every
case passes the correctness check. torch.compile is left out to keep this within seconds."""

import csv
import os
import subprocess
import sys

import pytest

pytest.importorskip("matplotlib", reason="the benchmark's plots need matplotlib (the bench extra)")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_quick_run_writes_outputs(tmp_path):
    out = tmp_path / "bench"
    proc = subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, "benchmarks", "run.py"),
            "--quick",
            "--device",
            "cpu",
            "--providers",
            "fused_ce,torch",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "| case | check |" in proc.stdout
    assert "SUMMARY: fused_ce vs torch eager" in proc.stdout
    assert (out / "results.md").read_text().count("\n| ce ") >= 1
    assert list(out.glob("time_vs_C_*.png")) and list(out.glob("memory_vs_C_*.png"))

    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    case_rows = [r for r in rows if r["provider"] not in ("copy", "machine")]
    assert case_rows and {r["check"] for r in case_rows} == {"ok"}
    times = [r for r in case_rows if r["metric"] == "time"]
    assert {r["provider"] for r in times} == {"fused_ce", "torch"}
    assert all(float(r["p50"]) > 0 for r in times)
    assert any(r["metric"] == "speedup_vs_torch" for r in case_rows)
    assert any(r["metric"] == "copy_bandwidth" for r in rows)
    # every timed case records the machine's load over its timing; the run records the load average
    assert all(r["busy"] in ("yes", "no") and float(r["other_cpu_cores"]) >= 0 for r in times)
    assert all(r["load_avg_before"] and r["load_avg_after"] for r in times)
    assert [r["note"] for r in rows if r["metric"] == "load_average_1min"] == [
        "os.getloadavg()[0] at the start of the run",
        "os.getloadavg()[0] at the end of the run",
    ]
    busy = any(r["busy"] == "yes" for r in times)
    assert ("MACHINE BUSY" in proc.stdout) == busy and ("WARNING: the machine was busy" in proc.stderr) == busy

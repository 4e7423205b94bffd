"""Smoke test of benchmarks/first_call.py: both providers report their first and warm calls, and fused_ce keeps
no gradient-sized memory after del (an 8 MiB gradient, above the 4 MiB at which large_buffers.cpp maps it)."""

import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_first_call_reports_both_providers_and_memory_given_back():
    proc = subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, "benchmarks", "first_call.py"),
            "--shape",
            "256x8192",
            "--dtype",
            "float32",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = dict(re.findall(r"^(fused_ce|torch) +first .*RSS kept after del +(-?[\d.]+) MiB$", proc.stdout, re.M))
    assert set(rows) == {"fused_ce", "torch"}, proc.stdout
    assert float(rows["fused_ce"]) < 4.0, proc.stdout

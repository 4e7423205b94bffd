"""Smoke test of benchmarks/fresh_memory.py: it reports the copy into existing and into fresh memory, and
fused_ce's backward into a fresh gradient and into the logits' storage, each with a positive time."""

import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_fresh_memory_reports_copies_and_backwards():
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "benchmarks", "fresh_memory.py"), "--mib", "8", "--rounds", "2"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "THP_MEM_ALLOC_ENABLE=1" in proc.stdout, proc.stdout
    copy = re.search(
        r"^8 MiB fp32: copy into existing memory ([\d.]+) ms .* into fresh memory ([\d.]+) ms", proc.stdout, re.M
    )
    bwd = re.search(
        r"^8 MiB fp32: fused_ce backward \(262, 8000\) into a fresh gradient ([\d.]+) ms .* "
        r"into the logits' storage ([\d.]+) ms",
        proc.stdout,
        re.M,
    )
    assert copy and bwd, proc.stdout
    assert all(float(v) > 0 for v in copy.groups() + bwd.groups()), proc.stdout

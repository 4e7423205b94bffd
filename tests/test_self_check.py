"""python -m fused_ce.check, as a user runs it on the installed package: --quick passes here and writes its
record; a wrong gradient makes it fail, naming the group; a device that is not there is refused."""

import json
import math
import subprocess
import sys

import torch

import fused_ce.testing
from fused_ce.check.groups import GROUPS


def _run(args, tmp_path, script=None):
    """The check in a fresh interpreter, from a folder outside the repository (the installed package)."""
    command = [sys.executable, "-c", script] if script else [sys.executable, "-m", "fused_ce.check"]
    return subprocess.run(command + args, cwd=tmp_path, capture_output=True, text=True, timeout=900)


def _expected_devices():
    return (
        ["cpu"]
        + (["emulated_cuda"] if fused_ce.testing.emulated_cuda_available() else [])
        + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    )


def test_quick_meets_every_value_and_full_is_the_whole_grid():
    """--quick walks every value of every parameter (of its quick grid) at least once; --full is the
    product, as the test suite parametrizes it."""
    for group in GROUPS:
        for family in group.families:
            quick = family.points(quick=True)
            for name, values in family.grid.items():
                for value in family.quick.get(name, values):
                    assert any(p[name] == value for p in quick), (family.name, name, value)
            full = family.points(quick=False)
            assert len(full) == math.prod(len(v) for v in family.grid.values()), family.name
            assert len({repr(sorted(p.items())) for p in full}) == len(full), family.name


def test_quick_check_passes_and_writes_the_record(tmp_path):
    record_path = tmp_path / "record.json"
    proc = _run(["--quick", "--json", str(record_path)], tmp_path)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert proc.stdout.splitlines()[-2].startswith("PASS: all "), proc.stdout[-2000:]
    record = json.loads(record_path.read_text())
    assert record["passed"] is True and record["mode"] == "quick"
    assert record["versions"]["torch"] == torch.__version__
    assert record["versions"]["fused_ce"] == fused_ce.__version__
    assert record["build"]["emulated_cuda"] == fused_ce.testing.emulated_cuda_available()
    assert record["build"]["cpu_isa_chosen"] in record["build"]["cpu_isas_supported"]
    devices = _expected_devices()
    assert list(record["devices"]) == devices
    assert record["group_descriptions"] == {g.name: g.what for g in GROUPS}
    assert record["devices"]["cpu"]["name"]
    # every group on every device, each with cases that all ran and passed
    assert [(g["device"], g["group"]) for g in record["groups"]] == [(d, g.name) for d in devices for g in GROUPS]
    for group in record["groups"]:
        assert group["cases_total"] == len(group["cases"]) > 0 and group["cases_failed"] == 0, group["group"]
        assert all(c["passed"] and c["error"] is None for c in group["cases"])
    # --quick still meets every value of every parameter: the 50257-class vocabulary, every dtype
    shapes = [c["case"] for g in record["groups"] if g["group"] == "ce_shapes" for c in g["cases"]]
    assert any("shape=(4, 50257)" in c for c in shapes)
    hard = [
        c["case"]
        for g in record["groups"]
        if g["group"] == "ce_class_index" and g["device"] == "cpu"
        for c in g["cases"]
    ]
    assert all(any(f"dtype={d}" in c for c in hard) for d in ("fp64", "fp32", "bf16", "fp16"))
    cpu_speed = record["speed"]["cpu"]
    assert cpu_speed["torch_ms"] > 0 and cpu_speed["fused_ce_ms"] > 0 and cpu_speed["speedup"] > 0


# A user's view of a broken build: fused_ce's class-index gradient 1e-4 too large (relative), everything
# else intact. The check must fail on that group alone and say so.
WRONG_GRADIENT = """
import sys
import fused_ce._core.backward as ops
right = ops.cross_entropy_backward
ops.cross_entropy_backward = lambda *args, **kwargs: right(*args, **kwargs) * (1 + 1e-4)
from fused_ce.check import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_wrong_gradient_fails_the_check_and_names_its_group(tmp_path):
    record_path = tmp_path / "record.json"
    proc = _run(["--device", "cpu", "--json", str(record_path)], tmp_path, script=WRONG_GRADIENT)
    assert proc.returncode == 1, proc.stdout[-4000:] + proc.stderr[-4000:]
    verdict = proc.stdout.splitlines()[-2]
    assert verdict.startswith("FAIL: ") and "cpu/ce_class_index" in verdict, verdict
    record = json.loads(record_path.read_text())
    assert record["passed"] is False
    groups = {(g["device"], g["group"]): g for g in record["groups"]}
    failed = [c for c in groups["cpu", "ce_class_index"]["cases"] if not c["passed"]]
    assert failed and all("gradient w.r.t. argument 0" in c["error"] for c in failed), failed[:3]
    # the probability-target and BCE paths have their own backward: untouched, they pass
    for name in ("ce_probability", "bce_with_logits"):
        assert groups["cpu", name]["passed"], name


def test_a_device_that_is_not_there_is_refused(tmp_path):
    name = "emulated_cuda" if not fused_ce.testing.emulated_cuda_available() else f"cuda:{torch.cuda.device_count()}"
    proc = _run(["--device", name], tmp_path)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert proc.stderr.startswith("fused_ce.check: ") and proc.stdout == "", proc.stderr

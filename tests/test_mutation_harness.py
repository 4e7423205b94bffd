"""The mutation harness (scripts/mutation_test.py) keeps working: every listed mutant still applies to the
code, a Python-only mutant is killed by the test that should kill it (reusing the built extension, no
rebuild), a harmless change is reported as surviving, and a mutant whose text is not in the file is an
error. The full mutant run is on demand (README, Testing)."""
import os
import subprocess
import sys

import fused_ce

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "scripts", "mutation_test.py")
KILLER = "tests/test_errors.py::test_cross_entropy_errors_match_torch[ignore_index_0_with_soft_target-cpu]"


def harness(*args):
    return subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True, timeout=600, cwd=ROOT)


def mutant(name, original, replacement, tests=(KILLER,)):
    listed = ", ".join(f'"{t}"' for t in tests)
    return (f"[[mutant]]\nname = \"{name}\"\nfile = \"python_pkg/fused_ce/_core/validation.py\"\n"
            f"original = '''{original}'''\nreplacement = '''{replacement}'''\n"
            f"description = \"test mutant\"\ntests = [{listed}]\n\n")


def test_every_listed_mutant_applies_exactly_once():
    proc = harness("--check")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert " mutants apply" in proc.stdout


def test_python_mutant_killed_and_harmless_change_survives(tmp_path):
    toml = tmp_path / "mutants.toml"
    toml.write_text(mutant("ignore_index_zero", "        if ignore_index >= 0:", "        if ignore_index > 0:")
                    + mutant("comment_only", '"""Argument checks', '"""Argument  checks'))
    proc = harness("--mutants", str(toml), "--hints-only", "--no-baseline",
                   "--prebuilt", os.path.dirname(fused_ce.__file__))
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out  # one survivor
    assert f"KILLED: {KILLER} (hinted)" in out, out
    assert "SURVIVED: hinted tests passed" in out, out
    assert "1 killed, 1 survived, 0 errors of 2 mutants" in out, out


def test_text_not_in_file_is_an_error(tmp_path):
    toml = tmp_path / "mutants.toml"
    toml.write_text(mutant("stale", "text that is not in the file", "anything")
                    + mutant("twice", "import", "export"))
    proc = harness("--mutants", str(toml), "--check")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "ERROR stale: its original text occurs 0 times" in proc.stdout
    assert "ERROR twice: its original text occurs" in proc.stdout
    # a full run reports it too (before running any test) and fails
    proc = harness("--mutants", str(toml), "--only", "stale", "--no-baseline",
                   "--prebuilt", os.path.dirname(fused_ce.__file__))
    assert proc.returncode == 2 and "0 killed, 0 survived, 1 errors of 1 mutants" in proc.stdout, proc.stdout

#!/usr/bin/env python3
"""Mutation testing of the fused_ce test suite: does the suite catch plausible bugs?

Each mutant in tests/mutants/mutants.toml is one exact text replacement in one file. The harness copies
the repository (git's tracked and untracked-but-not-ignored files) into a scratch folder and, one mutant
at a time: applies it (its text must occur exactly once, else the mutant is an error, so the list cannot
rot silently), rebuilds the extension when a C++/CUDA file changed (Python-only mutants reuse the
already-built extension), runs the mutant's hinted tests with -x and, when they all pass, the rest of the
suite, and reports the first test that failed. A mutant is KILLED when some test fails (or the run crashes
or times out), SURVIVED when the whole selection passes, ERROR when it could not be applied or built.

    python scripts/mutation_test.py                       # every mutant, full suite behind the hints
    python scripts/mutation_test.py --list                # names, files, descriptions
    python scripts/mutation_test.py --check               # only verify that every mutant applies
    python scripts/mutation_test.py --only 'dbl_*' lse_scan_block_max_from_minus_inf
    python scripts/mutation_test.py --hints-only --no-baseline --only soft_ignore_index_zero_allowed

Exit status: 0 every selected mutant killed, 1 some survived, 2 an error (a mutant that does not apply or
build, a baseline suite that fails, bad arguments).
"""
import argparse
import dataclasses
import fnmatch
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time

try:
    import tomllib
except ImportError:  # Python < 3.11
    tomllib = None

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_MUTANTS = os.path.join(ROOT, "tests", "mutants", "mutants.toml")
PACKAGE = os.path.join("python_pkg", "fused_ce")
DEFAULT_BUILD = "{python} setup.py build_ext --inplace"
# Marks a folder as this harness's scratch copy, so that --workdir never overwrites anything else.
SCRATCH_MARK = ".fused_ce_mutation_scratch"
BASELINE_LIBS = ".mutation_baseline_libs"
NATIVE_SUFFIXES = (".h", ".hpp", ".cpp", ".cc", ".cu", ".cuh")
# pytest's short summary: "FAILED <node id> - <message>"; parametrized ids may hold spaces.
FAIL_LINE = re.compile(r"^(FAILED|ERROR) (.+?)(?: - .*)?$")
# The harness's own test checks that every mutant applies to the tree, which no mutated tree passes: it
# never runs under the harness.
OWN_TEST = "tests/test_mutation_harness.py"


@dataclasses.dataclass
class Mutant:
    name: str
    file: str
    original: str
    replacement: str
    description: str
    tests: list

    @property
    def native(self):
        return self.file.endswith(NATIVE_SUFFIXES)


@dataclasses.dataclass
class Result:
    name: str
    status: str  # KILLED, SURVIVED, ERROR
    detail: str
    seconds: float


def load_mutants(path):
    if tomllib is None:
        sys.exit("mutation_test.py needs Python 3.11+ (tomllib)")
    with open(path, "rb") as f:
        data = tomllib.load(f)
    mutants, seen = [], set()
    for i, entry in enumerate(data.get("mutant", [])):
        missing = [k for k in ("name", "file", "original", "replacement", "description") if k not in entry]
        unknown = set(entry) - {"name", "file", "original", "replacement", "description", "tests"}
        if missing or unknown:
            raise ValueError(f"{path}: mutant #{i + 1} ({entry.get('name', '?')}): "
                             f"missing {missing}, unknown keys {sorted(unknown)}")
        if entry["name"] in seen:
            raise ValueError(f"{path}: two mutants named {entry['name']!r}")
        if entry["original"] == entry["replacement"]:
            raise ValueError(f"{path}: mutant {entry['name']!r} replaces its text by the same text")
        seen.add(entry["name"])
        mutants.append(Mutant(entry["name"], entry["file"], entry["original"], entry["replacement"],
                              " ".join(entry["description"].split()), list(entry.get("tests", []))))
    if not mutants:
        raise ValueError(f"{path}: no [[mutant]] entries")
    return mutants


def select(mutants, patterns):
    if not patterns:
        return mutants
    chosen = [m for m in mutants if any(fnmatch.fnmatchcase(m.name, p) for p in patterns)]
    unmatched = [p for p in patterns if not any(fnmatch.fnmatchcase(m.name, p) for m in mutants)]
    if unmatched:
        raise ValueError(f"--only: no mutant matches {', '.join(unmatched)}")
    return chosen


def apply_problem(mutant, tree):
    """Why the mutant cannot be applied to `tree`, or None."""
    path = os.path.join(tree, mutant.file)
    if not os.path.isfile(path):
        return f"{mutant.file} does not exist"
    with open(path, encoding="utf-8") as f:
        count = f.read().count(mutant.original)
    if count != 1:
        return f"its original text occurs {count} times in {mutant.file} (must be exactly once)"
    return None


# ---- the scratch copy -------------------------------------------------------------------------------

# Outside a git checkout (a scratch copy, say) these build outputs and caches are left out instead.
SKIP_DIRS = {".git", "build", "dist", "__pycache__", ".hypothesis", ".pytest_cache", "bench_out", "gpu_out",
             BASELINE_LIBS}
SKIP_SUFFIXES = (".so", ".pyd", ".pyc", ".o")


def source_files(repo):
    """git's tracked and untracked-but-not-ignored files, or outside a git checkout every file but build
    outputs, caches and virtual environments."""
    top = subprocess.run(["git", "-C", repo, "rev-parse", "--show-toplevel"], capture_output=True, text=True)
    if top.returncode == 0 and os.path.realpath(top.stdout.strip()) == os.path.realpath(repo):
        out = subprocess.run(["git", "-C", repo, "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                             check=True, capture_output=True).stdout.decode()
        return [p for p in out.split("\0") if p and os.path.isfile(os.path.join(repo, p))]
    files = []
    for folder, dirs, names in os.walk(repo):
        dirs[:] = [d for d in dirs if d not in SKIP_DIRS and not d.startswith(".venv") and not d.endswith(".egg-info")]
        files += [os.path.relpath(os.path.join(folder, n), repo) for n in names
                  if not n.endswith(SKIP_SUFFIXES) and n != SCRATCH_MARK]
    return files


def sync_tree(repo, scratch):
    """Copies the sources into scratch, leaving files whose bytes are unchanged alone (so that a reused
    --workdir keeps its build objects valid and its rebuilds incremental)."""
    for rel in source_files(repo):
        src, dst = os.path.join(repo, rel), os.path.join(scratch, rel)
        if os.path.isfile(dst):
            with open(src, "rb") as a, open(dst, "rb") as b:
                if a.read() == b.read():
                    continue
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        shutil.copy2(src, dst)


def extension_libs(folder):
    if not os.path.isdir(folder):
        return []
    return sorted(os.path.join(folder, f) for f in os.listdir(folder) if f.endswith((".so", ".pyd")))


def installed_package_dir(python):
    proc = subprocess.run([python, "-c", "import os, fused_ce; print(os.path.dirname(fused_ce.__file__))"],
                          capture_output=True, text=True, cwd=tempfile.gettempdir(),
                          env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    return proc.stdout.strip() if proc.returncode == 0 else None


def find_prebuilt(args):
    """The folder holding the built extension of the unmutated sources, or None to build it in scratch."""
    if args.prebuilt:
        return args.prebuilt
    in_place = os.path.join(args.repo, PACKAGE)
    if extension_libs(in_place):
        return in_place
    return installed_package_dir(args.python)


class Scratch:
    """A copy of the repository, a pristine copy of its built extension, and one mutant at a time."""

    def __init__(self, args, log):
        self.args, self.log = args, log
        self.owned = args.workdir is None
        self.path = args.workdir or tempfile.mkdtemp(prefix="fused_ce_mutation_")
        os.makedirs(self.path, exist_ok=True)
        mark = os.path.join(self.path, SCRATCH_MARK)
        if os.listdir(self.path) and not os.path.exists(mark):
            raise RuntimeError(f"--workdir {self.path} is not empty and not a scratch folder of this harness")
        open(mark, "w").close()
        sync_tree(args.repo, self.path)
        self.package = os.path.join(self.path, PACKAGE)
        self.pristine = os.path.join(self.path, BASELINE_LIBS)

    def prepare_extension(self):
        """Puts the unmutated extension into the scratch package and keeps a pristine copy of it."""
        prebuilt = None if self.args.build_baseline else find_prebuilt(self.args)
        libs = extension_libs(prebuilt) if prebuilt else []
        if libs:
            self.log(f"extension of the unmutated sources: {', '.join(libs)}")
            for old in extension_libs(self.package):
                os.remove(old)
            for lib in libs:
                shutil.copy2(lib, self.package)
        else:
            self.log("building the extension of the unmutated sources in the scratch copy")
            ok, out = self.build()
            if not ok:
                raise RuntimeError("the unmutated sources do not build:\n" + out[-3000:])
        shutil.rmtree(self.pristine, ignore_errors=True)
        os.makedirs(self.pristine)
        for lib in extension_libs(self.package):
            shutil.copy2(lib, self.pristine)

    def restore_extension(self):
        for lib in extension_libs(self.package):
            os.remove(lib)
        for lib in extension_libs(self.pristine):
            shutil.copy2(lib, self.package)

    def build(self):
        env = dict(os.environ)
        env["MAX_JOBS"] = str(self.args.jobs)
        env.setdefault("USE_CUDA", "0")
        # The emulated CUDA extension too, so mutants of csrc/cuda run (ninja rebuilds only what changed).
        env.setdefault("FUSED_CE_EMULATED_CUDA", "1")
        env.setdefault("FUSED_CE_BUILD_BASE", os.path.join("build", "mutation"))
        cmd = self.args.build_cmd.format(python=shlex.quote(self.args.python))
        proc = subprocess.run(cmd, shell=True, cwd=self.path, env=env, capture_output=True, text=True)
        return proc.returncode == 0, proc.stdout + proc.stderr

    def mutate(self, mutant):
        path = os.path.join(self.path, mutant.file)
        with open(path, encoding="utf-8") as f:
            text = f.read()
        with open(path, "w", encoding="utf-8") as f:
            f.write(text.replace(mutant.original, mutant.replacement, 1))
        return text

    def revert(self, mutant, text):
        with open(os.path.join(self.path, mutant.file), "w", encoding="utf-8") as f:
            f.write(text)
        if mutant.native:
            self.restore_extension()

    def close(self):
        if self.owned and not self.args.keep:
            shutil.rmtree(self.path, ignore_errors=True)


# ---- running the tests ------------------------------------------------------------------------------

def run_pytest(scratch, selection, extra, args):
    """(returncode, output) of pytest on `selection` in the scratch copy; returncode None on a timeout."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([os.path.dirname(scratch.package)] +
                                        ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    own = ["--ignore", OWN_TEST] if os.path.exists(os.path.join(scratch.path, OWN_TEST)) else []
    cmd = ([args.python, "-m", "pytest", "-x", "-q", "-rfE", "--tb=line", "-p", "no:cacheprovider"]
           + own + shlex.split(args.pytest_args) + extra + selection)
    try:
        proc = subprocess.run(cmd, cwd=scratch.path, env=env, capture_output=True, text=True, timeout=args.timeout)
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        return None, out
    return proc.returncode, proc.stdout + proc.stderr


def existing(scratch, tests):
    """The hinted tests whose file exists in this tree (hints may name tests of branches not merged yet)."""
    return [t for t in tests if os.path.exists(os.path.join(scratch.path, t.split("::", 1)[0]))]


def verdict(returncode, output, phase):
    """(status, detail) of one pytest run: None when every test passed."""
    if returncode == 0:
        return None
    if returncode is None:
        return "KILLED", f"timeout in the {phase} tests"
    if returncode in (4, 5):  # usage error, nothing collected: the harness's selection is wrong
        return "ERROR", f"pytest exit {returncode} on the {phase} tests:\n" + output[-2000:]
    failed = [m.group(2) for m in map(FAIL_LINE.match, output.splitlines()) if m]
    if failed:
        return "KILLED", f"{failed[0]} ({phase})"
    how = f"signal {-returncode}" if returncode < 0 else f"pytest exit {returncode}"
    return "KILLED", f"crash ({how}) in the {phase} tests: " + " | ".join(output.strip().splitlines()[-3:])


def run_suite(scratch, mutant, args):
    """(status, detail) of the test selection against the applied mutant."""
    hints = existing(scratch, mutant.tests)
    if hints:
        code, out = run_pytest(scratch, hints, [], args)
        v = verdict(code, out, "hinted")
        if v:
            return v
    if args.hints_only:
        return "SURVIVED", "hinted tests passed (--hints-only)" if hints else "no hinted tests in this tree"
    deselect = [a for h in hints for a in ("--deselect", h)]
    code, out = run_pytest(scratch, shlex.split(args.tests), deselect, args)
    return verdict(code, out, "full-suite") or ("SURVIVED", "every test passed")


def run_mutant(scratch, mutant, args):
    problem = apply_problem(mutant, scratch.path)
    if problem:
        return "ERROR", problem
    text = scratch.mutate(mutant)
    try:
        if mutant.native:
            ok, out = scratch.build()
            if not ok:
                return "ERROR", "the mutant does not build:\n" + out[-2000:]
        return run_suite(scratch, mutant, args)
    finally:
        scratch.revert(mutant, text)


# ---- command line -----------------------------------------------------------------------------------

def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("--mutants", default=DEFAULT_MUTANTS, help="the mutant list (TOML; default %(default)s)")
    ap.add_argument("--only", nargs="+", metavar="NAME", help="mutants to run, by name or shell pattern")
    ap.add_argument("--python-only", action="store_true", help="only the mutants that need no rebuild")
    ap.add_argument("--list", action="store_true", help="print the mutants and exit")
    ap.add_argument("--check", action="store_true",
                    help="only check that every selected mutant applies to the repository (no build, no tests)")
    ap.add_argument("--repo", default=ROOT, help="the repository to mutate (default: this script's)")
    ap.add_argument("--python", default=sys.executable, help="python that builds and runs the tests")
    ap.add_argument("--jobs", type=int, default=1, help="parallel compile jobs of a rebuild (MAX_JOBS; default 1)")
    ap.add_argument("--build-cmd", default=DEFAULT_BUILD,
                    help="rebuild command, run in the scratch copy (default %(default)r; USE_CUDA defaults to 0 and "
                         "FUSED_CE_EMULATED_CUDA to 1 and FUSED_CE_BUILD_BASE to build/mutation unless set)")
    ap.add_argument("--build-baseline", action="store_true",
                    help="build the unmutated extension in the scratch copy instead of reusing a built one")
    ap.add_argument("--prebuilt", help="folder with the built extension (*.so) of the unmutated sources "
                                       "(default: the repository's in-place build, else the installed fused_ce)")
    ap.add_argument("--tests", default="tests", help="the suite behind the hints (pytest arguments; default tests)")
    ap.add_argument("--pytest-args", default="", help="extra pytest arguments for every run")
    ap.add_argument("--hints-only", action="store_true", help="run only each mutant's hinted tests")
    ap.add_argument("--no-baseline", action="store_true",
                    help="skip running the selection on the unmutated copy first (it must pass for kills to mean "
                         "anything)")
    ap.add_argument("--timeout", type=float, default=3600, help="seconds per pytest run (default 3600)")
    ap.add_argument("--workdir", help="scratch folder to use and keep (rebuilds there stay incremental across runs)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary scratch folder")
    ap.add_argument("--json", help="write the results to this file")
    return ap.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    args.repo = os.path.abspath(args.repo)
    # Terminated, the harness still reverts the mutant in hand (and ends its pytest) on the way out.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    def log(msg):
        print(msg, flush=True)

    try:
        mutants = select(load_mutants(args.mutants), args.only)
        if args.python_only:
            mutants = [m for m in mutants if not m.native]
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.list:
        for m in mutants:
            kind = "C++/CUDA, rebuilds" if m.native else "Python"
            log(f"{m.name}\n    {m.file} ({kind}); hints: {', '.join(m.tests) or '-'}\n    {m.description}")
        return 0
    problems = {m.name: p for m in mutants if (p := apply_problem(m, args.repo))}
    for name, p in problems.items():
        log(f"ERROR {name}: {p}")
    if args.check:
        log(f"{len(mutants) - len(problems)} of {len(mutants)} mutants apply")
        return 2 if problems else 0

    results = []
    scratch = Scratch(args, log)
    try:
        log(f"scratch copy: {scratch.path}")
        try:
            scratch.prepare_extension()
        except RuntimeError as e:
            log(f"ERROR: {e}")
            return 2
        if not args.no_baseline:
            log("baseline: the selection on the unmutated copy ...")
            hints = sorted({t for m in mutants for t in existing(scratch, m.tests)})
            selection = hints if args.hints_only else shlex.split(args.tests)
            code, out = run_pytest(scratch, selection, [], args)
            if code != 0:
                log("ERROR: the unmutated copy fails its tests, so no kill would mean anything:\n" + out[-3000:])
                return 2
        for i, m in enumerate(mutants, 1):
            t0 = time.perf_counter()
            if m.name in problems:
                status, detail = "ERROR", problems[m.name]
            else:
                log(f"[{i}/{len(mutants)}] {m.name} ({m.file}{', rebuilding' if m.native else ''}) ...")
                status, detail = run_mutant(scratch, m, args)
            results.append(Result(m.name, status, detail, time.perf_counter() - t0))
            log(f"    {status}: {detail} [{results[-1].seconds:.0f} s]")
    finally:
        scratch.close()

    width = max(len(r.name) for r in results)
    log("\nmutant".ljust(width + 1) + "  status    detail")
    for r in results:
        log(f"{r.name.ljust(width)}  {r.status:<8}  {r.detail.splitlines()[0] if r.detail else ''}")
    counts = {s: sum(r.status == s for r in results) for s in ("KILLED", "SURVIVED", "ERROR")}
    log(f"\n{counts['KILLED']} killed, {counts['SURVIVED']} survived, {counts['ERROR']} errors "
        f"of {len(results)} mutants")
    if args.json:
        with open(args.json, "w") as f:
            json.dump([dataclasses.asdict(r) for r in results], f, indent=1)
    if counts["ERROR"]:
        return 2
    return 1 if counts["SURVIVED"] else 0


if __name__ == "__main__":
    sys.exit(main())

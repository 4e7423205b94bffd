"""Every ```python block of docs/**/*.md and README.md runs, so that the examples cannot drift from the code.

A page's blocks run in order in one namespace (later blocks use what earlier ones defined), each from a file of
its own so that tracebacks name the page and block and TorchScript can read the source. A block preceded by an
HTML comment `<!-- docs-test: subprocess (reason) -->` is a whole program and runs as a script in a fresh
process (the vocabulary-parallel example spawns its ranks); one preceded by `<!-- docs-test: skip (reason) -->`
does not run, and the reason must say why. Skips are counted and listed, and kept few.
"""

import dataclasses
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PAGES = sorted(p.relative_to(ROOT).as_posix() for p in [ROOT / "README.md", *(ROOT / "docs").rglob("*.md")])
MAX_SKIPS = 2  # raise it only with a reason on the page; a skipped example is one that can drift

_BLOCK = re.compile(
    r"(?:<!-- docs-test: (?P<mode>skip|subprocess) \((?P<reason>[^)]+)\) -->\n)?"
    r"^```(?P<lang>[\w+-]*)[^\n]*\n(?P<code>.*?)^```",
    re.S | re.M,
)


@dataclasses.dataclass
class Block:
    page: str
    index: int
    line: int
    code: str
    mode: str  # "run", "skip" or "subprocess"
    reason: str


def python_blocks(page):
    text = (ROOT / page).read_text()
    blocks = []
    for m in _BLOCK.finditer(text):
        if m.group("lang") not in ("python", "py"):
            continue
        line = text.count("\n", 0, m.start("code")) + 1
        blocks.append(
            Block(page, len(blocks), line, m.group("code"), m.group("mode") or "run", m.group("reason") or "")
        )
    return blocks


ALL_BLOCKS = [b for page in PAGES for b in python_blocks(page)]


def _script(tmp_path, block):
    """The block as a file named after its page and line, with blank lines above it so that line numbers in a
    traceback are the page's own."""
    name = re.sub(r"\W", "_", block.page) + f"_line{block.line}.py"
    path = tmp_path / name
    path.write_text("\n" * (block.line - 1) + block.code)
    return path


@pytest.mark.parametrize("page", [p for p in PAGES if any(b.mode == "run" for b in python_blocks(p))])
def test_page_examples_run(page, tmp_path, monkeypatch):
    blocks = [b for b in python_blocks(page) if b.mode == "run"]
    if any(re.search(r"^\s*(import|from) transformers\b", b.code, re.M) for b in blocks):
        pytest.importorskip("transformers")
    monkeypatch.chdir(tmp_path)  # an example that writes a file writes it here
    namespace = {"__name__": "__docs_example__"}
    for block in blocks:
        path = _script(tmp_path, block)
        exec(compile(path.read_text(), str(path), "exec"), namespace)


@pytest.mark.parametrize("block", [b for b in ALL_BLOCKS if b.mode == "subprocess"], ids=lambda b: f"{b.page}:{b.line}")
def test_program_examples_run(block, tmp_path):
    path = _script(tmp_path, block)
    run = subprocess.run([sys.executable, str(path)], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, f"{block.page} line {block.line} failed:\n{run.stdout}\n{run.stderr}"


def test_skipped_examples_are_few_and_say_why():
    skipped = [b for b in ALL_BLOCKS if b.mode == "skip"]
    listing = "\n".join(f"  {b.page}:{b.line}: {b.reason}" for b in skipped)
    print(f"{len(ALL_BLOCKS)} python blocks in {len(PAGES)} pages; {len(skipped)} skipped:\n{listing}")
    assert len(skipped) <= MAX_SKIPS, f"too many skipped examples:\n{listing}"
    assert all(len(b.reason.split()) >= 3 for b in skipped), listing


def test_blocks_are_found():
    """The parser sees the pages' examples: a page whose fences it missed would pass untested."""
    for page in PAGES:
        text = (ROOT / page).read_text()
        assert len(python_blocks(page)) == len(re.findall(r"^```py(?:thon)?\b", text, re.M)), page
    assert len(ALL_BLOCKS) >= 15

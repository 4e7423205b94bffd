"""README.md stays a short front page (the rest is the docs site), keeps the test command CI reads, and its links
into the repository resolve."""

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def test_readme_is_under_250_lines():
    assert len(README.splitlines()) < 250


def test_readme_keeps_the_two_commands():
    assert "`bash scripts/test.sh`" in README
    assert "`bash scripts/bench.sh`" in README


def test_readme_links_resolve():
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", README)
    local = [link for link in links if "://" not in link]
    assert any(link.startswith("docs/") for link in local)
    for link in local:
        assert (ROOT / link).exists(), link

#!/usr/bin/env bash
# Builds the documentation site (mkdocs.yml, docs/) with `mkdocs build --strict`: a broken link, a page missing
# from the nav or an API reference that does not resolve fails it.
#   bash scripts/build_docs.sh [VENV] [OUT]
# VENV: the virtual environment to install the docs packages into and build with (default: the `python` on PATH);
# OUT: the site folder (default site/, which git ignores). The packages and their pinned versions are the `docs`
# extra of pyproject.toml, read from there; pip does nothing when they are installed already. Nothing is compiled
# or imported: mkdocstrings reads the docstrings from python_pkg/ statically.
# Preview while writing: python -m mkdocs serve (from the repository root).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
python=${1:+$1/bin/python}
python=${python:-python}
out=${2:-$root/site}
mapfile -t packages < <("$python" - "$root/pyproject.toml" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
extra = re.search(r"^docs = \[(.*?)\]", text, re.M | re.S)
print("\n".join(re.findall(r'"([^"]+)"', extra.group(1))))
PY
)
"$python" -m pip install --quiet --disable-pip-version-check "${packages[@]}"
cd "$root"
NO_MKDOCS_2_WARNING=1 "$python" -m mkdocs build --strict --config-file "$root/mkdocs.yml" --site-dir "$out"
echo "scripts/build_docs.sh: site built in $out"

#!/usr/bin/env bash
# The test command: builds fused_ce with its CUDA kernels (torch 2.14.1, CUDA 13.0) into .venv-cuda and
# runs the whole test suite. CUDA tests run where a GPU is visible and skip cleanly elsewhere.
# Extra arguments go to pytest, e.g. scripts/test.sh -k bce
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=$("$root/scripts/setup_env.sh" cuda pytest hypothesis expecttest scikit-learn matplotlib tqdm)
cd "$root"
set +e
"$venv/bin/python" -m pytest tests -q -p no:cacheprovider "$@"
rc=$?
set -e
if [ $rc -eq 5 ]; then
  echo "scripts/test.sh: pytest collected no tests; the suite must not be empty" >&2
  exit 1
fi
exit $rc

#!/usr/bin/env bash
# The test command: builds fused_ce with its CUDA kernels (torch 2.14.1, CUDA 13.0) and the emulated CUDA
# extension (the same CUDA kernels run on the CPU) into .venv-cuda, runs the whole test suite, then the
# tiling-path tests once more through an AddressSanitizer + UBSan build of the emulated extension. CUDA tests
# run where a GPU is visible and skip cleanly elsewhere; emulated_cuda cases run everywhere.
# Last, the oldest supported torch (pyproject.toml's floor) in a clean venv: its install, self-check, compatibility
# tests and wheel (scripts/compat.sh --wheel --floor).
# Extra arguments go to pytest, e.g. scripts/test.sh -k bce (FUSED_CE_SKIP_ASAN=1 skips the sanitizer run,
# FUSED_CE_SKIP_FLOOR=1 the oldest-torch run).
# --cpu (first argument): for contributors without a CUDA toolkit, or in a hurry: torch 2.13.0 CPU wheel in
# .venv-cpu, CPU kernels plus the emulated CUDA extension (the CUDA kernels still run, on the emulator); the
# CUDA compile is skipped. CI uses the default (full) mode.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
flavor=cuda
if [ "${1:-}" = --cpu ]; then
  flavor=cpu
  shift
fi
venv=$(FUSED_CE_EMULATED_CUDA=1 "$root/scripts/setup_env.sh" $flavor pytest hypothesis expecttest scikit-learn matplotlib tqdm transformers accelerate peft)
cd "$root"
set +e
"$venv/bin/python" -m pytest tests -q -p no:cacheprovider "$@"
rc=$?
set -e
if [ $rc -eq 5 ]; then
  echo "scripts/test.sh: pytest collected no tests; the suite must not be empty" >&2
  exit 1
fi
if [ $rc -ne 0 ]; then
  exit $rc
fi
bash "$root/scripts/build_docs.sh" "$venv"  # the docs site, mkdocs build --strict, into site/
if [ "${FUSED_CE_SKIP_ASAN:-0}" != 1 ]; then
  bash "$root/scripts/test_emulated_asan.sh" "$venv"
fi
# The oldest torch that pyproject.toml claims: a clean venv with it, the README's plain install, the self-check
# and the compatibility tests, then a wheel built there and installed into a second venv without a compiler,
# where the self-check runs again (scripts/compat.sh; FUSED_CE_SKIP_FLOOR=1 skips it).
if [ "${FUSED_CE_SKIP_FLOOR:-0}" != 1 ]; then
  bash "$root/scripts/compat.sh" --wheel --floor --out "$root/compat_out/floor"
fi

#!/usr/bin/env bash
# Builds the emulated CUDA extension with AddressSanitizer and UndefinedBehaviorSanitizer and runs the
# tiling-path tests (tests/test_emulated_cuda.py; tests/test_lm_ops_emulated.py for the language-model
# options and the in-place backward; tests/test_partial_stats.py for the vocabulary-parallel slice ops)
# through it: an out-of-bounds read or write of a kernel, an overrun of its shared memory, or undefined
# behaviour ends the run with a report. scripts/test.sh runs it.
# Usage: scripts/test_emulated_asan.sh [VENV] [PYTEST ARGS...]   (VENV: a venv with torch, default .venv-cuda)
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${1:-$root/.venv-cuda}
shift || true
py=$venv/bin/python
# One build folder per torch version: objects built against another torch's headers must not be reused.
out=$root/build/emulated-asan-$("$py" -c 'import torch; print(torch.__version__)')
cd "$root"
echo "test_emulated_asan.sh: building the sanitized emulated CUDA extension into $out" >&2
FUSED_CE_EMULATED_CUDA=asan MAX_JOBS=${MAX_JOBS:-$(nproc)} \
  "$py" setup.py -q build_ext --build-lib "$out/lib" --build-temp "$out/tmp" >&2
lib=$(ls "$out"/lib/fused_ce/_C_emulated_cuda*.so)
# The sanitizer runtime must be loaded before anything else in the process (python is not instrumented),
# and libstdc++ with it: ASan intercepts C++ throws only if libstdc++ is there when it starts.
preload="$(${CXX:-g++} -print-file-name=libasan.so) $(${CXX:-g++} -print-file-name=libstdc++.so)"
# detect_leaks=0: Python and torch keep allocations alive until exit, which LeakSanitizer would report.
# Reports go to files (pytest captures stderr, and an aborting process never prints its capture).
reports=$out/reports
rm -rf "$reports" && mkdir -p "$reports"
set +e
LD_PRELOAD="$preload" \
ASAN_OPTIONS=detect_leaks=0:abort_on_error=1:halt_on_error=1:log_path=$reports/asan \
UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1:log_path=$reports/ubsan \
FUSED_CE_EMULATED_CUDA_LIBRARY="$lib" \
  "$py" -m pytest tests/test_emulated_cuda.py tests/test_lm_ops_emulated.py tests/test_partial_stats.py::test_partial_stats_match_fp64_reference \
    tests/test_partial_stats.py::test_partial_grad_matches_fp64_reference -q -p no:cacheprovider "$@"
rc=$?
set -e
for f in "$reports"/*; do
  [ -e "$f" ] || continue
  echo "test_emulated_asan.sh: sanitizer report $f:" >&2
  cat "$f" >&2
  rc=${rc/#0/1}
done
exit $rc

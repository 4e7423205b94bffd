#!/usr/bin/env bash
# Everything to run on the GPU machine (torch + CUDA toolkit installed, no network): build with the
# CUDA kernels, the installed package's self-check (python -m fused_ce.check), the test suite,
# compute-sanitizer memcheck and racecheck over every CUDA op, and the benchmarks when their CLI exists.
# Logs go to $OUT (default ./gpu_out). Usage: benchmarks/gpu_run.sh
set -uo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
out=${OUT:-$root/gpu_out}
mkdir -p "$out"
cd "$root"
py=${PYTHON:-python}
status=0
step() {  # step NAME COMMAND...: runs COMMAND with its output in $out/NAME.log, records failures
  local name=$1
  shift
  echo "== $name: $*" | tee -a "$out/summary.txt"
  local t0=$SECONDS
  "$@" >"$out/$name.log" 2>&1
  local rc=$?
  echo "   rc=$rc ($((SECONDS - t0)) s)" | tee -a "$out/summary.txt"
  tail -n 5 "$out/$name.log" | sed 's/^/   | /' | tee -a "$out/summary.txt"
  [ $rc -eq 0 ] || status=1
  return $rc
}

nvidia-smi >"$out/nvidia-smi.txt" 2>&1
"$py" -c "import torch; print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name(0))" \
  >"$out/torch.txt" 2>&1

export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
export MAX_JOBS=${MAX_JOBS:-$(nproc)}
export USE_CUDA=1
step build "$py" -m pip install --no-build-isolation --no-deps -v . || { echo "build failed" >&2; exit 1; }

# The installed package's self-check first: parity, gradcheck and opcheck on this GPU, its record in $out.
step self_check "$py" -m fused_ce.check --device cuda --quick --json "$out/self_check.json"

# python_pkg/ is not on sys.path from the repository root, so the tests import the installed package.
step pytest "$py" -m pytest "$root/tests" -x -q -p no:cacheprovider -rs

sanitizer=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -n 1)
if [ -n "$sanitizer" ]; then
  # PyTorch's caching allocator hides out-of-bounds accesses inside its blocks from memcheck.
  export PYTORCH_NO_CUDA_MEMORY_CACHING=1
  step memcheck "$sanitizer" --tool memcheck --error-exitcode 1 "$py" benchmarks/sanitize_cuda.py
  step racecheck "$sanitizer" --tool racecheck --error-exitcode 1 "$py" benchmarks/sanitize_cuda.py
  unset PYTORCH_NO_CUDA_MEMORY_CACHING
else
  echo "compute-sanitizer not found; skipped" | tee -a "$out/summary.txt"
fi

if [ -f benchmarks/run.py ]; then
  step bench "$py" benchmarks/run.py --device cuda --out "$out/bench"
fi
exit $status

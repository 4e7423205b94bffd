#!/usr/bin/env bash
# Creates (or reuses) a virtual environment with torch and the test/benchmark dependencies, then
# builds and installs fused_ce into it. Usage: scripts/setup_env.sh cuda|cpu [PACKAGE...]: the packages are
# installed beside torch (the test or benchmark dependencies). Prints the venv path last.
#   cuda: torch 2.14.1 (CUDA 13.0 build). Compiles the CUDA kernels too, also on a machine without a GPU.
#   cpu:  torch 2.13.0 (CPU-only wheel, small and fast to install); builds the CPU kernels only.
# Environment: FUSED_CE_VENV (venv path), CUDA_HOME, TORCH_CUDA_ARCH_LIST (default 9.0), MAX_JOBS,
# FUSED_CE_EMULATED_CUDA (1: also build the emulated CUDA extension; see setup.py).
set -euo pipefail
flavor=${1:?usage: setup_env.sh cuda|cpu [PACKAGE...]}
shift
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${FUSED_CE_VENV:-$root/.venv-$flavor}
py=${PYTHON:-python3}

case $flavor in
  cuda) torch_pin="torch==2.14.1" ;;
  cpu) torch_pin="torch==2.13.0" ;;
  *) echo "setup_env.sh: unknown flavor '$flavor' (cuda|cpu)" >&2; exit 2 ;;
esac

if [ ! -x "$venv/bin/python" ]; then
  "$py" -m venv "$venv" >&2
fi
"$venv/bin/python" -m pip install -q --disable-pip-version-check \
  "$torch_pin" numpy ninja setuptools wheel "$@" >&2

export MAX_JOBS=${MAX_JOBS:-$(nproc)}
if [ "$flavor" = cuda ]; then
  if [ -z "${CUDA_HOME:-}" ]; then
    # The nvcc on PATH may be a wrapper script; torch would guess the toolkit folder wrong from it.
    nvcc_path=$(command -v nvcc || true)
    if [ -z "$nvcc_path" ]; then
      echo "setup_env.sh: no nvcc on PATH; set CUDA_HOME or use 'cpu'" >&2; exit 1
    fi
    real=$(sed -n 's/^exec \([^ ]*\/bin\/nvcc\).*/\1/p' "$nvcc_path" | head -n 1)
    export CUDA_HOME=$(dirname "$(dirname "${real:-$(readlink -f "$nvcc_path")}")")
  fi
  export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
  export USE_CUDA=1
  echo "setup_env.sh: CUDA_HOME=$CUDA_HOME TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST MAX_JOBS=$MAX_JOBS" >&2
else
  export USE_CUDA=0
fi

export FUSED_CE_BUILD_BASE=build/$flavor
(cd "$root" && "$venv/bin/python" -m pip install -q --disable-pip-version-check --no-build-isolation .) >&2
echo "$venv"

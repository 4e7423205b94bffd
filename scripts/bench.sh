#!/usr/bin/env bash
# The main job: builds fused_ce and runs the benchmark against PyTorch eager, torch.compile and (on GPU)
# Liger-Kernel. With a visible NVIDIA GPU it uses the CUDA build; otherwise the fast CPU-only build.
# Results go to bench_out/ (table, CSV, plots); extra arguments go to benchmarks/run.py.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  flavor=cuda
else
  flavor=cpu
fi
venv=$("$root/scripts/setup_env.sh" "$flavor" matplotlib tqdm)
cd "$root"
exec "$venv/bin/python" benchmarks/run.py --out "${BENCH_OUT:-bench_out}" "$@"

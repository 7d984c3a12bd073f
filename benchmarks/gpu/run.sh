#!/usr/bin/env bash
# On a machine with a CUDA GPU and PyTorch built with CUDA: configure with CUDA, build, run the
# tests (the [gpu] ones included) and every benchmark, and print a short table last. Needs the
# folder .deps made by benchmarks/gpu/prepare_deps.sh. Results go to $OUT (the device tool's
# output folder) or build/gpu/results.
set -uo pipefail
cd "$(dirname "$0")/../.."
out=${OUT:-build/gpu/results}
mkdir -p "$out"
jobs=$(nproc)
status=0

step() { echo; echo "=== $* ==="; }

step "configure and build"
# pybind11 from pip keeps its CMake package inside the Python package.
pybind11_dir=$(python3 -m pybind11 --cmakedir 2>/dev/null || true)
cmake -S . -B build/gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DAPO_ENABLE_CUDA=ON \
  -DCMAKE_PREFIX_PATH="$PWD/.deps/root/usr" -DPython_EXECUTABLE="$(command -v python3)" \
  ${pybind11_dir:+-Dpybind11_DIR="$pybind11_dir"} \
  >"$out/configure.log" 2>&1 || { tail -40 "$out/configure.log"; exit 1; }
cmake --build build/gpu -j "$jobs" >"$out/build.log" 2>&1 || { grep -E "error" "$out/build.log" | head -40; exit 1; }

step "GPU tests"
for binary in build/gpu/bin/apo_*_tests; do
  if "$binary" --list-test-names-only "[gpu]" | grep -q .; then
    "$binary" "[gpu]" --reporter compact 2>&1 | tee -a "$out/gpu_tests.log" || status=1
  fi
done

step "all other tests"
# CI runs the Python and fuzz tests (they need PyPI packages and clang, absent here).
ctest --test-dir build/gpu -j "$jobs" --output-on-failure --label-exclude "python|fuzz" \
  >"$out/ctest.log" 2>&1 || status=1
tail -5 "$out/ctest.log"

step "benchmarks"
for binary in build/gpu/bin/bench_*; do
  [ -x "$binary" ] || continue
  name=$(basename "$binary")
  "$binary" --json "$out/$name.json" >"$out/$name.log" 2>&1 || { status=1; tail -20 "$out/$name.log"; }
done

# The Python loaders' benchmark needs the safetensors package; without it, say so and go on.
if python3 -c "import safetensors" 2>/dev/null; then
  PYTHONPATH=build/gpu/python python3 benchmarks/bench_models.py --json "$out/bench_models_python.json" \
    >"$out/bench_models_python.log" 2>&1 || { status=1; tail -20 "$out/bench_models_python.log"; }
else
  echo "bench_models.py: skipped (no safetensors package)"
fi

step "summary"
build/gpu/bin/apo probe --kernel-check | tee "$out/probe.txt"
python3 benchmarks/report.py "$out"/bench_*.json 2>/dev/null || echo "(no benchmark results)"
exit $status

#!/usr/bin/env bash
# On a machine with a CUDA GPU and PyTorch built with CUDA (an H100 or H200 with 16 cores: the
# device tool's machine), in one call of under 10 minutes:
#   1. configure with CUDA for this GPU only and build what the checks need (no Python module,
#      no examples, no CPU benchmarks);
#   2. run every [gpu] test (ctest -L gpu); one reported skipped means the GPU was not usable;
#   3. run bench_gpu: the quantization kernels against the device's copy bandwidth and the torch
#      chain, fp8 qlinear through _scaled_mm against a bf16 matmul, the device pool against
#      torch's caching allocator, weight streaming against resident weights and on-demand copies;
#   4. with the time left, the CPU tests of the same build (core, quant, memory, models), which
#      also check the AVX-512 quantization kernels where this CPU has AVX-512;
#   5. print a short table last.
# Every step has a time limit from one budget (APO_GPU_BUDGET_S, default 540 s), so the table
# comes even when a step hangs. Needs the folder .deps made by benchmarks/gpu/prepare_deps.sh
# (carry it). Results go to $OUT (the device tool's output folder) or build/gpu/results.
set -uo pipefail
cd "$(dirname "$0")/../.."
out=${OUT:-build/gpu/results}
mkdir -p "$out"
start=$(date +%s)
budget=${APO_GPU_BUDGET_S:-540}
status=0

elapsed() { echo $(($(date +%s) - start)); }
# Seconds left for a step, keeping `reserve` for the steps after it (at least 10).
limit() {
  local left=$((budget - $(elapsed) - ${1:-0}))
  echo $((left < 10 ? 10 : left))
}
step() { echo; echo "=== $* (at $(elapsed) s) ==="; }

if [ ! -d .deps/root/usr ]; then
  echo "run.sh: .deps/root is missing: run benchmarks/gpu/prepare_deps.sh where Debian's mirrors" \
    "are reachable, and carry .deps to this machine"
  exit 1
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true

step "configure"
python=$(command -v python3)
cmake -S . -B build/gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DAPO_ENABLE_CUDA=ON \
  -DCMAKE_CUDA_ARCHITECTURES=native -DAPO_BUILD_PYTHON=OFF -DAPO_BUILD_EXAMPLES=OFF \
  -DCMAKE_PREFIX_PATH="$PWD/.deps/root/usr" -DPython_EXECUTABLE="$python" \
  >"$out/configure.log" 2>&1 || { tail -40 "$out/configure.log"; exit 1; }

step "build"
targets=(apo apo_cli apo_core_tests apo_quant_tests apo_memory_tests apo_models_tests bench_gpu)
timeout "$(limit 150)" cmake --build build/gpu -j "$(nproc)" --target "${targets[@]}" \
  >"$out/build.log" 2>&1 || {
  grep -E "error|FAILED" "$out/build.log" | head -40
  tail -5 "$out/build.log"
  exit 1
}

step "GPU tests"
timeout "$(limit 90)" ctest --test-dir build/gpu -L gpu -j 4 --timeout 240 --output-on-failure \
  >"$out/gpu_tests.log" 2>&1 || status=1
grep -E "^[0-9]+% tests passed|\*\*\*|Failed|Skipped" "$out/gpu_tests.log" | tail -40
if grep -q "Skipped" "$out/gpu_tests.log"; then
  echo "run.sh: [gpu] tests were skipped: the GPU or torch's CUDA was not usable"
  status=1
fi

step "bench_gpu"
timeout "$(limit 45)" build/gpu/bin/bench_gpu --json "$out/bench_gpu.json" \
  >"$out/bench_gpu.log" 2>&1 || { status=1; tail -20 "$out/bench_gpu.log"; }

step "CPU tests of the CUDA build"
timeout "$(limit 15)" ctest --test-dir build/gpu -L "^(core|quant|memory|models)$" -j 8 \
  --timeout 300 >"$out/cpu_tests.log" 2>&1 || status=1
grep -E "^[0-9]+% tests passed|\(Failed\)|\(Timeout\)|\(Subprocess" "$out/cpu_tests.log" | tail -20

# The Python loaders' benchmark needs the safetensors package; without it, say so and go on.
if python3 -c "import safetensors" 2>/dev/null; then
  PYTHONPATH=build/gpu/python python3 benchmarks/bench_models.py --json "$out/bench_models_python.json" \
    >"$out/bench_models_python.log" 2>&1 || { status=1; tail -20 "$out/bench_models_python.log"; }
else
  echo "bench_models.py: skipped (no safetensors package)"
fi

step "summary"
build/gpu/bin/apo probe --kernel-check | tee "$out/probe.txt"
grep -hE "^[0-9]+% tests passed" "$out/gpu_tests.log" "$out/cpu_tests.log" 2>/dev/null
python3 benchmarks/report.py "$out/bench_gpu.json" 2>/dev/null || echo "(no benchmark results)"
echo "run.sh: done in $(elapsed) s, status $status"
exit $status

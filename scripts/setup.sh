#!/usr/bin/env bash
# Installs what a fresh Debian machine lacks (Debian packages with apt-get, Python packages with
# pip), then configures and builds each CMake preset named on the command line.
#
#   scripts/setup.sh release [asan tsan ...]
#
# PyTorch: an installed torch is used as it is (a ComfyUI environment has one); otherwise the
# pinned torch==2.13.0 is installed, so pip never pulls a several-GB CUDA build by accident.
# PYTHON picks the interpreter (default: python3); use a virtual environment's python where the
# system Python is externally managed.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
PYTHON=$(command -v "$PYTHON")

sudo_if_needed() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

# libjemalloc-dev and pkg-config: jemalloc is a baseline of bench_memory (optional to the build).
# abigail-tools: the C ABI's check against its committed baseline (capi/abi/check.sh).
packages=(cmake ninja-build g++ libfmt-dev nlohmann-json3-dev catch2 libcli11-dev pybind11-dev
  libzstd-dev liblzma-dev libpng-dev libgif-dev libcpp-httplib-dev clang libclang-rt-14-dev
  libjemalloc-dev pkg-config abigail-tools)
python_include=$("$PYTHON" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
[ -f "$python_include/Python.h" ] || packages+=(python3-dev)
missing=()
for package in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" ||
    missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${missing[*]}"
  sudo_if_needed apt-get update -qq
  sudo_if_needed env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
fi

if ! "$PYTHON" -c 'import torch' 2>/dev/null; then
  echo "setup: installing torch==2.13.0 for $PYTHON"
  "$PYTHON" -m pip install -q torch==2.13.0
fi
# pytest runs the Python tests; safetensors (no torch dependency) is the interop reference;
# prometheus_client parses the metrics apo exports; matplotlib draws `python -m apo.report`.
for module in pytest safetensors prometheus_client matplotlib; do
  "$PYTHON" -c "import $module" 2>/dev/null || "$PYTHON" -m pip install -q "$module"
done

for preset in "$@"; do
  cmake --preset "$preset" -DPython_EXECUTABLE="$PYTHON" >/dev/null
  cmake --build --preset "$preset"
done

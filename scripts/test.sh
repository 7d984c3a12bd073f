#!/usr/bin/env bash
# Every test: installs what is missing, builds the release, asan and tsan presets, then runs the
# release build's tests (C++, the C ABI, Python, an out-of-tree consumer of the installed
# package) and the C++ and C tests again under the address/UB and thread sanitizers.
set -euo pipefail
cd "$(dirname "$0")/.."
jobs=$(nproc)
scripts/setup.sh release asan tsan
ctest --preset release -j "$jobs"
# The sanitizer builds have no Python module; the consumer test is the release build's.
ctest --preset asan -j "$jobs" --label-exclude consumer
ctest --preset tsan -j "$jobs" --label-exclude consumer
echo "test.sh: all tests passed"

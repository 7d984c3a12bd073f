#!/usr/bin/env bash
# Every test: installs what is missing, builds the release, asan and tsan presets, then runs the
# release build's tests (C++, the C ABI, Python, an out-of-tree consumer of the installed
# package, a short libFuzzer run), then the C++ and C tests again under the address/UB and
# thread sanitizers.
set -euo pipefail
cd "$(dirname "$0")/.."
jobs=$(nproc)
scripts/setup.sh release asan tsan
ctest --preset release -j "$jobs"
# The sanitizer builds have no Python module; the consumer and fuzz tests are the release
# build's (the fuzzer carries its own sanitizers).
ctest --preset asan -j "$jobs" --label-exclude "consumer|fuzz"
ctest --preset tsan -j "$jobs" --label-exclude "consumer|fuzz"
echo "test.sh: all tests passed"

#!/usr/bin/env bash
# Runs every benchmark of a build (default: build/release) and the Python benchmark, writes
# their JSON reports to OUT (default: <build>/results) and prints them as one table.
#
#   benchmarks/run.sh [BUILD_DIR] [--quick]
set -uo pipefail
cd "$(dirname "$0")/.."
build=build/release
quick=()
for arg in "$@"; do
  case "$arg" in
    --quick) quick=(--quick) ;;
    *) build=$arg ;;
  esac
done
out=${OUT:-$build/results}
mkdir -p "$out"
# libgomp's spinning workers stall a loaded machine; passive waits measure the work.
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive}
status=0
for binary in "$build"/bin/bench_*; do
  [ -x "$binary" ] || continue
  name=$(basename "$binary")
  echo "=== $name"
  "$binary" "${quick[@]}" --json "$out/$name.json" >"$out/$name.log" 2>&1 ||
    { status=1; tail -20 "$out/$name.log"; }
done
echo "=== bench_models.py"
PYTHONPATH="$build/python${PYTHONPATH:+:$PYTHONPATH}" "${PYTHON:-python3}" \
  benchmarks/bench_models.py "${quick[@]}" --json "$out/bench_models_python.json" \
  >"$out/bench_models_python.log" 2>&1 || { status=1; tail -20 "$out/bench_models_python.log"; }
"${PYTHON:-python3}" benchmarks/report.py "$out"/bench_*.json
exit $status

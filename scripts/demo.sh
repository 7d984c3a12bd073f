#!/usr/bin/env bash
# The main job: installs what is missing, builds the release preset, then runs the guide's eight
# workflows on the reference models through the engine (`apo demo`), writing their pictures and a
# report to apo-demo/ (or the folder given as the first argument).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh release
build/release/bin/apo demo --out "${1:-apo-demo}"

#!/usr/bin/env bash
# The main job: installs what is missing, builds the release preset, and shows what apo sees on
# this machine and the configuration it recommends.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh release
build/release/bin/apo probe
build/release/bin/apo recommend

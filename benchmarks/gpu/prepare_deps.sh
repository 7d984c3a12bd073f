#!/usr/bin/env bash
# Prepares, on a machine that reaches Debian's mirrors, the header-only dependencies that the GPU
# machine lacks (fmt, nlohmann-json, Catch2, CLI11, zstd, xz, libpng and giflib), as Debian packages extracted into the
# ignored folder .deps/root. benchmarks/gpu/run.sh puts .deps/root/usr on CMAKE_PREFIX_PATH.
set -euo pipefail
cd "$(dirname "$0")/../.."
rm -rf .deps
mkdir -p .deps/debs .deps/root
(cd .deps/debs && apt-get download libfmt-dev libfmt9 nlohmann-json3-dev catch2 libcli11-dev \
  libzstd-dev libzstd1 liblzma-dev liblzma5 libpng-dev libpng16-16 libgif-dev libgif7 \
  libcpp-httplib-dev libcpp-httplib0.11)
for deb in .deps/debs/*.deb; do
  dpkg -x "$deb" .deps/root
done
rm -rf .deps/debs
echo "prepare_deps: extracted into .deps/root ($(du -sh .deps/root | cut -f1))"

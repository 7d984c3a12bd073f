#!/bin/sh
# Checks apo's C ABI against the committed baseline (capi/abi/apo.abi), or rewrites it.
#
#   capi/abi/check.sh LIBAPO_SO            compare; exit 1 on an incompatible change
#   capi/abi/check.sh --update LIBAPO_SO   rewrite the baseline (after a deliberate, compatible
#                                          change: added functions, enum values, struct fields
#                                          appended at the end)
#
# Exit 77 (ctest: skipped) when libabigail's abidw/abidiff are not installed.
#
# How: a release build of libapo has no debug information, so the types of the C ABI are read
# from its header instead: a probe library (built here, with -g) holds, for every function the
# header declares, a variable of that function's exact type. abidiff compares the probe's types
# (function signatures, structs, enums) with the baseline's, under suppressions.ini: adding a
# function or an enum value passes; any other change fails, appended struct fields included
# (compatible by apo's rules, accepted with --update after review). Beside
# that, every function the header declares must be exported by LIBAPO_SO itself.
set -eu

update=0
if [ "${1:-}" = "--update" ]; then
  update=1
  shift
fi
if [ $# -ne 1 ]; then
  echo "usage: $0 [--update] LIBAPO_SO" >&2
  exit 2
fi
library=$1
here=$(cd "$(dirname "$0")" && pwd)
header_dir="$here/../include"
header="$header_dir/apo/apo.h"
baseline="$here/apo.abi"
suppressions="$here/suppressions.ini"

for tool in abidw abidiff; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "SKIPPED: $tool (libabigail, package abigail-tools) is not installed"
    exit 77
  fi
done
cc=${CC:-cc}
if [ ! -f "$library" ]; then
  echo "no library at $library" >&2
  exit 2
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# The functions the header declares: every "APO_API ... apo_name(".
sed -n 's/^APO_API[^(]*[ *]\(apo_[a-z0-9_]*\)(.*/\1/p' "$header" | sort -u >"$work/functions"
if [ ! -s "$work/functions" ]; then
  echo "found no APO_API functions in $header" >&2
  exit 2
fi

# Every declared function is exported by the library.
nm -D --defined-only "$library" | awk '$2 == "T" { print $3 }' | sed 's/@.*//' | sort -u \
  >"$work/exported"
missing=$(comm -23 "$work/functions" "$work/exported")
if [ -n "$missing" ]; then
  echo "FAILED: $library does not export functions its header declares:" >&2
  echo "$missing" >&2
  exit 1
fi

# The probe: one variable per function, of the function's own (pointer) type.
{
  echo '#include "apo/apo.h"'
  while read -r name; do
    echo "__attribute__((visibility(\"default\"))) __typeof__(&$name) const apo_abi_probe_$name = &$name;"
  done <"$work/functions"
} >"$work/probe.c"
"$cc" -std=gnu99 -g -O0 -fPIC -shared -fno-eliminate-unused-debug-types -I"$header_dir" \
  "$work/probe.c" -o "$work/libapo_abi_probe.so"
abidw --no-corpus-path --no-show-locs --suppressions "$suppressions" \
  --out-file "$work/current.abi" "$work/libapo_abi_probe.so"

if [ "$update" -eq 1 ]; then
  cp "$work/current.abi" "$baseline"
  echo "wrote $baseline ($(wc -l <"$work/functions") functions)"
  exit 0
fi
if [ ! -f "$baseline" ]; then
  echo "no baseline at $baseline (make one with --update)" >&2
  exit 2
fi

# abidiff's exit status is a bit set: 1 error, 2 usage, 4 a change, 8 an incompatible change.
status=0
abidiff --no-added-syms --suppressions "$suppressions" "$baseline" "$work/current.abi" \
  >"$work/report" 2>&1 || status=$?
if [ $((status & 3)) -ne 0 ]; then
  cat "$work/report" >&2
  echo "FAILED: abidiff could not compare (status $status)" >&2
  exit 1
fi
if [ $((status & 12)) -ne 0 ]; then
  cat "$work/report"
  echo "FAILED: the C ABI changed against $baseline (abidiff status $status)"
  echo "Incompatible unless it only appends fields to structs; after review, accept such a"
  echo "change with: $0 --update $library"
  exit 1
fi
echo "the C ABI matches the baseline ($(wc -l <"$work/functions") functions)"

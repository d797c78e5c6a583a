#!/bin/bash
# Builds the store's libFuzzer target with clang (address + undefined sanitizers) and
# runs it for a bounded time on the index/partition parsers, the decompressors and a
# whole Reader. Not part of CI. Needs: clang, libclang-rt-14-dev (Debian).
# usage: bench/store/fuzz.sh [SECONDS=60] [WORKDIR=/tmp/hpdl_store_fuzz]
set -euo pipefail
SECS=${1:-60}
WORK=${2:-/tmp/hpdl_store_fuzz}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
CXX=${CXX:-clang++}
command -v "$CXX" > /dev/null || { echo "fuzz.sh: $CXX not found; apt-get install clang libclang-rt-14-dev" >&2; exit 1; }
mkdir -p "$WORK/corpus" "$WORK/artifacts"
"$CXX" -std=c++20 -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined -I"$ROOT" \
  "$ROOT/bench/store/fuzz_store.cpp" "$ROOT/hpdl/store/format.cpp" "$ROOT/hpdl/store/reader.cpp" \
  "$ROOT/hpdl/store/writer.cpp" "$ROOT/hpdl/core/error.cpp" \
  -lfmt -llz4 -lzstd -lxxhash -lz -o "$WORK/hpdl_store_fuzz"
HPDL_FUZZ_WRITE_SEEDS="$WORK/seeds" "$WORK/hpdl_store_fuzz" -runs=0 -artifact_prefix="$WORK/artifacts/" "$WORK/seeds" > /dev/null 2>&1 || true
"$WORK/hpdl_store_fuzz" -max_total_time="$SECS" -max_len=65536 -rss_limit_mb=2048 -print_final_stats=1 \
  -artifact_prefix="$WORK/artifacts/" "$WORK/corpus" "$WORK/seeds"
echo "fuzz.sh: no crash in ${SECS}s; corpus in $WORK/corpus"

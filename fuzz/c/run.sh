#!/usr/bin/env bash
# Fuzzes libjpeg-turbo's C decoder under AddressSanitizer, with libFuzzer's coverage of the C
# code (clang's -fsanitize=address,fuzzer-no-link; the Rust side is built with cargo fuzz's
# -s address). Usage: fuzz/c/run.sh [SECONDS]. Needs cargo-fuzz and clang (any of clang-19 ..
# clang-22, or `clang`; CC= overrides). New inputs go to fuzz/c/corpus/, crashes to
# fuzz/c/artifacts/, the log to fuzz/c/logs/jpeg_turbo.log; the JPEG seeds of the image_decode
# target are read, never written.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cd "$here"
secs="${1:-300}"
cc="${CC:-$(command -v clang clang-22 clang-21 clang-20 clang-19 | head -n1)}"
[ -n "$cc" ] || { echo "no clang found: install clang (e.g. apt-get install clang-19)" >&2; exit 2; }
export CC="$cc"
# Every C file of the library: ASan and libFuzzer's coverage counters (not its main).
export CFLAGS="-fsanitize=address,fuzzer-no-link -g -O1"
export LIBJPEG_TURBO_SIMD=off
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$here/target}"
mkdir -p corpus artifacts logs
RUSTC_BOOTSTRAP=1 cargo fuzz build --fuzz-dir "$here" -s address jpeg_turbo
RUSTC_BOOTSTRAP=1 cargo fuzz run --fuzz-dir "$here" -s address jpeg_turbo corpus ../seeds/image_decode -- \
    -max_total_time="$secs" -rss_limit_mb=2048 -malloc_limit_mb=2048 -timeout=10 \
    -max_len=1048576 -print_final_stats=1 -artifact_prefix=artifacts/jpeg_turbo/ \
    > logs/jpeg_turbo.log 2>&1 || true
execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' logs/jpeg_turbo.log | grep -o '[0-9]*$' || true)
cov=$(grep -o 'cov: [0-9]*' logs/jpeg_turbo.log | tail -n1 || true)
echo "jpeg_turbo execs=${execs:-?} ${cov:-cov: ?} crashes=$(find artifacts -type f | wc -l)"

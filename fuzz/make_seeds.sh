#!/usr/bin/env bash
# Writes the committed seed corpus, fuzz/seeds/<target>/ (at most 20 files of at most 16 KB per
# target), from the test fixtures and the library's own writers, so valid seeds stay in the
# current file formats. `cargo test` replays every seed (tests/fuzz_regressions.rs); rerun this
# after a format change and commit the result. Run from anywhere:
#   fuzz/make_seeds.sh
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --test tests write_fuzz_seeds -- --ignored --exact fuzz_regressions::write_fuzz_seeds
for d in fuzz/seeds/*/; do
    echo "$(basename "$d"): $(ls "$d" | wc -l) seeds, $(du -sk "$d" | cut -f1) KB"
done

#!/bin/sh
# CLIP-Adapter training on synthetic cached features, ours vs PyTorch, same sizes and epochs.
# Usage: [ROUNDS=N] bench/adapter_train.sh [PYTHON]   (default: $PYTHON, else venv/bin/python, the
# venv of scripts/fixtures/requirements.txt, as bench/run.sh). Each case runs ours and PyTorch
# alternately ROUNDS times (default 1); compare the best of each side.
set -e
PY=${1:-${PYTHON:-venv/bin/python}}
ROUNDS=${ROUNDS:-1}
cd "$(dirname "$0")/.."
. bench/simd.sh
cargo bench $CARGO_FEATURES --bench adapter_train --no-run -q
for size in "16000 1024 1000" "160 1024 10"; do
  for batch in 32 256; do
    epochs=2; case "$size" in "160 "*) epochs=50;; esac
    round=1
    while [ "$round" -le "$ROUNDS" ]; do
      echo "# round $round, load average $(cut -d' ' -f1-3 /proc/loadavg)"
      cargo bench $CARGO_FEATURES --bench adapter_train -- $size $epochs $batch 2>/dev/null
      "$PY" bench/adapter_train.py $size $epochs $batch
      round=$((round + 1))
    done
  done
done
# GRID=0 skips the whole grid (minutes).
[ "${GRID:-1}" = 0 ] || cargo bench $CARGO_FEATURES --bench adapter_train -- grid 2>/dev/null | tail -1

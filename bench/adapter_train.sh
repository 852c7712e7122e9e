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
# Built once; each round runs the binary itself, as PyTorch's side runs its script: cargo's
# freshness checks just before a run that lasts a fraction of a second slowed it by 10-20 %.
# The bench's own artifact: a build that also links the command-line binary lists it too.
BIN=$(cargo bench $CARGO_FEATURES --bench adapter_train --no-run --message-format=json 2>/dev/null |
  grep '"name":"adapter_train"' | sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | tail -1)
[ -x "$BIN" ] || { echo "adapter_train.sh: the benchmark did not build" >&2; exit 1; }
for size in "16000 1024 1000" "160 1024 10"; do
  for batch in 32 256; do
    # The EuroSAT size trains 200 epochs, as CLIP-Adapter does at 16 shots.
    epochs=2; case "$size" in "160 "*) epochs=200;; esac
    round=1
    while [ "$round" -le "$ROUNDS" ]; do
      echo "# round $round, load average $(cut -d' ' -f1-3 /proc/loadavg)"
      "$BIN" $size $epochs $batch 2>/dev/null
      "$PY" bench/adapter_train.py $size $epochs $batch
      round=$((round + 1))
    done
  done
done
# GRID=0 skips the whole grid (minutes).
[ "${GRID:-1}" = 0 ] || "$BIN" grid 2>/dev/null | tail -1

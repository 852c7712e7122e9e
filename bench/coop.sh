#!/bin/sh
# CoOp training step, ours vs PyTorch, on full-size random ViT-B/32 and RN50 text towers,
# 10 and 100 classes, batch 32, 16 context vectors; the two sides alternate ROUNDS times.
# Usage: THREADS=2 ROUNDS=2 bench/coop.sh    (PYTHON=path/to/python, default python3)
# PRECISION=bf16 runs both text towers' products in bfloat16: ours as `fit` does on features
# extracted with --precision bf16, PyTorch's under torch.autocast("cpu", bfloat16).
set -e
PY=${PYTHON:-python3}
THREADS=${THREADS:-2}
ROUNDS=${ROUNDS:-2}
cd "$(dirname "$0")/.."
. bench/simd.sh
OUT=bench/out/coop
[ -f "$OUT/rn50/open_clip_model.safetensors" ] || "$PY" bench/coop.py weights "$OUT"
cargo build --release $CARGO_FEATURES --bench coop 2>/dev/null
lscpu | grep -E "Model name|^CPU\(s\)"
for round in $(seq "$ROUNDS"); do
  for model in vit-b-32 rn50; do
    for k in 10 100; do
      steps=5; [ "$k" = 100 ] && steps=2
      echo "# round $round, load: $(cut -d' ' -f1-3 /proc/loadavg)"
      RAYON_NUM_THREADS=$THREADS cargo bench $CARGO_FEATURES --bench coop -- "$OUT/$model" "$k" "$steps" 2>/dev/null
      "$PY" bench/coop.py time "$OUT/$model" "$k" "$THREADS" "$steps"
    done
  done
done

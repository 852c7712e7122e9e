#!/bin/sh
# CLIP-LoRA training step, ours vs PyTorch, on full-size random ViT-B/32 and ViT-B/16 models
# (both towers adapted, batch 32, 10 class prompts); the two sides alternate ROUNDS times.
# Usage: THREADS=2 ROUNDS=2 bench/clip_lora.sh    (PYTHON=path/to/python, default python3)
# PRECISION=bf16 runs both sides' frozen products in bfloat16: ours as `fit` does on features
# extracted with --precision bf16, PyTorch's encoders under torch.autocast("cpu", bfloat16).
set -e
PY=${PYTHON:-python3}
THREADS=${THREADS:-2}
ROUNDS=${ROUNDS:-2}
STEPS=${STEPS:-2}
cd "$(dirname "$0")/.."
OUT=bench/out/clip_lora
[ -f "$OUT/vit-b-16/open_clip_model.safetensors" ] || "$PY" bench/clip_lora.py weights "$OUT"
cargo build --release --bench clip_lora 2>/dev/null
lscpu | grep -E "Model name|^CPU\(s\)|^Flags" | sed 's/\(Flags:\).*\(avx512f\).*/\1 ... \2 .../'
for round in $(seq "$ROUNDS"); do
  for model in vit-b-32 vit-b-16; do
    echo "# round $round, load: $(cut -d' ' -f1-3 /proc/loadavg)"
    RAYON_NUM_THREADS=$THREADS cargo bench --bench clip_lora -- "$OUT/$model" 10 "$STEPS" 2>/dev/null
    OMP_NUM_THREADS=$THREADS "$PY" bench/clip_lora.py time "$OUT/$model" 10 "$THREADS" "$STEPS"
  done
done

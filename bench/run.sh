#!/usr/bin/env bash
# Side-by-side encoder benchmark: ours vs PyTorch transformers, same random full-size ViT-B/32
# weights, same inputs, same thread count, one after the other on the same machine.
#
#   bench/run.sh [THREADS]        (default 2; needs the venv of scripts/fixtures/requirements.txt)
#
# Writes bench/out/encoders.md. Set PYTHON to the venv's python (default: venv/bin/python).
set -euo pipefail
cd "$(dirname "$0")/.."
THREADS=${1:-2}
PYTHON=${PYTHON:-venv/bin/python}
MODEL=bench/out/vit-b-32
mkdir -p bench/out
[ -f "$MODEL/model.safetensors" ] || "$PYTHON" bench/make_weights.py "$MODEL"
cargo bench --bench encoders --no-run -q
ours=$(RAYON_NUM_THREADS=$THREADS cargo bench -q --bench encoders -- "$MODEL" "$THREADS")
theirs=$(OMP_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS "$PYTHON" bench/torch_encoders.py "$MODEL" "$THREADS")
"$PYTHON" - "$ours" "$theirs" <<'PY' | tee bench/out/encoders.md
import json, sys
ours, theirs = json.loads(sys.argv[1]), json.loads(sys.argv[2])
print(f"ViT-B/32, random weights, f32, {ours['threads']} threads")
print(f"| case | {ours['impl']} (/s) | {theirs['impl']} (/s) | ratio |")
print("|---|---|---|---|")
for case, v in ours["per_s"].items():
    t = theirs["per_s"][case]
    print(f"| {case} | {v:.2f} | {t:.2f} | {v / t:.2f} |")
print(f"| peak RSS (MiB) | {ours['peak_rss_mib']:.0f} | {theirs['peak_rss_mib']:.0f} | |")
PY

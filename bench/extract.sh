#!/usr/bin/env bash
# End-to-end extraction benchmark (decode + preprocess + encode, images/s), ours vs PyTorch
# (PIL + torchvision transforms + transformers' CLIPModel, DataLoader with WORKERS workers),
# same random ViT-B/32 weights (bench/out/vit-b-32, from bench/make_weights.py), same JPEGs,
# same thread count, one after the other: the images' pipeline (ours: the test set's own
# seconds from `extract --json`; PyTorch: its DataLoader loop), the whole processes, and our
# whole process against their loop alone (the comparison of earlier versions of this script).
#
#   bench/extract.sh [THREADS] [WORKERS] [N_IMAGES]    (default: 2 2 256; PYTHON=venv python)
#
# PRECISION=bf16 runs ours with --precision bf16 and PyTorch under its bfloat16 autocast.
set -euo pipefail
cd "$(dirname "$0")/.."
THREADS=${1:-2}
WORKERS=${2:-2}
N=${3:-256}
PYTHON=${PYTHON:-venv/bin/python}
MODEL=bench/out/vit-b-32
IMAGES=bench/out/jpegs-$N
[ -f "$MODEL/model.safetensors" ] || "$PYTHON" bench/make_weights.py vit-b-32 "$MODEL"
[ -d "$IMAGES" ] || "$PYTHON" bench/make_jpegs.py "$IMAGES" "$N"
cargo build --release -q --bin clip-adapter
CACHE=$(mktemp -d)
trap 'rm -rf "$CACHE"' EXIT
# All images are the "test" part of a given split: one feature set, no few-shot draw.
"$PYTHON" - "$IMAGES" > "$CACHE/split.json" <<'PY'
import json, os, sys
root = sys.argv[1]
rows = [[os.path.join(c, f), int(c.split("_")[1]), c] for c in sorted(os.listdir(root))
        for f in sorted(os.listdir(os.path.join(root, c)))]
rows.sort(key=lambda r: r[1])
print(json.dumps({"train": rows[:1], "val": [], "test": rows}))
PY
start=$(date +%s.%N)
RAYON_NUM_THREADS=$THREADS target/release/clip-adapter --quiet --threads "$THREADS" extract \
  --model "$MODEL" --split "$CACHE/split.json" --root "$IMAGES" --cache "$CACHE/c" --batch-size 32 \
  --precision "${PRECISION:-f32}" --json > "$CACHE/ours.json"
end=$(date +%s.%N)
ours=$("$PYTHON" -c "print($N / ($end - $start))")
start=$(date +%s.%N)
theirs=$(OMP_NUM_THREADS=$THREADS PRECISION=${PRECISION:-f32} "$PYTHON" bench/torch_extract.py "$MODEL" "$IMAGES" "$THREADS" "$WORKERS" 32)
end=$(date +%s.%N)
theirs_whole=$("$PYTHON" -c "print($N / ($end - $start))")
"$PYTHON" - "$ours" "$theirs" "$THREADS" "$WORKERS" "$N" "$CACHE/ours.json" "$theirs_whole" <<'PY'
import json, os, sys
ours, theirs = float(sys.argv[1]), json.loads(sys.argv[2])
test = next(s for s in json.load(open(sys.argv[6]))["sets"] if s["name"].startswith("test"))
pipeline = test["encoded"] / test["seconds"]
theirs_whole = float(sys.argv[7])
print(f"{sys.argv[5]} JPEGs, ViT-B/32 (random weights), {os.environ.get('PRECISION', 'f32')}, batch 32, {sys.argv[3]} threads, {sys.argv[4]} DataLoader workers")
print("| measured | clip-adapter extract (images/s) | " + theirs["impl"] + " (images/s) | ratio |")
print("|---|---:|---:|---:|")
print(f"| the images' pipeline: decode, resize, encode (ours also writes) | {pipeline:.2f} | {theirs['per_s']:.2f} | {pipeline / theirs['per_s']:.2f} |")
print(f"| the whole process (start, imports, model load, ours also hashing, prompts, writing) | {ours:.2f} | {theirs_whole:.2f} | {ours / theirs_whole:.2f} |")
print(f"| our whole process against their pipeline alone | {ours:.2f} | {theirs['per_s']:.2f} | {ours / theirs['per_s']:.2f} |")
PY

#!/usr/bin/env bash
# What `--precision bf16` costs in accuracy on a trained model: the embedded world model (a
# ModifiedResNet CLIP the tool pretrained; its convolutions and text tower both run bf16), the
# demo's generated tasks extracted once at f32 and once at bf16, then the same methods, shots
# and seeds on each cache. Prints one markdown table: each method's mean test accuracy per task
# at both precisions and the difference, and the largest per-row difference.
#
#   bench/bf16_accuracy.sh [OUT]    (default bench/out/bf16-accuracy; TASKS, METHODS, SHOTS,
#                                    SEEDS override the defaults below; OPTIONS adds method
#                                    options to `run`, e.g. "--lora-encoder text")
#
# CoOp and CLIP-LoRA train through the model's towers, at bf16 on the bf16 cache. On this model
# CoOp needs TASKS without new_colours (a class name too long for 16 context vectors in its
# 24-token context) and CLIP-LoRA `--lora-encoder text` (the image tower is a ResNet).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-bench/out/bf16-accuracy}
TASKS=${TASKS:-shapes,colours,textures,sketches,new_colours}
METHODS=${METHODS:-zero-shot,linear-probe,tip-adapter-f,clip-adapter}
SHOTS=${SHOTS:-1,4,16}
SEEDS=${SEEDS:-1,2,3}
MODEL=assets/tiny-world-clip
cargo build --release -q --bin clip-adapter
bin=target/release/clip-adapter
rm -rf "$OUT"
mkdir -p "$OUT"
# The demo writes the generated tasks (class folders and a split file each) under tasks/; one
# shot count and seed keep its own protocol short.
"$bin" --quiet demo --out "$OUT/demo" --tasks "$TASKS" --shots 1 --seeds 1 >/dev/null
for precision in f32 bf16; do
  for task in ${TASKS//,/ }; do
    root="$OUT/demo/tasks/$task"
    for shots in ${SHOTS//,/ }; do
      for seed in ${SEEDS//,/ }; do
        "$bin" --quiet extract --model "$MODEL" --name "$task" --root "$root" \
          --split "$root/split_zhou_$task.json" --shots "$shots" --seed "$seed" \
          --cache "$OUT/cache-$precision" --precision "$precision" >/dev/null
      done
    done
  done
  # shellcheck disable=SC2086 # OPTIONS is a list of arguments
  "$bin" --quiet run --methods "$METHODS" --datasets "$TASKS" --shots "$SHOTS" \
    --seeds "$SEEDS" --cache "$OUT/cache-$precision" --out "$OUT/results-$precision" \
    ${OPTIONS:-} >/dev/null
done
python3 - "$OUT/results-f32/results.csv" "$OUT/results-bf16/results.csv" <<'PY'
import csv, sys
from collections import defaultdict

def rows(path):
    with open(path) as f:
        return {(r["method"], r["dataset"], r["shots"], r["seed"]): float(r["test_accuracy"])
                for r in csv.DictReader(f)}

full, low = rows(sys.argv[1]), rows(sys.argv[2])
assert full.keys() == low.keys(), "the two grids ran different cells"
mean = defaultdict(lambda: [0.0, 0.0, 0])
for key in full:
    m = mean[key[:2]]
    m[0] += full[key]; m[1] += low[key]; m[2] += 1
print("| method | task | f32 (%) | bf16 (%) | bf16 − f32 |")
print("|---|---|---|---|---|")
for (method, task), (a, b, n) in sorted(mean.items()):
    print(f"| {method} | {task} | {a / n:.2f} | {b / n:.2f} | {(b - a) / n:+.2f} |")
worst = max(full, key=lambda k: abs(low[k] - full[k]))
print(f"\n{len(full)} rows (method × task × shots × seed); largest difference of one row: "
      f"{low[worst] - full[worst]:+.2f} points ({' '.join(worst)}); rows equal: "
      f"{sum(full[k] == low[k] for k in full)}")
PY

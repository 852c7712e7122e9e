#!/usr/bin/env bash
# Builds the seed corpora under fuzz/corpus/<target>/ from the repository's test fixtures (and a
# few small hand-written inputs below), so nothing large is committed. Run from anywhere:
#   fuzz/seed.sh
# Needs `unzip` only to pull `data.pkl` out of the PyTorch archives for the pickle target.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
fx="$here/../tests/fixtures"
c="$here/corpus"
mkdir -p "$c"/{image_decode,feature_file,pickle,torch_archive,hf_config,open_clip_config,split_file,manifest_csv,manifest_json,tokenizer,head}

cp "$fx"/images/good/* "$fx"/images/bad/* "$fx"/models/images/* "$c/image_decode/"

# Safetensors files of every kind the repository has: reference outputs, CoOp heads, a model.
for f in "$fx"/models/*/expected.safetensors; do
    cp "$f" "$c/feature_file/$(basename "$(dirname "$f")")-expected.safetensors"
done
cp "$fx"/coop/*.safetensors "$c/head/"
cp "$fx"/coop/*.safetensors "$c/feature_file/"

# The archives themselves, and their pickles on their own.
for f in "$fx"/models/openai-rn/*.pt "$fx"/models/openai-vit/*.pt "$fx"/models/tiny-clip-bin/pytorch_model.bin; do
    name="$(basename "$(dirname "$f")")-$(basename "$f")"
    cp "$f" "$c/torch_archive/$name"
    unzip -p "$f" '*/data.pkl' > "$c/pickle/$name.data.pkl" 2>/dev/null || true
    unzip -p "$f" '*/constants.pkl' > "$c/pickle/$name.constants.pkl" 2>/dev/null || true
done
find "$c/pickle" -empty -delete

cp "$fx"/configs/*.json "$fx"/models/tiny-clip/config.json "$c/hf_config/"
cp "$fx"/models/tiny-rn/open_clip_config.json "$c/open_clip_config/tiny-rn.json"
cp "$fx"/models/tiny-openclip-vit/open_clip_config.json "$c/open_clip_config/tiny-vit.json"
cp "$fx"/coop/tiny-openclip-gelu/open_clip_config.json "$c/open_clip_config/tiny-gelu.json"

cat > "$c/split_file/small.json" <<'JSON'
{"train": [["a/1.jpg", 0, "cat"], ["b/2.jpg", 1, "dog"]], "val": [["a/3.jpg", 0, "cat"]], "test": [["b/4.jpg", 1, "dog"]]}
JSON
printf 'path,label,split\ntrain/cat/1.jpg,cat,train\n"train/dog/2.jpg",dog,train\ntest/cat/4.jpg,cat,test\n' > "$c/manifest_csv/split.csv"
printf '\xef\xbb\xbfa.jpg,x\nb.jpg,y\nc.jpg,x\n' > "$c/manifest_csv/bom.csv"
printf '[{"path": "a.jpg", "label": "x", "split": "train"}, {"path": "b.jpg", "label": "y", "split": "test"}]' > "$c/manifest_json/split.json"
printf '[{"path": "a.jpg", "label": "x"}, {"path": "/abs/b.jpg", "label": "y"}]' > "$c/manifest_json/plain.json"

# The tokenizer corpus's texts, one file each.
python3 - "$fx/tokenizer/corpus.json" "$c/tokenizer" <<'PY' || printf 'a photo of a cat.' > "$c/tokenizer/plain.txt"
import json, sys
data = json.load(open(sys.argv[1]))
texts = []
def walk(v):
    if isinstance(v, str):
        texts.append(v)
    elif isinstance(v, list):
        for x in v: walk(x)
    elif isinstance(v, dict):
        for x in v.values(): walk(x)
walk(data)
for i, t in enumerate(dict.fromkeys(texts)):
    if len(t) < 4096:
        open(f"{sys.argv[2]}/{i:04}.txt", "w").write(t)
PY
du -sh "$c"

"""Random full-size ViT-B/32 CLIP weights in the transformers layout, for the speed benchmark.

    venv/bin/python bench/make_weights.py bench/out/vit-b-32
"""

import sys

import torch
import transformers

out = sys.argv[1] if len(sys.argv) > 1 else "bench/out/vit-b-32"
torch.manual_seed(0)
config = transformers.CLIPConfig()  # the defaults are openai/clip-vit-base-patch32's shapes
config.architectures = ["CLIPModel"]
model = transformers.CLIPModel(config).eval()
model.save_pretrained(out, safe_serialization=True)
print(f"wrote {out}")

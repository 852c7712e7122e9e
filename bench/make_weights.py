"""Random full-size CLIP weights for the speed benchmarks, plus a parity check file.

    venv/bin/python bench/make_weights.py vit-b-32 bench/out/vit-b-32   (transformers layout)
    venv/bin/python bench/make_weights.py rn50 bench/out/rn50           (open_clip layout)

The RN50 weights get calibrated batch-norm statistics and non-zero bn3 weights (open_clip
initialises them to zero), so the full-size check in check.safetensors (two images and
open_clip's embeddings of them) exercises every layer.
"""

import json
import sys

import torch
from safetensors.torch import save_file

kind = sys.argv[1] if len(sys.argv) > 1 else "vit-b-32"
out = sys.argv[2] if len(sys.argv) > 2 else f"bench/out/{kind}"
torch.manual_seed(0)

if kind == "vit-b-32":
    import transformers

    config = transformers.CLIPConfig()  # the defaults are openai/clip-vit-base-patch32's shapes
    config.architectures = ["CLIPModel"]
    model = transformers.CLIPModel(config).eval()
    model.save_pretrained(out, safe_serialization=True)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        embeds = model.get_image_features(pixel_values=x).pooler_output
elif kind == "rn50":
    import os

    import open_clip

    cfg = json.load(open(os.path.join(os.path.dirname(open_clip.__file__), "model_configs", "RN50.json")))
    cfg["quick_gelu"] = True  # OpenAI's RN50 (open_clip's RN50-quickgelu)
    model = open_clip.CLIP(**cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bn3.weight"):
                p.copy_(0.5 + 0.1 * torch.randn(p.shape))
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None
    model.visual.train()
    with torch.no_grad():
        for _ in range(3):
            model.visual(torch.randn(4, 3, 224, 224))
    model.eval()
    os.makedirs(out, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()},
              os.path.join(out, "open_clip_model.safetensors"))
    with open(os.path.join(out, "open_clip_config.json"), "w") as f:
        json.dump({"model_cfg": cfg, "preprocess_cfg": {}}, f, indent=1)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        embeds = model.encode_image(x)
else:
    sys.exit(f"unknown kind {kind}: vit-b-32 or rn50")

save_file({"pixel_values": x.contiguous(), "image_embeds": embeds.contiguous()}, f"{out}/check.safetensors")
print(f"wrote {out}")

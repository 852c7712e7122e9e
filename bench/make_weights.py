"""Random full-size CLIP weights for the speed benchmarks, plus a parity check file.

    venv/bin/python bench/make_weights.py vit-b-32 bench/out/vit-b-32     (transformers layout)
    venv/bin/python bench/make_weights.py rn50 bench/out/rn50             (open_clip layout)
    venv/bin/python bench/make_weights.py siglip-b-16 bench/out/siglip-b-16
        (transformers SiglipModel, google/siglip-base-patch16-224's config)
    venv/bin/python bench/make_weights.py eva02-b-16 bench/out/eva02-b-16
        (open_clip EVA02-B-16: timm's eva02_base_patch16_clip_224 tower)
    venv/bin/python bench/make_weights.py vit-l-14 bench/out/vit-l-14     (correctness only)
    venv/bin/python bench/make_weights.py rn50x4 bench/out/rn50x4         (correctness only)

SigLIP's checkpoint carries no tokenizer of its own here (the hub is not reachable): the
directory gets the test fixtures' small SentencePiece model (tests/fixtures/models/tiny-siglip),
whose ids are valid rows of the 32,000-row embedding; text cost depends on the 64 positions, not
on the vocabulary. check.safetensors also holds token ids and the reference's text embeddings
for the models that have them.

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
extra = {}
FIXTURES = __import__("pathlib").Path(__file__).resolve().parents[1] / "tests" / "fixtures"
TEXTS = ["a photo of a cat.", "a very long description " * 30]


def open_clip_rn(name):
    """An OpenAI ModifiedResNet in open_clip's layout with calibrated batch norms."""
    import os

    import open_clip

    cfg = json.load(open(os.path.join(os.path.dirname(open_clip.__file__), "model_configs", f"{name}.json")))
    cfg["quick_gelu"] = True  # OpenAI's weights (open_clip's *-quickgelu)
    model = open_clip.CLIP(**cfg)
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if pname.endswith("bn3.weight"):
                p.copy_(0.5 + 0.1 * torch.randn(p.shape))
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None
    model.visual.train()
    size = cfg["vision_cfg"]["image_size"]
    with torch.no_grad():
        for _ in range(3):
            model.visual(torch.randn(4, 3, size, size))
    model.eval()
    return model, cfg


def save_open_clip(model, cfg, preprocess_cfg):
    import os

    os.makedirs(out, exist_ok=True)
    state = {k: v.contiguous() for k, v in model.state_dict().items()
             if not k.endswith("attn_mask") and ".rope." not in k}
    save_file(state, os.path.join(out, "open_clip_model.safetensors"))
    with open(os.path.join(out, "open_clip_config.json"), "w") as f:
        json.dump({"model_cfg": cfg, "preprocess_cfg": preprocess_cfg}, f, indent=1)

if kind == "vit-b-32":
    import transformers

    config = transformers.CLIPConfig()  # the defaults are openai/clip-vit-base-patch32's shapes
    config.architectures = ["CLIPModel"]
    model = transformers.CLIPModel(config).eval()
    model.save_pretrained(out, safe_serialization=True)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        embeds = model.get_image_features(pixel_values=x).pooler_output
elif kind in ("rn50", "rn50x4"):
    import open_clip

    model, cfg = open_clip_rn({"rn50": "RN50", "rn50x4": "RN50x4"}[kind])
    save_open_clip(model, cfg, {})
    size = cfg["vision_cfg"]["image_size"]
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        embeds = model.encode_image(x)
elif kind == "vit-l-14":
    import transformers

    config = transformers.CLIPConfig(
        text_config=dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12,
                         num_hidden_layers=12, projection_dim=768),
        vision_config=dict(hidden_size=1024, intermediate_size=4096, num_attention_heads=16,
                           num_hidden_layers=24, patch_size=14, image_size=224,
                           projection_dim=768),
        projection_dim=768)  # openai/clip-vit-large-patch14's shapes
    config.architectures = ["CLIPModel"]
    model = transformers.CLIPModel(config).eval()
    model.save_pretrained(out, safe_serialization=True)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        embeds = model.get_image_features(pixel_values=x).pooler_output
elif kind == "siglip-b-16":
    import shutil

    import transformers
    from transformers.models.siglip import SiglipTokenizer

    # SiglipConfig's defaults are google/siglip-base-patch16-224's shapes.
    config = transformers.SiglipConfig()
    config.architectures = ["SiglipModel"]
    model = transformers.SiglipModel(config).eval()
    model.save_pretrained(out, safe_serialization=True)
    for f in ["spiece.model", "tokenizer_config.json"]:
        shutil.copy(FIXTURES / "models" / "tiny-siglip" / f, f"{out}/{f}")
    tok = SiglipTokenizer.from_pretrained(out)
    ids = torch.tensor(tok(TEXTS, padding="max_length", max_length=64, truncation=True)["input_ids"])
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        embeds = model.get_image_features(pixel_values=x).pooler_output
        extra = {"input_ids": ids, "text_embeds": model.get_text_features(input_ids=ids).pooler_output}
elif kind == "eva02-b-16":
    import os

    import open_clip

    cfg = json.load(open(os.path.join(os.path.dirname(open_clip.__file__), "model_configs", "EVA02-B-16.json")))
    model = open_clip.CustomTextCLIP(**{k: v for k, v in cfg.items() if k != "custom_text"}).eval()
    # timm scales a fresh head by 1e-3: the embedding would be the head's bias alone.
    with torch.no_grad():
        head = model.visual.trunk.head
        head.weight.normal_(0.0, head.in_features ** -0.5)
        head.bias.normal_(0.0, 0.02)
    save_open_clip(model, cfg, {})
    ids = open_clip.get_tokenizer("EVA02-B-16")(TEXTS)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        embeds = model.encode_image(x)
        extra = {"input_ids": ids.to(torch.int64), "text_embeds": model.encode_text(ids)}
else:
    sys.exit(f"unknown kind {kind}: vit-b-32, rn50, siglip-b-16, eva02-b-16, vit-l-14 or rn50x4")

save_file({"pixel_values": x.contiguous(), "image_embeds": embeds.contiguous(),
           **{k: v.contiguous() for k, v in extra.items()}}, f"{out}/check.safetensors")
print(f"wrote {out}")

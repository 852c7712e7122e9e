"""CLIP-LoRA training step speed, PyTorch side (ours: bench/clip_lora.rs; both run by
bench/clip_lora.sh).

    python bench/clip_lora.py weights bench/out/clip_lora        full-size random models, once
    python bench/clip_lora.py time DIR K THREADS STEPS          one JSON line: s/step, peak RSS

`weights` writes open_clip's ViT-B-32 and ViT-B-16 shapes (QuickGELU, as OpenAI's) with random
weights in the open_clip layout. `time` runs the reference's step (`run_lora` of
MaxZanella/CLIP-LoRA) on the CPU, in f32 (PRECISION=bf16: under bfloat16 autocast): LoRA r 2,
α 1, dropout 0.25 on q, k, v of every layer of both towers (the attention written as the
reference's `PlainMultiheadAttentionLoRA`, the module of scripts/fixtures/clip_lora.py), K class
prompts "a photo of a {}." through the text tower, a batch of 32 images of 224 × 224,
cross-entropy of `logit_scale · cos`, backward, AdamW.
"""

import importlib.util
import json
import os
import pathlib
import resource
import statistics
import sys
import time

import torch
import torch.nn.functional as F

REPO = pathlib.Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("lora_reference", REPO / "scripts/fixtures/clip_lora.py")
ref = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ref)

SHAPES = {
    "vit-b-32": {"embed_dim": 512, "quick_gelu": True,
                 "vision_cfg": {"image_size": 224, "layers": 12, "width": 768, "patch_size": 32},
                 "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 512, "heads": 8, "layers": 12}},
    "vit-b-16": {"embed_dim": 512, "quick_gelu": True,
                 "vision_cfg": {"image_size": 224, "layers": 12, "width": 768, "patch_size": 16},
                 "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 512, "heads": 8, "layers": 12}},
}


def weights(out):
    import open_clip
    from safetensors.torch import save_file

    for name, cfg in SHAPES.items():
        torch.manual_seed(0)
        model = open_clip.CLIP(**cfg).eval()
        d = os.path.join(out, name)
        os.makedirs(d, exist_ok=True)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()},
                  os.path.join(d, "open_clip_model.safetensors"))
        with open(os.path.join(d, "open_clip_config.json"), "w") as f:
            json.dump({"model_cfg": cfg, "preprocess_cfg": {
                "mean": [0.48145466, 0.4578275, 0.40821073], "std": [0.26862954, 0.26130258, 0.27577711],
                "interpolation": "bicubic", "resize_mode": "shortest"}}, f, indent=1)


def classnames(k):
    lines = (REPO / "assets/datasets/imagenet_classnames.txt").read_text().splitlines()
    return [l.split(" ", 1)[1] for l in lines[:k]]


def time_steps(d, k, threads, steps):
    import open_clip
    from safetensors.torch import load_file

    torch.set_num_threads(threads)
    cfg = json.loads(pathlib.Path(d, "open_clip_config.json").read_text())["model_cfg"]
    model = open_clip.CLIP(**cfg)
    model.load_state_dict(load_file(os.path.join(d, "open_clip_model.safetensors")))
    for p in model.parameters():
        p.requires_grad_(False)
    case = {"encoder": "both", "params": ["q", "k", "v"], "position": "all", "rank": 2, "alpha": 1.0,
            "b_std": 0.0, "dropout": 0.25}
    named = ref.apply_lora(model, case, torch.Generator().manual_seed(0))
    model.train()
    ids = open_clip.tokenize([f"a photo of a {c}." for c in classnames(k)])
    pixels = torch.randn(32, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    labels = torch.arange(32) % k
    opt = torch.optim.AdamW(list(named.values()), lr=2e-4, weight_decay=1e-2)
    scale = model.logit_scale.exp().item()

    # PRECISION=bf16: the encoders under CPU autocast, as the reference trains under CUDA
    # float16 autocast (the loss in f32, as there).
    precision = os.environ.get("PRECISION", "f32")
    assert precision in ("f32", "bf16"), f"PRECISION={precision}: expected f32 or bf16"

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            img, txt = model.encode_image(pixels), model.encode_text(ids)
        img, txt = F.normalize(img.float(), dim=-1), F.normalize(txt.float(), dim=-1)
        loss = F.cross_entropy(scale * img @ txt.T, labels)
        opt.zero_grad()
        loss.backward()
        opt.step()

    step()
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    print(json.dumps({"impl": "torch", "model": pathlib.Path(d).name, "precision": precision, "k": k,
                      "threads": threads,
                      "torch": torch.__version__, "s_per_step": round(statistics.median(times), 4),
                      "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}))


if __name__ == "__main__":
    if sys.argv[1] == "weights":
        weights(sys.argv[2])
    else:
        time_steps(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]))

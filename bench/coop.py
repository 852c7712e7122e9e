"""CoOp training step speed, PyTorch side (ours: bench/coop.rs; both run by bench/coop.sh).

    python bench/coop.py weights bench/out/coop          full-size random text towers, once
    python bench/coop.py time DIR K THREADS STEPS       one JSON line: s/step, peak RSS

`weights` writes two models whose text towers have the full shapes (random weights; the image
towers are tiny, the step never runs them): `vit-b-32` in the `transformers` layout (width 512,
12 layers, 8 heads, QuickGELU, projection 512) and `rn50` in the open_clip layout (the same text
tower with OpenAI's RN50 projection to 1024). `time` runs CoOp's step as its trainer does: the
PromptLearner (16 context vectors, class token at the end), the TextEncoder over all 77
positions, `exp(logit_scale) * cos` against a batch of 32 image features, cross-entropy,
backward into the context, SGD. The step code is the parity reference of tests/coop.rs
(scripts/fixtures/coop.py). Class names are ImageNet's first K.
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
spec = importlib.util.spec_from_file_location("coop_reference", REPO / "scripts/fixtures/coop.py")
ref = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ref)


def classnames(k):
    lines = (REPO / "assets/datasets/imagenet_classnames.txt").read_text().splitlines()
    return [l.split(" ", 1)[1] for l in lines[:k]]


def weights(out):
    import open_clip
    import transformers

    torch.manual_seed(0)
    vit = transformers.CLIPConfig(
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                       "num_attention_heads": 2, "image_size": 32, "patch_size": 16},
        projection_dim=512)
    vit.architectures = ["CLIPModel"]
    transformers.CLIPModel(vit).eval().save_pretrained(os.path.join(out, "vit-b-32"),
                                                       safe_serialization=True)
    cfg = {"embed_dim": 1024, "quick_gelu": True,
           "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
           "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 512, "heads": 8, "layers": 12}}
    model = open_clip.CLIP(**cfg).eval()
    d = os.path.join(out, "rn50")
    os.makedirs(d, exist_ok=True)
    from safetensors.torch import save_file
    save_file({k: v.contiguous() for k, v in model.state_dict().items()},
              os.path.join(d, "open_clip_model.safetensors"))
    with open(os.path.join(d, "open_clip_config.json"), "w") as f:
        json.dump({"model_cfg": cfg, "preprocess_cfg": {}}, f, indent=1)


def load(d):
    if os.path.exists(os.path.join(d, "config.json")):
        import transformers
        m = transformers.CLIPModel.from_pretrained(d, attn_implementation="eager",
                                                   dtype=torch.float32).eval()
        text = ref.HfText(m)
    else:
        import open_clip
        cfg = json.load(open(os.path.join(d, "open_clip_config.json")))["model_cfg"]
        m = open_clip.CLIP(**cfg).eval()
        from safetensors.torch import load_file
        m.load_state_dict(load_file(os.path.join(d, "open_clip_model.safetensors")))
        text = ref.OpenClipText(m)
    for p in m.parameters():
        p.requires_grad_(False)
    return text


def time_steps(d, k, threads, steps, batch=32, n_ctx=16):
    torch.set_num_threads(threads)
    text = load(d)
    learner = ref.PromptLearner(text, classnames(k), n_ctx, False, "end")
    ctx = torch.nn.Parameter(0.02 * torch.randn(n_ctx, text.width))
    opt = torch.optim.SGD([ctx], lr=0.002, momentum=0.9, weight_decay=5e-4)
    with torch.no_grad():
        e = text.encode(learner(ctx), learner.tokenized).shape[1]
    g = torch.Generator().manual_seed(0)
    img = torch.randn(batch, e, generator=g)
    labels = torch.randint(0, k, (batch,), generator=g)
    scale = text.logit_scale().detach()

    # PRECISION=bf16: the text tower under CPU bfloat16 autocast (CoOp's reference trains its
    # CLIP in float16 by default, `TRAINER.COOP.PREC fp16`, or under autocast with `amp`); the
    # loss in f32.
    precision = os.environ.get("PRECISION", "f32")
    assert precision in ("f32", "bf16"), f"PRECISION={precision}: expected f32 or bf16"

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            txt = text.encode(learner(ctx), learner.tokenized)
        txt = F.normalize(txt.float(), dim=-1)
        loss = F.cross_entropy(scale * F.normalize(img, dim=-1) @ txt.t(), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()

    step()  # warm-up
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"impl": "pytorch", "model": os.path.basename(d.rstrip("/")),
                      "precision": precision, "k": k,
                      "threads": threads, "tokens": int(learner.tokenized.shape[1]),
                      "s_per_step": statistics.median(times), "peak_rss_mib": round(rss),
                      "cpu_capability": torch.backends.cpu.get_cpu_capability()}))


if __name__ == "__main__":
    if sys.argv[1] == "weights":
        weights(sys.argv[2])
    else:
        time_steps(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]))

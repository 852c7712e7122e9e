"""PyTorch side of the encoder benchmark, on the same weights as ours: transformers.CLIPModel or
SiglipModel for a transformers-layout directory, open_clip's CLIP (CustomTextCLIP for a timm
tower such as EVA02's) for an open_clip-layout one.

    [PRECISION=bf16] venv/bin/python bench/torch_encoders.py MODEL_DIR THREADS
Prints one JSON object: throughput per case (median over repeats), the GEMM rate on the shapes
of bench/encoders.rs (GFLOP/s, best of repeats), the floating-point operations of one item of each
case (torch.utils.flop_counter: matmuls and convolutions), and peak RSS. PRECISION=bf16 runs the
encoders under torch.autocast("cpu", dtype=torch.bfloat16), PyTorch's own bfloat16 inference
(oneDNN's AVX512-BF16/AMX kernels where the CPU has them); the GEMM rates stay f32.
"""

import json
import os
import resource
import statistics
import sys
import time

import open_clip
import torch
from safetensors.torch import load_file

model_dir, threads = sys.argv[1], int(sys.argv[2])
torch.set_num_threads(threads)
tok = open_clip.get_tokenizer("ViT-B-32")
open_clip_cfg = os.path.join(model_dir, "open_clip_config.json")
hf_cfg = os.path.join(model_dir, "config.json")
if os.path.exists(open_clip_cfg):
    cfg = json.load(open(open_clip_cfg))["model_cfg"]
    # EVA02-B-16 and the like: a timm image tower in a CustomTextCLIP.
    cls = open_clip.CustomTextCLIP if cfg.get("custom_text") else open_clip.CLIP
    model = cls(**{k: v for k, v in cfg.items() if k != "custom_text"}).eval()
    state = load_file(os.path.join(model_dir, "open_clip_model.safetensors"))
    missing, unexpected = model.load_state_dict(state, strict=False)
    # bench/make_weights.py leaves out only buffers the model computes (rotary tables, masks).
    assert not unexpected and all(".rope." in k or k.endswith("attn_mask") for k in missing), (
        missing, unexpected)
    encode_image, encode_text = model.encode_image, model.encode_text
    impl = f"open_clip {open_clip.__version__} / torch {torch.__version__}"
    size = cfg["vision_cfg"]["image_size"]
elif json.load(open(hf_cfg)).get("model_type") == "siglip":
    import transformers
    from transformers.models.siglip import SiglipTokenizer

    model = transformers.SiglipModel.from_pretrained(model_dir, dtype=torch.float32).eval()
    encode_image = lambda x: model.get_image_features(pixel_values=x)  # noqa: E731
    encode_text = lambda ids: model.get_text_features(input_ids=ids)  # noqa: E731
    impl = f"transformers {transformers.__version__} / torch {torch.__version__}"
    size = model.config.vision_config.image_size
    siglip_tok = SiglipTokenizer.from_pretrained(model_dir)
    # SigLIP's rows: 64 positions, padded to the maximum length as the model was trained.
    tok = lambda texts: torch.tensor(siglip_tok(  # noqa: E731
        texts, padding="max_length", max_length=64, truncation=True)["input_ids"])
else:
    import transformers

    model = transformers.CLIPModel.from_pretrained(model_dir, dtype=torch.float32).eval()
    encode_image = lambda x: model.get_image_features(pixel_values=x)  # noqa: E731
    encode_text = lambda ids: model.get_text_features(input_ids=ids)  # noqa: E731
    impl = f"transformers {transformers.__version__} / torch {torch.__version__}"
    size = model.config.vision_config.image_size
SHORT = [f"a photo of a {w}." for w in ("cat", "dog", "red car", "tabby kitten", "satellite image of a river")]
LONG = ["a photo of " + "a very long description " * 30]


def timed(fn, repeats):
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


GEMMS = [
    ("gemm 2048x2048x2048", 2048, 2048, 2048, False),
    ("gemm 1600x768x3072 (x.wT)", 1600, 768, 3072, True),
    ("gemm 50x768x768 (x.wT)", 50, 768, 768, True),
    ("gemm 32x1024x1000 (x.wT)", 32, 1024, 1000, True),
]


def gemm_rate(m, k, n, tb):
    a = torch.rand(m, k)
    b = torch.rand(n, k) if tb else torch.rand(k, n)
    call = (lambda: a @ b.t()) if tb else (lambda: a @ b)
    call()
    t = time.perf_counter()
    call()
    once = max(time.perf_counter() - t, 1e-6)
    best = float("inf")
    for _ in range(min(max(int(1.0 / once), 3), 1000)):
        t = time.perf_counter()
        call()
        best = min(best, time.perf_counter() - t)
    return 2 * m * k * n / best / 1e9


def flops_per_item(fn, batch):
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return counter.get_total_flops() / batch


precision = os.environ.get("PRECISION", "f32")
assert precision in ("f32", "bf16"), f"PRECISION={precision}: expected f32 or bf16"
if precision == "bf16":
    impl += " (bf16 autocast)"
results, flops = {}, {}
with torch.inference_mode():
    gflops = {name: gemm_rate(m, k, n, tb) for name, m, k, n, tb in GEMMS}
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")
    autocast.__enter__()
    for batch, repeats in ((1, 10), (32, 3)):
        x = torch.randn(batch, 3, size, size)
        s = timed(lambda: encode_image(x), repeats)
        results[f"image b{batch}"] = batch / s
        flops[f"image b{batch}"] = flops_per_item(lambda: encode_image(x), batch)
        print(f"image b{batch}: {batch / s:.2f}/s", file=sys.stderr)
    for name, texts in (("short", SHORT), ("77-token", LONG)):
        for batch, repeats in ((1, 10), (32, 3)):
            ids = tok([texts[i % len(texts)] for i in range(batch)])
            s = timed(lambda: encode_text(ids), repeats)
            results[f"text {name} b{batch}"] = batch / s
            flops[f"text {name} b{batch}"] = flops_per_item(lambda: encode_text(ids), batch)
    autocast.__exit__(None, None, None)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(
    json.dumps(
        {
            "impl": impl,
            "threads": threads,
            "precision": precision,
            "per_s": results,
            "gflops": gflops,
            "flops_per_item": flops,
            "peak_rss_mib": peak,
            # ATen's kernels (ATEN_CPU_CAPABILITY); MKL and oneDNN follow their own variables.
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        }
    )
)

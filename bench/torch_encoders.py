"""PyTorch side of the encoder benchmark, on the same weights as ours: transformers.CLIPModel for
a transformers-layout directory, open_clip's CLIP for an open_clip-layout one.

    venv/bin/python bench/torch_encoders.py MODEL_DIR THREADS
Prints one JSON object: throughput per case (median over repeats) and peak RSS.
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
if os.path.exists(open_clip_cfg):
    cfg = json.load(open(open_clip_cfg))["model_cfg"]
    model = open_clip.CLIP(**cfg).eval()
    model.load_state_dict(load_file(os.path.join(model_dir, "open_clip_model.safetensors")))
    encode_image, encode_text = model.encode_image, model.encode_text
    impl = f"open_clip {open_clip.__version__} / torch {torch.__version__}"
    size = cfg["vision_cfg"]["image_size"]
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


results = {}
with torch.inference_mode():
    for batch, repeats in ((1, 10), (32, 3)):
        x = torch.randn(batch, 3, size, size)
        s = timed(lambda: encode_image(x), repeats)
        results[f"image b{batch}"] = batch / s
        print(f"image b{batch}: {batch / s:.2f}/s", file=sys.stderr)
    for name, texts in (("short", SHORT), ("77-token", LONG)):
        for batch, repeats in ((1, 10), (32, 3)):
            ids = tok([texts[i % len(texts)] for i in range(batch)])
            s = timed(lambda: encode_text(ids), repeats)
            results[f"text {name} b{batch}"] = batch / s
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"impl": impl, "threads": threads, "per_s": results, "peak_rss_mib": peak}))

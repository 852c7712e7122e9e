"""PyTorch side of the encoder benchmark: transformers.CLIPModel on the same weights as ours.

    venv/bin/python bench/torch_encoders.py MODEL_DIR THREADS
Prints one JSON object: throughput per case (median over repeats) and peak RSS.
"""

import json
import resource
import statistics
import sys
import time

import open_clip
import torch
import transformers

model_dir, threads = sys.argv[1], int(sys.argv[2])
torch.set_num_threads(threads)
model = transformers.CLIPModel.from_pretrained(model_dir, dtype=torch.float32).eval()
tok = open_clip.get_tokenizer("ViT-B-32")
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
        x = torch.randn(batch, 3, 224, 224)
        s = timed(lambda: model.get_image_features(pixel_values=x), repeats)
        results[f"image b{batch}"] = batch / s
    for name, texts in (("short", SHORT), ("77-token", LONG)):
        for batch, repeats in ((1, 10), (32, 3)):
            ids = tok([texts[i % len(texts)] for i in range(batch)])
            s = timed(lambda: model.get_text_features(input_ids=ids), repeats)
            results[f"text {name} b{batch}"] = batch / s
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"impl": f"transformers {transformers.__version__} / torch {torch.__version__}",
                  "threads": threads, "per_s": results, "peak_rss_mib": peak}))

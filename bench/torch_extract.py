"""The PyTorch reference pipeline for `bench/extract.sh`: PIL + torchvision's CLIP transform
(Resize(224, BICUBIC), CenterCrop(224), ToTensor, Normalize) in a DataLoader with WORKERS worker
processes, and transformers' CLIPModel.get_image_features on batches of BATCH, f32, THREADS
torch threads (PRECISION=bf16: under torch.autocast("cpu", dtype=torch.bfloat16)). Prints
{"impl", "images", "seconds", "per_s"} as JSON.

    python bench/torch_extract.py MODEL_DIR IMAGE_DIR THREADS WORKERS BATCH
"""
import json
import os
import sys
import time

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms
from transformers import CLIPModel

MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)


class Folder(Dataset):
    def __init__(self, root, tf):
        self.paths = sorted(
            os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs if f.endswith(".jpg")
        )
        self.tf = tf

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        return self.tf(Image.open(self.paths[i]).convert("RGB"))


def main():
    model_dir, image_dir, threads, workers, batch = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:6])
    torch.set_num_threads(threads)
    model = CLIPModel.from_pretrained(model_dir, torch_dtype=torch.float32).eval()
    tf = transforms.Compose([
        transforms.Resize(224, interpolation=transforms.InterpolationMode.BICUBIC),
        transforms.CenterCrop(224),
        transforms.ToTensor(),
        transforms.Normalize(MEAN, STD),
    ])
    data = Folder(image_dir, tf)
    loader = DataLoader(data, batch_size=batch, num_workers=workers, shuffle=False)
    start = time.perf_counter()
    n = 0
    bf16 = os.environ.get("PRECISION", "f32") == "bf16"
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        for pixels in loader:
            model.get_image_features(pixel_values=pixels)
            n += pixels.shape[0]
    seconds = time.perf_counter() - start
    print(json.dumps({
        "impl": f"PIL {Image.__version__} + torchvision + transformers / torch {torch.__version__.split('+')[0]}"
                + (" (bf16 autocast)" if bf16 else ""),
        "images": n, "seconds": seconds, "per_s": n / seconds,
    }))


if __name__ == "__main__":
    main()

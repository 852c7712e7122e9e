"""Writes N JPEGs of photo-like size (500x375 and 375x500, quality 90) with smooth gradients and
noise into OUT/<class>/, for `bench/extract.sh`.  python bench/make_jpegs.py OUT N"""
import os
import sys

import numpy as np
from PIL import Image

out, n = sys.argv[1], int(sys.argv[2])
rng = np.random.default_rng(0)
for i in range(n):
    w, h = (500, 375) if i % 3 else (375, 500)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([(x * (i % 7 + 1)) % 256, (y * (i % 5 + 1)) % 256, ((x + y) * 2) % 256], -1)
    img = np.clip(base + rng.normal(0, 12, (h, w, 3)), 0, 255).astype(np.uint8)
    d = os.path.join(out, f"class_{i % 10}")
    os.makedirs(d, exist_ok=True)
    Image.fromarray(img).save(os.path.join(d, f"{i:05d}.jpg"), quality=90)

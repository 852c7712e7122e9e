"""PyTorch reference for bench/adapter_train.rs: the same CLIP-Adapter training on synthetic
cached features (visual adapter, official form, r = 4, ratio 0.2, SGD momentum 0.9 + weight
decay 5e-4, per-epoch warm-up + cosine), one JSON line with the seconds per epoch.

python bench/adapter_train.py N D K EPOCHS BATCH
"""

import json
import math
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


def synthetic(n, d, k):
    """The benchmark's features (uniform in [-1, 1]), labels (i % k) and unit class rows."""
    torch.manual_seed(0)
    x = torch.rand(n, d) * 2 - 1
    labels = torch.arange(n) % k
    w = torch.rand(k, d) * 2 - 1
    w = w / w.norm(dim=-1, keepdim=True)
    return x, labels, w


def reference(x, labels, w, epochs, batch):
    """The reference training loop on these tensors; seconds per epoch."""
    n, d = x.shape
    adapter = nn.Sequential(nn.Linear(d, d // 4, bias=False), nn.ReLU(inplace=True), nn.Linear(d // 4, d, bias=False), nn.ReLU(inplace=True))
    optim = torch.optim.SGD(adapter.parameters(), lr=0.002, momentum=0.9, weight_decay=5e-4)
    start = time.perf_counter()
    for epoch in range(epochs):
        lr = 1e-5 if epoch < 1 else 0.001 * (1 + math.cos(math.pi * (epoch - 1) / epochs))
        for g in optim.param_groups:
            g["lr"] = lr
        order = torch.randperm(n)
        for s in range(0, n - batch + 1 if n >= batch else 1, batch):
            idx = order[s:s + batch]
            f = x[idx]
            f = 0.2 * adapter(f) + 0.8 * f
            f = f / f.norm(dim=-1, keepdim=True)
            loss = F.cross_entropy(100.0 * f @ w.t(), labels[idx])
            optim.zero_grad()
            loss.backward()
            optim.step()
    return (time.perf_counter() - start) / epochs


def flop_per_epoch(n, d, k, batch):
    """As bench/adapter_train.rs: 10·D·H + 4·D·K per sample of the full batches."""
    samples = n // batch * batch if n >= batch else n
    return samples * (10 * d * max(d // 4, 1) + 4 * d * k)


def gemm_rate():
    """torch's large-GEMM rate on this machine (2048³ float32, best of 5), GFLOP/s."""
    a, b = torch.rand(2048, 2048), torch.rand(2048, 2048)
    best = math.inf
    for _ in range(5):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * 2048 ** 3 / best / 1e9


def main():
    n, d, k, epochs, batch = (int(a) for a in (sys.argv[1:] + ["16000", "1024", "1000", "2", "32"][len(sys.argv) - 1:])[:5])
    x, labels, w = synthetic(n, d, k)
    s = reference(x, labels, w, epochs, batch)
    rate = flop_per_epoch(n, d, k, batch) / s / 1e9
    gemm = gemm_rate()
    print(json.dumps({"impl": "pytorch", "torch": torch.__version__, "threads": torch.get_num_threads(), "n": n, "d": d, "k": k, "epochs": epochs, "batch": batch, "s_per_epoch": round(s, 5),
                      "gflop_per_s": round(rate, 1), "gemm_gflop_per_s": round(gemm, 1), "fraction_of_gemm": round(rate / gemm, 3),
                      "cpu_capability": torch.backends.cpu.get_cpu_capability()}))


if __name__ == "__main__":
    main()

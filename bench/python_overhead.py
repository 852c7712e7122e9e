"""What the Python package costs over the command line, and its CLIP-Adapter training against
PyTorch's (docs/benchmarks.md, "The Python package").

    cargo build --release --bin clip-adapter
    cargo build --release -p clip-adapter-py
    python bench/python_overhead.py [--rounds 7] [--threads N]   # a Python with numpy (+ torch)

(a) `fit_cached` against `clip-adapter fit` on the same cached features (method, dataset,
    shots, seed), each call's wall time (the command's includes starting its process);
(b) a grid of 100 cells (5 methods x 5 shot counts x 4 seeds) through `run` against
    `clip-adapter run`, each into a fresh results folder;
(c) when this interpreter can import torch, CLIP-Adapter trained by `fit` against
    bench/adapter_train.py's reference loop on the same tensors, in this one process.

The features are synthetic, in EuroSAT's shape with ViT-B/32's width (10 classes, 512 wide,
1,000 test images): class centres plus noise, with class-name rows near the centres, imported
into a fresh cache with `import_features` (draws of 1-16 shots, seeds 1-4). Each case
alternates the two sides `--rounds` times (`--torch-rounds` for (c)) and keeps each side's
best round. The package is the
release build (target/release/lib_native.so), copied with the Python sources into
bench/out/python-overhead/ so that the dev build next to the sources stays as the tests left it.
Nothing here runs in CI.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

REPO = Path(__file__).resolve().parents[1]
SOURCES = REPO / "crates" / "clip-adapter-py" / "python" / "clip_adapter"

CLASSES, WIDTH, TEST = 10, 512, 1000
SHOTS = (1, 2, 4, 8, 16)
SEEDS = (1, 2, 3, 4)
GRID_METHODS = ("zero-shot", "tip-adapter", "tip-adapter-f", "lp++", "clip-adapter")
FIT_METHODS = ("tip-adapter-f", "clip-adapter", "lp++")
DATASET = "synthetic"


def cpu_line() -> str:
    """The CPU's model name (lscpu) and the widest SIMD level its flags allow our kernels."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        info = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
        info = {k.strip(): v.strip() for k, v in info.items()}
    except (OSError, subprocess.CalledProcessError):
        info = {}
    flags = set(info.get("Flags", "").split())
    simd = ("AVX-512" if "avx512f" in flags else
            "AVX2 + FMA" if {"avx2", "fma"} <= flags else "portable")
    name = info.get("Model name", platform.processor() or "unknown CPU")
    family = f" (family {info['CPU family']}, model {info['Model']})" if "Model" in info else ""
    cpus = info.get("CPU(s)", str(os.cpu_count()))
    return f"{name}{family}, {cpus} CPU(s), SIMD: {simd} (lscpu flags)"


def load_package(lib: Path, out: Path):
    """The release extension with the package's Python sources, imported from `out`."""
    pkg = out / "package" / "clip_adapter"
    if pkg.exists():
        shutil.rmtree(pkg)
    shutil.copytree(SOURCES, pkg, ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    shutil.copy2(lib, pkg / "_native.abi3.so")
    sys.path.insert(0, str(pkg.parent))
    import clip_adapter

    assert Path(clip_adapter.__file__).parent == pkg, clip_adapter.__file__
    return clip_adapter


def make_cache(ca, cache: Path) -> None:
    """Every (shots, seed) draw of the synthetic dataset, imported from arrays."""
    import numpy as np

    rng = np.random.default_rng(0)
    centres = rng.normal(size=(CLASSES, WIDTH)).astype(np.float32)
    text = centres + 0.5 * rng.normal(size=centres.shape).astype(np.float32)

    def draw(per_class: int) -> Tuple[Any, Any]:
        y = np.repeat(np.arange(CLASSES), per_class)
        x = centres[y] + 1.5 * rng.normal(size=(len(y), WIDTH)).astype(np.float32)
        return x.astype(np.float32), y

    test = draw(TEST // CLASSES)
    names = [f"class {i}" for i in range(CLASSES)]
    if cache.exists():
        shutil.rmtree(cache)
    for shots in SHOTS:
        for seed in SEEDS:
            ca.import_features(DATASET, names, train=draw(shots), val=draw(min(shots, 4)),
                               test=test, shots=shots, seed=seed, text_features=text,
                               logit_scale=100.0, cache=cache, progress=False)


def cpu_seconds(who: int) -> float:
    r = resource.getrusage(who)
    return r.ru_utime + r.ru_stime


def timed(f: Callable[[], Any], who: int = resource.RUSAGE_SELF) -> Tuple[Tuple[float, float], Any]:
    """`f()`'s wall and CPU seconds (of this process's threads, or of the children it waited
    for), and its result."""
    cpu, start = cpu_seconds(who), time.perf_counter()
    out = f()
    return (time.perf_counter() - start, cpu_seconds(who) - cpu), out


#: `--threads`, given to every side.
THREADS: Optional[int] = None


def cli_call(cli: Path, *args: Any) -> Tuple[Tuple[float, float], str]:
    threads = ["--threads", str(THREADS)] if THREADS and args[0] != "--version" else []
    argv = [str(cli), *[str(a) for a in args], *threads, "--quiet"]
    seconds, out = timed(lambda: subprocess.run(argv, capture_output=True, text=True),
                         resource.RUSAGE_CHILDREN)
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(argv)}: exit {out.returncode}: {out.stderr}")
    return seconds, out.stdout


Times = Tuple[float, float]


def alternate(rounds: int, ours: Callable[[int], Times], theirs: Callable[[int], Times]):
    """Each side's (wall, CPU) seconds over `rounds` alternating rounds (the command line
    first)."""
    a: List[Times] = []
    b: List[Times] = []
    for r in range(rounds):
        b.append(theirs(r))
        a.append(ours(r))
    return a, b


def fits(ca, cli: Path, cache: Path, rounds: int) -> List[Dict[str, Any]]:
    rows = [{"case": "the command's process alone (`clip-adapter --version`)", "python": None,
             "cli": [cli_call(cli, "--version")[0] for _ in range(rounds)]}]
    for method in FIT_METHODS:
        args = ("fit", "--method", method, "--dataset", DATASET, "--shots", 16, "--seed", 1,
                "--cache", cache, "--json")
        accuracies = {}

        def theirs(_: int) -> Times:
            seconds, out = cli_call(cli, *args)
            accuracies["cli"] = json.loads(out)["test_accuracy"]
            return seconds

        def ours(_: int) -> Times:
            seconds, head = timed(lambda: ca.fit_cached(method, DATASET, 16, 1, cache=cache))
            accuracies["python"] = head.test_accuracy
            return seconds

        py, cl = alternate(rounds, ours, theirs)
        if abs(accuracies["python"] - accuracies["cli"]) > 1e-4:
            raise SystemExit(f"{method}: Python {accuracies['python']} != CLI {accuracies['cli']}")
        rows.append({"case": f"fit {method}, 16-shot seed 1", "python": py, "cli": cl,
                     "test_accuracy": accuracies["python"]})
    return rows


def grid(ca, cli: Path, cache: Path, out: Path, rounds: int) -> Dict[str, Any]:
    shots = ",".join(str(s) for s in SHOTS)
    seeds = ",".join(str(s) for s in SEEDS)
    cells = len(GRID_METHODS) * len(SHOTS) * len(SEEDS)

    def fresh(name: str) -> Path:
        d = out / name
        if d.exists():
            shutil.rmtree(d)
        return d

    def theirs(r: int) -> Times:
        return cli_call(cli, "run", "--methods", ",".join(GRID_METHODS), "--datasets", DATASET,
                        "--shots", shots, "--seeds", seeds, "--cache", cache,
                        "--out", fresh(f"cli-run-{r}"))[0]

    def ours(r: int) -> Times:
        seconds, res = timed(lambda: ca.run(list(GRID_METHODS), [DATASET], shots=list(SHOTS),
                                            seeds=list(SEEDS), cache=cache,
                                            out=fresh(f"py-run-{r}"), progress=False))
        if res.fitted != cells:
            raise SystemExit(f"run fitted {res.fitted} cells, expected {cells}")
        return seconds

    py, cl = alternate(rounds, ours, theirs)
    same = (out / "cli-run-0" / "results.csv").read_text().splitlines()[0] == \
        (out / "py-run-0" / "results.csv").read_text().splitlines()[0]
    if not same:
        raise SystemExit("the two results.csv files have different columns")
    return {"case": f"run, {cells} cells ({len(GRID_METHODS)} methods x {len(SHOTS)} shots x "
                    f"{len(SEEDS)} seeds)", "python": py, "cli": cl}


def torch_side(ca, rounds: int) -> Optional[List[Dict[str, Any]]]:
    try:
        import torch
    except ImportError:
        return None
    sys.path.insert(0, str(REPO / "bench"))
    from adapter_train import reference, synthetic

    if THREADS:
        torch.set_num_threads(THREADS)
    rows = []
    for (n, d, k, epochs, batch, name) in [
        (16000, 1024, 1000, 2, 32, "ImageNet 16-shot: 16,000 x 1024, 1,000 classes"),
        (160, 1024, 10, 50, 32, "EuroSAT 16-shot: 160 x 1024, 10 classes"),
    ]:
        x, labels, w = synthetic(n, d, k)
        xn, yn, wn = x.numpy(), labels.numpy(), w.numpy()

        def ours(_: int) -> Times:
            (wall, cpu), _head = timed(lambda: ca.fit("clip-adapter", xn, yn, text_features=wn,
                                                      logit_scale=100.0, epochs=epochs,
                                                      batch_size=batch))
            return wall / epochs, cpu / epochs

        def theirs(_: int) -> Times:
            return reference(x, labels, w, epochs, batch), float("nan")

        py, th = alternate(rounds, ours, theirs)
        rows.append({"case": f"{name}, batch {batch}, {epochs} epochs", "python": py,
                     "torch": th, "torch_version": torch.__version__,
                     "torch_threads": torch.get_num_threads()})
    return rows


def markdown(cpu: str, fit_rows, grid_row, torch_rows, rounds: int, torch_rounds: int) -> str:
    """Medians of the rounds (wall and CPU seconds) and each side's best wall time."""
    def median(times, i):
        return statistics.median(t[i] for t in times)

    threads = f"{THREADS} thread(s) on every side" if THREADS else "each side's default threads"
    out = [f"CPU: {cpu}; {threads}; {rounds} alternating round(s); "
           f"1-minute load average at the end: {os.getloadavg()[0]:.2f}", "",
           "| case | Python wall (s), median / best | command line wall (s), median / best | "
           "overhead, median wall | Python CPU (s) | command line CPU (s) | overhead, CPU |",
           "|---|---|---|---|---|---|---|"]
    for r in fit_rows + [grid_row]:
        cl = (median(r["cli"], 0), min(t[0] for t in r["cli"]), median(r["cli"], 1))
        if r["python"] is None:
            out.append(f"| {r['case']} | | {cl[0]:.3f} / {cl[1]:.3f} | | | {cl[2]:.3f} | |")
            continue
        py = (median(r["python"], 0), min(t[0] for t in r["python"]), median(r["python"], 1))
        out.append(f"| {r['case']} | {py[0]:.3f} / {py[1]:.3f} | {cl[0]:.3f} / {cl[1]:.3f} | "
                   f"{100 * (py[0] / cl[0] - 1):+.1f} % | {py[2]:.3f} | {cl[2]:.3f} | "
                   f"{100 * (py[2] / cl[2] - 1):+.1f} % |")
    if torch_rows:
        out += ["", "| CLIP-Adapter training | `fit` from Python (s/epoch), best | PyTorch "
                "reference (s/epoch), best | ratio |", "|---|---|---|---|"]
        for r in torch_rows:
            py, th = min(t[0] for t in r["python"]), min(t[0] for t in r["torch"])
            out.append(f"| {r['case']} | {py:.5f} | {th:.5f} | **{th / py:.2f}** |")
        out.append("")
        out.append(f"torch {torch_rows[0]['torch_version']}, "
                   f"{torch_rows[0]['torch_threads']} thread(s); best of {torch_rounds} "
                   f"alternating round(s)")
    return "\n".join(out)


def main() -> None:
    global THREADS
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=7, help="rounds of (a) and (b)")
    ap.add_argument("--torch-rounds", type=int, default=3, help="rounds of (c)")
    ap.add_argument("--cli", type=Path, default=REPO / "target" / "release" / "clip-adapter")
    ap.add_argument("--lib", type=Path, default=REPO / "target" / "release" / "lib_native.so")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "out" / "python-overhead")
    ap.add_argument("--threads", type=int,
                    help="worker threads of every side (ca.set_threads, the command's --threads, "
                         "torch.set_num_threads) [default: each side's own, all cores]")
    a = ap.parse_args()
    a.out = a.out.resolve()
    for f in (a.cli, a.lib):
        if not f.exists():
            raise SystemExit(f"{f} is missing: build it in release first (see the docstring)")
    a.out.mkdir(parents=True, exist_ok=True)
    ca = load_package(a.lib, a.out)
    cpu = cpu_line()
    if a.threads:
        THREADS = a.threads
        ca.set_threads(a.threads)
    cache = a.out / "cache"
    make_cache(ca, cache)
    fit_rows = fits(ca, a.cli, cache, a.rounds)
    grid_row = grid(ca, a.cli, cache, a.out, a.rounds)
    torch_rows = torch_side(ca, a.torch_rounds)
    table = markdown(cpu, fit_rows, grid_row, torch_rows, a.rounds, a.torch_rounds)
    if torch_rows is None:
        table += "\n\n(c) skipped: torch is not importable by this interpreter"
    (a.out / "results.json").write_text(json.dumps(
        {"cpu": cpu, "fit": fit_rows, "grid": grid_row, "torch": torch_rows}, indent=1))
    (a.out / "results.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()

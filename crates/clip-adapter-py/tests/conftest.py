"""Fixtures of the Python package's tests: the tiny fixture models the Rust tests use, the
`clip-adapter` binary `cargo test` built (Python's numbers are compared with the command
line's), a generated image folder and its feature cache."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
from pathlib import Path
from typing import Any, List

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[3]
FIXTURES = REPO / "tests" / "fixtures"
TINY_CLIP = FIXTURES / "models" / "tiny-clip"
IMAGES = sorted((FIXTURES / "models" / "images").glob("*"))


def cli_path() -> Path:
    given = os.environ.get("CLIP_ADAPTER_BIN")
    if given:
        return Path(given)
    target = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
    return target / "debug" / "clip-adapter"


@pytest.fixture(scope="session")
def cli():
    """Runs `clip-adapter ARGS --quiet` offline; returns stdout (parsed when `--json`)."""
    exe = cli_path()
    if not exe.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{exe} is missing: run `cargo build` (or cargo test) first")
        pytest.skip(f"{exe} is missing: build it with `cargo build`")

    def run(*args: Any, cwd: Path | None = None, fails: bool = False) -> Any:
        """`fails=True`: the command must exit with an error (its output is still read)."""
        argv = [str(exe), *[str(a) for a in args], "--quiet"]
        env = dict(os.environ, HF_HUB_OFFLINE="1")
        out = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True)
        if (out.returncode != 0) != fails:
            raise AssertionError(f"{' '.join(argv)}: exit {out.returncode}: {out.stderr}")
        return json.loads(out.stdout) if "--json" in argv else out.stdout

    return run


@pytest.fixture(scope="session")
def clip():
    import clip_adapter as ca

    return ca.Clip.load(str(TINY_CLIP), progress=False)


def write_bmp(path: Path, pixels: np.ndarray) -> None:
    """A 24-bit BMP (rows bottom-up, BGR, rows padded to 4 bytes): images without any
    imaging library."""
    h, w, _ = pixels.shape
    row = (w * 3 + 3) // 4 * 4
    body = bytearray()
    for y in range(h - 1, -1, -1):
        line = pixels[y, :, ::-1].astype(np.uint8).tobytes()
        body += line + b"\0" * (row - w * 3)
    header = struct.pack("<2sIHHI", b"BM", 54 + len(body), 0, 0, 54)
    info = struct.pack("<IiiHHIIiiII", 40, w, h, 1, 24, 0, len(body), 2835, 2835, 0, 0)
    path.write_bytes(header + info + bytes(body))


def image_folder(root: Path, classes: int = 3, per_class: int = 8) -> Path:
    """Class folders of small generated images, a colour per class plus noise."""
    rng = np.random.default_rng(0)
    for c in range(classes):
        d = root / f"class_{c}"
        d.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            h, w = 28 + (i * 5) % 13, 30 + (c * 7 + i) % 17
            base = np.zeros((h, w, 3))
            base[..., c % 3] = 200
            img = np.clip(base + rng.normal(0, 40, (h, w, 3)), 0, 255).astype(np.uint8)
            write_bmp(d / f"img_{i:02}.bmp", img)
    return root


@pytest.fixture(scope="session")
def workdir(tmp_path_factory, cli):
    """A folder with `data/` (3 classes × 8 images) and `cache/`: its 2-shot draws of seeds
    1 and 2 extracted by the command line, with 2 augmented views and pre-projection
    features."""
    root = tmp_path_factory.mktemp("work")
    image_folder(root / "data")
    for seed in (1, 2):
        cli(
            "extract", "--model", TINY_CLIP, "--folder", "data", "--shots", 2, "--seed", seed,
            "--views", 2, "--pre-projection", "--cache", "cache", "--json", cwd=root,
        )
    return root


DATASET = "data"


def strip_seconds(rows: List[dict]) -> List[dict]:
    return [{k: v for k, v in r.items() if k != "train_seconds"} for r in rows]

"""Models from Python: the numbers of `embed`, `classify` and `tokenize`, images from paths,
arrays and PIL images, the GIL released while encoding."""

from __future__ import annotations

import threading
import time
import warnings

import numpy as np
import pytest

import clip_adapter as ca
from conftest import IMAGES, TINY_CLIP


def test_image_and_text_embeddings_are_the_command_lines(clip, cli):
    texts = ["a red square", "a photo of a blue circle."]
    args = ["embed", "--model", TINY_CLIP, "--json"]
    for p in IMAGES:
        args += ["--image", p]
    for t in texts:
        args += ["--text", t]
    doc = cli(*args)
    want_images = np.array([i["embedding"] for i in doc["images"]], dtype=np.float32)
    want_texts = np.array([t["embedding"] for t in doc["texts"]], dtype=np.float32)

    got = clip.encode_images([str(p) for p in IMAGES])
    assert got.dtype == np.float32 and got.shape == (len(IMAGES), clip.embed_dim)
    np.testing.assert_array_equal(got, want_images)
    # Paths as pathlib objects, and a batch size that splits the list, give the same rows.
    np.testing.assert_array_equal(clip.encode_images(IMAGES, batch_size=len(IMAGES)), got)
    np.testing.assert_array_equal(clip.encode_texts(texts), want_texts)


def test_bf16_precision_is_the_command_lines_and_near_f32(clip, cli):
    texts = ["a red square", "a photo of a blue circle."]
    args = ["embed", "--model", TINY_CLIP, "--precision", "bf16", "--json"]
    for p in IMAGES:
        args += ["--image", p]
    for t in texts:
        args += ["--text", t]
    doc = cli(*args)
    with warnings.catch_warnings():
        # A CPU without AVX512-BF16 is told the products run on the f32 kernels.
        warnings.simplefilter("ignore")
        low = ca.Clip.load(str(TINY_CLIP), precision="bf16", progress=False)
    assert low.precision == "bf16" and clip.precision == "f32"
    got = low.encode_images(IMAGES)
    np.testing.assert_array_equal(
        got, np.array([i["embedding"] for i in doc["images"]], dtype=np.float32))
    np.testing.assert_array_equal(
        low.encode_texts(texts), np.array([t["embedding"] for t in doc["texts"]], dtype=np.float32))
    # bfloat16 operands cost about 1e-3 to 1e-2 relative on the fixture, never nothing.
    full = clip.encode_images(IMAGES)
    rel = np.linalg.norm(got - full, axis=1) / np.linalg.norm(full, axis=1)
    assert (rel > 1e-4).all() and (rel < 2e-2).all(), rel
    with pytest.raises(ca.InputError, match="fp16"):
        ca.Clip.load(str(TINY_CLIP), precision="fp16", progress=False)


def test_arrays_and_pil_images_encode_as_their_files():
    pil = pytest.importorskip("PIL.Image")
    clip = ca.Clip.load(str(TINY_CLIP), progress=False)
    # PNG and BMP decode to the same pixels in PIL and in clip-adapter.
    files = [p for p in IMAGES if p.suffix in (".png", ".bmp")]
    assert files
    from_files = clip.encode_images(files)
    images = [pil.open(p) for p in files]
    arrays = [np.asarray(i.convert("RGB")) for i in images]
    np.testing.assert_array_equal(clip.encode_images(images), from_files)
    np.testing.assert_array_equal(clip.encode_images(arrays), from_files)
    # A view that is not C-contiguous is copied once, with the same result.
    flipped = [np.ascontiguousarray(a[:, ::-1])[:, ::-1] for a in arrays]
    assert not flipped[0].flags.c_contiguous
    np.testing.assert_array_equal(clip.encode_images(flipped), from_files)


def test_zero_shot_probabilities_are_the_command_lines(clip, cli):
    labels = ["red square", "blue circle", "green bar"]
    templates = ["a photo of a {}.", "a drawing of a {}."]
    args = ["classify", "--model", TINY_CLIP, "--labels", ",".join(labels), "--json",
            "--top-k", len(labels)]
    for t in templates:
        args += ["--template", t]
    doc = cli(*args, *IMAGES)
    want_p = np.zeros((len(IMAGES), len(labels)), dtype=np.float32)
    want_l = np.zeros_like(want_p)
    for i, r in enumerate(doc["results"]):
        for p in r["predictions"]:
            want_p[i, p["index"]] = p["probability"]
            want_l[i, p["index"]] = p["logit"]
    got = clip.classify(IMAGES, labels, templates)
    np.testing.assert_array_equal(got, want_p)
    np.testing.assert_array_equal(clip.classify(IMAGES, labels, templates, logits=True), want_l)
    w = clip.text_classifier(labels, templates)
    np.testing.assert_allclose(np.linalg.norm(w, axis=1), 1, rtol=1e-6)


def test_token_ids_are_the_command_lines(clip, cli):
    texts = ["a photo of a cat.", "Hello, world!"]
    want = np.array(cli("tokenize", "--json", *texts))
    np.testing.assert_array_equal(ca.tokenize(texts), want)
    want_model = np.array(cli("tokenize", "--model", TINY_CLIP, "--json", *texts))
    np.testing.assert_array_equal(clip.tokenize(texts), want_model)
    np.testing.assert_array_equal(ca.tokenize(texts, model=str(TINY_CLIP)), want_model)
    assert ca.tokenize(texts, context_length=10).shape == (2, 10)


def test_model_properties(clip):
    assert clip.embed_dim == 24 and clip.image_size > 0
    assert clip.logit_scale > 0
    assert len(clip.fingerprint) > 8
    assert clip.directory == TINY_CLIP


def test_two_threads_encode_at_the_same_time(clip):
    """The GIL is released while encoding: while one thread is inside a long
    `encode_images`, another thread's short `encode_images` calls complete. Were the GIL held
    for the whole call, none could complete in the middle of the long one."""
    images = [str(p) for p in IMAGES] * 40
    span: list[float] = []
    finished: list[float] = []
    done = threading.Event()

    def long_call() -> None:
        span.append(time.perf_counter())
        clip.encode_images(images, batch_size=2, progress=False)
        span.append(time.perf_counter())
        done.set()

    def short_calls() -> None:
        while not done.is_set():
            clip.encode_images(IMAGES[:1], progress=False)
            finished.append(time.perf_counter())

    threads = [threading.Thread(target=long_call), threading.Thread(target=short_calls)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    start, end = span
    margin = 0.2 * (end - start)
    middle = [x for x in finished if start + margin < x < end - margin]
    assert len(middle) >= 3, (len(finished), end - start)


def test_encoding_runs_while_another_thread_runs_python(clip):
    """While one thread encodes, another keeps running Python code."""
    images = [str(p) for p in IMAGES] * 20
    ticks: list[float] = []
    span: list[float] = []
    done = threading.Event()

    def work() -> None:
        span.append(time.perf_counter())
        clip.encode_images(images, batch_size=1, progress=False)
        span.append(time.perf_counter())
        done.set()

    t = threading.Thread(target=work)
    t.start()
    while not done.is_set():
        ticks.append(time.perf_counter())
        # Busy Python work between ticks (no sleep: a sleep would let go of the GIL anyway).
        sum(range(2000))
    t.join()
    start, end = span
    middle = [x for x in ticks if start + 0.2 * (end - start) < x < end - 0.2 * (end - start)]
    assert len(middle) > 10, (len(ticks), end - start)

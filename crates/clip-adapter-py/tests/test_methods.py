"""Every method from Python: `fit` on arrays, `fit_cached` on the cache and `clip-adapter fit`
give the same numbers; heads are saved and read in the command line's format both ways;
errors are the documented exceptions; large inputs are read in place."""

from __future__ import annotations

import tracemalloc
import warnings

import numpy as np
import pytest

import clip_adapter as ca
from conftest import DATASET, IMAGES, TINY_CLIP

# Short training, so that every method fits in a moment; the same options go to the command
# line and to Python.
FAST = {"coop": {"epochs": 2}, "clip-adapter": {"epochs": 5}, "tip-adapter-f": {"epochs": 5},
        "ape-t": {"epochs": 5}, "clap": {"epochs": 5}, "prolip": {"epochs": 5},
        "clip-lora": {"iters_per_shot": 3}}


def cli_options(options: dict) -> list:
    out = []
    for k, v in options.items():
        out += [f"--{k.replace('_', '-')}", v]
    return out


def f32(x) -> np.float32:
    return np.float32(np.nan if x is None else x)


@pytest.mark.parametrize("method", ca.methods())
def test_a_fit_gives_the_command_lines_numbers(method, workdir, cli, clip, tmp_path):
    options = {k: v for k, v in FAST.get(method, {}).items() if k in ca.method_options(method)}
    saved = tmp_path / "cli.safetensors"
    want = cli("fit", "--method", method, "--dataset", DATASET, "--shots", 2, "--seed", 1,
               "--cache", "cache", "--save", saved, "--json", *cli_options(options), cwd=workdir)

    head = ca.fit_cached(method, DATASET, 2, 1, cache=workdir / "cache", progress=False,
                         **options)
    # NaN (not measured: CLIP-LoRA's validation) equals NaN here.
    np.testing.assert_equal(f32(head.val_accuracy), f32(want["val_accuracy"]))
    assert f32(head.test_accuracy) == f32(want["test_accuracy"])
    assert head.chosen == want["chosen_on_validation"]
    assert head.row["method"] == method and head.row["dataset"] == DATASET

    task = ca.load_cached_task(DATASET, 2, 1, cache=workdir / "cache")
    test_x, test_y = task.test
    from_file = ca.Head.load(saved, progress=False)
    assert from_file.method == method and from_file.classnames == task.classnames
    if method == "prolip":
        # ProLIP scores the features before the projection.
        test_x = task.pre_projection["test"]
        args = task.fit_arguments()
        del args["pre_projection"]
        with pytest.raises(ca.InputError, match="pre-projection"):
            ca.fit(method, **args, dataset=DATASET, seed=1, **options)
    np.testing.assert_array_equal(from_file.logits(test_x), head.logits(test_x))

    if method == "clip-lora":
        # It trains on the images, which arrays of features do not carry.
        with pytest.raises(ca.InputError, match="fit_cached"):
            ca.fit(method, **task.fit_arguments(), dataset=DATASET, seed=1, **options)
        return
    extra = {"model": clip} if method == "coop" else {}
    arrays = ca.fit(method, **task.fit_arguments(), dataset=DATASET, seed=1, progress=False,
                    **extra, **options)
    assert f32(arrays.val_accuracy) == f32(want["val_accuracy"])
    assert f32(arrays.test_accuracy) == f32(want["test_accuracy"])
    assert arrays.chosen == want["chosen_on_validation"]
    np.testing.assert_array_equal(arrays.logits(test_x), head.logits(test_x))
    np.testing.assert_array_equal(arrays.predict(test_x), head.logits(test_x).argmax(1))
    p = arrays.predict_proba(test_x)
    np.testing.assert_allclose(p.sum(1), 1, rtol=1e-5)


def test_a_head_saved_from_python_predicts_as_the_command_line(workdir, cli, clip, tmp_path):
    task = ca.load_cached_task(DATASET, 2, 1, cache=workdir / "cache")
    head = ca.fit("tip-adapter", **task.fit_arguments(), model=clip, progress=False)
    path = tmp_path / "head.safetensors"
    head.save(path)
    doc = cli("predict", "--adapter", path, "--top-k", len(task.classnames), "--json", *IMAGES)
    want = np.zeros((len(IMAGES), len(task.classnames)), dtype=np.float32)
    for i, r in enumerate(doc["results"]):
        for p in r["predictions"]:
            want[i, p["index"]] = p["probability"]
    got = head.predict_proba(clip.encode_images(IMAGES))
    np.testing.assert_array_equal(got, want)
    again = ca.Head.load(path)
    assert again.info["model_fingerprint"] == clip.fingerprint
    np.testing.assert_array_equal(again.predict_proba(clip.encode_images(IMAGES)), want)


def test_a_clip_lora_head_folds_into_a_model_that_scores_as_predict(workdir, cli, tmp_path):
    head = ca.fit_cached("clip-lora", DATASET, 2, 1, cache=workdir / "cache", progress=False,
                         iters_per_shot=3)
    assert head.input == "adapted"
    path = tmp_path / "lora.safetensors"
    head.save(path)
    merged = ca.merge_lora(path, tmp_path / "merged", progress=False)
    x = ca.Clip.load(merged, progress=False).encode_images(IMAGES)
    k = len(head.classnames)
    doc = cli("predict", "--adapter", path, "--top-k", k, "--json", *IMAGES)
    want = np.zeros((len(IMAGES), k), dtype=np.float32)
    for i, r in enumerate(doc["results"]):
        for p in r["predictions"]:
            want[i, p["index"]] = p["logit"]
    np.testing.assert_allclose(head.logits(x), want, atol=1e-3)
    with pytest.raises(ca.InputError, match="not empty"):
        ca.merge_lora(path, tmp_path / "merged", progress=False)


def test_without_validation_each_method_keeps_its_defaults(workdir):
    task = ca.load_cached_task(DATASET, 2, 1, cache=workdir / "cache")
    args = task.fit_arguments()
    del args["val_features"], args["val_labels"]
    head = ca.fit("clip-adapter", **args, epochs=3, progress=False)
    assert head.val_accuracy is None and head.test_accuracy is not None
    cached = ca.fit_cached("clip-adapter", DATASET, 2, cache=workdir / "cache",
                           validation="none", epochs=3, progress=False)
    np.testing.assert_array_equal(head.logits(args["test_features"]),
                                  cached.logits(args["test_features"]))
    with pytest.raises(ca.InputError, match="search"):
        ca.fit("clip-adapter", **args, search=[0.1, 0.2])


def test_errors_are_the_documented_exceptions(workdir):
    x = np.random.default_rng(0).normal(size=(6, 24)).astype(np.float32)
    w = np.random.default_rng(1).normal(size=(3, 24)).astype(np.float32)
    y = [0, 1, 2, 0, 1, 2]
    for cls in (ca.InputError, ca.ModelError, ca.CacheError, ca.MethodError):
        assert issubclass(cls, ca.ClipAdapterError)

    with pytest.raises(TypeError, match="alpha, beta"):
        ca.fit("tip-adapter", x, y, text_features=w, alhpa=1.0)
    with pytest.raises(ca.InputError, match="unknown method `nope`"):
        ca.fit("nope", x, y, text_features=w)
    with pytest.raises(ca.InputError, match="2-D"):
        ca.fit("tip-adapter", x[0], y, text_features=w)
    with pytest.raises(ca.InputError, match="label 7 is out of range"):
        ca.fit("tip-adapter", x, [0, 1, 7, 0, 1, 2], text_features=w)
    with pytest.raises(ca.InputError, match="option alpha: `much` is not a finite number"):
        ca.fit("tip-adapter", x, y, text_features=w, alpha="much")
    with pytest.raises(ca.InputError, match="`reduction` does not apply to tip-adapter"):
        ca.fit("tip-adapter", x, y, text_features=w, reduction=4)
    with pytest.raises(ca.InputError, match="coop trains prompts"):
        ca.fit("coop", x, y, text_features=w)
    with pytest.raises(ca.ModelError, match="no-such-model") as e:
        ca.Clip.load(str(workdir / "no-such-model"), progress=False)
    assert e.value.causes and str(e.value) == ": ".join(e.value.causes)
    with pytest.raises(ca.CacheError, match="no cached features of `nothing`"):
        ca.fit_cached("zero-shot", "nothing", 2, cache=workdir / "cache", progress=False)
    # The library's hint, in Python's words: the call that extracts what is missing.
    with pytest.raises(ca.CacheError) as e:
        ca.load_cached_task(DATASET, 16, 1, cache=workdir / "cache")
    data = str((workdir / "data").resolve())
    assert (
        f'run `clip_adapter.extract(model="{TINY_CLIP}", dataset=Dataset.folder("{data}", '
        f'split_seed=1), cache="{workdir / "cache"}", shots=16, seed=1)` first'
    ) in str(e.value), str(e.value)
    with pytest.raises(ca.InputError, match=r"`search` does not apply to validation=\"none\""):
        ca.fit_cached(
            "clip-adapter", DATASET, 2, cache=workdir / "cache", validation="none",
            search=[0.5, 1.0], progress=False,
        )
    with pytest.raises(ca.MethodError, match="diverged"):
        ca.fit("clip-adapter", x * 1e3, y, text_features=w, lr=1e30, epochs=3, progress=False)


def test_large_inputs_are_read_in_place(workdir):
    task = ca.load_cached_task(DATASET, 2, 1, cache=workdir / "cache")
    head = ca.fit("tip-adapter", **task.fit_arguments(), progress=False)
    x = np.random.default_rng(0).normal(size=(200_000, 24)).astype(np.float32)  # 19 MB

    tracemalloc.start()
    logits = head.logits(x)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    # The only numpy allocation is the (N, K) result: the input is not copied.
    assert peak < logits.nbytes + x.nbytes // 10, (peak, logits.nbytes)

    x64 = x.astype(np.float64)
    tracemalloc.start()
    head.logits(x64)
    _, peak64 = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    # float64 input is converted once (the measure sees copies when there are some).
    assert peak64 >= x.nbytes

    # Scoring by chunks gives the rows of scoring them in smaller calls (up to the rounding of
    # products of other sizes, as in the library).
    np.testing.assert_allclose(logits[:1000], head.logits(x[:1000]), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(logits[-5:], head.logits(x[-5:]), rtol=1e-5, atol=1e-5)


def test_prolip_takes_the_models_projection(workdir, clip):
    task = ca.load_cached_task(DATASET, 2, 1, cache=workdir / "cache")
    args = task.fit_arguments()
    pre = args["pre_projection"]
    weight, bias = clip.image_projection()
    np.testing.assert_array_equal(pre["weight"], weight)
    # The embeddings are the pre-projection features through the projection.
    z = pre["test"] @ weight.T + (0 if bias is None else bias)
    np.testing.assert_allclose(z, args["test_features"], rtol=1e-4, atol=1e-4)
    del pre["weight"], pre["bias"]
    with pytest.raises(ca.InputError, match="needs the projection"):
        ca.fit("prolip", **args, epochs=2)
    a = ca.fit("prolip", **args, model=clip, epochs=2, progress=False)
    assert a.input == "pre-projection"
    b = ca.fit("prolip", **task.fit_arguments(), epochs=2, progress=False)
    np.testing.assert_array_equal(a.logits(pre["test"]), b.logits(pre["test"]))


def test_coop_on_arrays_trains_through_the_text_tower_at_the_models_precision(workdir, clip):
    # Features encoded at bf16 come with a bf16 model: CoOp's text tower then multiplies in
    # bfloat16 too, and the head records the bf16 model.
    task = ca.load_cached_task(DATASET, 2, 1, cache=workdir / "cache")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a CPU without AVX512-BF16 is warned
        low = ca.Clip.load(str(TINY_CLIP), precision="bf16", progress=False)
    args = dict(**task.fit_arguments(), dataset=DATASET, seed=1, epochs=3, progress=False)
    full = ca.fit("coop", **args, model=clip)
    half = ca.fit("coop", **args, model=low)
    assert half.info["model_fingerprint"] == low.fingerprint
    assert low.fingerprint == clip.fingerprint + "+bf16"
    test_x = task.test[0]
    a, b = full.logits(test_x), half.logits(test_x)
    rel = np.abs(a - b).max() / np.abs(a).max()
    assert 1e-6 < rel < 2e-2, rel

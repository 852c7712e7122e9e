"""Datasets, CoOp's draw and extraction from Python: the command line's draws and cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import clip_adapter as ca
from conftest import DATASET, TINY_CLIP, image_folder


def test_a_folder_and_its_draw_are_the_command_lines(workdir, cli):
    d = ca.Dataset.folder(workdir / "data")
    assert d.name == DATASET and d.classnames == ["class 0", "class 1", "class 2"] or len(
        d.classnames) == 3
    assert len(d) == 24 and len(d.train) + len(d.val) + len(d.test) == 24
    path, label = d.train[0]
    assert path.exists() and 0 <= label < 3
    for seed in (1, 2):
        want = cli("fewshot", "--folder", "data", "--shots", 2, "--seed", seed, "--json",
                   cwd=workdir)
        got = d.few_shot(2, seed)
        for part in ("train", "val"):
            assert [p.name for p, _ in got[part]] == [w.split("/")[-1] for w in want[part]]


def test_extract_writes_the_command_lines_cache(workdir, tmp_path):
    bars = []
    data = image_folder(tmp_path / "data")
    out = ca.extract(str(TINY_CLIP), ca.Dataset.folder(data), shots=2, seed=1, views=2,
                     pre_projection=True, cache=tmp_path / "cache",
                     progress=lambda stage, done, total: bars.append((stage, done, total)))
    assert out["text"] is not None and all(not s["reused"] for s in out["sets"])
    assert all(s["encoded"] == s["rows"] > 0 and s["seconds"] > 0 for s in out["sets"])
    assert bars and all(total is None or done <= total for _, done, total in bars)
    # The same images as the session's folder: the same features as the command line's.
    mine = ca.load_cached_task(DATASET, 2, 1, cache=tmp_path / "cache")
    theirs = ca.load_cached_task(DATASET, 2, 1, cache=workdir / "cache")
    for part in ("train", "val", "test"):
        for a, b in zip(getattr(mine, part), getattr(theirs, part)):
            np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(mine.text_features, theirs.text_features)
    # A second extraction reuses every file.
    again = ca.extract(str(TINY_CLIP), ca.Dataset.folder(data), shots=2, seed=1, views=2,
                       pre_projection=True, cache=tmp_path / "cache", progress=False)
    assert all(s["reused"] and s["encoded"] == 0 for s in again["sets"])


def test_data_errors(tmp_path):
    with pytest.raises(ca.InputError):
        ca.Dataset.folder(tmp_path / "missing")
    with pytest.raises(ca.InputError, match="unknown"):
        ca.Dataset.benchmark("no-such-benchmark", tmp_path)
    assert "eurosat" in ca.benchmarks()


def test_manifests_and_split_files_are_read_as_the_command_line_reads_them(workdir, cli):
    import json

    data = workdir / "data"
    files = sorted(data.glob("*/*.bmp"))
    rows = ["path,label"] + [f"{f.relative_to(workdir)},{f.parent.name}" for f in files]
    (workdir / "list.csv").write_text("\n".join(rows) + "\n")
    m = ca.Dataset.manifest(workdir / "list.csv", split_seed=3)
    assert m.name == "list" and len(m) == len(files)
    want = cli("fewshot", "--manifest", "list.csv", "--split-seed", 3, "--shots", 2,
               "--json", cwd=workdir)
    got = m.few_shot(2)
    assert [str(p.relative_to(workdir)) for p, _ in got["train"]] == want["train"]

    parts = {"train": files[::3], "val": files[1::3], "test": files[2::3]}
    classes = sorted({f.parent.name for f in files})
    split = {k: [[str(f.relative_to(data)), classes.index(f.parent.name), f.parent.name]
                 for f in v] for k, v in parts.items()}
    (data / "split_zhou_Mine.json").write_text(json.dumps(split))
    s = ca.Dataset.split_file(data / "split_zhou_Mine.json", name="mine")
    assert s.name == "mine" and [p for p, _ in s.test] == parts["test"]
    want = cli("fewshot", "--split", data / "split_zhou_Mine.json", "--shots", 1, "--json")
    assert [str(p.relative_to(data)) for p, _ in s.few_shot(1)["train"]] == want["train"]


def test_features_made_elsewhere_import_and_fit_as_extracted_ones(workdir, tmp_path):
    """The command line's extraction, written out as `.npy` files the way another program
    would, imported under another name: a method fitted on it gives the same accuracies."""
    task = ca.load_cached_task(DATASET, 2, 1, cache=workdir / "cache")
    files = {}
    for part in ("train", "val", "test"):
        features, labels = getattr(task, part)
        files[part] = (str(tmp_path / f"{part}.npy"), str(tmp_path / f"{part}-labels.npy"))
        np.save(files[part][0], features)
        np.save(files[part][1], labels)
    # The classifier rows, and a second model of the text side: the model that encodes them.
    out = ca.import_features("elsewhere", task.classnames, train=files["train"],
                             val=files["val"], test=files["test"], shots=2, seed=1,
                             model=str(TINY_CLIP), cache=workdir / "cache", progress=False)
    assert out["dataset"] == "elsewhere" and len(out["sets"]) == 3
    ours = ca.fit_cached("tip-adapter", DATASET, 2, 1, cache=workdir / "cache")
    imported = ca.fit_cached("tip-adapter", "elsewhere", 2, 1, cache=workdir / "cache")
    assert imported.test_accuracy == ours.test_accuracy
    # A label outside the class names is refused, and nothing is written.
    bad = tmp_path / "bad-labels.npy"
    np.save(bad, np.full(len(task.test[1]), 7, dtype=np.int64))
    with pytest.raises(ca.InputError, match="label"):
        ca.import_features("refused", task.classnames, train=files["train"],
                           test=(files["test"][0], str(bad)), model=str(TINY_CLIP),
                           cache=workdir / "cache", progress=False)
    assert not (workdir / "cache" / "refused").exists()


def test_arrays_in_memory_import_as_their_npy_files(workdir, tmp_path):
    """The same arrays, given in memory and saved as `.npy` files: the same cache files (names,
    keys, features) and the same fits."""
    task = ca.load_cached_task(DATASET, 2, 1, cache=workdir / "cache")
    arrays = {p: getattr(task, p) for p in ("train", "val", "test")}
    files = {}
    for part, (x, y) in arrays.items():
        files[part] = (tmp_path / f"{part}.npy", tmp_path / f"{part}-labels.npy")
        np.save(files[part][0], x)
        np.save(files[part][1], y)
    np.save(tmp_path / "text.npy", task.text_features)
    caches = {"files": tmp_path / "files-cache", "memory": tmp_path / "memory-cache"}
    common = dict(shots=2, seed=1, logit_scale=task.logit_scale, progress=False)
    from_files = ca.import_features("imported", task.classnames,
                                    text_features=tmp_path / "text.npy", cache=caches["files"],
                                    **files, **common)
    # Features as float64, labels as int32 and as a list: converted as files of those types
    # are.
    memory = dict(arrays, train=(arrays["train"][0].astype(np.float64),
                                 arrays["train"][1].astype(np.int32)),
                  val=(arrays["val"][0], arrays["val"][1].tolist()))
    in_memory = ca.import_features("imported", task.classnames, text_features=task.text_features,
                                   cache=caches["memory"], **memory, **common)
    assert in_memory["model"] == from_files["model"]

    def names(out):
        return [Path(s["path"]).name for s in out["sets"]] + [Path(out["text"]).name]

    assert names(in_memory) == names(from_files) and len(names(in_memory)) == 4
    a = ca.load_cached_task("imported", 2, 1, cache=caches["files"])
    b = ca.load_cached_task("imported", 2, 1, cache=caches["memory"])
    for part in ("train", "val", "test"):
        for x, y in zip(getattr(a, part), getattr(b, part)):
            np.testing.assert_array_equal(x, y)
    np.testing.assert_array_equal(a.text_features, b.text_features)
    for method in ("tip-adapter", "linear-probe"):
        fa = ca.fit_cached(method, "imported", 2, 1, cache=caches["files"])
        fb = ca.fit_cached(method, "imported", 2, 1, cache=caches["memory"])
        assert (fa.val_accuracy, fa.test_accuracy) == (fb.val_accuracy, fb.test_accuracy)

    # The files' checks, naming the array; nothing is written.
    x, y = arrays["test"]
    nan = x.copy()
    nan[1, 3] = np.nan
    wide = np.zeros((len(y), x.shape[1] + 1), np.float32)
    cases = [
        (dict(test=(nan, y)), ["test features (in memory)", "NaN", "row 1, column 3"]),
        (dict(test=(x, np.full(len(y), 7))), ["test labels (in memory)", "label 7"]),
        (dict(test=(wide, y)), ["test features", f"{x.shape[1] + 1} wide"]),
        (dict(test=(x, y.astype(np.float32))), ["test labels (in memory)", "integer type"]),
        (dict(test=(x, y[:-1])), ["test labels (in memory)", f"({len(y)},)"]),
        (dict(test=(x, np.array(["a"] * len(y)))), ["test labels (in memory)", "<U1"]),
    ]
    for change, needles in cases:
        args = dict(arrays, **change)
        with pytest.raises(ca.InputError) as err:
            ca.import_features("refused", task.classnames, text_features=task.text_features,
                               cache=caches["memory"], **args, **common)
        for n in needles:
            assert n in str(err.value), (n, str(err.value))
        assert not (caches["memory"] / "refused").exists()

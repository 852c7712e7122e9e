"""Datasets, CoOp's draw and extraction from Python: the command line's draws and cache."""

from __future__ import annotations

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
    assert all(s["reused"] for s in again["sets"])


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

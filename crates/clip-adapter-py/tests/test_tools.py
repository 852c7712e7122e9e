"""The command line's tools from Python: a dataset's check (`datasets`), joining extraction
shards (`merge`) and pretraining a small CLIP (`pretrain`), each compared with the command
line's output on the same inputs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import clip_adapter as ca
from conftest import DATASET, TINY_CLIP, image_folder


def manifest_with_problems(root):
    """A manifest of generated images, one listed file missing and one that does not decode."""
    data = image_folder(root / "data")
    files = sorted(data.glob("*/*.bmp"))
    files[4].write_bytes(b"not an image at all")
    rows = ["path,label"] + [f"{f.relative_to(root)},{f.parent.name}" for f in files]
    rows.append("data/class_1/gone.bmp,class_1")
    (root / "list.csv").write_text("\n".join(rows) + "\n")
    return root / "list.csv", files[4]


def test_a_check_is_the_command_lines(tmp_path, cli):
    listing, corrupt = manifest_with_problems(tmp_path)
    calls = []
    report = ca.Dataset.manifest(listing).check(
        decode=True, progress=lambda stage, done, total: calls.append((stage, done, total)))
    [want] = cli("datasets", "--manifest", listing, "--decode", "--json", cwd=tmp_path,
                 fails=True)
    assert report.to_dict() == want
    assert report.decoded and report.missing == 1 and report.problems == 2
    assert [u["impath"] for u in report.unreadable] == [str(corrupt.relative_to(tmp_path))]
    assert [m for s in report.splits for m in s["missing"]] == ["data/class_1/gone.bmp"]
    assert report.listed == 25 and sum(c["train"] + c["val"] + c["test"]
                                       for c in report.per_class) == 25
    # Progress: the decoding stage, counting up to the images on disk.
    assert calls and {c[0] for c in calls} == {"decoding images"}
    assert calls[-1] == ("decoding images", 24, 24)
    assert [d for _, d, _ in calls] == sorted(d for _, d, _ in calls)
    # The text is the command line's.
    text = cli("datasets", "--manifest", listing, "--decode", cwd=tmp_path, fails=True)
    assert str(report).strip() == text.strip()
    assert "problems=2" in repr(report) and "unreadable=1" in repr(report)

    # Without decoding: the tally only, as the command line's.
    quick = ca.Dataset.manifest(listing).check(progress=False)
    [want] = cli("datasets", "--manifest", listing, "--json", cwd=tmp_path, fails=True)
    assert quick.to_dict() == want and not quick.decoded and quick.unreadable == []
    assert quick.problems == 1


def test_a_clean_folder_has_no_problems(workdir, cli):
    report = ca.Dataset.folder(workdir / "data").check(decode=True, progress=False)
    [want] = cli("datasets", "--folder", workdir / "data", "--decode", "--json")
    assert report.to_dict() == want and report.problems == 0
    assert "every image on disk decodes" in report.summary()


def test_shards_merge_as_the_command_line_merges_them(workdir, tmp_path, cli):
    data = image_folder(tmp_path / "data")
    for shard in ("0/2", "1/2"):
        ca.extract(str(TINY_CLIP), ca.Dataset.folder(data), shots=2, seed=1, views=2,
                   pre_projection=True, cache=tmp_path / "py-cache", shard=shard,
                   progress=False)
    shutil.copytree(tmp_path / "py-cache", tmp_path / "cli-cache")
    got = ca.merge(tmp_path / "py-cache")
    want = cli("merge", "--cache", tmp_path / "cli-cache", "--json")
    def strip(merged, root):
        return sorted((str(Path(m["path"]).relative_to(root)), m["shards"], m["rows"])
                      for m in merged)

    assert got and strip(got, tmp_path / "py-cache") == strip(want, tmp_path / "cli-cache")
    assert all(m["shards"] == 2 for m in got)
    for m in got:
        mine = Path(m["path"])
        theirs = tmp_path / "cli-cache" / mine.relative_to(tmp_path / "py-cache")
        assert mine.read_bytes() == theirs.read_bytes(), mine.name
    # The merged draw is the whole extraction the session made of the same images.
    merged = ca.load_cached_task(DATASET, 2, 1, cache=tmp_path / "py-cache")
    whole = ca.load_cached_task(DATASET, 2, 1, cache=workdir / "cache")
    for part in ("train", "val", "test"):
        for a, b in zip(getattr(merged, part), getattr(whole, part)):
            np.testing.assert_array_equal(a, b)
    # Merging again gives the same; a cache without shards merges nothing.
    assert ca.merge(tmp_path / "py-cache") == got
    (tmp_path / "empty").mkdir()
    assert ca.merge(tmp_path / "empty") == []
    with pytest.raises(ca.CacheError, match="no-such-cache"):
        ca.merge(tmp_path / "no-such-cache")


PRETRAIN = dict(seed=3, steps=2, batch_size=4, resnet_layers=[1, 1, 1, 1], resnet_width=4)


def test_pretraining_writes_the_command_lines_model(tmp_path, cli):
    calls = []
    got = ca.pretrain(tmp_path / "py-model",
                      progress=lambda stage, done, total: calls.append((stage, done, total)),
                      **PRETRAIN)
    cli("pretrain", "--out", tmp_path / "cli-model", "--seed", 3, "--steps", 2,
        "--batch-size", 4, "--resnet-layers", "1,1,1,1", "--resnet-width", 4)
    want = json.loads((tmp_path / "cli-model" / "pretrain.json").read_text())
    mine = json.loads((tmp_path / "py-model" / "pretrain.json").read_text())

    def without(d):
        return {k: v for k, v in d.items() if k not in ("seconds", "history", "evals")}

    assert without(got) == without(mine) == without(want)
    assert got["options"]["steps"] == 2 and got["parameters"] > 0
    for f in ("open_clip_model.safetensors", "open_clip_config.json", "tokenizer.json"):
        a, b = tmp_path / "py-model" / f, tmp_path / "cli-model" / f
        assert a.read_bytes() == b.read_bytes(), f
    assert [h["step"] for h in got["history"]] == [1, 2]
    assert got["history"][-1]["loss"] == pytest.approx(got["final_loss"])
    assert [e["step"] for e in got["evals"]] == [2]
    assert got["evals"][-1]["image_to_text"] == pytest.approx(got["retrieval"]["image_to_text"])
    assert calls == [("steps", 1, 2), ("steps", 2, 2)]
    clip = ca.Clip.load(str(tmp_path / "py-model"), progress=False)
    assert clip.encode_texts(["a red circle."]).shape == (1, clip.embed_dim)

    # A model already there is kept unless force=True; bad shapes name the option.
    with pytest.raises(ca.InputError, match="already exists"):
        ca.pretrain(tmp_path / "py-model", progress=False, **PRETRAIN)
    with pytest.raises(ca.InputError, match="resnet_layers"):
        ca.pretrain(tmp_path / "other", progress=False, **dict(PRETRAIN, resnet_layers=[1, 1]))
    with pytest.raises(ca.InputError, match="learning rate"):
        ca.pretrain(tmp_path / "other", lr=-1.0, progress=False, **PRETRAIN)
    assert not (tmp_path / "other").exists()
    again = ca.pretrain(tmp_path / "py-model", force=True, progress=False, **PRETRAIN)
    assert again["final_loss"] == got["final_loss"]

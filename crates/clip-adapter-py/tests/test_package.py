"""The package's surface: the stubs name what the module has, everything is documented, and
the method options are the library's."""

from __future__ import annotations

import ast
from pathlib import Path

import clip_adapter as ca
from clip_adapter import _native

STUBS = Path(_native.__file__).with_name("_native.pyi")


def stub_names():
    tree = ast.parse(STUBS.read_text())
    top, members = set(), {}
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            top.add(node.name)
        if isinstance(node, ast.ClassDef):
            members[node.name] = {
                n.name for n in node.body if isinstance(n, ast.FunctionDef)
            }
    return top, members


def test_the_stubs_describe_the_module():
    top, members = stub_names()
    public = {n for n in dir(_native) if not n.startswith("_") and n != "METHOD_OPTIONS"}
    assert public == top
    for cls, names in members.items():
        have = {n for n in dir(getattr(_native, cls)) if not n.startswith("_")}
        if issubclass(getattr(_native, cls), BaseException):
            continue
        assert names - {"__len__"} == have, cls


def test_everything_public_is_documented():
    for name in ca.__all__:
        obj = getattr(ca, name)
        if callable(obj):
            assert obj.__doc__, name
    for cls in (ca.Clip, ca.Head, ca.Dataset, ca.Task, ca.CheckReport):
        for name in dir(cls):
            if not name.startswith("_"):
                assert getattr(cls, name).__doc__ or name in {
                    "embed_dim", "image_size", "context_length", "classnames", "templates",
                    "name", "val", "test", "method", "dim", "logit_scale"}, (cls, name)


def test_method_options_are_the_librarys():
    assert "tip-adapter" in ca.methods() and ca.methods()[0] == "zero-shot"
    for m in ca.methods():
        assert set(ca.method_options(m)) <= set(ca.METHOD_OPTIONS), m
    assert "alpha" in ca.method_options("clip-adapter")


def test_progress_bars_follow_each_stage(clip):
    from clip_adapter import _progress

    class FakeBar:
        bars = []

        def __init__(self, total, desc, **_):
            self.total, self.desc, self.n, self.closed = total, desc, 0, False
            FakeBar.bars.append(self)

        def update(self, k):
            self.n += k

        def close(self):
            self.closed = True

    bars = _progress.TqdmProgress(FakeBar)
    images = [str(p) for p in __import__("conftest").IMAGES]
    clip.classify(images, ["a", "b"], progress=bars)
    assert [(b.desc, b.n, b.total, b.closed) for b in FakeBar.bars] == [
        ("encoding prompts", 2, 2, True),
        ("encoding images", len(images), len(images), True),
    ]
    # Under pytest stderr is captured, not a terminal: no bars by default.
    assert _progress.auto() is None


def test_a_failing_progress_callback_is_raised_after_the_work(clip):
    def progress(stage, done, total):
        raise KeyboardInterrupt

    try:
        clip.encode_images([str(p) for p in __import__("conftest").IMAGES], progress=progress)
    except KeyboardInterrupt:
        pass
    else:
        raise AssertionError("the callback's exception is raised")


def test_threads_are_set_before_the_pool_starts(clip):
    import pytest

    clip.encode_images([str(p) for p in __import__("conftest").IMAGES])
    with pytest.raises(ca.InputError, match="before anything else computes"):
        ca.set_threads(2)
    with pytest.raises(ca.InputError, match="at least 1"):
        ca.set_threads(0)


def test_the_sources_parse_as_python_3_9():
    """The wheel is abi3 from CPython 3.9: its Python sources (and stubs) must not use newer
    syntax (`match`, parenthesised context managers, ...), whatever interpreter runs the tests.
    """
    package = Path(ca.__file__).parent
    sources = sorted(package.glob("*.py")) + [STUBS]
    assert len(sources) >= 3
    for f in sources:
        ast.parse(f.read_text(), filename=str(f), feature_version=(3, 9))

"""clip-adapter from Python: few-shot adaptation of CLIP on cached features.

The same library as the ``clip-adapter`` command, with the same numbers::

    import clip_adapter as ca

    clip = ca.Clip.load("openai/clip-vit-base-patch32")
    x = clip.encode_images(["cat.jpg", "dog.jpg"])          # (2, 512) float32
    w = clip.text_classifier(["cat", "dog"])               # (2, 512), unit rows
    head = ca.fit("tip-adapter", x, [0, 1], text_features=w, logit_scale=clip.logit_scale)
    head.predict(x)

Every computation releases the GIL. Errors are ``ClipAdapterError`` subclasses
(``InputError``, ``ModelError``, ``CacheError``, ``MethodError``) whose message is the whole
chain of causes (also in ``err.causes``). See docs/python.md for a walk-through.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

from . import _native
from ._native import (
    METHOD_OPTIONS,
    CacheError,
    CheckReport,
    Clip,
    ClipAdapterError,
    Dataset,
    Head,
    InputError,
    MethodError,
    ModelError,
    Task,
    benchmarks,
    extract,
    import_features,
    tsne,
    fit,
    fit_cached,
    load_cached_task,
    merge,
    merge_lora,
    method_options,
    methods,
    pretrain,
    read_results,
    set_threads,
    tokenize,
)

__version__: str = _native.__version__

__all__ = [
    "METHOD_OPTIONS",
    "CacheError",
    "CheckReport",
    "Clip",
    "ClipAdapterError",
    "Dataset",
    "Head",
    "InputError",
    "MethodError",
    "ModelError",
    "Results",
    "Task",
    "benchmarks",
    "demo",
    "extract",
    "import_features",
    "tsne",
    "fit",
    "fit_cached",
    "load_cached_task",
    "merge",
    "merge_lora",
    "merge_results",
    "method_options",
    "methods",
    "pretrain",
    "read_results",
    "report",
    "rows_frame",
    "run",
    "set_threads",
    "sweep",
    "tokenize",
]

PathLike = Union[str, "os.PathLike[str]"]


def rows_frame(rows: Sequence[Dict[str, Any]]) -> Any:
    """The rows as a ``pandas.DataFrame`` (columns of results.csv); needs pandas."""
    try:
        import pandas as pd
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("rows_frame needs pandas: pip install pandas") from e
    return pd.DataFrame(list(rows))


@dataclass
class Results:
    """What ``run``, ``sweep`` and ``report`` give: the rows (dicts with the columns of
    results.csv) and the files written."""

    rows: List[Dict[str, Any]]
    #: The folder's report.md (``None`` for a shard, which writes no report).
    report: Optional[Path]
    figures: List[Path]
    results_csv: Optional[Path] = None
    #: The tables of the run or sweep (also in results.md / sweep-<option>.md).
    table: Optional[str] = None
    #: Rows fitted by this call (the others were already in results.csv).
    fitted: Optional[int] = None
    seconds: Optional[float] = None
    extra: Dict[str, Any] = field(default_factory=dict)

    def frame(self) -> Any:
        """The rows as a ``pandas.DataFrame``; needs pandas."""
        return rows_frame(self.rows)

    @classmethod
    def _from(cls, d: Dict[str, Any]) -> "Results":
        return cls(
            rows=list(d["rows"]),
            report=Path(d["report"]) if d.get("report") is not None else None,
            figures=[Path(f) for f in d["figures"]],
            results_csv=Path(d["results_csv"]) if d.get("results_csv") else None,
            table=d.get("table"),
            fitted=d.get("fitted"),
            seconds=d.get("seconds"),
            extra={k: d[k] for k in ("added", "shards") if k in d},
        )


def run(
    methods: Sequence[str],
    datasets: Sequence[str],
    *,
    shots: Sequence[int] = (1, 2, 4, 8, 16),
    seeds: Sequence[int] = (1, 2, 3),
    cache: PathLike = "clip-adapter-cache",
    out: PathLike = "results",
    model: Optional[str] = None,
    reported: Optional[PathLike] = None,
    validation: str = "val",
    protocol: str = "few-shot",
    source: Optional[str] = None,
    shard: Optional[str] = None,
    progress: Any = None,
    **options: Any,
) -> Results:
    """Runs the grid (``clip-adapter run``): every method on every dataset × shots × seed draw
    of the cache. Rows already in ``out``/results.csv are kept, not fitted again; results.md
    and the folder's report (report.md, figures/) are written. Options are keyword arguments
    (``METHOD_OPTIONS``), as for ``fit``; ``validation="none"`` fits without a validation set.
    ``protocol="base-to-new"`` trains on the first half of the classes and tests on both
    halves (rows' ``test_accuracy`` is then the base classes', ``new_accuracy`` the new ones').
    ``protocol="cross-dataset"`` or ``"domain"`` trains on ``source`` and tests the same head
    on each of ``datasets`` (rows name the source in ``source_dataset``).
    ``shard="i/n"`` fits only shard i's cost-balanced share of the grid (the same on every
    machine) into ``out``/results.shard-i-of-n.csv, with no report (``report`` is ``None``);
    ``merge_results(out)`` then joins the shards.
    """
    return Results._from(
        _native.run(list(methods), list(datasets), shots=list(shots), seeds=list(seeds),
                    cache=cache, out=out, model=model, reported=reported,
                    validation=validation, protocol=protocol, source=source, shard=shard,
                    progress=progress,
                    **options)
    )


def merge_results(
    folder: PathLike, *, reported: Optional[PathLike] = None, progress: Any = None
) -> Results:
    """Joins the results of a grid's shards (``run(..., shard="i/n", out=folder)``) into
    ``folder``/results.csv, row for row what one run writes (``clip-adapter merge --results``);
    refuses, writing nothing, while a shard is unfinished or when two shards' rows of one fit
    disagree. Then writes results.md and the folder's report. ``extra`` holds ``added`` (rows
    added) and ``shards``."""
    return Results._from(
        _native.merge_results(folder, reported=reported, progress=progress)
    )


def sweep(
    over: str,
    datasets: Sequence[str],
    *,
    values: Sequence[Union[int, float, str]] = (),
    shots: Sequence[int] = (16,),
    seeds: Sequence[int] = (1, 2, 3),
    cache: PathLike = "clip-adapter-cache",
    out: PathLike = "results",
    model: Optional[str] = None,
    validation: str = "val",
    progress: Any = None,
    **options: Any,
) -> Results:
    """The paper's ablations of CLIP-Adapter (``clip-adapter sweep``): ``over="reduction"``
    or ``"alpha"``, ``values`` the swept values (default: the paper's)."""
    return Results._from(
        _native.sweep(over, list(datasets), values=list(values), shots=list(shots),
                      seeds=list(seeds), cache=cache, out=out, model=model,
                      validation=validation, progress=progress, **options)
    )


def report(folder: PathLike, *, reported: Optional[PathLike] = None,
           progress: Any = None) -> Results:
    """Writes a results folder's report (``clip-adapter report``): report.md and the figures
    (SVG and PNG) in figures/. ``reported``: a CSV of published numbers to show beside."""
    return Results._from(_native.report(folder, reported=reported, progress=progress))


def demo(out: PathLike = "clip-adapter-demo", *, model: Optional[PathLike] = None,
         shots: Sequence[int] = (1, 2, 4, 8, 16), seeds: Sequence[int] = (1, 2, 3),
         tasks: Sequence[str] = (), progress: Any = None) -> Results:
    """The embedded demo (``clip-adapter demo``): generated tasks near and far from the
    embedded model's world, every method at ``shots`` × ``seeds``, the report in ``out``.
    ``Results.table`` is the report's Markdown."""
    return Results._from(_native.demo(out, model=model, shots=list(shots), seeds=list(seeds),
                                      tasks=list(tasks), progress=progress))

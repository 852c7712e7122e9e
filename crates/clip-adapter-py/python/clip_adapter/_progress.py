"""Progress bars for the library's long calls: one tqdm bar per stage ("encoding images",
"fits", "epochs", a cache set, ...), shown only where someone can see them (stderr is a
terminal, or a notebook is running) and only when tqdm is installed.

Any callable ``progress(stage, done, total)`` can be passed as ``progress=`` instead; ``False``
turns progress off.
"""

from __future__ import annotations

import sys
from typing import Any, Dict, Optional


def _in_notebook() -> bool:
    shell = sys.modules.get("IPython")
    if shell is None:
        return False
    try:
        ip = shell.get_ipython()  # type: ignore[attr-defined]
    except Exception:
        return False
    return ip is not None and "IPKernelApp" in getattr(ip, "config", {})


class TqdmProgress:
    """One tqdm bar per stage; a stage's bar closes when another stage starts."""

    def __init__(self, tqdm: Any) -> None:
        self._tqdm = tqdm
        self._bars: Dict[str, Any] = {}

    def __call__(self, stage: str, done: int, total: Optional[int]) -> None:
        bar = self._bars.get(stage)
        if bar is None:
            bar = self._tqdm(total=total, desc=stage, leave=False, dynamic_ncols=True)
            self._bars[stage] = bar
        if total is not None and bar.total != total:
            bar.total = total
        bar.update(done - bar.n)

    def close(self) -> None:
        for bar in self._bars.values():
            bar.close()
        self._bars.clear()


def auto() -> Optional[TqdmProgress]:
    """tqdm bars when tqdm is installed and stderr is a terminal or a notebook; else None."""
    try:
        if _in_notebook():
            from tqdm.auto import tqdm
        elif sys.stderr is not None and sys.stderr.isatty():
            from tqdm import tqdm
        else:
            return None
    except ImportError:
        return None
    return TqdmProgress(tqdm)

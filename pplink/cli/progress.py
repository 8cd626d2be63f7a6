"""Progress bars for long runs, shown on terminals only: rows encoded, and the stages of a match.

A match (``pplink coordinator match``) goes through stages (loading, blocking, comparing,
solving, writing) and some take tens of seconds at scale without a unit of work to count; a
:class:`StageProgress` shows each stage by name from its first second, with a clock that keeps
ticking between updates. Library code sees only a ``(done, total)`` callable; it announces a
new stage by calling the callable's ``stage(name, total)`` method when it has one
(``coordinator.linkage.compare.announce``).
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["StageProgress", "row_progress", "stage_progress"]

#: Seconds between redraws while a stage runs without updates (its clock keeps moving).
_TICK_SECONDS = 1.0


def _estimate_rows(path: Path) -> int | None:
    # Counting newlines in 64 KiB blocks is ~1 GB/s: cheap next to encoding.
    if path.suffix.lower() != ".csv":
        return None
    with open(path, "rb") as fh:
        return max(sum(block.count(b"\n") for block in iter(lambda: fh.read(1 << 16), b"")) - 1, 0)


@contextmanager
def row_progress(path: Path, *, enabled: bool | None, label: str) -> Iterator[Callable[[int], None] | None]:
    """Yield a callback that advances a tqdm bar by a number of rows, or None when disabled.

    Args:
        path: the input file (its lines estimate the total).
        enabled: True/False to force; None shows the bar only when stderr is a terminal.
        label: shown before the bar.
    """
    if enabled is None:
        enabled = sys.stderr.isatty()
    if not enabled:
        yield None
        return
    from tqdm import tqdm

    with tqdm(total=_estimate_rows(Path(path)), unit="rows", desc=label, file=sys.stderr) as bar:
        yield bar.update


class StageProgress:
    """A ``(done, total)`` callback that draws one bar per stage, from the stage's first second.

    Args:
        label: shown before each stage's name.
        file: where to draw (standard error by default).

    Examples:
        >>> import io
        >>> out = io.StringIO()
        >>> bar = StageProgress("match", file=out)
        >>> bar.stage("comparing", 4); bar(2, 4); bar.close()
        >>> "match: comparing" in out.getvalue() and "2/4" in out.getvalue()
        True
    """

    def __init__(self, label: str, *, file=None) -> None:  # type: ignore[no-untyped-def]
        self._label = label
        self._file = file if file is not None else sys.stderr
        self._bar = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None

    def stage(self, name: str, total: int | None = None) -> None:
        """Close the current stage's bar and open one for ``name``."""
        from tqdm import tqdm

        with self._lock:
            if self._bar is not None:
                self._bar.close()
            unit = "step" if total is not None else "s"
            self._bar = tqdm(desc=f"{self._label}: {name}", total=total, unit=unit, file=self._file,
                             bar_format=None if total is not None else "{desc} [{elapsed}]")
        if self._ticker is None:
            self._ticker = threading.Thread(target=self._tick, name="pplink-progress", daemon=True)
            self._ticker.start()

    def __call__(self, done: int, total: int) -> None:
        """Move the current stage's bar to ``done`` of ``total``."""
        with self._lock:
            if self._bar is None:
                return
            self._bar.total = total
            self._bar.n = done
            self._bar.refresh()

    def _tick(self) -> None:
        while not self._stop.wait(_TICK_SECONDS):
            with self._lock:
                if self._bar is not None:
                    self._bar.refresh()

    def close(self) -> None:
        """Close the last bar and stop the clock."""
        self._stop.set()
        with self._lock:
            if self._bar is not None:
                self._bar.close()
                self._bar = None


@contextmanager
def stage_progress(enabled: bool | None, label: str) -> Iterator[StageProgress | None]:
    """Yield a :class:`StageProgress` (closed on exit), or None when disabled.

    Args:
        enabled: True/False to force; None shows the bars only when stderr is a terminal.
        label: shown before each stage's name.
    """
    if enabled is None:
        enabled = sys.stderr.isatty()
    if not enabled:
        yield None
        return
    bar = StageProgress(label)
    try:
        yield bar
    finally:
        bar.close()

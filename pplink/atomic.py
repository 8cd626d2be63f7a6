r"""Atomic file writes: a reader sees the old file or the complete new one, never a part.

Every file pplink writes goes through :func:`atomic_file` (or :func:`atomic_write` for bytes in
memory): the data goes to a uniquely named temporary file in the target's own folder (a rename is
atomic only within one file system), the file is fsynced, renamed over the target, and the folder
is fsynced so the rename itself survives a power cut. A failure or a kill before the rename leaves
the target untouched and at most a hidden ``.<name>.<random>.partial`` file, which
:func:`remove_partials` clears.

>>> import tempfile
>>> folder = Path(tempfile.mkdtemp())
>>> atomic_write(folder / "a.txt", b"one")
>>> (folder / "a.txt").read_bytes(), oct((folder / "a.txt").stat().st_mode & 0o777)
(b'one', '0o644')
>>> with atomic_file(folder / "b.csv", text=True, mode=0o600) as fh:
...     _ = fh.write("x,y\n")
>>> oct((folder / "b.csv").stat().st_mode & 0o777), sorted(p.name for p in folder.iterdir())
('0o600', ['a.txt', 'b.csv'])
>>> import shutil; shutil.rmtree(folder)
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import IO, Any, TypeVar

__all__ = [
    "PARTIAL_SUFFIX",
    "atomic_file",
    "atomic_opened",
    "atomic_replace",
    "atomic_write",
    "fsync_dir",
    "remove_partials",
]

_Handle = TypeVar("_Handle", bound=AbstractContextManager[Any])

#: Every temporary file and folder pplink writes ends with this.
PARTIAL_SUFFIX = ".partial"


def fsync_dir(folder: Path) -> None:
    """Flush a folder's entries (a rename or a new file in it) to disk; a no-op where unsupported."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems (and Windows) cannot fsync a folder; the rename still happened
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_opened(path: Path, opener: Callable[[int], _Handle], *, mode: int = 0o644) -> Iterator[_Handle]:
    """A temporary file beside ``path``, opened by ``opener``; on a clean exit it becomes ``path`` atomically.

    ``opener`` takes the new file's descriptor (already given permission bits ``mode``) and returns
    a context manager that owns it: its ``__exit__`` closes the descriptor, and on a clean exit the
    block must leave the bytes on disk (fsynced) before the rename.

    Yields:
        What ``opener`` returned. If the block raises, the temporary file is removed and ``path``
        is untouched.
    """
    path = Path(path)
    folder = path.parent
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=PARTIAL_SUFFIX, dir=folder)
    tmp = Path(name)
    try:
        os.fchmod(fd, mode)
        handle = opener(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    try:
        with handle:
            yield handle
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(folder)


@contextmanager
def atomic_file(path: Path, *, mode: int = 0o644, text: bool = False, encoding: str = "utf-8",
                newline: str | None = "") -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path``; on a clean exit make it ``path`` atomically.

    Args:
        path: the file to write.
        mode: its permission bits (0o600 for anything only its owner may read); set before any
            byte is written, so a private file is never readable by others, even half-written.
        text: yield a text handle (``encoding``, ``newline``) rather than a binary one.
        encoding: the text encoding.
        newline: passed to :func:`open` (the default ``""`` leaves line endings as written).

    Yields:
        The open file. If the block raises, the temporary file is removed and ``path`` is untouched.
    """

    def opener(fd: int) -> IO[Any]:
        return os.fdopen(fd, "w", encoding=encoding, newline=newline) if text else os.fdopen(fd, "wb")

    with atomic_opened(path, opener, mode=mode) as fh:
        yield fh
        fh.flush()
        os.fsync(fh.fileno())


def atomic_write(path: Path, data: bytes | str, *, mode: int = 0o644) -> None:
    """Write ``data`` (``str`` as UTF-8) to ``path`` atomically, with permission bits ``mode``."""
    with atomic_file(path, mode=mode) as fh:
        fh.write(data.encode("utf-8") if isinstance(data, str) else data)


def atomic_replace(source: Path, target: Path) -> None:
    """Rename ``source`` (a file, or a folder onto an absent or empty one) to ``target`` durably."""
    os.replace(source, target)
    fsync_dir(Path(target).parent)
    if Path(source).parent != Path(target).parent:
        fsync_dir(Path(source).parent)


def remove_partials(folder: Path, *, of: str | None = None) -> list[Path]:
    """Remove the temporary files and folders an interrupted write left in ``folder``; return them.

    Only names ending in :data:`PARTIAL_SUFFIX` are touched, only directly in ``folder``, and with
    ``of`` only those of writes to the file of that name (``.<of>.<random>.partial``).
    """
    import shutil

    removed: list[Path] = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    prefix = f".{of}." if of is not None else ""
    for entry in folder.iterdir():
        if entry.name.endswith(PARTIAL_SUFFIX) and entry.name.startswith(prefix):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed.append(entry)
    return removed

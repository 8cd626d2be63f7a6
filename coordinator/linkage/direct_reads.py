"""Large files read around the page cache (``O_DIRECT``) into aligned buffers, where the system allows.

The read side of :mod:`coordinator.linkage.direct_writes`. Rounds are days apart and the state is
saved around the page cache, so a round's load finds the 2.26 GB state of 4 x 1M rows on disk,
not in memory. Read the ordinary way, every byte then goes through a fresh page of the page
cache: on the 2-core VM this project is measured on, a cold buffered read of the state ran at
~330-570 MB/s, the same file read with ``O_DIRECT`` into aligned buffers at 1.1-1.5 GB/s.

So :class:`DirectReader` reads a byte range as whole aligned blocks straight from the device
into a page-aligned buffer (:meth:`DirectReader.buffer`) and returns a view of the bytes asked
for (the kernel writes back any dirty pages of the range first, so the bytes are always the
file's). A long range whose first page is in the page cache (a state written the ordinary way,
or read moments ago) is copied from the cache instead: a one-byte ``RWF_NOWAIT`` read, which
only the cache answers, tells. Asking the cache for the whole range that way was tried and
dropped: each miss started the kernel's readahead of the range, which read ~45% of a cold state
a second time. Where ``O_DIRECT`` is refused (another OS, or a file system such as tmpfs), every
range is read the ordinary way. Either way a read returns exactly the file's bytes.
"""

from __future__ import annotations

import errno
import mmap
import os
from pathlib import Path

__all__ = ["DirectReader"]

#: The alignment ``O_DIRECT`` asks of offsets, lengths and memory (4096 covers every common device).
_ALIGN = 4096
#: Errors that mean the file system does not do ``O_DIRECT`` (not that the file is unreadable).
_REFUSED = (errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP)
#: Ranges this long or longer are read from the page cache when their first page is there.
_PROBED = 1 << 20


class DirectReader:
    """Reads byte ranges of one open file, around the page cache where allowed; safe to share between threads.

    Attributes:
        size: the file's size in bytes.
        direct: whether ranges are read with ``O_DIRECT`` (else the ordinary way).
    """

    def __init__(self, fd: int, path: Path) -> None:
        """Read the file open on ``fd`` (not taken over: the caller closes it), found at ``path``.

        The ``O_DIRECT`` descriptor is a second one opened on ``path``; it is used only when it
        opens the same file as ``fd`` (a file replaced in between is read through ``fd``).
        """
        self._fd = fd
        stat = os.fstat(fd)
        self.size = stat.st_size
        self._direct_fd = _open_direct(Path(path), stat)
        self.direct = self._direct_fd is not None
        self._nowait = getattr(os, "RWF_NOWAIT", 0)

    def buffer(self, length: int) -> mmap.mmap:
        """A page-aligned buffer that :meth:`read` can read up to ``length`` bytes into, wherever they start."""
        return mmap.mmap(-1, (length + 3 * _ALIGN - 1) // _ALIGN * _ALIGN)

    def read(self, offset: int, length: int, buffer: mmap.mmap) -> memoryview:
        """The file's bytes ``[offset, offset + length)`` as a view of ``buffer`` (shorter at the end of the file).

        Args:
            offset: where the range starts.
            length: its length.
            buffer: from :meth:`buffer` with at least ``length``; overwritten.
        """
        view = memoryview(buffer)
        if self._direct_fd is None or (length >= _PROBED and self._cached(offset)):
            return view[: _read_full(self._fd, view[:length], offset)]
        start = offset - offset % _ALIGN
        end = -(-(offset + length) // _ALIGN) * _ALIGN
        if end - start > len(buffer):
            raise ValueError("buffer too small")
        got = _read_full(self._direct_fd, view[: end - start], start)
        skip = offset - start
        return view[skip : max(skip, min(got, skip + length))]

    def _cached(self, offset: int) -> bool:
        """Whether the page at ``offset`` is in the page cache (then the range around it is read from there).

        One byte read with ``RWF_NOWAIT``, which only the cache answers. A miss starts the kernel's
        readahead of a few pages there, not of the range (which is why only one byte is asked).
        """
        if not self._nowait:
            return False
        try:
            return os.preadv(self._fd, [bytearray(1)], offset, self._nowait) == 1
        except OSError as exc:
            if exc.errno != errno.EAGAIN:  # no such reads here (an older kernel, another file system)
                self._nowait = 0
            return False

    def close(self) -> None:
        """Close the ``O_DIRECT`` descriptor (the caller's own stays open)."""
        if self._direct_fd is not None:
            os.close(self._direct_fd)
            self._direct_fd = None

    def __enter__(self) -> DirectReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _open_direct(path: Path, stat: os.stat_result) -> int | None:
    """A descriptor reading ``path`` with ``O_DIRECT``, if the file system allows it and it is ``stat``'s file."""
    flag = getattr(os, "O_DIRECT", 0)
    if not flag:
        return None
    try:
        fd = os.open(path, os.O_RDONLY | flag)
    except OSError:  # refused here, or the path no longer opens: the caller's descriptor still reads it
        return None
    try:
        mine = os.fstat(fd)
        if (mine.st_dev, mine.st_ino) != (stat.st_dev, stat.st_ino):
            os.close(fd)
            return None
        # Some file systems accept the flag and refuse the first aligned read: try one block now.
        probe = mmap.mmap(-1, _ALIGN)
        try:
            os.preadv(fd, [probe], 0)
        finally:
            probe.close()
        return fd
    except OSError as exc:
        os.close(fd)
        if exc.errno in _REFUSED:
            return None
        raise


def _read_full(fd: int, into: memoryview, offset: int) -> int:
    """Read into all of ``into`` from ``offset`` unless the file ends first; return the bytes read."""
    done = 0
    while done < len(into):
        got = os.preadv(fd, [into[done:]], offset + done)
        if got == 0:
            break
        done += got
    return done

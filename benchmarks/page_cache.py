"""What a benchmark needs of the page cache, without root: copy a file around it, warm it, drop it, measure it.

A round's load reads the encrypted state; whether the state sits in the page cache decides
whether that read is a copy from memory or a read from the device. Rounds are days apart and the
state is saved around the page cache, so a real round reads it *cold*; the benchmark times both.

- :func:`copy_around_cache` copies a file without leaving it in the cache (``O_DIRECT`` both ways
  where the file system allows: ~4 s for a 2.26 GB state here, where ``shutil.copytree``, which
  fills the cache, took 20-40 s); :func:`fresh_copy` copies a folder and then warms or evicts it;
- :func:`warm` reads a file through the cache, so the next read finds it there;
- :func:`evict` fsyncs a file and asks the kernel to drop its cached pages
  (``POSIX_FADV_DONTNEED``: clean pages of a file one may open, no privilege needed);
- :func:`cached_share` is the share of a file's pages in the cache (``mincore`` on a mapping of
  it, which faults nothing in), so a run can show that eviction took; ``None`` where unavailable.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import mmap
import os
import shutil
from pathlib import Path

__all__ = ["cached_share", "copy_around_cache", "copy_folder", "evict", "fresh_copy", "warm"]

_CHUNK = 32 << 20


def copy_around_cache(source: Path, target: Path) -> None:
    """Copy ``source`` to ``target`` (fsynced, owner-only), leaving neither in the page cache where allowed."""
    from coordinator.linkage.direct_reads import DirectReader
    from coordinator.linkage.direct_writes import DirectFile

    with open(source, "rb") as fh, DirectReader(fh.fileno(), source) as reader:
        buffer = reader.buffer(_CHUNK)
        with DirectFile.create(target, 0o600) as out:
            for offset in range(0, reader.size, _CHUNK):
                out.write(reader.read(offset, min(_CHUNK, reader.size - offset), buffer))


def copy_folder(source: Path, target: Path) -> None:
    """Replace the folder ``target`` with a copy of the folder ``source`` (its files), neither left in the cache."""
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    for path in sorted(source.iterdir()):
        copy_around_cache(path, target / path.name)


def fresh_copy(source: Path, target: Path, pattern: str, cache: str) -> float | None:
    """Copy the folder ``source`` to ``target``, its files matching ``pattern`` cached (``warm``) or not (``cold``).

    Returns:
        The share of those files' bytes in the page cache afterwards, measured (``None`` where it
        cannot be): ~1 warm, ~0 cold.
    """
    copy_folder(source, target)
    files = sorted(target.glob(pattern))
    for path in files:
        warm(path) if cache == "warm" else evict(path)
    shares = [cached_share(path) for path in files]
    sizes = [path.stat().st_size for path in files]
    if any(share is None for share in shares):
        return None
    return sum(share * size for share, size in zip(shares, sizes, strict=True)) / max(sum(sizes), 1)  # type: ignore[operator]


def warm(path: Path) -> None:
    """Read ``path`` through the page cache (so the next read of it is a copy from memory)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
        buffer = bytearray(_CHUNK)
        while os.readv(fd, [buffer]):
            pass
    finally:
        os.close(fd)


def evict(path: Path) -> None:
    """Write back ``path``'s dirty pages, then drop every cached page of it."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def cached_share(path: Path) -> float | None:
    """The share of ``path``'s pages in the page cache now (``None`` where ``mincore`` cannot be called)."""
    name = ctypes.util.find_library("c")
    if not name or not hasattr(mmap, "MAP_SHARED"):
        return None
    try:
        libc = ctypes.CDLL(name, use_errno=True)
        c_mmap, c_mincore, c_munmap = libc.mmap, libc.mincore, libc.munmap
    except (OSError, AttributeError):
        return None
    c_mmap.restype = ctypes.c_void_p
    c_mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    c_mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    c_munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    size = os.path.getsize(path)
    if size == 0:
        return 0.0
    pages = -(-size // mmap.PAGESIZE)
    status = (ctypes.c_ubyte * pages)()
    fd = os.open(path, os.O_RDONLY)
    try:  # a mapping of the file faults nothing in; mincore reports which of its pages are cached
        address = c_mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        if address in (None, ctypes.c_void_p(-1).value):
            return None
        try:
            if c_mincore(address, size, status) != 0:
                return None
        finally:
            c_munmap(address, size)
    finally:
        os.close(fd)
    return sum(byte & 1 for byte in bytes(status)) / pages

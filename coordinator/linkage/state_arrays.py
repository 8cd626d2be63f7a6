"""The state's per-row arrays in memory: room to grow, edited in place, loaded straight into place.

A round removes a few rows and appends a few. Copying every per-row array into new memory each
round (2.3 GB at 4 x 1M) costs more than the copy itself suggests: each fresh page is faulted in
on first touch. So the arrays that grow with the rows are views of larger buffers
(:func:`headroom` spare rows): a round moves the kept rows left in place (only the stretches
after the first removed row move) and writes the new rows after them, and touches no new memory
while the spare rows last. The band keys, ``(bands, n)``, have their spare room at the end of
each band's row, so each band stays one contiguous run of keys for the compare step.

Loading decrypts the base's segments straight into those buffers: the file's layout is
unchanged (each array's bytes in order; a band's keys are one piece, so a segment never spans
two bands), and a segment that does span two destinations (files written before this layout)
goes through a scratch buffer. Every segment is located in the file first (its length prefix),
so the segments are then read and decrypted on two threads, each straight into its own place.
The reads go around the page cache where the file system allows
(:mod:`coordinator.linkage.direct_reads`): a round finds its state on disk, not in memory, and a
cold buffered read of 2.26 GB ran at a third of the speed here. :func:`open_sealed` reads a
delta segment's file the same way, into one plaintext.
"""

from __future__ import annotations

import json
import mmap
import struct
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from queue import SimpleQueue

import numpy as np
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from coordinator.linkage.direct_reads import DirectReader

__all__ = ["COLUMN_ARRAYS", "ROW_ARRAYS", "array_pieces", "headroom", "keep_runs", "open_sealed", "read_sealed_arrays",
           "replace_rows", "small_pages"]

#: Arrays with one entry per live row along their first axis.
ROW_ARRAYS = ("party", "tokens", "clks", "added_day", "entity")
#: Arrays with one entry per live row along their second axis (``(bands, n)``).
COLUMN_ARRAYS = ("keys",)
_U32 = struct.Struct(">I")
#: Threads that decrypt a base file's segments at load (each decrypts into its own part of the arrays).
_LOAD_THREADS = 2


def headroom(rows: int) -> int:
    """Spare rows a buffer for ``rows`` rows gets: an eighth more, at least 65,536 (virtual until written)."""
    return rows // 8 + (1 << 16)


def _buffer(dtype: np.dtype, shape: tuple[int, ...], axis: int, rows: int) -> np.ndarray:
    """A view of ``rows`` rows (along ``axis``) of a new buffer with :func:`headroom` spare ones.

    The buffer is an anonymous memory map, not ``np.empty``: numpy asks the kernel for huge pages on
    large allocations, which on a host that compacts memory for them (``defrag = madvise``) made
    first-touching 2.2 GB take twice as long (1.6-2.0 s against 0.8-0.9 s, measured on the 2-core
    machine); its spare rows cost nothing until written.
    """
    full = list(shape)
    full[axis] = rows + headroom(rows)
    size = int(np.prod(full, dtype=np.int64)) * dtype.itemsize
    flat = np.frombuffer(mmap.mmap(-1, size), dtype=dtype) if size else np.empty(0, dtype=dtype)
    buffer = flat.reshape(full)
    return buffer[:rows] if axis == 0 else buffer[:, :rows]


@contextmanager
def small_pages() -> Iterator[None]:
    """Within the block, numpy does not ask the kernel for huge pages on its large allocations (restored after).

    The reason :func:`_buffer` uses anonymous maps, for the round's other arrays (edges, the
    re-solve's per-row arrays, candidate pairs): on a host that compacts memory for huge pages on
    demand (``defrag = madvise``), first-touching a fresh array stalled for up to a second, which
    made the same round's re-solve take 0.5 s one run and 1.8 s the next. The switch is numpy's
    own (what ``NUMPY_MADVISE_HUGEPAGE=0`` sets at import) and process-wide: it only changes how
    memory is requested, never a result. Where this numpy has no such switch, nothing changes.
    """
    try:
        from numpy._core.multiarray import _set_madvise_hugepage as switch
    except ImportError:  # another numpy layout: keep its default
        yield
        return
    before = switch(False)
    try:
        yield
    finally:
        switch(before)


def keep_runs(keep: np.ndarray) -> list[tuple[int, int]]:
    """The ``(start, end)`` stretches of kept rows, in order."""
    if keep.all():  # a round that removes nothing (most do): no pass over every row's flag
        return [(0, len(keep))] if len(keep) else []
    bounds = np.flatnonzero(np.diff(np.concatenate([[0], keep.view(np.int8), [0]])))
    return list(zip(bounds[::2].tolist(), bounds[1::2].tolist(), strict=True))


def _spare_room(old: np.ndarray, axis: int, rows: int) -> np.ndarray | None:
    """The buffer ``old`` leads (made by :func:`_buffer`) when it has room for ``rows`` rows along ``axis``."""
    flat = old.base
    if not isinstance(flat, np.ndarray) or flat.ndim != 1 or flat.dtype != old.dtype or not flat.flags.writeable:
        return None
    if old.ndim == 0 or old.__array_interface__["data"][0] != flat.__array_interface__["data"][0]:
        return None
    if axis == 0:
        if not old.flags.c_contiguous:
            return None
        per_row = int(np.prod(old.shape[1:], dtype=np.int64))
        full = (flat.size // max(per_row, 1), *old.shape[1:])
    else:
        if old.ndim != 2 or old.strides[1] != old.itemsize or old.strides[0] % old.itemsize:
            return None
        full = (old.shape[0], old.strides[0] // old.itemsize)
    size = int(np.prod(full, dtype=np.int64))
    if size > flat.size or full[axis] < rows:
        return None
    return flat[:size].reshape(full)


def replace_rows(old: np.ndarray, runs: list[tuple[int, int]], kept: int, new: np.ndarray, axis: int = 0) -> np.ndarray:
    """``old``'s rows in ``runs`` (``kept`` in all), then ``new``'s, along ``axis``; in place where there is room.

    Args:
        old: the array before the round (a view of its buffer, or any array).
        runs: the kept stretches (:func:`keep_runs`).
        kept: the number of kept rows.
        new: the rows to append.
        axis: 0 for per-row arrays, 1 for the ``(bands, n)`` keys.

    Returns:
        The new array: a view of ``old``'s buffer when it has room (``old`` is then overwritten),
        otherwise of a new buffer with :func:`headroom`.
    """
    total = kept + new.shape[axis]
    base = _spare_room(old, axis, total)
    if base is None:
        shape = list(old.shape)
        shape[axis] = total
        out = _buffer(old.dtype, tuple(shape), axis, total)
    else:
        out = base[:total] if axis == 0 else base[:, :total]
    target, source = (out, old) if axis == 0 else (out.T, old.T)
    pos = 0
    for start, end in runs:
        if base is None or pos != start:
            # In place, rows only move left; numpy copies overlapping stretches through a temporary.
            target[pos : pos + end - start] = source[start:end]
        pos += end - start
    target[kept:] = new if axis == 0 else new.T
    return out


def array_pieces(array: np.ndarray, by_row: bool = False) -> list[memoryview]:
    """An array's bytes in C order, as pieces that reference it (``by_row``: one piece per row, uncopied)."""
    if by_row and array.ndim == 2 and array.strides[1] == array.itemsize:
        return [memoryview(row.view(np.uint8)) for row in array if row.size]
    flat = np.ascontiguousarray(array).reshape(-1)
    return [memoryview(flat.view(np.uint8))] if flat.nbytes else []


def _allocate(name: str, dtype: np.dtype, shape: tuple[int, ...]) -> tuple[np.ndarray, list[memoryview]]:
    """The array ``name`` will be loaded into, and the byte regions that receive its bytes, in order."""
    if name in ROW_ARRAYS and len(shape) >= 1:
        array = _buffer(dtype, shape, 0, shape[0])
        return array, [memoryview(array.reshape(-1).view(np.uint8))] if array.nbytes else []
    if name in COLUMN_ARRAYS and len(shape) == 2:
        array = _buffer(dtype, shape, 1, shape[1])
        return array, [memoryview(row.view(np.uint8)) for row in array] if array.size else []
    array = np.empty(shape, dtype=dtype)
    return array, [memoryview(array.reshape(-1).view(np.uint8))] if array.nbytes else []


def read_sealed_arrays(reader: DirectReader, at: int, header: dict[str, object], head_digest: bytes, key: bytes,
                       dtypes: set[str]) -> tuple[dict[str, object], dict[str, np.ndarray]]:
    """Authenticate and decrypt a sealed state file (after its header) straight into its arrays.

    Args:
        reader: the file (read around the page cache where allowed).
        at: where its first segment starts (after the header).
        header: its header (segment count, nonce prefix).
        head_digest: the header's digest.
        key: the state key.
        dtypes: the dtypes an array may have.

    Returns:
        The metadata and the arrays (per-row ones with room to grow, see :func:`replace_rows`).

    Raises:
        InvalidTag: a segment fails authentication.
        ValueError: truncated, oversized, trailing bytes, or an inconsistent layout.
    """
    from coordinator.linkage.state_store import _SEGMENT, _aad

    segments, prefix = int(header["segments"]), bytes.fromhex(str(header["nonce_prefix"]))  # type: ignore[call-overload]
    size = reader.size
    if segments < 1 or size - at - segments * (4 + 16) < 0:
        raise ValueError("truncated")
    aead = AESGCM(key)
    # One aligned read buffer per thread, reused: a fresh 32 MB buffer per segment is 8,192 page faults.
    buffers: SimpleQueue[mmap.mmap] = SimpleQueue()
    for _ in range(_LOAD_THREADS):
        buffers.put(reader.buffer(_SEGMENT + 16))
    small = reader.buffer(4)
    scratch = memoryview(bytearray(_SEGMENT))

    def length_at(offset: int) -> int:
        """The ciphertext length of the segment whose length prefix is at ``offset``."""
        length = reader.read(offset, 4, small)
        if len(length) != 4:
            raise ValueError("truncated")
        (n,) = _U32.unpack(length)
        if not 16 <= n <= _SEGMENT + 16 or offset + 4 + n > size:
            raise ValueError("truncated")
        return n

    def decrypt(i: int, file_at: int, n: int, out: memoryview) -> None:
        """Read segment ``i`` (``n`` bytes at ``file_at``) and decrypt it into ``out``."""
        buffer = buffers.get()
        try:
            sealed = reader.read(file_at, n, buffer)
            if len(sealed) != n:
                raise ValueError("truncated")
            aead.decrypt_into(prefix + _U32.pack(i), sealed, _aad(head_digest, i, i == segments - 1), out)
        finally:
            buffers.put(buffer)

    # The metadata is the first piece: whole segments of its own.
    head, index = bytearray(), 0
    while index < segments and (len(head) < 4 or len(head) < 4 + _U32.unpack(head[:4])[0]):
        n = length_at(at)
        decrypt(index, at + 4, n, scratch[: n - 16])
        head += scratch[: n - 16]
        index, at = index + 1, at + 4 + n
    if len(head) < 4 or len(head) != 4 + _U32.unpack(head[:4])[0]:
        raise ValueError("layout")
    meta = json.loads(bytes(head[4:]))
    arrays, regions = {}, []
    for name, dtype, shape in meta.pop("arrays"):
        if dtype not in dtypes or not all(isinstance(d, int) and d >= 0 for d in shape):
            raise ValueError("unexpected dtype or shape")
        arrays[name], parts = _allocate(name, np.dtype(dtype), tuple(shape))
        regions.extend(parts)
    # Where each remaining segment lies in the file and where its plaintext goes: straight into one
    # region, or (spanning two, in files written before this layout) through a scratch buffer.
    plan: list[tuple[int, int, int, list[tuple[int, int, int]]]] = []  # (index, file offset, length, pieces)
    region, offset = 0, 0
    for i in range(index, segments):
        n = length_at(at)
        pieces, done = [], 0
        while done < n - 16:
            if region >= len(regions):
                raise ValueError("trailing bytes")
            take = min(n - 16 - done, len(regions[region]) - offset)
            pieces.append((region, offset, take))
            done, offset = done + take, offset + take
            if offset == len(regions[region]):
                region, offset = region + 1, 0
        plan.append((i, at + 4, n, pieces))
        at += 4 + n
    while region < len(regions) and len(regions[region]) == 0:
        region += 1
    if region != len(regions) or at != size:
        raise ValueError("truncated or trailing bytes")

    def open_segment(task: tuple[int, int, int, list[tuple[int, int, int]]]) -> None:
        i, file_at, n, pieces = task
        if len(pieces) == 1:
            r, o, take = pieces[0]
            decrypt(i, file_at, n, regions[r][o : o + take])  # straight into place
            return
        plain = memoryview(bytearray(n - 16))
        decrypt(i, file_at, n, plain)
        done = 0
        for r, o, take in pieces:
            regions[r][o : o + take] = plain[done : done + take]
            done += take

    # Two threads: reading and decryption release the GIL, and each segment has its own destination.
    # (The buffers are left to the collector: a failed segment's traceback may still hold a view of one.)
    with ThreadPoolExecutor(max_workers=_LOAD_THREADS) as pool:
        list(pool.map(open_segment, plan))
    return meta, arrays


def open_sealed(reader: DirectReader, at: int, header: dict[str, object], head_digest: bytes,
                key: bytes) -> bytearray:
    """Authenticate and decrypt the segments after a sealed file's header into one plaintext, streaming.

    Each segment is read into one reused aligned buffer (around the page cache where allowed) and
    decrypted straight into its place in the plaintext, so loading holds the plaintext and one
    segment, never the whole file twice.

    Args:
        reader: the file.
        at: where its first segment starts (after the header).
        header: its header.
        head_digest: the header's digest.
        key: the state key.

    Raises:
        InvalidTag: a segment fails authentication.
        ValueError: truncated, oversized or trailing bytes.
    """
    from coordinator.linkage.state_store import _SEGMENT, _aad

    segments, prefix = int(header["segments"]), bytes.fromhex(str(header["nonce_prefix"]))  # type: ignore[call-overload]
    # A well-formed file holds a 4-byte length and a 16-byte tag per segment around the plaintext.
    payload = reader.size - at - segments * (4 + 16)
    if segments < 0 or payload < 0:
        raise ValueError("truncated")
    plain = bytearray(payload)
    out = memoryview(plain)
    buffer = reader.buffer(_SEGMENT + 16)
    aead = AESGCM(key)
    done = 0
    for i in range(segments):
        length = reader.read(at, 4, buffer)
        if len(length) != 4:
            raise ValueError("truncated")
        (n,) = _U32.unpack(length)
        if not 16 <= n <= _SEGMENT + 16 or done + n - 16 > payload:
            raise ValueError("truncated")
        sealed = reader.read(at + 4, n, buffer)
        if len(sealed) != n:
            raise ValueError("truncated")
        aead.decrypt_into(prefix + _U32.pack(i), sealed, _aad(head_digest, i, i == segments - 1),
                          out[done : done + n - 16])
        done, at = done + n - 16, at + 4 + n
    if done != payload:
        raise ValueError("trailing bytes")
    return plain

"""Arrays that start on a 64-byte cache line: what the matching kernels read rows from.

The kernels read records' rows from all over their matrices: a 128-byte row (1024 bits, or 32
band keys) on a line boundary is two lines to load, where numpy's 16-byte alignment makes most
such rows three (comparing at 4 x 100k: 5-20% faster aligned, same process, alternating). Loaders
align what they read (:mod:`pplink.encfile`), so that the match need not copy the encodings again
(a second copy at 4 x 1M is 512 MB).
"""

from __future__ import annotations

import numpy as np

__all__ = ["empty_line_aligned", "line_aligned"]


def empty_line_aligned(shape: tuple[int, ...], dtype: type | np.dtype) -> np.ndarray:
    """An uninitialised C-contiguous array starting on a 64-byte cache line."""
    itemsize = np.dtype(dtype).itemsize
    size = int(np.prod(shape, dtype=np.int64))
    raw = np.empty(size + 64 // itemsize, dtype=dtype)
    lead = (-raw.ctypes.data % 64) // itemsize
    return raw[lead : lead + size].reshape(shape)


def line_aligned(array: np.ndarray) -> np.ndarray:
    """``array`` if it is C-contiguous and starts on a cache line, else such a copy (:func:`empty_line_aligned`)."""
    if array.flags.c_contiguous and array.ctypes.data % 64 == 0:
        return array
    out = empty_line_aligned(array.shape, array.dtype)
    out[...] = array
    return out

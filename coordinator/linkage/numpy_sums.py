"""Pairwise summation as numpy does it, compiled: sums in compiled code that equal ``np.add.reduce`` bit for bit.

Floating-point addition is not associative: a compiled loop that adds one value after another gives
another last bit than numpy's sum of the same values. Code that must agree with numpy's results
(a mixture fit's likelihood, a mean compared against a margin) sums with :func:`pairwise_sum`.
"""

from __future__ import annotations

import numpy as np
from numba import njit

__all__ = ["pairwise_sum"]

#: numpy's pairwise summation block (``PW_BLOCKSIZE``).
_BLOCK = 128


@njit(cache=True, nogil=True)
def _block_sum(values, start, n):  # noqa: ANN001, ANN202
    """The pairwise sum of at most 128 values, as numpy makes it: below 8 one by one from 0, else eight running sums."""
    if n < 8:
        total = 0.0
        for i in range(n):
            total += values[start + i]
        return total
    r0, r1, r2, r3 = values[start], values[start + 1], values[start + 2], values[start + 3]
    r4, r5, r6, r7 = values[start + 4], values[start + 5], values[start + 6], values[start + 7]
    i = 8
    while i < n - (n % 8):
        r0 += values[start + i]
        r1 += values[start + i + 1]
        r2 += values[start + i + 2]
        r3 += values[start + i + 3]
        r4 += values[start + i + 4]
        r5 += values[start + i + 5]
        r6 += values[start + i + 6]
        r7 += values[start + i + 7]
        i += 8
    total = ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7))
    while i < n:
        total += values[start + i]
        i += 1
    return total


@njit(cache=True, nogil=True)
def pairwise_sum(values, start, n):  # noqa: ANN001, ANN201
    """``np.add.reduce(values[start:start + n])``, bit for bit: numpy's pairwise summation.

    Up to 128 values, :func:`_block_sum`; above, the sum of the halves' sums (the first half a
    multiple of 8 long), each split again until a block. The tree is walked with a stack rather
    than by recursion: numba's cache cannot reload a recursive function (the reloaded call crashes).
    """
    if n <= _BLOCK:
        return _block_sum(values, start, n)
    starts = np.empty(64, dtype=np.int64)
    sizes = np.empty(64, dtype=np.int64)
    lefts = np.empty(64)
    right = np.zeros(64, dtype=np.bool_)  # whether a node's left half is summed (in lefts)
    top = 0
    starts[0], sizes[0] = start, n
    while True:
        # Down the left halves to a block.
        while sizes[top] > _BLOCK:
            half = sizes[top] // 2
            half -= half % 8
            right[top] = False
            starts[top + 1], sizes[top + 1] = starts[top], half
            top += 1
        value = _block_sum(values, starts[top], sizes[top])
        top -= 1
        # Up while a node's both halves are summed; at a node whose right half is not, go down it.
        descend = False
        while top >= 0:
            if not right[top]:
                half = sizes[top] // 2
                half -= half % 8
                lefts[top], right[top] = value, True
                starts[top + 1], sizes[top + 1] = starts[top] + half, sizes[top] - half
                top += 1
                descend = True
                break
            value = lefts[top] + value
            top -= 1
        if not descend:
            return value

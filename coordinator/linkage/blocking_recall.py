"""How many candidate pairs blocking loses: a blocked round against all pairs on the same encodings."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from coordinator.linkage.blocking import BlockingConfig
from coordinator.linkage.compare import Found
from coordinator.linkage.compare import compare_datasets as _compare
from coordinator.linkage.match import check_threshold
from coordinator.linkage.similarity import check_datasets
from pplink.models import PplinkModel

__all__ = ["BlockingRecall", "measure_blocking_recall"]


class BlockingRecall(PplinkModel):
    """How many all-pairs candidates blocking loses, measured on the same encodings.

    Attributes:
        threshold: the Dice threshold both runs used.
        records: records per dataset in the measurement (a sample if ``sampled``).
        sampled: whether the datasets were sampled down before measuring.
        all_pairs: distinct pairs at or above the threshold without blocking.
        found: how many of them blocking also finds.
        recall_loss: ``1 - found / all_pairs`` (0 when there are none).
        blocked_comparisons: comparisons the blocked run made.
        all_pairs_comparisons: comparisons all-pairs makes.
    """

    threshold: float
    records: tuple[int, ...]
    sampled: bool
    all_pairs: int
    found: int
    recall_loss: float
    blocked_comparisons: int
    all_pairs_comparisons: int


def _pair_codes(found: Found, sizes: Sequence[int]) -> np.ndarray:
    """One int64 per distinct found pair (global row of each side), for set comparisons."""
    if not found.sims:
        return np.zeros(0, dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    first = offsets[np.concatenate(found.dset_a)] + np.concatenate(found.rows_a)
    second = offsets[np.concatenate(found.dset_b)] + np.concatenate(found.rows_b)
    return np.unique(first * offsets[-1] + second)


def _sample(datasets: tuple[np.ndarray, ...], rows: int, seed: int) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    return tuple(d if len(d) <= rows else d[np.sort(rng.choice(len(d), rows, replace=False))] for d in datasets)


def measure_blocking_recall(
    datasets: Sequence[np.ndarray],
    threshold: float,
    *,
    blocking: BlockingConfig = BlockingConfig(),
    sample_rows: int | None = None,
    seed: int = 0,
    workers: int = 2,
) -> BlockingRecall:
    """Compare blocked candidates with all-pairs candidates on the same encodings.

    Whether a pair collides in a band does not depend on the other records (apart from the
    giant-bucket guard), so measuring on a random sample of rows estimates the full-size loss.

    Args:
        datasets: packed encodings, one ``uint8`` array per agency.
        threshold: the Dice threshold to count pairs at or above.
        blocking: the blocking settings to measure.
        sample_rows: measure on at most this many random rows per dataset (``None``: all rows;
            all-pairs costs ``n^2`` comparisons).
        seed: picks the sample rows.
        workers: threads to use.

    Returns:
        The all-pairs count, how many blocking found, and the loss.

    Raises:
        MatchError: as :func:`match_clks`.
    """
    datasets = check_datasets(datasets)
    threshold = check_threshold(threshold)
    sampled = sample_rows is not None and any(len(d) > sample_rows for d in datasets)
    if sample_rows is not None:
        datasets = _sample(datasets, sample_rows, seed)
    sizes = [len(d) for d in datasets]
    reference, *_ = _compare(datasets, threshold, None, workers, None, None)
    blocked, *_ = _compare(datasets, threshold, blocking, workers, None, None)
    expected, got = _pair_codes(reference, sizes), _pair_codes(blocked, sizes)
    found = int(np.isin(expected, got, assume_unique=True).sum())
    return BlockingRecall(
        threshold=threshold,
        records=tuple(sizes),
        sampled=sampled,
        all_pairs=len(expected),
        found=found,
        recall_loss=1.0 - found / len(expected) if len(expected) else 0.0,
        blocked_comparisons=blocked.comparisons,
        all_pairs_comparisons=reference.comparisons,
    )


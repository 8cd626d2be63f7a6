"""Compare blocking bands on a Ray cluster: the same pairs, clusters and histogram as a local match.

The driver (the coordinator) checks the encodings and computes band keys as a local match does,
puts the encodings, popcounts and keys in Ray's object store once (every worker on a node maps
the same shared-memory copy, read-only), and submits one task per group of bands
(:func:`coordinator.linkage.compare.compare_bands`, the same compiled kernels). Each task returns
only the pairs at or above the threshold, its histogram and its comparison count; the driver
merges them and clusters with anonlink's greedy solver exactly as :func:`~coordinator.linkage.
match.match_clks` does, so results are identical whatever the number of workers.

Ray is optional (``pip install 'pplink[ray]'``) and imported only when these functions run.
Sizing a cluster for large populations: ``docs/scaling.md``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from coordinator.linkage.blocking import BlockingConfig
from coordinator.linkage.compare import BAND_GROUP, Found, Progress, announce, blocking_stats, compare_bands, prepare
from coordinator.linkage.match import MatchResult, _solve, check_threshold
from coordinator.linkage.similarity import check_datasets
from pplink.errors import DependencyMissingError, MatchError

__all__ = ["RAY_INSTALL_HINT", "import_ray", "match_clks_on_ray"]

RAY_INSTALL_HINT = "comparing on Ray needs the optional Ray extra: pip install 'pplink[ray]'"


def import_ray() -> Any:
    """Import Ray, or refuse with the install hint.

    Raises:
        DependencyMissingError: Ray is not installed.
    """
    try:
        import ray
    except ImportError as err:
        raise DependencyMissingError(RAY_INSTALL_HINT) from err
    return ray


def _compare_remote(
    bands: range, words: tuple, pops: tuple, keys: tuple, sentinel: int, threshold: float, bins: int | None
) -> Found:
    """One Ray task: score a group of bands (the arrays come read-only from the object store)."""
    return compare_bands(bands, words, pops, keys, sentinel, threshold, bins)


def match_clks_on_ray(
    datasets: Sequence[np.ndarray],
    threshold: float,
    *,
    blocking: BlockingConfig = BlockingConfig(),
    bands_per_task: int = BAND_GROUP,
    workers: int = 2,
    progress: Progress | None = None,
    histogram_bins: int | None = 100,
) -> MatchResult:
    """Link records across datasets as :func:`~coordinator.linkage.match.match_clks`, comparing on Ray.

    Ray must already be initialised (``ray.init(address=...)`` for a cluster, or a local one);
    tasks run wherever Ray schedules them, one CPU each.

    Args:
        datasets: packed encodings, one ``uint8`` array per agency.
        threshold: Dice similarity at or above which two records may be linked, in (0, 1].
        blocking: blocking settings (Ray is for data too large to compare all pairs).
        bands_per_task: bands per Ray task; fewer mean more, smaller tasks.
        workers: threads for the driver's own steps (band keys).
        progress: called with ``(bands done, bands)`` as tasks finish, and told the stages.
        histogram_bins: as for ``match_clks``.

    Returns:
        The same clusters, stats (but timings) and histogram as ``match_clks`` gives.

    Raises:
        MatchError: as ``match_clks``, or Ray is not initialised.
        DependencyMissingError: Ray is not installed.
    """
    ray = import_ray()
    if not ray.is_initialized():
        raise MatchError("Ray is not initialised: call ray.init(address=...) before comparing on Ray")
    started = time.perf_counter()
    datasets = check_datasets(datasets)
    threshold = check_threshold(threshold)
    if bands_per_task < 1:
        raise MatchError(f"bands_per_task must be at least 1, got {bands_per_task}")
    if histogram_bins is not None and histogram_bins < 2:
        raise MatchError(f"histogram_bins must be at least 2, got {histogram_bins}")
    announce(progress, "blocking", blocking.bands)
    prepared = prepare(datasets, blocking, workers, progress if hasattr(progress, "stage") else None)
    keyed = time.perf_counter()
    announce(progress, "comparing", blocking.bands)
    band_keys = prepared.band_keys
    refs = [ray.put(prepared.words), ray.put(prepared.pops), ray.put(band_keys.keys)]
    remote = ray.remote(num_cpus=1)(_compare_remote)
    pending = {
        remote.remote(
            range(first, min(first + bands_per_task, band_keys.bands)), *refs, band_keys.sentinel, threshold,
            histogram_bins,
        ): min(bands_per_task, band_keys.bands - first)
        for first in range(0, band_keys.bands, bands_per_task)
    }  # fmt: skip
    found = Found.empty(histogram_bins)
    done = 0
    if progress:
        progress(0, band_keys.bands)
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        found.merge(ray.get(ready[0]))
        done += pending.pop(ready[0])
        if progress:
            progress(done, band_keys.bands)
    seconds = (keyed - started, time.perf_counter() - keyed)
    stats = blocking_stats(band_keys, found)
    return _solve(datasets, threshold, found, blocking, stats, seconds, workers, started, progress)

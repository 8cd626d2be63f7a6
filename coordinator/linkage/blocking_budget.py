"""The coordinator's blocking policy: all pairs when affordable, else the densest blocking a budget allows.

A round whose all-pairs count is at most :data:`ALL_PAIRS_LIMIT` scores every pair. Beyond it the
round spends about what it could have afforded: a comparison budget of
``max(ALL_PAIRS_LIMIT, PER_RECORD_BUDGET * records)``. Of the settings in :data:`LADDER` (sparsest
first: fewer bits per band and more bands find more of the true links at low thresholds, at more
comparisons), the round takes the densest whose estimated comparisons fit the budget, and never
one sparser than the first (96 bands of 21 bits, the long-standing default).

The estimate needs no comparison: on a seeded sample of rows per agency, every band key of a
setting is computed, and the cross-agency pairs of each band's buckets are counted from the keys
and scaled by the agencies' sampling fractions. A random pair collides in a band independently
of the other records (apart from the giant-bucket guard, which only removes pairs), so the scaled
count estimates the full round's comparisons. The same data give the same sample, estimates and
choice.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from coordinator.linkage.blocking import BlockingConfig, _pack_bits, bit_frequencies, choose_band_bits
from pplink.models import PplinkModel

__all__ = [
    "ALL_PAIRS_LIMIT",
    "BUDGET_SAMPLE_ROWS",
    "LADDER",
    "PER_RECORD_BUDGET",
    "BlockingChoice",
    "all_pairs_count",
    "choose_blocking",
    "comparison_budget",
    "estimate_comparisons",
]

#: Up to this many cross-agency comparisons, every pair is scored (exact; anonlink's all-pairs
#: Dice, ~45 s for the 2.9e8 pairs of the 27,724-record household set in an automatic round on the
#: shared 2-core machine); beyond it, LSH blocking chosen by :func:`choose_blocking` compares at most
#: about as many pairs (with the compiled band kernel: ~1 s), then a number that grows with the records.
ALL_PAIRS_LIMIT = 200_000_000

#: Comparisons per record a blocked round may spend once its size makes that more than
#: ``ALL_PAIRS_LIMIT``: 96 x 21 makes ~290 per record at 4 x 100k synthetic records, 20 x 128
#: already ~600 (docs/scaling.md), so rounds of that size keep the fast default.
PER_RECORD_BUDGET = 500

#: ``(bits_per_band, bands)``, sparsest first; each step compares more pairs and misses fewer true
#: links at low thresholds (measured: docs/scaling.md, "Blocking density from a comparison budget").
LADDER: tuple[tuple[int, int], ...] = ((21, 96), (20, 128), (19, 128), (18, 128), (17, 160), (16, 192), (16, 256),
                                       (15, 256))

#: Rows per agency whose band keys the estimate counts: 4 agencies give ~2.4e7 sampled pairs,
#: thousands of sampled collisions at any setting that fits a budget.
BUDGET_SAMPLE_ROWS = 2000


class BlockingChoice(PplinkModel):
    """How a round's blocking was chosen, recorded with the round's stats.

    Attributes:
        method: ``"all-pairs"`` (affordable), ``"budget"`` (chosen here) or ``"given"`` (an explicit setting).
        all_pairs: the round's cross-agency pairs.
        budget: the comparisons the round may spend (``None`` unless chosen by budget).
        bits_per_band: the setting used (``None`` for all pairs).
        bands: the setting used (``None`` for all pairs).
        estimated_comparisons: the chosen setting's estimate (``None`` unless chosen by budget).
        estimates: every setting estimated, ``"BITSxBANDS"`` to its estimated comparisons.
    """

    method: str
    all_pairs: int
    budget: int | None = None
    bits_per_band: int | None = None
    bands: int | None = None
    estimated_comparisons: int | None = None
    estimates: dict[str, int] = {}

    def config(self, base: BlockingConfig | None = None) -> BlockingConfig | None:
        """The chosen setting as a :class:`BlockingConfig` (``base``'s other fields), ``None`` for all pairs."""
        if self.bits_per_band is None or self.bands is None:
            return None
        fields = (base or BlockingConfig()).model_dump() | {"bits_per_band": self.bits_per_band, "bands": self.bands}
        return BlockingConfig(**fields)


def all_pairs_count(sizes: Sequence[int]) -> int:
    """Cross-agency pairs of a round with these agency sizes.

    >>> all_pairs_count([3, 4, 5])
    47
    """
    return sum(a * b for i, a in enumerate(sizes) for b in sizes[i + 1 :])


def comparison_budget(sizes: Sequence[int]) -> int:
    """Comparisons a blocked round may spend: what a round at ``ALL_PAIRS_LIMIT`` costs, or more per record.

    >>> comparison_budget([100_000] * 4) == ALL_PAIRS_LIMIT
    True
    >>> comparison_budget([1_000_000] * 4)
    2000000000
    """
    return max(ALL_PAIRS_LIMIT, PER_RECORD_BUDGET * int(sum(sizes)))


def _sample(datasets: Sequence[np.ndarray], rows: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [d if len(d) <= rows else d[np.sort(rng.choice(len(d), rows, replace=False))] for d in datasets]


def estimate_comparisons(
    datasets: Sequence[np.ndarray],
    config: BlockingConfig,
    *,
    sample: Sequence[np.ndarray] | None = None,
    frequencies: np.ndarray | None = None,
    sample_rows: int = BUDGET_SAMPLE_ROWS,
) -> float:
    """Estimate the comparisons ``config`` makes on ``datasets`` from a sample's band keys (no comparison).

    Every band's cross-agency pairs of equal keys are counted on the sample, each agency's records
    weighted by its size over its sample size: the estimated pairs per band, summed over bands (a
    pair sharing two bands is compared in both, as the round counts it).

    Args:
        datasets: packed encodings, one ``uint8`` array per agency.
        config: the setting to estimate.
        sample: the sampled rows of each dataset (default: ``sample_rows`` seeded by ``config.seed``).
        frequencies: bit frequencies as :func:`~coordinator.linkage.blocking.bit_frequencies` gives
            them on ``datasets`` (default: computed), so the bands are the round's own.
        sample_rows: rows per agency when ``sample`` is not given.

    Returns:
        The estimated comparisons.

    Raises:
        ValueError: ``config`` has more than 30 bits per band (keys are counted as 32-bit values).

    Examples:
        >>> rng = np.random.default_rng(1)
        >>> data = [rng.integers(0, 256, (300, 128), dtype=np.uint8) for _ in range(2)]
        >>> estimate_comparisons(data, BlockingConfig(bits_per_band=4, bands=10)) > 0
        True
    """
    if config.bits_per_band > 30:
        raise ValueError("comparison estimates cover settings of at most 30 bits per band")
    from coordinator.linkage.block_kernels import bucket_pair_weights

    if frequencies is None:
        frequencies = bit_frequencies(datasets, seed=config.seed)
    if sample is None:
        sample = _sample(datasets, sample_rows, config.seed)
    positions = choose_band_bits(frequencies, config)[:, : config.bits_per_band]
    weights = np.array([len(d) / len(s) if len(s) else 0.0 for d, s in zip(datasets, sample, strict=True)])
    # Agencies in the low bits of each band's (key, agency) codes, so that one sort groups the buckets.
    owner_bits = max(1, (len(sample) - 1).bit_length())
    present = [d for d, s in enumerate(sample) if len(s)]
    if not present:
        return 0.0
    keys = tuple(_pack_bits(sample[d], positions, np.uint32) for d in present)
    values = np.empty(sum(len(k) for k in keys) * config.bands)
    count = bucket_pair_weights(keys, np.array(present, dtype=np.int64), weights, owner_bits, values)
    # numpy's (pairwise) sum over the buckets in (band, key) order, as the estimate was first summed.
    return float(values[:count].sum())


def choose_blocking(
    datasets: Sequence[np.ndarray],
    *,
    budget: int | None = None,
    base: BlockingConfig | None = None,
    ladder: Sequence[tuple[int, int]] = LADDER,
    sample_rows: int = BUDGET_SAMPLE_ROWS,
) -> BlockingChoice:
    """All pairs when affordable, else the densest setting of ``ladder`` whose estimate fits the budget.

    Settings are estimated sparsest first and the search stops at the first that does not fit
    (denser ones compare more still); the first setting is used even when it does not fit.

    Args:
        datasets: packed encodings, one ``uint8`` array per agency.
        budget: comparisons the round may spend (default :func:`comparison_budget` of the sizes); a
            budget given also chooses a setting for a round that all pairs would fit.
        base: seed, bucket guard and frequency bounds of the settings (default :class:`BlockingConfig`'s).
        ladder: ``(bits_per_band, bands)`` settings, sparsest first.
        sample_rows: rows per agency the estimates count.

    Returns:
        The choice, with every estimate made.
    """
    sizes = [len(d) for d in datasets]
    pairs = all_pairs_count(sizes)
    if pairs <= ALL_PAIRS_LIMIT and budget is None:
        return BlockingChoice(method="all-pairs", all_pairs=pairs)
    budget = comparison_budget(sizes) if budget is None else budget
    base = base or BlockingConfig()
    sample = _sample(datasets, sample_rows, base.seed)
    # The sample's frequencies, not the round's (a full pass): the bands may differ in a position
    # near the frequency bounds, which moves an estimate by less than the sampling does.
    frequencies = bit_frequencies(sample, seed=base.seed)
    estimates: dict[str, int] = {}
    chosen = None
    for bits, bands in ladder:
        config = BlockingConfig(**(base.model_dump() | {"bits_per_band": bits, "bands": bands}))
        estimate = int(round(estimate_comparisons(datasets, config, sample=sample, frequencies=frequencies)))
        estimates[f"{bits}x{bands}"] = estimate
        if chosen is not None and estimate > budget:
            break
        chosen = (bits, bands, estimate)
        if estimate > budget:  # the sparsest setting is the floor, even over budget
            break
    assert chosen is not None
    return BlockingChoice(method="budget", all_pairs=pairs, budget=budget, bits_per_band=chosen[0],
                          bands=chosen[1], estimated_comparisons=chosen[2], estimates=estimates)

"""A second, denser blocking pass among the records the first pass left without a partner.

A round whose comparison budget forces a sparse LSH setting (21 x 96 from a few hundred thousand
records) misses true links that agree on too few sampled bits, mostly near the low thresholds an
automatic round chooses. Such a missed link ``(a, b)`` between agencies A and B almost always
leaves ``a`` with no partner in B and ``b`` with none in A. So after the first solve, for each
agency pair, the records of A not linked to any record of B are compared with the records of B
not linked to any of A with a denser setting, and the pairs found join the first pass's
candidates before the round solves again. Its setting is the densest of the budget ladder whose
comparisons, estimated on the partnerless subsets as the budget estimates a round's, fit what
the first pass left of the round's budget; a subset of a share ``p`` of the records costs about
``p**2`` of the same setting over every record (docs/scaling.md, "A second pass").

Everything here is a pure function of the encodings, the first solve and the settings: the same
inputs give the same pairs (the dense setting's bands are chosen from the subsets' own bit
frequencies with its seed).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from coordinator.linkage.blocking import BlockingConfig
from coordinator.linkage.blocking_budget import LADDER, BlockingChoice, estimate_comparisons
from coordinator.linkage.candidate_order import candidate_order
from coordinator.linkage.compare import compare_datasets as _compare
from coordinator.linkage.match import Candidates, MatchResult, solve_candidates
from coordinator.linkage.mixture import ScoreHistogram

__all__ = [
    "SECOND_PASS_BELOW",
    "SecondPass",
    "add_second_pass",
    "partnerless",
    "rematch_with_second_pass",
    "second_pass_budget",
    "choose_second_setting",
    "provisional_threshold",
    "wants_second_pass",
]

#: A round whose provisional threshold (fitted on the first pass alone) is at least this makes no
#: second pass: 21 x 96 loses at most 0.56% of the true links at >= 0.75 on every quality dataset
#: (FEBRL 3; 0.25% at 0.8), and on `pplink synth`-like data, whose thresholds sit at 0.75-0.8, the
#: pass would double the comparisons for nothing (docs/scaling.md).
SECOND_PASS_BELOW = 0.75


@dataclass(frozen=True)
class SecondPass:
    """What the second pass compared and found.

    Attributes:
        config: the dense setting.
        rows: per agency pair ``(a, b)``, the partnerless rows of ``a`` and of ``b`` it compared.
        comparisons: pair similarities it computed.
        added: candidate pairs it found that the first pass had not.
    """

    config: BlockingConfig
    rows: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]]
    comparisons: int
    added: int


def second_pass_budget(choice: BlockingChoice, threshold: float | None) -> float | None:
    """What a round's second pass may spend: the budget its first pass left; ``None``: no second pass.

    Only automatic rounds whose blocking the budget chose make one, and only with budget left (the
    first pass's estimate under the budget): the round's estimated comparisons stay within its
    budget. Fixed-threshold rounds (and the incremental engine, which keeps its own blocking) make
    none: their clusters stay those of one blocking setting.

    >>> choice = BlockingChoice(method="budget", all_pairs=10**12, budget=2 * 10**8, estimated_comparisons=10**8)
    >>> second_pass_budget(choice, None), second_pass_budget(choice, 0.8)
    (100000000, None)
    """
    if threshold is not None or choice.method != "budget" or choice.budget is None:
        return None
    left = choice.budget - (choice.estimated_comparisons or 0)
    return left if left > 0 else None


def choose_second_setting(
    datasets: Sequence[np.ndarray],
    rows: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]],
    first: BlockingConfig,
    budget: float,
    *,
    ladder: Sequence[tuple[int, int]] = LADDER,
) -> tuple[BlockingConfig | None, dict[str, int]]:
    """The densest ladder setting denser than ``first`` whose estimated comparisons on the partnerless rows fit.

    Each setting's comparisons are estimated as :mod:`coordinator.linkage.blocking_budget` estimates a
    round's, summed over the agency pairs' partnerless subsets; settings are tried sparsest first
    and the search stops at the first over ``budget``.

    Args:
        datasets: packed encodings, one array per agency.
        rows: per agency pair, its partnerless rows (:func:`partnerless`).
        first: the first pass's setting (its seed, guard and bounds are kept).
        budget: comparisons the second pass may spend.
        ladder: ``(bits_per_band, bands)`` settings, sparsest first.

    Returns:
        The setting (``None`` when none denser than ``first`` fits) and every estimate made.
    """
    denser = [s for s in ladder if s[1] > first.bands or (s[1] == first.bands and s[0] < first.bits_per_band)]
    subsets = [(datasets[a][ra], datasets[b][rb]) for (a, b), (ra, rb) in rows.items() if len(ra) and len(rb)]
    chosen, estimates = None, {}
    for bits, bands in denser:
        config = BlockingConfig(**(first.model_dump() | {"bits_per_band": bits, "bands": bands}))
        estimate = int(round(sum(estimate_comparisons(list(pair), config) for pair in subsets)))
        estimates[f"{bits}x{bands}"] = estimate
        if estimate > budget:
            break
        chosen = config
    return chosen, estimates


def partnerless(labels: Sequence[np.ndarray]) -> dict[tuple[int, int], tuple[np.ndarray, np.ndarray]]:
    """Per agency pair ``(a, b)``, the rows of ``a`` whose cluster holds no record of ``b``, and of ``b`` none of ``a``.

    >>> out = partnerless([np.array([0, 1, 2]), np.array([1, 3])])
    >>> [r.tolist() for r in out[(0, 1)]]
    [[0, 2], [1]]
    """
    out = {}
    for a in range(len(labels)):
        for b in range(a + 1, len(labels)):
            out[(a, b)] = (np.flatnonzero(~np.isin(labels[a], labels[b])),
                           np.flatnonzero(~np.isin(labels[b], labels[a])))
    return out


def _order(sims: np.ndarray, d_a: np.ndarray, d_b: np.ndarray, r_a: np.ndarray, r_b: np.ndarray) -> Candidates:
    order = candidate_order(sims, d_a, d_b, r_a, r_b)
    return sims[order], (d_a[order], d_b[order]), (r_a[order], r_b[order])


def add_second_pass(
    datasets: Sequence[np.ndarray],
    labels: Sequence[np.ndarray],
    candidates: Candidates,
    threshold: float,
    config: BlockingConfig,
    *,
    workers: int = 2,
) -> tuple[Candidates, SecondPass]:
    """Compare each agency pair's partnerless records with ``config``; merge what it finds into ``candidates``.

    Args:
        datasets: packed encodings, one array per agency.
        labels: the first solve's clusters (per agency, each row's cluster).
        candidates: the first pass's scored pairs at or above ``threshold`` (anonlink's order).
        threshold: the first pass's threshold; the second keeps its pairs at or above it too.
        config: the dense setting.
        workers: threads.

    Returns:
        Every candidate of either pass once, in anonlink's order, and what the second pass did.
    """
    rows = partnerless(labels)
    comparisons = 0
    parts: list[tuple[np.ndarray, ...]] = []
    for (a, b), (rows_a, rows_b) in rows.items():
        if not len(rows_a) or not len(rows_b):
            continue
        found, *_ = _compare((datasets[a][rows_a], datasets[b][rows_b]), threshold, config, workers, None, None)
        comparisons += found.comparisons
        if found.sims:
            # Two subsets: their dataset 0 is agency a, 1 is b; rows map back through the subsets.
            parts.append((np.concatenate(found.sims), rows_a[np.concatenate(found.rows_a)],
                          rows_b[np.concatenate(found.rows_b)], np.full(sum(map(len, found.sims)), a),
                          np.full(sum(map(len, found.sims)), b)))
    sims, (d_a, d_b), (r_a, r_b) = candidates
    offsets = np.concatenate([[0], np.cumsum([len(d) for d in datasets])]).astype(np.int64)
    total = int(offsets[-1])
    seen = (offsets[d_a.astype(np.int64)] + r_a) * total + offsets[d_b.astype(np.int64)] + r_b
    added = 0
    if parts:
        s2, ra2, rb2, da2, db2 = (np.concatenate(p) for p in zip(*parts, strict=True))
        codes = (offsets[da2] + ra2) * total + offsets[db2] + rb2
        codes, first = np.unique(codes, return_index=True)  # a pair found in several bands once
        new = first[~np.isin(codes, seen)]
        added = len(new)
        if added:
            dtype = d_a.dtype
            sims = np.concatenate([sims, s2[new]])
            d_a = np.concatenate([d_a, da2[new].astype(dtype)])
            d_b = np.concatenate([d_b, db2[new].astype(dtype)])
            r_a = np.concatenate([r_a, ra2[new].astype(r_a.dtype)])
            r_b = np.concatenate([r_b, rb2[new].astype(r_b.dtype)])
            candidates = _order(sims, d_a, d_b, r_a, r_b)
    return candidates, SecondPass(config=config, rows=rows, comparisons=comparisons, added=added)


def _fitted_threshold(histogram: ScoreHistogram, bounds: tuple[float, float]) -> float:
    """The threshold the round's calibration would choose from ``histogram`` alone (no bootstrap, no pair fits).

    The threshold is chosen from the first fit alone (the higher floors' fits only move the
    estimate at it, see :func:`~coordinator.linkage.calibration.floor_median`): they are not made here.
    """
    from coordinator.linkage.calibration import calibrate

    return calibrate(histogram, bounds=bounds, bootstrap=0, higher_floors=False).threshold


def wants_second_pass(histogram: ScoreHistogram, bounds: tuple[float, float] = (0.0, 1.0)) -> bool:
    """Whether the threshold fitted on the first pass's histogram alone is below :data:`SECOND_PASS_BELOW`.

    The round's own calibration then finds the same fit among the recent ones.

    Args:
        histogram: the first pass's linked-pair scores, with its blocking's capture rate.
        bounds: the agreed range of the threshold.
    """
    return _fitted_threshold(histogram, bounds) < SECOND_PASS_BELOW


def provisional_threshold(datasets: Sequence[np.ndarray], first: MatchResult, blocking: BlockingConfig,
                          bounds: tuple[float, float] = (0.0, 1.0), *, workers: int = 2) -> float:
    """The threshold the round's calibration would choose from its first pass alone (no bootstrap, no pair fits)."""
    from coordinator.linkage.auto import linked_pair_scores
    from coordinator.linkage.calibration import score_histogram
    from coordinator.linkage.capture import capture_by_score

    floor = first.stats.threshold
    scores, _ = linked_pair_scores(datasets, first.labels)
    capture = capture_by_score(datasets, floor, blocking, workers=workers)
    return _fitted_threshold(replace(score_histogram(scores, floor), capture=capture), bounds)


def rematch_with_second_pass(
    datasets: Sequence[np.ndarray], first: MatchResult, blocking: BlockingConfig, budget: float, *, workers: int = 2,
    check_threshold: bool = True, bounds: tuple[float, float] = (0.0, 1.0),
) -> tuple[MatchResult, SecondPass | None]:
    """``first`` solved again with a second pass's pairs added, at the densest setting ``budget`` allows.

    Args:
        datasets: packed encodings, one array per agency.
        first: the first pass's result, with ``candidates``.
        blocking: the first pass's setting.
        budget: comparisons the second pass may spend (estimated before comparing).
        workers: threads.
        check_threshold: make no second pass when the threshold fitted on the first pass alone is at
            least :data:`SECOND_PASS_BELOW` (where the first pass already finds nearly every link).
        bounds: the agreed range of the threshold (for that provisional fit).

    Returns:
        The match over both passes' candidates (its stats count both passes' comparisons) and the
        pass; ``first`` and ``None`` when the provisional threshold is high or no setting denser
        than ``blocking`` fits the budget.
    """
    assert first.candidates is not None
    if check_threshold and provisional_threshold(datasets, first, blocking, bounds,
                                                 workers=workers) >= SECOND_PASS_BELOW:
        return first, None
    rows = partnerless(first.labels)
    config, _ = choose_second_setting(datasets, rows, blocking, budget)
    if config is None:
        return first, None
    threshold = first.stats.threshold
    candidates, second = add_second_pass(datasets, first.labels, first.candidates, threshold, config,
                                         workers=workers)
    if not second.added:
        stats = first.stats.model_copy(update={"comparisons": first.stats.comparisons + second.comparisons})
        return replace(first, stats=stats), second
    labels, n_clusters, linked = solve_candidates(candidates, [len(d) for d in datasets])
    stats = first.stats.model_copy(update={
        "comparisons": first.stats.comparisons + second.comparisons, "candidate_pairs": len(candidates[0]),
        "clusters": n_clusters, "linked_records": linked})
    return replace(first, labels=labels, n_clusters=n_clusters, stats=stats, candidates=candidates,
                   candidates_distinct=False), second

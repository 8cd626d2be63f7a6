"""What blocking costs a round's linkage, for ``benchmarks/quality.py`` (and ``blocking_policy.py``).

Three figures per dataset:

* the true-link loss of a blocking setting: the share of the true cross-agency pairs scoring at
  least a threshold that the setting never compares (no shared band key, read from the band keys
  of the full encodings: no sampling, no strangers);
* the sampled all-pairs loss: the share of *all* pairs at or above a threshold (strangers included)
  that a setting loses, on a sample of rows;
* the linkage loss: the recall of the same round (same threshold) over all pairs minus its recall
  with the blocking. A pair blocking never compares may still join its cluster through a
  third agency, so this is at most the true-link loss, and may even be negative.
"""

from __future__ import annotations

import numpy as np

#: The linkage loss reruns the round over all pairs up to this many comparisons.
LINKAGE_ALL_PAIRS_MAX = 1_000_000_000


def true_pairs(dataset, ids) -> list[tuple[int, int, int, int]]:  # type: ignore[no-untyped-def]
    """Every true cross-agency pair as ``(agency a, row a, agency b, row b)``, rows as the encoder numbered them.

    A record the encoder refused (too few usable fields) is never compared, so it is left out.
    """
    truth = dataset.truth()
    rows = [{record: r for r, record in enumerate(agency_ids)} for agency_ids in ids]
    people: dict[str, list[tuple[int, int]]] = {}
    for d, agency in enumerate(dataset.agencies):
        for record, person in truth[agency].items():
            if record in rows[d]:
                people.setdefault(person, []).append((d, rows[d][record]))
    return [(da, ra, db, rb) for records in people.values() for i, (da, ra) in enumerate(records)
            for db, rb in records[i + 1:] if da != db]


def pair_dice(clks: list[np.ndarray], pairs: np.ndarray) -> np.ndarray:
    """Dice of each ``(agency a, row a, agency b, row b)`` pair."""
    sims = np.zeros(len(pairs))
    for da in range(len(clks)):
        for db in range(len(clks)):
            sel = np.flatnonzero((pairs[:, 0] == da) & (pairs[:, 2] == db))
            if not len(sel):
                continue
            a, b = clks[da][pairs[sel, 1]], clks[db][pairs[sel, 3]]
            both = np.bitwise_count(a & b).sum(axis=1, dtype=np.int64)
            total = np.bitwise_count(a).sum(axis=1, dtype=np.int64) + np.bitwise_count(b).sum(axis=1, dtype=np.int64)
            sims[sel] = np.where(total > 0, 2 * both / np.maximum(total, 1), 0.0)
    return sims


def shared_key(clks: list[np.ndarray], pairs: np.ndarray, blocking) -> np.ndarray:  # type: ignore[no-untyped-def]
    """Per pair, whether ``blocking`` compares it (some band key shared; ``None``: all pairs, always)."""
    from coordinator.linkage.blocking import compute_band_keys

    if blocking is None:
        return np.ones(len(pairs), dtype=bool)
    band = compute_band_keys(clks, blocking, workers=2)
    shared = np.zeros(len(pairs), dtype=bool)
    for da in range(len(clks)):
        for db in range(len(clks)):
            sel = np.flatnonzero((pairs[:, 0] == da) & (pairs[:, 2] == db))
            if len(sel):
                ka, kb = band.keys[da][pairs[sel, 1]], band.keys[db][pairs[sel, 3]]
                shared[sel] = np.any((ka == kb) & (ka != band.sentinel), axis=1)
    return shared


def true_link_loss(dataset, clks, ids, threshold: float, blocking) -> tuple[float, int]:  # type: ignore[no-untyped-def]
    """Share of the true cross-agency pairs scoring at least ``threshold`` that ``blocking`` never compares.

    A pair is compared exactly when the two records share a key in some band (giant buckets are
    split into sub-keys, skipped ones get a key that matches nothing).

    Returns:
        The loss (0 for all pairs), and how many true pairs scored at least ``threshold``.
    """
    pairs = np.array(true_pairs(dataset, ids), dtype=np.int64).reshape(-1, 4)
    eligible = pair_dice(clks, pairs) >= threshold
    if not eligible.any():
        return 0.0, 0
    shared = shared_key(clks, pairs[eligible], blocking)
    return float(1.0 - shared.mean()), int(eligible.sum())


def sampled_loss(clks, threshold: float, blocking) -> float:  # type: ignore[no-untyped-def]
    """All pairs (strangers included) at or above ``threshold`` that ``blocking`` loses, on 3,000 rows per agency."""
    from coordinator.linkage.blocking_recall import measure_blocking_recall

    return measure_blocking_recall(clks, threshold, blocking=blocking, sample_rows=3000).recall_loss


def round_recall(dataset, clks, ids, threshold: float, blocking) -> float | None:  # type: ignore[no-untyped-def]
    """Recall of the round at ``threshold`` with ``blocking`` (``None``: all pairs).

    The clusters of an automatic round depend on its threshold alone (the calibration only chooses
    it), so this is the recall of the same round as run, with other blocking.

    Returns:
        The recall; ``None`` for all pairs beyond :data:`LINKAGE_ALL_PAIRS_MAX` comparisons.
    """
    from coordinator.linkage.auto import auto_match
    from coordinator.linkage.blocking_budget import all_pairs_count
    from pplink.lab.linkage_eval import evaluate_linkage_by_agency

    if blocking is None and all_pairs_count([len(c) for c in clks]) > LINKAGE_ALL_PAIRS_MAX:
        return None
    result, _, _ = auto_match(clks, threshold=threshold, blocking=blocking, workers=2, bootstrap=0)
    predicted = {a: dict(zip(i, lab.tolist(), strict=True))
                 for a, i, lab in zip(dataset.agencies, ids, result.labels, strict=True)}
    return evaluate_linkage_by_agency(dataset.truth(), predicted).overall.recall or 0.0


def round_true_link_loss(dataset, clks, ids, threshold: float, blocking, second_budget):  # type: ignore[no-untyped-def]
    """:func:`true_link_loss` of the round as run: its first pass and, with a budget, its second pass too.

    The second pass compares the records the floor solve left partnerless
    (:mod:`coordinator.linkage.second_pass`), so what it compares depends on that solve: the round's
    floor candidates (every compared pair at or above the floor) are rebuilt here and a true pair
    scoring at least ``threshold`` (above the floor) counts as compared exactly when it is among them.

    Returns:
        The loss, how many true pairs scored at least ``threshold``, and the second pass's setting
        as ``"BITSxBANDS"`` (``None``: no second pass).
    """
    from coordinator.linkage.auto import CALIBRATION_FLOOR
    from coordinator.linkage.match import match_clks
    from coordinator.linkage.second_pass import rematch_with_second_pass

    if blocking is None or second_budget is None:
        return (*true_link_loss(dataset, clks, ids, threshold, blocking), None)
    first = match_clks(clks, CALIBRATION_FLOOR, blocking=blocking, workers=2, keep_candidates=True)
    both, second = rematch_with_second_pass(clks, first, blocking, second_budget, workers=2)
    if second is None:
        return (*true_link_loss(dataset, clks, ids, threshold, blocking), None)
    pairs = np.array(true_pairs(dataset, ids), dtype=np.int64).reshape(-1, 4)
    pairs = pairs[pair_dice(clks, pairs) >= threshold]
    if not len(pairs):
        return 0.0, 0, f"{second.config.bits_per_band}x{second.config.bands}"
    _, (d_a, d_b), (r_a, r_b) = both.candidates
    offsets = np.concatenate([[0], np.cumsum([len(c) for c in clks])]).astype(np.int64)
    have = (offsets[d_a.astype(np.int64)] + r_a) * offsets[-1] + offsets[d_b.astype(np.int64)] + r_b
    swap = pairs[:, 0] > pairs[:, 2]
    low, high = np.where(swap, pairs[:, 2], pairs[:, 0]), np.where(swap, pairs[:, 0], pairs[:, 2])
    row_low, row_high = np.where(swap, pairs[:, 3], pairs[:, 1]), np.where(swap, pairs[:, 1], pairs[:, 3])
    want = (offsets[low] + row_low) * offsets[-1] + offsets[high] + row_high
    return float(1.0 - np.isin(want, have).mean()), len(pairs), f"{second.config.bits_per_band}x{second.config.bands}"

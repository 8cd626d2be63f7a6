"""Match with a threshold chosen from the round's own data, and estimate the round's error.

One solve at a low floor (:data:`CALIBRATION_FLOOR`, or the agreed lower bound if higher) gives
every link the round could make; the Dice of every cross-agency pair inside its clusters is the
calibration's data (:mod:`coordinator.linkage.calibration`). The threshold is chosen from the fit
(or given), and the clusters at that threshold are the solve at the threshold. Every solve after
the first (each agency pair's own, and the one at the chosen threshold) filters the first one's
scored candidates rather than comparing again: blocking does not depend on the threshold, so the
pairs at or above ``t`` among them are exactly the pairs a round at ``t`` would compare and keep,
and the round costs one comparison pass.

At scale the floor's pairs outgrow memory (13M at 4 x 100k, ~1e9 at 4 x 1M). While at most
``prune_above`` pairs below :data:`KEEP_ALL_FROM` are found, nothing changes: the round keeps every
pair at or above :data:`CALIBRATION_FLOOR`. Past that the floor rises with the round's size
(:class:`~coordinator.linkage.floor_sink.FloorSink`): to the lowest edge of the calibration's
similarity bins at or above which the round's pairs number at most ``prune_above`` (never above
:data:`HIGHEST_FLOOR`, the agreed lower bound if higher, or a fixed threshold), chosen from the
round's own counts as the comparison runs: no pair below it is kept, the comparison's threshold
rises with it, and the floor does not depend on the order pairs are found in. The round is then
an exact round at that floor: the floor solve, the agency pairs' solves, the blocking capture and
the calibration all start there, and the solve at the chosen threshold (at or above the floor)
filters the kept pairs as before.

The round's similarity histogram (its match report's) is that of its kept pairs, from the floor up
(:func:`~coordinator.linkage.match.floor_histogram`): exact there, and free; the comparison counts none.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace

import numpy as np

from coordinator.linkage.blocking import BlockingConfig
from coordinator.linkage.calibration import (
    Calibration,
    ScoreHistogram,
    calibrate,
    estimate_at,
    estimate_links,
    fit_mixture,
    fit_mixtures,
    later_fits,
    score_histogram,
)
from coordinator.linkage.capture import capture_by_score
from coordinator.linkage.compare import announce
from coordinator.linkage.floor_sink import FloorSink
from coordinator.linkage.match import (
    Candidates,
    MatchResult,
    Progress,
    floor_histogram,
    match_clks,
    select_candidates,
    solve_candidates,
)
from coordinator.linkage.missed import missed_links
from coordinator.linkage.mixture import warm_start
from coordinator.linkage.pair_split import AgencyPairs, pair_links, same_label_rows, sorted_label_rows
from coordinator.linkage.second_pass import rematch_with_second_pass, wants_second_pass
from coordinator.linkage.similarity import as_words, check_datasets, dice_rows, popcounts

__all__ = ["CALIBRATION_FLOOR", "HIGHEST_FLOOR", "KEEP_ALL_FROM", "PRUNE_ABOVE", "auto_match", "linked_pair_scores",
           "same_cluster_rows"]

#: One agency pair's one-to-one links: ``(rows_a, rows_b, scores)``.
Links = tuple[np.ndarray, np.ndarray, np.ndarray]

#: The solve the calibration reads starts here: below every default threshold worth using, above
#: the mass of blocked strangers (they sit around 0.4-0.6 with the default encodings).
CALIBRATION_FLOOR = 0.55
#: The floor stays while the pairs below this number at most :data:`PRUNE_ABOVE` (or the agreed
#: lower bound, if higher).
KEEP_ALL_FROM = 0.7
#: Pairs below :data:`KEEP_ALL_FROM` kept in full before the floor rises, and the most pairs a raised
#: floor keeps (24 bytes each: ~0.5 GB; a 4 x 100k round holds ~13M below 0.7 and keeps its floor).
PRUNE_ABOVE = 20_000_000
#: A raised floor stays at or below this (or the agreed lower bound, if higher): below every
#: threshold a round at scale chooses (0.77-0.84 at 4 x 250k-1M), with room under it for the fit.
HIGHEST_FLOOR = 0.75


def same_cluster_rows(labels_a: np.ndarray, labels_b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every ``(row_a, row_b)`` whose cluster labels are equal, ordered by ``row_a``.

    >>> same_cluster_rows(np.array([0, 1, 2]), np.array([2, 0, 0]))
    (array([0, 0, 2]), array([1, 2, 0]))
    """
    counted = same_label_rows(labels_a, labels_b)  # dense labels: counted, not sorted (the same rows)
    return counted if counted is not None else sorted_label_rows(labels_a, labels_b)


def linked_pair_scores(datasets: Sequence[np.ndarray], labels: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Dice of every cross-agency pair of records that share a cluster, and its agency pair.

    Args:
        datasets: packed encodings, one array per agency.
        labels: per agency, the cluster of each row (a :class:`~coordinator.linkage.match.MatchResult`'s).

    Returns:
        ``(scores, agency_pairs)``: float64 similarities and, per pair, ``(d_a, d_b)`` with d_a < d_b.
    """
    datasets = check_datasets(datasets)
    words = [as_words(d) for d in datasets]
    pops = [popcounts(w) for w in words]
    scores: list[np.ndarray] = []
    pairs: list[np.ndarray] = []
    for d_a in range(len(datasets)):
        for d_b in range(d_a + 1, len(datasets)):
            rows_a, rows_b = same_cluster_rows(labels[d_a], labels[d_b])
            if not len(rows_a):
                continue
            scores.append(dice_rows(words[d_a], words[d_b], pops[d_a], pops[d_b], rows_a, rows_b))
            pairs.append(np.tile(np.array([[d_a, d_b]], dtype=np.int64), (len(rows_a), 1)))
    if not scores:
        return np.zeros(0), np.zeros((0, 2), dtype=np.int64)
    return np.concatenate(scores), np.concatenate(pairs)


class _Clock:
    """Adds the seconds since the last lap to a phase's total (``None``: a lap nobody counts)."""

    def __init__(self, phases: dict[str, float]) -> None:
        self.phases, self.last = phases, time.perf_counter()

    def lap(self, phase: str | None) -> None:
        now = time.perf_counter()
        if phase is not None:
            self.phases[phase] = self.phases.get(phase, 0.0) + now - self.last
        self.last = now


class _AtStage:
    """A match's progress callback: passes all on to ``progress``; calls ``start`` once, as stage ``name`` begins."""

    def __init__(self, progress: Progress | None, name: str, start: Callable[[], None]) -> None:
        self.progress, self.name, self.start = progress, name, start
        self.started = False

    def __call__(self, done: int, total: int) -> None:
        if self.progress is not None:
            self.progress(done, total)

    def stage(self, name: str, total: int | None = None) -> None:
        announce(self.progress, name, total)
        if name == self.name and not self.started:
            self.started = True
            self.start()


def _pair_solves(
    datasets: Sequence[np.ndarray], candidates: Candidates, floor: float, workers: int = 1, distinct: bool = False,
) -> dict[tuple[int, int], tuple[ScoreHistogram, Links]]:
    """Each agency pair's own one-to-one solve of the floor's candidates: its linked-pair histogram and links.

    ``distinct``: the candidates are known to hold no pair twice (faster solves). The histograms
    carry no capture (the caller adds the round's).
    """
    sizes = [len(d) for d in datasets]
    words = [as_words(d) for d in datasets]
    pops = [popcounts(w) for w in words]
    # One pass groups the candidates by agency pair (order kept); each pair's solve reads its own.
    grouped = AgencyPairs(candidates, len(datasets))

    def solve(key: tuple[int, int]) -> tuple[ScoreHistogram, Links]:
        d_a, d_b = key
        rows_a, rows_b = pair_links(grouped, d_a, d_b, sizes[d_a], sizes[d_b], distinct=distinct)
        scores = dice_rows(words[d_a], words[d_b], pops[d_a], pops[d_b], rows_a, rows_b)
        return score_histogram(scores, floor), (rows_a, rows_b, scores)

    keys = [(d_a, d_b) for d_a in range(len(datasets)) for d_b in range(d_a + 1, len(datasets))]
    # The pairs' solves are independent and mostly compiled greedy passes that release the GIL.
    with ThreadPoolExecutor(max(1, min(workers, len(keys)))) as pool:
        return dict(zip(keys, pool.map(solve, keys), strict=True))


def _solve_at(first: MatchResult, datasets: Sequence[np.ndarray], threshold: float, sink: FloorSink | None = None,
              blocking: BlockingConfig | None = None, workers: int = 1) -> MatchResult:
    """The round at ``threshold``, solved from the floor's candidates (no second comparison pass).

    If the floor rose above ``threshold`` (agreed bounds below it), the round compares again at
    ``threshold`` (exact, at the cost of a second comparison pass).
    """
    assert first.candidates is not None
    if sink is not None and sink.raised and threshold < sink.floor:
        again = match_clks(datasets, threshold, blocking=blocking, workers=workers, histogram_bins=None)
        return replace(again, histogram=first.histogram)
    candidates = select_candidates(first.candidates, threshold=threshold)
    labels, n_clusters, linked = solve_candidates(candidates, [len(d) for d in datasets],
                                                  distinct=first.candidates_distinct)
    stats = first.stats.model_copy(update={"threshold": threshold, "candidate_pairs": len(candidates[0]),
                                           "clusters": n_clusters, "linked_records": linked})
    return MatchResult(labels=labels, n_clusters=n_clusters, stats=stats, histogram=first.histogram)


def auto_match(
    datasets: Sequence[np.ndarray],
    *,
    threshold: float | None = None,
    precision_floor: float | None = None,
    bounds: tuple[float, float] = (0.0, 1.0),
    blocking: BlockingConfig | None = BlockingConfig(),
    workers: int = 2,
    bootstrap: int = 20,
    progress: Progress | None = None,
    duplicates: bool = True,
    timings: dict[str, float] | None = None,
    second_budget: float | None = None,
    prune_above: int | None = PRUNE_ABOVE,
) -> tuple[MatchResult, Calibration, dict[tuple[int, int], Calibration]]:
    """Calibrate on a floor solve, choose the threshold (unless given) and match at it.

    With three or more agencies, each agency pair is also solved and fitted on its own: a
    multi-party cluster that fails to form hides its true pairs from the round's histogram, while
    each pair's one-to-one solve shows them, so the pairs' fits give the round's count of true links
    (the recall's denominator).

    Args:
        datasets: packed encodings, one array per agency.
        threshold: a fixed threshold (estimated, not chosen); ``None`` chooses one.
        precision_floor: choose the lowest threshold whose estimated precision reaches this.
        bounds: the agreed range a chosen threshold must stay within.
        blocking: blocking settings (``None``: all pairs).
        workers: threads.
        bootstrap: bootstrap refits behind the intervals.
        progress: called with ``(done, total)`` work units of the calibration's solve.
        duplicates: attach an agency's own near-identical records to their cluster
            (:mod:`coordinator.linkage.duplicates`).
        timings: if given, filled with the seconds of each phase (``floor_blocking``,
            ``floor_comparing``, ``floor_solve``, ``floor_histogram``, ``capture_by_score``, ``pair_solves``,
            ``pair_fits``, ``calibration_fit``, ``solve_at_threshold``, ``merge_split_clusters``,
            ``attach_duplicates``, ``linked_pair_scores``, ``second_pass``), the floor's candidate pairs
            (``floor_candidate_pairs``) and, when the floor rose, the floor it rose to (``floor_raised_to``)
            and the most pairs held at once while comparing (``floor_most_held``).
        second_budget: comparisons a second, denser blocking pass among the records the floor solve
            left without a partner may spend (:mod:`coordinator.linkage.second_pass`); ``None``: none.
        prune_above: with blocking, pairs below :data:`KEEP_ALL_FROM` kept in full before the floor
            rises, and the most pairs the raised floor keeps (see the module's docstring); ``None``
            keeps the floor (memory unbounded).

    Returns:
        The match at the threshold, the round's calibration, and each agency pair's own (three or
        more agencies only).
    """
    from coordinator.linkage.duplicates import attach_duplicates
    from coordinator.linkage.merge import merge_split_clusters

    # The calibration needs the low floor even when the agreed bounds start higher: they bound the
    # chosen threshold, not the data the choice is made from.
    floor = CALIBRATION_FLOOR if threshold is None else min(CALIBRATION_FLOOR, threshold)
    phases: dict[str, float] = {} if timings is None else timings
    clock = _Clock(phases)
    sink = None
    if blocking is not None and prune_above is not None:
        # The bound never sits below a threshold the round can end at when that is known in advance.
        keep_all_from = max(KEEP_ALL_FROM, bounds[0]) if threshold is None else min(KEEP_ALL_FROM, threshold)
        highest = max(HIGHEST_FLOOR, bounds[0]) if threshold is None else threshold
        sink = FloorSink(floor, max(keep_all_from, floor), prune_above, highest)
    # The blocking capture depends only on the encodings, the final floor and the setting: it runs on
    # one thread from the floor match's solve on (the floor is final by then), filling the core the
    # solve's single-threaded stretches and the phases after it leave idle.
    background = ThreadPoolExecutor(1) if blocking is not None else None
    early: list[Future[np.ndarray]] = []

    def start_capture() -> None:
        if background is not None:
            final = sink.floor if sink is not None and sink.raised else floor
            early.append(background.submit(capture_by_score, datasets, final, blocking, workers=1))

    try:
        # No histogram of every comparison: the round's is its kept pairs' (below).
        first = match_clks(datasets, floor, blocking=blocking, workers=workers, progress=_AtStage(progress, "solving",
                           start_capture), keep_candidates=True, sink=sink, histogram_bins=None)
    finally:
        if background is not None:
            background.shutdown(wait=False)
    assert first.candidates is not None
    phases.update(floor_blocking=first.stats.seconds_blocking, floor_comparing=first.stats.seconds_comparing,
                  floor_solve=first.stats.seconds_solving, floor_candidate_pairs=len(first.candidates[0]))
    if sink is not None and sink.raised:
        # The round is an exact round at the raised floor: every later phase starts there.
        floor = sink.floor
        first = replace(first, stats=first.stats.model_copy(update={"threshold": floor}))
        phases.update(floor_raised_to=floor, floor_most_held=sink.most_held)
    clock.lap(None)
    # The first pass's kept pairs are every distinct compared pair at or above the floor: their
    # histogram is the round's similarity histogram from the floor up, exact.
    first = replace(first, histogram=floor_histogram(first.candidates[0], floor, blocked=blocking is not None))
    clock.lap("floor_histogram")
    # Each agency pair's own solve reads only the floor's candidates: solved on a thread of their own,
    # one after another, beside the round's fit below (mostly one core: the other is free).
    solver = ThreadPoolExecutor(1, thread_name_prefix="pplink-pairs") if len(datasets) > 2 else None
    early_pairs = None
    if solver is not None:
        early_pairs = solver.submit(_pair_solves, datasets, first.candidates, floor, 1, first.candidates_distinct)
        solver.shutdown(wait=False)
    scores, _ = linked_pair_scores(datasets, first.labels)
    clock.lap("linked_pair_scores")
    # Blocking thins the pairs most near the floor, where false links live: the fit is told by how much.
    capture = None
    if blocking is not None:
        capture = early[0].result() if early else capture_by_score(datasets, floor, blocking, workers=workers)
    clock.lap("capture_by_score")
    histogram = replace(score_histogram(scores, floor), capture=capture)
    # The second pass's gate reads the first pass's histogram, which the round needs anyway.
    if second_budget is not None and blocking is not None:
        labels, second = first.labels, None
        if wants_second_pass(histogram, bounds):
            first, second = rematch_with_second_pass(datasets, first, blocking, second_budget, workers=workers,
                                                     check_threshold=False)
        clock.lap("second_pass")
        if second is not None:
            if first.labels is not labels:
                scores, _ = linked_pair_scores(datasets, first.labels)
                clock.lap("linked_pair_scores")
            capture = capture_by_score(datasets, floor, blocking, workers=workers, second=second)
            clock.lap("capture_by_score")
            histogram = replace(score_histogram(scores, floor), capture=capture)
            if early_pairs is not None:
                # The second pass's pairs joined the candidates: the agency pairs are solved again.
                early_pairs.result()
                early_pairs = None
    # The round's own fit (the gate's, when it made one).
    fit = fit_mixture(histogram)
    clock.lap("calibration_fit")
    solved: dict[tuple[int, int], tuple[ScoreHistogram, Links]] = {}
    if len(datasets) > 2:
        solved = (early_pairs.result() if early_pairs is not None
                  else _pair_solves(datasets, first.candidates, floor, workers, first.candidates_distinct))
        solved = {key: (replace(h, capture=capture), links) for key, (h, links) in solved.items()}
        clock.lap("pair_solves")
    # Each agency pair's fit, started from the round's fit, side by side (each exactly as it would be
    # alone; the pairs' calibrations then find them among the recent fits).
    warm = warm_start(fit)
    pair_histograms = [h for h, _ in solved.values()]
    fit_mixtures(pair_histograms, warms=[warm] * len(pair_histograms))
    pairs = {key: (h, calibrate(h, threshold=threshold, bootstrap=0, higher_floors=False, warm=warm), links)
             for key, (h, links) in solved.items()}
    matches = sum(c.fit.matches for _, c, _ in pairs.values()) if pairs else None
    clock.lap("pair_fits")
    # The round's threshold: its calibration's, which reads neither its higher floors' fits nor its
    # bootstrap's. Those (most of its fits) are made on a thread of their own while the round is
    # solved at the threshold; the calibration then finds them among the recent fits.
    chosen = calibrate(histogram, threshold=threshold, precision_floor=precision_floor, bounds=bounds, bootstrap=0,
                       matches=matches, higher_floors=False).threshold
    later = later_fits(histogram, fit, bootstrap)
    fitter = ThreadPoolExecutor(1, thread_name_prefix="pplink-later-fits")
    later_fitted = fitter.submit(fit_mixtures, [h for h, _ in later], starts=[start for _, start in later])
    fitter.shutdown(wait=False)
    clock.lap("calibration_fit")
    # Also drops the candidates from the result.
    result = _solve_at(first, datasets, chosen, sink, blocking, workers)
    clock.lap("solve_at_threshold")
    # The duplicates' matches read the round's own pairs at or above the threshold (a filter of the
    # floor's): a second blocking of every agency's singletons cost 12 blocked matches (~2.8 s of a
    # 4 x 100k round's ~14 s, minutes at scale) for F1 within 0.00014 of this (docs/scaling.md).
    floor_pairs = first.candidates if duplicates else None
    del first
    labels, n_clusters = result.labels, result.n_clusters
    if pairs:
        links = {key: pair_links for key, (_, _, pair_links) in pairs.items()}
        labels, n_clusters, _ = merge_split_clusters(datasets, labels, links, chosen)
    clock.lap("merge_split_clusters")
    merged_scores = None
    if duplicates:
        merged_scores, _ = linked_pair_scores(datasets, labels)
        clock.lap("linked_pair_scores")
        labels, n_clusters, _ = attach_duplicates(datasets, labels, chosen, blocking=blocking,
                                                  workers=workers, candidates=floor_pairs)
    clock.lap("attach_duplicates")
    del floor_pairs
    # The estimate is of what the round hands out: its final clusters' pairs, not the floor solve's.
    final_scores, _ = linked_pair_scores(datasets, labels)
    clock.lap("linked_pair_scores")
    later_fitted.result()
    clock.lap("later_fits")
    overall = calibrate(histogram, threshold=threshold, precision_floor=precision_floor, bounds=bounds,
                        bootstrap=bootstrap, matches=matches, workers=workers)
    assert overall.threshold == chosen
    # Each pair's estimate at the round's threshold (its own solve's, an approximation of its share
    # of the multi-party round).
    per_pair = {
        key: calibration.model_copy(update={
            "method": overall.method, "threshold": overall.threshold,
            "estimate": estimate_at(pair_histogram, calibration.fit, overall.threshold)})
        for key, (pair_histogram, calibration, _) in pairs.items()
    }
    clock.lap("calibration_fit")
    missed = missed_links(final_scores, overall.fit, replace(overall.histogram, capture=capture),
                          [(histogram, calibration.fit) for histogram, calibration, _ in pairs.values()])
    overall = estimate_links(overall, final_scores, merged_scores, missed=missed.total)
    if n_clusters != result.n_clusters:
        sizes = np.bincount(np.concatenate(labels), minlength=n_clusters)
        stats = result.stats.model_copy(update={"clusters": n_clusters, "linked_records": int(sizes[sizes > 1].sum())})
        result = MatchResult(labels=labels, n_clusters=n_clusters, stats=stats, histogram=result.histogram)
    return result, overall, per_pair

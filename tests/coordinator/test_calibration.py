"""Unsupervised calibration: estimates track the truth on a known mixture, and the round matches at its choice."""

from __future__ import annotations

import numpy as np
import pytest

from coordinator.linkage.auto import auto_match, linked_pair_scores, same_cluster_rows
from coordinator.linkage.calibration import calibrate, choose_threshold, estimate_at, fit_mixture, score_histogram
from coordinator.linkage.match import match_clks
from coordinator.linkage.mixture import MixtureFit, ScoreHistogram


def _mixture(seed: int, true: int = 4000, false: int = 600, floor: float = 0.55):  # type: ignore[no-untyped-def]
    """True links: half exact (1.0), half Beta(12, 2); false links decaying from the floor."""
    rng = np.random.default_rng(seed)
    scores = np.concatenate([np.ones(true // 2), rng.beta(12, 2, true - true // 2)])
    labels = np.ones(len(scores), dtype=bool)
    false_scores = floor + rng.exponential(1 / 15, false)
    scores = np.concatenate([scores, false_scores[false_scores < 1]])
    labels = np.concatenate([labels, np.zeros((false_scores < 1).sum(), dtype=bool)])
    return scores, labels


@pytest.mark.parametrize("seed", [0, 1])
def test_estimated_precision_and_recall_track_the_truth(seed: int) -> None:
    """On a mixture of the fitted shapes, estimates at the chosen threshold are within 0.02 of the truth."""
    scores, labels = _mixture(seed)
    floor = 0.55
    histogram = score_histogram(scores, floor)
    fit = fit_mixture(histogram)
    threshold = choose_threshold(histogram, fit)
    estimate = estimate_at(histogram, fit, threshold)
    kept = scores >= threshold
    true_precision = (labels & kept).sum() / kept.sum()
    true_recall = (labels & kept).sum() / labels.sum()
    assert abs(estimate.precision - true_precision) < 0.02
    assert abs(estimate.recall - true_recall) < 0.02
    assert floor < threshold < 0.9


def test_precision_floor_and_bounds_constrain_the_choice() -> None:
    """A precision floor picks a threshold meeting it; bounds are never left."""
    scores, _ = _mixture(3)
    histogram = score_histogram(scores, 0.55)
    fit = fit_mixture(histogram)
    strict = choose_threshold(histogram, fit, precision_floor=0.999)
    assert estimate_at(histogram, fit, strict).precision >= 0.999
    assert strict >= choose_threshold(histogram, fit)
    assert 0.8 <= choose_threshold(histogram, fit, bounds=(0.8, 0.9)) <= 0.9


def test_calibrate_gives_intervals_around_the_estimate_and_fixed_thresholds_are_kept() -> None:
    """Bootstrap intervals hold the point estimate; a fixed threshold is estimated, not replaced."""
    scores, _ = _mixture(4)
    calibration = calibrate(score_histogram(scores, 0.55), threshold=0.7, bootstrap=10)
    estimate = calibration.estimate
    assert calibration.method == "fixed" and calibration.threshold == 0.7
    assert estimate.precision_interval is not None and estimate.recall_interval is not None
    assert estimate.precision_interval[0] - 1e-9 <= estimate.precision <= estimate.precision_interval[1] + 1e-9
    assert estimate.recall_interval[0] - 1e-9 <= estimate.recall <= estimate.recall_interval[1] + 1e-9


def test_linked_pair_scores_are_the_dice_of_pairs_sharing_a_cluster() -> None:
    """Every cross-agency pair inside a cluster is scored once, with its Dice."""
    a = np.array([[0xF0, 0x0F], [0xFF, 0x00]], dtype=np.uint8)
    b = np.array([[0xF0, 0x0E], [0x00, 0xFF]], dtype=np.uint8)
    result = match_clks([a, b], 0.8, blocking=None, workers=1)
    scores, pairs = linked_pair_scores([a, b], result.labels)
    assert pairs.tolist() == [[0, 1]]
    assert scores.tolist() == pytest.approx([2 * 7 / 15])


def test_auto_match_links_at_its_chosen_threshold() -> None:
    """The round's clusters are those of a plain match at the threshold the calibration chose."""
    rng = np.random.default_rng(5)
    base = rng.random((300, 256)) < 0.3
    noisy = base ^ (rng.random(base.shape) < 0.04)
    a, b = np.packbits(base, axis=1), np.packbits(noisy[::-1], axis=1)
    result, calibration, _ = auto_match([a, b], blocking=None, workers=1, bootstrap=0)
    plain = match_clks([a, b], calibration.threshold, blocking=None, workers=1)
    assert [x.tolist() for x in result.labels] == [x.tolist() for x in plain.labels]
    assert calibration.method == "auto" and calibration.estimate.recall > 0.95


@pytest.mark.parametrize("blocked", [False, True])
def test_one_comparison_pass_solves_every_threshold_as_a_fresh_round(blocked: bool) -> None:
    """Filtering a floor round's candidates at t gives exactly the clusters of a fresh round at t.

    auto_match compares once at the floor and solves the chosen threshold and each agency pair from
    those candidates; this holds because blocking does not depend on the threshold.
    """
    from coordinator.linkage.auto import _solve_at
    from coordinator.linkage.blocking import BlockingConfig
    from coordinator.linkage.match import select_candidates, solve_candidates

    rng = np.random.default_rng(11)
    base = rng.random((400, 1024)) < 0.25
    sets = [np.packbits(base[rng.permutation(400)[:300]] ^ (rng.random((300, 1024)) < p), axis=1)
            for p in (0.02, 0.05, 0.08)]
    blocking = BlockingConfig() if blocked else None
    first = match_clks(sets, 0.55, blocking=blocking, workers=1, keep_candidates=True)
    for t in (0.6, 0.7, 0.8):
        fresh = match_clks(sets, t, blocking=blocking, workers=1)
        solved = _solve_at(first, sets, t)
        assert [x.tolist() for x in solved.labels] == [x.tolist() for x in fresh.labels]
        assert solved.stats.candidate_pairs == fresh.stats.candidate_pairs
        assert solved.candidates is None
    # One agency pair solved from the round's candidates is that pair's own all-pairs round.
    if not blocked:
        labels, _, _ = solve_candidates(select_candidates(first.candidates, datasets=(0, 2)), [300, 300, 300])
        own = match_clks([sets[0], sets[2]], 0.55, blocking=None, workers=1)
        linked = same_cluster_rows(labels[0], labels[2])
        expected = same_cluster_rows(own.labels[0], own.labels[1])
        assert len(linked[0]) > 100
        assert [x.tolist() for x in linked] == [x.tolist() for x in expected]


#: A demo round's linked-pair histogram (200 bins, floor 0.55: bins 110-199) on which every one of
#: the fit's first three starting points converged to "all links true" and the threshold fell to
#: the floor (measured precision 0.93).
_DEMO_COUNTS_FROM_BIN_110 = [
    85, 47, 78, 57, 59, 65, 60, 61, 79, 52, 68, 58, 64, 53, 30, 51, 60, 32, 35, 45, 45, 43, 35, 40, 27, 37,
    22, 14, 30, 17, 29, 25, 24, 27, 47, 43, 39, 35, 38, 34, 47, 30, 32, 40, 45, 38, 52, 46, 50, 53, 56, 55,
    53, 54, 72, 68, 73, 89, 104, 127, 146, 158, 213, 181, 207, 230, 229, 217, 205, 219, 243, 247, 185, 159,
    119, 79, 132, 174, 122, 51, 28, 8, 60, 262, 265, 85, 7, 3, 0, 13782,
]


def test_the_fit_finds_false_links_where_early_starts_miss_them() -> None:
    """The fit keeps the better optimum: a visible false-link share, and a threshold well above the floor."""
    scores = np.repeat((np.arange(110, 200) + 0.5) / 200, _DEMO_COUNTS_FROM_BIN_110)
    histogram = score_histogram(scores, 0.55)
    fit = fit_mixture(histogram)
    assert 0.85 < fit.match_weight < 0.97
    calibration = calibrate(histogram, bootstrap=0)
    assert calibration.threshold >= 0.65
    assert calibration.estimate.precision < 1.0


def test_the_estimate_of_the_final_links_weighs_each_final_pair_by_the_fit() -> None:
    """Invariant: the reported estimate is over the final clusters' pairs: a final pair counts as true with
    its bin's posterior, a pair below the floor counts as false, recall is over the fit's true links (plus
    those attached duplicates add), and the intervals move with the estimate."""
    from coordinator.linkage.calibration import estimate_links

    rng = np.random.default_rng(5)
    strangers = 0.55 + rng.exponential(1 / 15, 400)
    scores = np.concatenate([np.ones(1500), rng.beta(12, 2, 1500), strangers[strangers < 1]])
    calibration = calibrate(score_histogram(scores, floor=0.55), bootstrap=5)
    final = np.concatenate([np.ones(100), np.full(10, 0.3)])  # 100 identical pairs, 10 below the floor
    moved = estimate_links(calibration, final).estimate
    top = calibration.fit.posterior[-1]
    assert moved.links == 110
    assert moved.precision == pytest.approx(100 * top / 110)
    assert moved.recall == pytest.approx(100 * top / calibration.fit.matches)
    low, high = calibration.estimate.precision_interval
    shift = moved.precision - calibration.estimate.precision
    assert moved.precision_interval == pytest.approx((max(low + shift, 0.0), min(high + shift, 1.0)))
    # Attached duplicates' true pairs (here 40 of the 100) are pairs no one-to-one count holds: they join
    # the recall's denominator as well as its numerator.
    with_duplicates = estimate_links(calibration, final, before_duplicates=final[40:]).estimate
    assert with_duplicates.recall == pytest.approx(100 * top / (calibration.fit.matches + 40 * top))


def test_missed_links_are_the_true_links_seen_at_the_floor_that_the_final_pairs_lack() -> None:
    """Invariant: the missed count is, bin by bin, the floor solves' expected true links (the larger of
    the round's and the agency pairs' sum) less the final pairs' ones, never negative; blocking adds each
    bin's expected true links over its capture rate less those found; and with it the recall is
    tp / (tp + missed), so final clusters holding more true pairs than the fit counted do not cap it at 1."""
    from dataclasses import replace

    from coordinator.linkage.calibration import estimate_links
    from coordinator.linkage.missed import missed_links

    rng = np.random.default_rng(7)
    strangers = 0.55 + rng.exponential(1 / 15, 400)
    scores = np.concatenate([np.ones(1500), rng.beta(12, 2, 1500), strangers[strangers < 1]])
    histogram = score_histogram(scores, floor=0.55)
    calibration = calibrate(histogram, bootstrap=0)
    fit = calibration.fit
    posterior = np.asarray(fit.posterior)
    kept = scores[scores >= calibration.threshold]
    final = np.concatenate([kept, np.ones(200)])  # 200 more identical pairs than the floor solve held
    expected = histogram.counts * posterior - score_histogram(final, floor=0.55).counts * posterior
    missed = missed_links(final, fit, histogram)
    assert missed.blocking == 0.0
    assert missed.seen == pytest.approx(float(np.maximum(expected, 0.0).sum()))
    assert missed.seen > 0  # the true links between the floor and the threshold
    # The agency pairs' solves show more true links in a bin: the larger count is used.
    doubled = missed_links(final, fit, histogram, [(histogram, fit), (histogram, fit)])
    assert doubled.seen > missed.seen
    # Blocking that found half of every pair: the capture-corrected count is twice the seen true links,
    # and what it adds beyond the union of seen and final true links is the blocking's loss.
    final_true = score_histogram(final, floor=0.55).counts * posterior
    union = float(np.maximum(histogram.counts * posterior, final_true).sum())
    halved = missed_links(final, fit, replace(histogram, capture=np.full(len(posterior), 0.5)))
    assert halved.blocking == pytest.approx(2 * float((histogram.counts * posterior).sum()) - union)
    assert halved.seen == pytest.approx(missed.seen)
    moved = estimate_links(calibration, final, missed=missed.total).estimate
    tp = float((score_histogram(final, floor=0.55).counts * posterior).sum())
    assert moved.recall == pytest.approx(tp / (tp + missed.total))
    assert moved.recall < 1.0
    assert estimate_links(calibration, final).estimate.recall == 1.0  # the fit's count alone caps it


def test_the_fits_fast_objective_is_the_likelihood_bit_for_bit() -> None:
    """The optimiser's objective equals the plain negative log-likelihood exactly (so fits are unchanged),
    with and without a blocking capture rate and DP noise, for parameters across and beyond their clips."""
    from coordinator.linkage.mixture import _negative_loglik

    rng = np.random.default_rng(8)
    edges = np.linspace(0.0, 1.0, 201)
    for histogram, cap, noise, objective in _objectives(rng):
        for params in rng.normal(0.0, 4.0, (60, 5)):
            expected = _negative_loglik(params, histogram.counts, edges, histogram.first, cap, noise)
            assert objective(params) == expected


def _objectives(rng: np.random.Generator):  # type: ignore[no-untyped-def]
    """``(histogram, capture, noise, objective)``: a known mixture from three floors, with and without a blocking
    capture rate and DP noise, and the numpy objective of each."""
    from coordinator.linkage.mixture import _Objective

    scores, _ = _mixture(9)
    edges = np.linspace(0.0, 1.0, 201)
    for floor in (0.5, 0.55, 0.7):
        histogram = score_histogram(scores, floor)
        capture = np.clip(rng.random(200), 0.02, 1.0)
        for cap, noise in ((None, 0.0), (capture, 0.0), (None, 4.0), (capture, 9.0)):
            yield histogram, cap, noise, _Objective(histogram.counts, edges, histogram.first, cap, noise)


def _same_fit(fit: MixtureFit, reference: MixtureFit, histogram: ScoreHistogram) -> bool:
    """Whether a compiled fit is scipy's up to the optimiser's tolerances: the same likelihood at its optimum
    (1e-9 relative), the same count of true links and posterior (1e-6), whatever its parameters along flat
    directions (where a component has no weight, its shape is free)."""
    from coordinator.linkage.mixture import _Objective

    if not reference.parameters:
        return fit == reference
    objective = _Objective(histogram.counts, np.linspace(0.0, 1.0, len(histogram.counts) + 1), histogram.first,
                           histogram.capture, histogram.noise)
    value, expected = objective(np.array(fit.parameters)), objective(np.array(reference.parameters))
    return (abs(value - expected) <= 1e-9 * abs(expected)
            and fit.matches == pytest.approx(reference.matches, rel=1e-6)
            and fit.posterior == pytest.approx(reference.posterior, abs=1e-6) and fit.floor == reference.floor)


def test_fits_and_calibrations_do_not_depend_on_threads_or_on_recent_fits() -> None:
    """Invariant: a fit computed afresh, one given back from the recent fits, and calibrations with threaded fits and
    bootstrap refits are all equal (every field, bit for bit); each is scipy's fit (:func:`_same_fit`)."""
    from coordinator.linkage.mixture import _RECENT, _fit_mixture

    rng = np.random.default_rng(4)
    scores, _ = _mixture(2)
    histogram = score_histogram(scores, 0.55)
    blocked = score_histogram(scores, 0.55)
    blocked = type(blocked)(counts=blocked.counts, floor=blocked.floor, capture=np.clip(rng.random(200), 0.2, 1.0))
    for h in (histogram, blocked):
        _RECENT.clear()
        fresh = fit_mixture(h)
        assert fit_mixture(h) == fresh
        _RECENT.clear()
        assert fit_mixture(h) == fresh
        scipys = _fit_mixture(h, None, 1)
        assert _fit_mixture(h, None, 3) == scipys and _same_fit(fresh, scipys, h)
        assert _same_fit(fit_mixture(h, start=fresh.parameters), _fit_mixture(h, fresh.parameters, 1), h)
        assert _same_fit(fit_mixture(h, warm=fresh.parameters), _fit_mixture(h, None, 1, fresh.parameters), h)
        for threshold in (None, 0.8):
            _RECENT.clear()  # each calibration computes its fits
            alone = calibrate(h, threshold=threshold, bootstrap=6)
            _RECENT.clear()
            assert calibrate(h, threshold=threshold, bootstrap=6, workers=3) == alone


def test_compiled_fits_are_scipys_fits_and_do_not_depend_on_their_batch() -> None:
    """Invariant: the compiled fits (runs on a pool of threads) are scipy's ``minimize`` run one start at a time
    (:func:`_same_fit`), with and without a capture rate and DP noise, from several floors, from a given start, warm
    from a related fit, and for an empty histogram; and a fit made alone equals it made in a batch, bit for bit."""
    from coordinator.linkage.mixture import ScoreHistogram, _fit_mixture
    from coordinator.linkage.mixture_batch import fit_batched

    rng = np.random.default_rng(11)
    jobs = []
    for seed, floor in ((3, 0.55), (5, 0.6), (7, 0.5)):
        scores, _ = _mixture(seed)
        histogram = score_histogram(scores, floor)
        capture = np.clip(rng.random(200), 0.1, 1.0)
        jobs.append((histogram, None, None))
        jobs.append((ScoreHistogram(histogram.counts, floor, capture=capture), None, None))
        jobs.append((ScoreHistogram(histogram.counts + rng.normal(0, 2, 200), floor, noise=4.0), None, None))
    base = _fit_mixture(jobs[0][0], None, 1).parameters
    jobs.append((jobs[0][0], base, None))
    jobs.append((jobs[3][0], None, base))  # another round's histogram, warm from the first one's fit
    jobs.append((ScoreHistogram(np.zeros(200), 0.55), None, None))
    expected = [_fit_mixture(histogram, start, 1, warm) for histogram, start, warm in jobs]
    together = fit_batched(jobs)
    assert all(_same_fit(fit, want, job[0]) for fit, want, job in zip(together, expected, jobs, strict=True))
    assert [fit_batched([job])[0] for job in jobs] == together


def test_the_compiled_likelihood_is_the_objectives_and_its_sums_numpys() -> None:
    """Invariant: the compiled negative log-likelihood equals the numpy objective's to 1e-14 relative (only the C
    library's exp and log may differ from numpy's, in the last bit), with the share free and pinned, across and beyond
    the clips, with and without a capture rate and DP noise; its pairwise sums are ``np.add.reduce`` bit for bit."""
    from coordinator.linkage.mixture import _ALONE_SHARE
    from coordinator.linkage.mixture_kernels import BETAINC, negative_loglik, target
    from coordinator.linkage.numpy_sums import pairwise_sum

    rng = np.random.default_rng(12)
    for n in [0, 1, 7, 8, 9, 127, 128, 129, 200, 257, 1000, 4099]:
        values = rng.normal(0.0, 1.0, n) * 10.0 ** rng.uniform(-6, 6, n)
        assert pairwise_sum(values, 0, n) == np.add.reduce(values)
        assert n < 3 or pairwise_sum(values, 3, n - 3) == np.add.reduce(values[3:])
    for histogram, cap, noise, objective in _objectives(rng):
        t = target(histogram.counts, histogram.first, cap, noise)
        work = np.empty(2 * len(t.counts) + t.bins + 1)
        for params in np.concatenate([rng.normal(0.0, 3.0, (40, 5)), rng.normal(0.0, 40.0, (40, 5))]):
            for pinned in (False, True):
                x = params[1:] if pinned else params
                expected = objective(np.concatenate([[_ALONE_SHARE], x]) if pinned else x)
                got = negative_loglik(BETAINC, x, pinned, t.counts, t.capture, t.clipped, t.distance, t.bins,
                                      t.first, t.noise, work)
                assert got == pytest.approx(expected, rel=1e-14)


#: Linked pairs per 0.005 bin from 0.72 up: the floor solve of ``benchmarks/match.py``'s 4 x 1M automatic round
#: (its floor rose to 0.72; blocking capture 28/51 of the sampled pairs in 0.72-0.75, all above).
_RAISED_FLOOR_COUNTS = (
    15315, 16274, 16601, 16139, 16506, 16052, 17196, 16576, 17005, 17629, 17893, 18297, 19118, 19517, 20466, 19975,
    23506, 23127, 24578, 26506, 28315, 30794, 32989, 35492, 39396, 41513, 45956, 48575, 52139, 55651, 57899, 63806,
    69006, 73983, 79977, 85643, 95493, 98501, 98219, 95409, 88146, 84590, 87244, 95254, 100315, 100797, 113967,
    115030, 89272, 56138, 42812, 73274, 89625, 30235, 3003, 406468,
)


@pytest.mark.slow
def test_a_fit_is_not_left_where_a_collapsed_simplex_stopped() -> None:
    """Invariant: Nelder-Mead restarted from a fit's parameters gains at most the restart tolerance, on the raised
    floor's histogram where every start's run alone stopped ~2,000 log-likelihood units short of the optimum."""
    from scipy.optimize import minimize

    from coordinator.linkage.mixture import _RECENT, _RESTART_GAIN, ScoreHistogram, _fit_mixture, _Objective

    counts = np.zeros(200)
    counts[144:] = _RAISED_FLOOR_COUNTS
    capture = np.ones(200)
    capture[144:150] = 28 / 51
    histogram = ScoreHistogram(counts, 0.72, capture=capture)
    _RECENT.clear()
    fit = fit_mixture(histogram)
    assert _same_fit(fit, _fit_mixture(histogram, None, 1), histogram)  # restarts included
    objective = _Objective(counts, np.linspace(0.0, 1.0, 201), histogram.first, capture, 0.0)
    again = minimize(objective, np.array(fit.parameters), method="Nelder-Mead",
                     options={"maxiter": 2000, "xatol": 1e-4, "fatol": 1e-6})
    assert objective(np.array(fit.parameters)) <= again.fun + _RESTART_GAIN


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_warm_fit_of_a_subset_reaches_the_fixed_starts_optimum(seed: int) -> None:
    """Invariant: a thinned sample of a round's pairs (a sixth of them, as one agency pair of four agencies holds)
    fitted from the round's fit (:func:`warm_start`) reaches the optimum its six fixed starts reach: the same count
    of true links and precision at a threshold, within 1e-4."""
    from coordinator.linkage.mixture import _RECENT, ScoreHistogram, expected_counts, warm_start

    scores, _ = _mixture(seed, true=24000, false=3600)
    whole = score_histogram(scores, 0.55)
    base = fit_mixture(whole)
    rng = np.random.default_rng(seed)
    subsets = [ScoreHistogram(rng.binomial(whole.counts.astype(np.int64), share).astype(np.float64), 0.55)
               for share in (1 / 6, 1 / 3)]
    for subset in subsets:
        _RECENT.clear()
        fixed, warm = fit_mixture(subset), fit_mixture(subset, warm=warm_start(base))
        assert warm.matches == pytest.approx(fixed.matches, rel=1e-4)
        assert estimate_at(subset, warm, 0.75).precision == pytest.approx(estimate_at(subset, fixed, 0.75).precision,
                                                                          abs=1e-4)
        assert expected_counts(warm, subset) == pytest.approx(expected_counts(fixed, subset), rel=1e-3, abs=0.5)


def test_a_fit_of_true_links_alone_is_never_a_warm_start() -> None:
    """Invariant: :func:`warm_start` gives a mixture fit's parameters, and nothing for a fit of true links alone
    (share pinned): from there every run would stay in the "all links true" optimum the fixed starts guard against."""
    from coordinator.linkage.mixture import _ALONE_SHARE, warm_start

    scores, _ = _mixture(3)
    fit = fit_mixture(score_histogram(scores, 0.55))
    assert fit.parameters[0] != _ALONE_SHARE and warm_start(fit) == fit.parameters
    alone = fit.model_copy(update={"parameters": (_ALONE_SHARE, *fit.parameters[1:])})
    assert warm_start(alone) is None
    assert warm_start(fit.model_copy(update={"parameters": ()})) is None

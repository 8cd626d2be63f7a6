"""The score mixture behind a round's calibration: linked-pair histograms and their two-component fit.

True links are exact matches (the top bin) plus a beta density; false links, each record's best
stranger, a density decaying from the floor; both truncated to the floor the solve started from.
The binned likelihood is maximised with scipy's Nelder-Mead (the best run restarted while it gains),
compiled (:mod:`coordinator.linkage.mixture_kernels`), many fits' runs on two threads
(:mod:`coordinator.linkage.mixture_batch`); :func:`_fit_mixture`, with scipy itself, is the
reference they are tested against. See :mod:`coordinator.linkage.calibration` for what is
estimated from the fit.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from pplink.models import PplinkModel

__all__ = ["BINS", "MixtureFit", "ScoreHistogram", "expected_counts", "fit_mixture", "fit_mixtures", "score_histogram",
           "warm_start"]

#: Bins over [0, 1] (0.005 wide): fine enough that a threshold's estimate does not jump.
BINS = 200
_EPS = 1e-12


@dataclass(frozen=True)
class ScoreHistogram:
    """Counts of linked-pair similarities in :data:`BINS` bins over [0, 1], from ``floor`` up.

    Attributes:
        counts: pairs per bin (bins below the floor are zero).
        floor: the similarity the solve started from; no pair below it was offered.
        capture: per bin, the share of pairs the round's blocking finds
            (:func:`coordinator.linkage.capture.capture_by_score`); None: all pairs were compared.
        noise: the variance of noise added to every count (a DP release's); 0: exact counts.
    """

    counts: np.ndarray
    floor: float
    capture: np.ndarray | None = None
    noise: float = 0.0

    @property
    def first(self) -> int:
        """Index of the floor's bin."""
        return min(int(math.floor(self.floor * len(self.counts) + 1e-9)), len(self.counts) - 1)

    @property
    def total(self) -> int:
        """Pairs counted."""
        return int(self.counts.sum())


def score_histogram(scores: Sequence[float] | np.ndarray, floor: float, bins: int = BINS) -> ScoreHistogram:
    """Bin linked-pair similarities (at or above ``floor``) into a :class:`ScoreHistogram`.

    >>> score_histogram([0.4, 0.9, 0.95, 1.0], floor=0.5, bins=10).counts.astype(int).tolist()
    [0, 0, 0, 0, 0, 0, 0, 0, 0, 3]
    """
    values = np.asarray(scores, dtype=np.float64)
    values = values[values >= floor]
    counts = np.bincount(np.minimum((values * bins).astype(np.int64), bins - 1), minlength=bins)
    return ScoreHistogram(counts=counts.astype(np.float64), floor=float(floor))


def _beta_pmf(a: float, b: float, edges: np.ndarray) -> np.ndarray:
    """Mass of Beta(a, b) in each bin (exact, from the regularised incomplete beta function)."""
    from scipy.special import betainc

    return np.diff(betainc(a, b, np.clip(edges, 0.0, 1.0)))


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-min(max(x, -30.0), 30.0)))


def _shape(params: Sequence[float]) -> tuple[float, float, float, float, float]:
    """``(weight, exact share, a, b, decay rate)`` from the unconstrained parameters.

    Parameters: logit of the true-link share; logit of the exact-match share of true links
    (identical encodings, the top bin); the true links' beta mean, as a logit over [0.6, 1]; its
    concentration ``a + b``, as a log clipped to [4, 2000]; the false links' decay rate above the
    floor, as a log clipped to [5, 1100] (false links must thin out: a flat "false" component could
    swallow every link). The clips also keep Nelder-Mead's wanderings finite.
    """
    share, exact, mean, concentration, rate = (float(x) for x in params)
    mean = 0.6 + 0.4 * _sigmoid(mean)
    kappa = math.exp(min(max(concentration, math.log(4.0)), math.log(2000.0)))
    rate = math.exp(min(max(rate, math.log(5.0)), 7.0))
    return _sigmoid(share), _sigmoid(exact), mean * kappa, (1 - mean) * kappa, rate


def _components(params: np.ndarray, edges: np.ndarray, first: int) -> tuple[np.ndarray, np.ndarray, float, float]:
    """Per-bin probabilities of the true-link and false-link components, the match weight, and more.

    The fourth value is the share of true links above the floor (see :func:`_shape` for the parameters).
    """
    weight, exact_share, a, b, rate = _shape(params)
    bins = len(edges) - 1
    mids = (edges[:-1] + edges[1:]) / 2
    beta = _beta_pmf(a, b, edges)
    beta_in = max(float(beta[first:].sum()), _EPS)
    match = np.zeros(bins)
    match[first:] = (1 - exact_share) * beta[first:] / beta_in
    match[-1] += exact_share
    decay = np.zeros(bins)
    decay[first:] = np.exp(-rate * (mids[first:] - mids[first]))
    decay /= max(float(decay.sum()), _EPS)
    # The share of all true links (exact ones included) that lie above the floor.
    above = (1 - exact_share) * beta_in + exact_share
    return weight * match, (1 - weight) * decay, weight, above


def _negative_loglik(params: np.ndarray, counts: np.ndarray, edges: np.ndarray, first: int,
                     capture: np.ndarray | None = None, noise: float = 0.0) -> float:
    match, nonmatch, _, _ = _components(params, edges, first)
    mix = match[first:] + nonmatch[first:]
    if capture is not None:
        # What blocking lets through: both components thinned alike, then renormalised.
        mix = mix * capture[first:]
        mix = mix / max(float(mix.sum()), _EPS)
    if noise > 0:
        # Noisy counts (a DP release): each bin is its expected count plus sampling and added noise,
        # so a thin bin's count weighs as little as its noise allows (Gaussian approximation).
        observed = counts[first:]
        expected = float(observed.sum()) * np.maximum(mix, _EPS)
        variance = expected + noise
        return float((0.5 * (observed - expected) ** 2 / variance + 0.5 * np.log(variance)).sum())
    return -float((counts[first:] * np.log(np.maximum(mix, _EPS))).sum())


def _from_floor_bin(counts: np.ndarray, edges: np.ndarray, first: int, capture: np.ndarray | None,
                    ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray, np.ndarray]:
    """What the likelihood reads of a histogram from its floor's bin ``first`` on.

    Its counts, its capture (``None`` if none), the bin edges clipped to [0, 1], and each bin's
    midpoint less the floor bin's.
    """
    mids = (edges[:-1] + edges[1:]) / 2
    return (counts[first:], capture[first:] if capture is not None else None, np.clip(edges, 0.0, 1.0)[first:],
            mids[first:] - mids[first])


class _Objective:
    """:func:`_negative_loglik` for one histogram, bit for bit, with its constant arrays computed once.

    The optimiser calls the objective thousands of times per fit (7 starts at each of a round's
    fits); only bins from the floor up are computed (the incomplete beta function is the costly
    part), and every sum runs over an array of the same length and values as the original's, so
    every value, and so every fit, is the original's (``tests/coordinator/test_calibration.py``).
    """

    def __init__(self, counts: np.ndarray, edges: np.ndarray, first: int, capture: np.ndarray | None,
                 noise: float) -> None:
        self.counts, self.capture, self.clipped, self.distance = _from_floor_bin(counts, edges, first, capture)
        self.decay = np.zeros(len(edges) - 1)
        self.first, self.noise = first, noise

    def __call__(self, params: np.ndarray) -> float:
        from scipy.special import betainc

        weight, exact_share, a, b, rate = _shape(params)
        beta = np.diff(betainc(a, b, self.clipped))
        beta_in = max(float(beta.sum()), _EPS)
        match = (1 - exact_share) * beta / beta_in
        match[-1] += exact_share
        decay = self.decay
        decay[self.first :] = np.exp(-rate * self.distance)
        decay_first = decay[self.first :] / max(float(decay.sum()), _EPS)
        mix = weight * match + (1 - weight) * decay_first
        if self.capture is not None:
            mix = mix * self.capture
            mix = mix / max(float(mix.sum()), _EPS)
        if self.noise > 0:
            expected = float(self.counts.sum()) * np.maximum(mix, _EPS)
            variance = expected + self.noise
            return float((0.5 * (self.counts - expected) ** 2 / variance + 0.5 * np.log(variance)).sum())
        return -float((self.counts * np.log(np.maximum(mix, _EPS))).sum())


class MixtureFit(PplinkModel):
    """A fit of a linked-pair score histogram: true links against false links.

    Attributes:
        floor: the histogram's floor.
        matches: expected true links at or above the floor.
        match_beta: ``(a, b)`` of the true links' beta (besides the exact matches).
        exact_share: share of true links that are exact (identical encodings, the top bin).
        nonmatch_rate: how fast false links thin out above the floor (per unit of similarity).
        match_weight: share of the linked pairs (at or above the floor) that are true.
        posterior: per bin, the probability that a pair in it is a true link.
        parameters: the fitted parameters, unconstrained (a bootstrap refit starts from them).
    """

    floor: float
    matches: float
    match_beta: tuple[float, float]
    exact_share: float
    nonmatch_rate: float
    match_weight: float
    posterior: tuple[float, ...]
    parameters: tuple[float, ...] = ()


#: The mixture must beat true links alone by this many log(n) (BIC for two extra parameters is 1).
_BIC_FACTOR = 1.0
#: Nelder-Mead starting points (see :func:`_shape`). The last three start with a visible false-link
#: share and a steeper decay: on one demo round in three, every one of the first three converged to
#: "all links true" (a local optimum 800 log-likelihood units worse), the BIC test then kept it, and
#: the threshold fell to the floor (precision 0.93 instead of 0.99).
_STARTS = ((1.5, 0.0, 0.7, 2.9, 3.0), (0.5, 0.0, 1.5, 3.5, 2.0), (2.5, 0.0, 0.0, 2.3, 4.0),
           (1.0, -1.0, 1.0, 3.0, 4.5), (2.0, 0.0, 1.0, 3.0, 5.5), (0.0, 0.0, 0.5, 3.0, 2.5))


#: The first parameter of a fit of true links alone: the false-link share pinned (its logistic is 1 - 1e-13).
_ALONE_SHARE = 30.0

#: Nelder-Mead restarts from a fit's best run (while each gains more than :data:`_RESTART_GAIN`). A
#: simplex can collapse before it reaches the optimum: on the 4 x 1M round (3.3M links from a raised
#: floor of 0.72) every start stopped 2,000 log-likelihood units short, the false links' decay came
#: out 15 instead of 26, and the estimated precision 0.020 low; one restart from the best point
#: reached the optimum (a standard remedy: the restart rebuilds the simplex around the point).
_RESTARTS = 3
#: A restart counts only if it lowers the negative log-likelihood by more than this.
_RESTART_GAIN = 1e-3
#: Every Nelder-Mead run's options (scipy's ``minimize(..., method="Nelder-Mead", options=...)``).
_NELDER_MEAD = {"maxiter": 2000, "xatol": 1e-4, "fatol": 1e-6}

#: Recent fits by their inputs: an automatic round fits the same histogram in its second pass's gate
#: and again in its calibration (8 Nelder-Mead runs each), and makes its agency pairs' fits and then
#: its higher floors' and bootstrap fits before the calibrations ask for them (29 fits with 4 agencies).
_RECENT: OrderedDict[tuple, MixtureFit] = OrderedDict()
_RECENT_SIZE = 64
_RECENT_LOCK = threading.Lock()


def fit_mixture(histogram: ScoreHistogram, *, start: Sequence[float] | None = None,
                warm: Sequence[float] | None = None) -> MixtureFit:
    """Fit true-link and false-link components to a linked-pair histogram by maximum likelihood.

    True links: exact matches (the top bin) plus a beta density, truncated to the floor. False links:
    each record's best stranger, a density decaying exponentially from the floor. The binned
    likelihood is maximised from a few starting points (Nelder-Mead); the best run is restarted from
    its end while that gains (see :data:`_RESTARTS`), and kept. The fit
    is a function of its inputs alone, so a repeated fit (same counts, floor, capture, noise and
    start) is given back from a small cache of recent ones.

    Args:
        histogram: from :func:`score_histogram`.
        start: start only from these parameters (a previous fit's), as the bootstrap does.
        warm: a related fit's parameters to start from in place of the fixed starting points, with
            the restarts and the test of true links alone as usual (see :func:`warm_start`).

    Returns:
        The fit.
    """
    return fit_mixtures([histogram], starts=None if start is None else [start],
                        warms=None if warm is None else [warm])[0]


def warm_start(fit: MixtureFit) -> tuple[float, ...] | None:
    """Where fits of histograms like ``fit``'s may start in place of :data:`_STARTS`, or ``None``.

    One agency pair's linked pairs, a thinned sample of the round's, have nearly the round's shape:
    their optimum lies next to the round's, and one run from there (with its restarts) reaches what
    the six fixed starts reach, at a sixth of the runs (on the 4 x 100k round the agency pairs'
    counts of true links moved by at most 0.074 of 47,000, the threshold and estimates not at all;
    docs/scaling.md). The pairs above a higher floor are not such a sample (most false links are cut
    away) and keep the fixed starts. A fit of true links alone (share pinned) is never a start: from
    there every run stays in the "all links true" optimum the fixed starts guard against.
    """
    if not fit.parameters or fit.parameters[0] == _ALONE_SHARE:
        return None
    return fit.parameters


def _key(histogram: ScoreHistogram, start: Sequence[float] | None, warm: Sequence[float] | None) -> tuple:
    capture = histogram.capture
    return (np.asarray(histogram.counts, dtype=np.float64).tobytes(), float(histogram.floor),
            None if capture is None else np.asarray(capture, dtype=np.float64).tobytes(), float(histogram.noise),
            None if start is None else tuple(float(x) for x in start),
            None if warm is None else tuple(float(x) for x in warm))


def fit_mixtures(histograms: Sequence[ScoreHistogram],
                 starts: Sequence[Sequence[float] | None] | None = None,
                 warms: Sequence[Sequence[float] | None] | None = None) -> list[MixtureFit]:
    """:func:`fit_mixture` of each histogram (from its own start, if given), their Nelder-Mead runs side by side.

    Each fit is exactly the one :func:`fit_mixture` makes alone (scipy's ``minimize`` up to its
    tolerances, see :mod:`coordinator.linkage.mixture_kernels`); fitting them together only keeps
    both threads busy. Fits among the recent ones are given back; the others join them.

    Args:
        histograms: from :func:`score_histogram`.
        starts: per histogram, a previous fit's parameters to start only from, or ``None``.
        warms: per histogram, a related fit's parameters to start from in place of the fixed
            starting points (restarts and all; :func:`warm_start`), or ``None``.

    Returns:
        The fits, in order.
    """
    starts = [None] * len(histograms) if starts is None else list(starts)
    warms = [None] * len(histograms) if warms is None else list(warms)
    keys = [_key(h, start, warm) for h, start, warm in zip(histograms, starts, warms, strict=True)]
    out: list[MixtureFit | None] = [None] * len(histograms)
    with _RECENT_LOCK:
        for i, key in enumerate(keys):
            if key in _RECENT:
                _RECENT.move_to_end(key)
                out[i] = _RECENT[key]
    todo = {}  # one fit per distinct key
    for i, key in enumerate(keys):
        if out[i] is None:
            todo.setdefault(key, i)
    from coordinator.linkage.mixture_batch import fit_batched

    fits = fit_batched([(histograms[i], starts[i], warms[i]) for i in todo.values()])
    with _RECENT_LOCK:
        for key, fit in zip(todo, fits, strict=True):
            _RECENT[key] = fit
            _RECENT.move_to_end(key)
            while len(_RECENT) > _RECENT_SIZE:
                _RECENT.popitem(last=False)
    done = dict(zip(todo, fits, strict=True))
    return [fit if fit is not None else done[key] for fit, key in zip(out, keys, strict=True)]


def _start_points(start: Sequence[float] | None, warm: Sequence[float] | None) -> tuple[tuple[float, ...], ...]:
    """Where a fit's Nelder-Mead runs start: the given start alone, else the warm point alone, else :data:`_STARTS`."""
    if start is not None:
        return (tuple(start),)
    return _STARTS if warm is None else (tuple(warm),)


def _fit_mixture(histogram: ScoreHistogram, start: Sequence[float] | None, workers: int,
                 warm: Sequence[float] | None = None) -> MixtureFit:
    """:func:`fit_mixture` computed one start at a time with scipy's ``minimize``.

    The reference the compiled fits (:mod:`coordinator.linkage.mixture_batch`) are tested against.
    """
    from scipy.optimize import minimize

    counts = histogram.counts
    capture = histogram.capture
    bins = len(counts)
    edges = np.linspace(0.0, 1.0, bins + 1)
    first = histogram.first
    total = float(counts.sum())
    if total <= 0:
        return _empty_fit(histogram)
    objective = _Objective(counts, edges, first, capture, histogram.noise)

    def run(point: Sequence[float]) -> Any:
        # An objective of its own per run: each reuses a scratch array (its value never depends on it).
        return minimize(_Objective(counts, edges, first, capture, histogram.noise), np.array(point),
                        method="Nelder-Mead", options=_NELDER_MEAD)

    points = _start_points(start, warm)
    if workers > 1 and len(points) > 1:
        # The runs are independent and spend their time in scipy's incomplete beta function, which
        # releases the GIL; the best is then picked in the starts' order, as one after another would.
        with ThreadPoolExecutor(min(workers, len(points))) as pool:
            runs = list(pool.map(run, points))
    else:
        runs = [run(point) for point in points]
    best = None
    for found in runs:
        if best is None or found.fun < best.fun:
            best = found
    assert best is not None
    if start is None:
        for _ in range(_RESTARTS):
            again = run(best.x)
            if not again.fun < best.fun - _RESTART_GAIN:
                break
            best = again
        # Is there a false-link component at all? Fit true links alone (share pinned at 1) and keep
        # that unless the mixture's likelihood gain beats a BIC penalty for its two extra parameters:
        # where nearly every link is true (FEBRL), a steep "false" component would otherwise swallow
        # the true links' low tail and call a lower threshold unsafe.
        alone = minimize(lambda x: objective(np.concatenate([[_ALONE_SHARE], x])),
                         np.array(best.x[1:]), method="Nelder-Mead",
                         options=_NELDER_MEAD)
        if alone.fun - best.fun < _BIC_FACTOR * math.log(max(total, 2.0)):
            best.x = np.concatenate([[_ALONE_SHARE], alone.x])
    return _fitted(histogram, best.x)


def _empty_fit(histogram: ScoreHistogram) -> MixtureFit:
    """The fit of a histogram that holds no pair: no links, no parameters."""
    return MixtureFit(floor=histogram.floor, matches=0.0, match_beta=(1.0, 1.0), exact_share=0.0,
                      nonmatch_rate=1.0, match_weight=0.0, posterior=tuple([0.0] * len(histogram.counts)))


def _fitted(histogram: ScoreHistogram, x: np.ndarray) -> MixtureFit:
    """The fit of ``histogram`` at the optimiser's parameters ``x``."""
    counts, capture, first = histogram.counts, histogram.capture, histogram.first
    edges = np.linspace(0.0, 1.0, len(counts) + 1)
    match, nonmatch, weight, above = _components(x, edges, first)
    mix = match + nonmatch
    posterior = np.where(mix > 0, match / np.maximum(mix, _EPS), 0.0)
    posterior[:first] = 0.0
    # True links blocking never offered count too: the round missed them.
    inside = float((counts * posterior / (capture if capture is not None else 1.0)).sum())
    # The true links below the floor are not counted: extrapolating the true-link density below
    # the floor was measured to be the least stable part of the fit (FEBRL 1-3, synth), while true
    # pairs below the floor are rare with the default fields (under 0.2% on the UK-style set).
    _, exact_share, a, b, rate = _shape(x)
    return MixtureFit(
        floor=histogram.floor,
        matches=inside,
        match_beta=(a, b),
        exact_share=exact_share,
        nonmatch_rate=rate,
        match_weight=weight,
        posterior=tuple(float(p) for p in posterior),
        parameters=tuple(float(value) for value in x),
    )


def expected_counts(fit: MixtureFit, histogram: ScoreHistogram) -> np.ndarray:
    """Pairs per bin the fit expects, out of the histogram's total (zero below its floor).

    >>> h = score_histogram([0.9, 0.95, 1.0, 1.0], floor=0.5, bins=10)
    >>> round(float(expected_counts(fit_mixture(h), h).sum()), 6)
    4.0
    """
    if not fit.parameters:
        return np.zeros(len(histogram.counts))
    edges = np.linspace(0.0, 1.0, len(histogram.counts) + 1)
    match, nonmatch, _, _ = _components(np.asarray(fit.parameters), edges, histogram.first)
    return histogram.total * (match + nonmatch)

"""Privacy-loss arithmetic shared by the coordinator's release engine and the auditor.

One module, so that the number the coordinator writes on the ledger and the number the auditor
re-derives come from the same code path:

* :func:`entry_loss` builds the OpenDP measurement a release used (``make_laplace`` or
  ``make_gaussian`` over a vector of integer counts) from its mechanism, sensitivity and noise
  scale, and asks OpenDP's privacy map for the loss: epsilon (pure DP) or rho (zCDP), the latter
  also converted to (epsilon, delta) with ``make_zCDP_to_approxDP``.
* :func:`compose` adds losses up: pure epsilons add; zCDP rhos add and the total is converted to
  epsilon once, at the agreement's delta (far tighter than adding per-release epsilons).
* :func:`check_budget` refuses a release that would take the total past the agreement's epsilon.
* :func:`release_loss` is the engine's one way to cost a release; it and :func:`scale_for` refuse
  a requested loss or noise scale outside :data:`EPSILON_RANGE`, :data:`RHO_RANGE` and
  :data:`MAX_SCALE` with a :class:`~pplink.errors.ReleaseError` (never an OpenDP overflow).

Per-query sensitivities are in the query table, :mod:`pplink.queries`.

The closed forms (``epsilon = sensitivity / scale``; ``rho = sensitivity**2 / (2 * scale**2)``)
are given as :func:`laplace_epsilon` and :func:`gaussian_rho`; OpenDP's maps agree with them up
to an upward rounding of a few units in the last place, which is why budget comparisons allow a
relative slack of :data:`BUDGET_SLACK`.

OpenDP is imported lazily, so ``pplink`` stays importable where it is not installed (an agency
node never needs it).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from enum import StrEnum
from typing import Annotated

from pydantic import Field

from pplink.agreement import Accounting, PrivacyBudget
from pplink.errors import BudgetExceededError, ReleaseError
from pplink.models import PplinkModel
from pplink.privacy_loss import (
    Mechanism,
    count_measurement,
    gaussian_rho,
    laplace_epsilon,
    opendp,
    rho_for_epsilon,
    zcdp_to_epsilon,
)

__all__ = [
    "BUDGET_SLACK",
    "EPSILON_RANGE",
    "MAX_SCALE",
    "RHO_RANGE",
    "OPENDP_LIBRARY",
    "Mechanism",
    "PrivacyLoss",
    "QueryKind",
    "Sensitivity",
    "check_budget",
    "compose",
    "count_measurement",
    "entry_loss",
    "gaussian_rho",
    "laplace_epsilon",
    "losses_agree",
    "mechanism_for",
    "opendp",
    "release_loss",
    "remaining_epsilon",
    "rho_for_epsilon",
    "scale_for",
    "within_budget",
    "zcdp_to_epsilon",
]

#: Relative slack allowed when comparing a total against the budget. OpenDP rounds privacy maps
#: up by a few ulps (``make_laplace(scale=3).map(1) == 0.33333333333333337``), so three releases
#: of epsilon 1/3 would otherwise "overspend" a budget of 1 by 2e-16.
BUDGET_SLACK = 1e-9

#: Relative tolerance when an auditor compares a claimed loss with the re-derived one. Both come
#: from the same OpenDP map and JSON round-trips floats exactly, so they normally agree bit for bit.
CLAIM_TOLERANCE = 1e-9

#: The epsilon one release may ask for. Below, the noise swamps any count (and, past
#: :data:`MAX_SCALE`, would overflow OpenDP's 32-bit integer counts); above, the release is
#: essentially exact and OpenDP's conversions overflow (``--epsilon 1e308``).
EPSILON_RANGE = (1e-6, 100.0)
#: The rho one release may ask for under zCDP (``--rho 1e300`` overflows OpenDP's conversion).
RHO_RANGE = (1e-12, 100.0)
#: The largest noise scale drawn: noise this wide stays below 2**31 (OpenDP's ``int`` counts)
#: with probability 1 - exp(-214) per cell, so no cell saturates.
MAX_SCALE = 1e7

#: The library and version stamped on every ledger entry.
OPENDP_LIBRARY = "opendp==0.16.0"


class QueryKind(StrEnum):
    """The release queries the coordinator answers."""

    OVERLAP = "overlap"
    COUNT_BY = "count-by"
    HISTOGRAM = "histogram"
    LINK_RATE = "link-rate"
    CONFUSION = "confusion"
    #: Scoring: the label owner's noisy residuals, one per entity, in units of 1/unit (see subject).
    RESIDUALS = "residuals"
    #: Scoring: held-out people by score bin and outcome (AUC, calibration, top-k derive from it).
    SCORE_HISTOGRAM = "score-histogram"
    #: Horizontal training: one FedAvg round's noised mean of clipped model updates (Gaussian only).
    #: Privacy unit: one agency's whole update in that round, not one person (see docs/scoring.md).
    FEDAVG = "fedavg"
    #: Scoring: one of the two training releases of a vertical run (the noisy Gram matrix ``G`` or
    #: ``b``; see the subject), sums over the label owner's training people (docs/scoring.md).
    SUFFICIENT_STATISTICS = "sufficient-statistics"
    #: Linkage calibration: the round's floor-solve linked pairs by Dice bin (public bins from the
    #: floor to 1, named in the subject); the published precision and recall estimates derive from it.
    LINK_SCORES = "link-scores"


class PrivacyLoss(PplinkModel):
    """A privacy loss: one release's, or a running total.

    Attributes:
        epsilon: pure accounting: epsilon. zCDP: rho converted to epsilon at ``delta``.
        rho: zCDP only: the zero-concentrated DP parameter (None under pure accounting).
        delta: zCDP: the delta ``epsilon`` was converted at (the agreement's); pure: 0.
    """

    epsilon: Annotated[float, Field(ge=0.0)]
    rho: Annotated[float, Field(ge=0.0)] | None = None
    delta: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0


class Sensitivity(PplinkModel):
    """How far adding or removing one person can move a query's vector of counts.

    Attributes:
        l1: sum of absolute changes (Laplace is calibrated to this).
        l2: Euclidean norm of the change (the Gaussian is calibrated to this).
    """

    l1: Annotated[int, Field(gt=0)]
    l2: Annotated[int, Field(gt=0)]

    def for_mechanism(self, mechanism: Mechanism) -> int:
        """The sensitivity in the metric ``mechanism`` is calibrated to.

        >>> Sensitivity(l1=9, l2=3).for_mechanism(Mechanism.GAUSSIAN)
        3
        """
        return self.l1 if mechanism is Mechanism.LAPLACE else self.l2


# --- OpenDP, lazily ---------------------------------------------------------------------------


def entry_loss(mechanism: Mechanism, sensitivity: int, scale: float, delta: float) -> PrivacyLoss:
    """The privacy loss of one release, from OpenDP's privacy map of the measurement it used.

    Laplace: ``epsilon = make_laplace(...).map(sensitivity)`` (= sensitivity / scale).
    Gaussian: ``rho = make_gaussian(...).map(sensitivity)`` (= sensitivity² / 2σ²), and epsilon from
    ``make_zCDP_to_approxDP(m).map(sensitivity).epsilon(delta)``.

    Args:
        mechanism: Laplace or Gaussian.
        sensitivity: L1 (Laplace) or L2 (Gaussian) sensitivity, a positive integer.
        scale: the noise scale (Laplace b, Gaussian σ).
        delta: the agreement's delta (ignored for Laplace).

    Returns:
        The loss; ``rho`` is None for Laplace.

    >>> entry_loss(Mechanism.LAPLACE, 1, 2.0, 0.0)
    PrivacyLoss(epsilon=0.5, rho=None, delta=0.0)
    >>> loss = entry_loss(Mechanism.GAUSSIAN, 1, 4.0, 1e-6)
    >>> loss.rho, round(loss.epsilon, 4), loss.delta
    (0.03125, 1.1429, 1e-06)
    """
    if not (scale > 0.0 and math.isfinite(scale)):
        raise ValueError(f"noise scale must be positive and finite, got {scale}")
    if sensitivity <= 0:
        raise ValueError(f"sensitivity must be positive, got {sensitivity}")
    measurement = count_measurement(mechanism, scale)
    if mechanism is Mechanism.LAPLACE:
        return PrivacyLoss(epsilon=float(measurement.map(int(sensitivity))))
    dp = opendp()
    rho = float(measurement.map(int(sensitivity)))
    epsilon = float(dp.c.make_zCDP_to_approxDP(measurement).map(int(sensitivity)).epsilon(delta))
    return PrivacyLoss(epsilon=epsilon, rho=rho, delta=delta)


def mechanism_for(accounting: Accounting) -> Mechanism:
    """Laplace under pure accounting, Gaussian under zCDP.

    >>> mechanism_for(Accounting.ZCDP)
    <Mechanism.GAUSSIAN: 'gaussian'>
    """
    return Mechanism.LAPLACE if accounting is Accounting.PURE else Mechanism.GAUSSIAN


def scale_for(
    budget: PrivacyBudget, sensitivity: Sensitivity, *, epsilon: float | None = None, rho: float | None = None
) -> tuple[Mechanism, int, float]:
    """Choose the mechanism and noise scale that make one release cost what was asked.

    Pure accounting: ``scale = l1 / epsilon`` (``rho`` is refused). zCDP: the request gives
    ``rho`` directly, or ``epsilon``, read as the cost of this release alone at the agreement's
    delta and turned into ``rho = rho_for_epsilon(epsilon, delta)``; then ``sigma = l2 / sqrt(2 rho)``.

    Returns:
        ``(mechanism, sensitivity in the mechanism's metric, scale)``.

    Raises:
        ReleaseError: neither or both of epsilon and rho, a non-positive value, or rho under pure.

    >>> from pplink.agreement import PrivacyBudget
    >>> scale_for(PrivacyBudget(epsilon=1, accounting="pure"), Sensitivity(l1=4, l2=2), epsilon=0.5)
    (<Mechanism.LAPLACE: 'laplace'>, 4, 8.0)
    >>> scale_for(PrivacyBudget(epsilon=1, accounting="zcdp"), Sensitivity(l1=1, l2=1), rho=1 / 32)
    (<Mechanism.GAUSSIAN: 'gaussian'>, 1, 4.0)
    """
    if (epsilon is None) == (rho is None):
        raise ReleaseError("give exactly one of epsilon or rho for a release")
    name, asked, (low, high) = ("epsilon", epsilon, EPSILON_RANGE) if epsilon is not None else ("rho", rho, RHO_RANGE)
    assert asked is not None
    if not (asked > 0.0 and math.isfinite(asked)):
        raise ReleaseError(f"the privacy loss asked for must be positive and finite, got {name} {asked}")
    if not low <= asked <= high:
        raise ReleaseError(f"{name} {asked:g} is outside the range one release may ask for, [{low:g}, {high:g}]")
    mechanism = mechanism_for(budget.accounting)
    d_in = sensitivity.for_mechanism(mechanism)
    if mechanism is Mechanism.LAPLACE:
        if rho is not None:
            raise ReleaseError("the agreement uses pure accounting: ask for epsilon, not rho")
        assert epsilon is not None
        return mechanism, d_in, _usable_scale(d_in / epsilon, f"epsilon {epsilon:g}")
    if rho is None:
        assert epsilon is not None
        rho = rho_for_epsilon(epsilon, budget.delta)
        if rho <= 0.0:
            raise ReleaseError(f"epsilon {epsilon} is too small to give any rho at delta {budget.delta}")
    return mechanism, d_in, _usable_scale(d_in / math.sqrt(2.0 * rho), f"{name} {asked:g}")


def _usable_scale(scale: float, asked: str) -> float:
    if not scale <= MAX_SCALE:
        raise ReleaseError(f"{asked} gives a noise scale of {scale:.3g}, above the largest usable ({MAX_SCALE:g}: "
                           "wider noise would saturate counts); ask for a larger loss")
    return scale


def release_loss(budget: PrivacyBudget, mechanism: Mechanism, sensitivity: int, scale: float) -> PrivacyLoss:
    """The loss of one release the engine is about to charge: :func:`entry_loss`, refusing unusable inputs.

    Raises:
        ReleaseError: the mechanism does not fit the agreement's accounting, the sensitivity is not
            positive, the scale is not in ``(0, MAX_SCALE]``, or the loss is outside the per-release
            range (so no OpenDP overflow reaches the caller).

    >>> from pplink.agreement import PrivacyBudget
    >>> release_loss(PrivacyBudget(epsilon=1, accounting="pure"), Mechanism.LAPLACE, 2, 4.0).epsilon
    0.5
    """
    if mechanism is not mechanism_for(budget.accounting):
        raise ReleaseError(f"a {mechanism.value} release does not fit the agreement's {budget.accounting.value} "
                           "accounting")
    if isinstance(sensitivity, bool) or not isinstance(sensitivity, int) or sensitivity <= 0:
        raise ReleaseError(f"sensitivity must be a positive integer, got {sensitivity!r}")
    if not (scale > 0.0 and math.isfinite(scale)):
        raise ReleaseError(f"noise scale must be positive and finite, got {scale}")
    _usable_scale(scale, "the request")
    # Checked before OpenDP's map: the conversion to epsilon overflows for rho in the hundreds of thousands.
    closed = laplace_epsilon(sensitivity, scale) if mechanism is Mechanism.LAPLACE else gaussian_rho(sensitivity, scale)
    name, (low, high) = ("epsilon", EPSILON_RANGE) if mechanism is Mechanism.LAPLACE else ("rho", RHO_RANGE)
    if not closed <= high * (1.0 + BUDGET_SLACK):
        raise ReleaseError(f"sensitivity {sensitivity} at noise scale {scale:.6g} costs {name} {closed:.6g}, above "
                           f"the most one release may cost ({high:g})")
    return entry_loss(mechanism, sensitivity, scale, budget.delta if mechanism is Mechanism.GAUSSIAN else 0.0)


# --- composition and the budget ---------------------------------------------------------------


def compose(losses: Sequence[PrivacyLoss], accounting: Accounting, delta: float) -> PrivacyLoss:
    """Total privacy loss of a sequence of releases.

    Pure: epsilons add (basic composition). zCDP: rhos add, and the sum is converted to epsilon
    at the agreement's ``delta``.

    >>> compose([PrivacyLoss(epsilon=0.25), PrivacyLoss(epsilon=0.5)], Accounting.PURE, 0.0)
    PrivacyLoss(epsilon=0.75, rho=None, delta=0.0)
    >>> total = compose([PrivacyLoss(epsilon=1.0, rho=1 / 64, delta=1e-6)] * 2, Accounting.ZCDP, 1e-6)
    >>> total.rho, round(total.epsilon, 4)
    (0.03125, 1.1429)
    >>> compose([], Accounting.ZCDP, 1e-6)
    PrivacyLoss(epsilon=0.0, rho=0.0, delta=1e-06)
    """
    if accounting is Accounting.PURE:
        return PrivacyLoss(epsilon=math.fsum(loss.epsilon for loss in losses))
    rhos = []
    for loss in losses:
        if loss.rho is None:
            raise ValueError("a zCDP total needs rho on every loss")
        rhos.append(loss.rho)
    rho = math.fsum(rhos)
    return PrivacyLoss(epsilon=zcdp_to_epsilon(rho, delta), rho=rho, delta=delta)


def within_budget(epsilon: float, budget_epsilon: float) -> bool:
    """Whether a total epsilon fits the budget, allowing :data:`BUDGET_SLACK` for OpenDP's rounding.

    >>> within_budget(1.0000000000000002, 1.0), within_budget(1.001, 1.0)
    (True, False)
    """
    return epsilon <= budget_epsilon * (1.0 + BUDGET_SLACK)


def remaining_epsilon(spent: PrivacyLoss, budget: PrivacyBudget) -> float:
    """Budget epsilon minus the epsilon spent so far (never below zero).

    >>> from pplink.agreement import PrivacyBudget
    >>> remaining_epsilon(PrivacyLoss(epsilon=0.75), PrivacyBudget(epsilon=1, accounting="pure"))
    0.25
    """
    return max(0.0, budget.epsilon - spent.epsilon)


def check_budget(spent: PrivacyLoss, request: PrivacyLoss, budget: PrivacyBudget) -> PrivacyLoss:
    """The total after ``request``; refuses it if that would exceed the budget.

    Args:
        spent: the total of the releases on the ledger.
        request: the loss of the release being asked for.
        budget: the agreement's budget.

    Returns:
        The new total.

    Raises:
        BudgetExceededError: spent, requested and remaining are named in the message.

    >>> from pplink.agreement import PrivacyBudget
    >>> b = PrivacyBudget(epsilon=1.0, accounting="pure")
    >>> check_budget(PrivacyLoss(epsilon=0.5), PrivacyLoss(epsilon=0.5), b).epsilon
    1.0
    >>> check_budget(PrivacyLoss(epsilon=0.75), PrivacyLoss(epsilon=0.5), b)  # doctest: +NORMALIZE_WHITESPACE
    Traceback (most recent call last):
    ...
    pplink.errors.BudgetExceededError: release refused: spent epsilon=0.75, requested epsilon=0.5,
    remaining epsilon=0.25 of 1 (pure accounting)
    """
    total = compose([spent, request], budget.accounting, budget.delta)
    if not within_budget(total.epsilon, budget.epsilon):
        remaining = remaining_epsilon(spent, budget)
        if budget.accounting is Accounting.PURE:
            detail = (
                f"spent epsilon={spent.epsilon:.6g}, requested epsilon={request.epsilon:.6g}, "
                f"remaining epsilon={remaining:.6g} of {budget.epsilon:g} (pure accounting)"
            )
        else:
            rho_budget = rho_for_epsilon(budget.epsilon, budget.delta)
            detail = (
                f"spent rho={spent.rho or 0.0:.6g} (epsilon={spent.epsilon:.6g}), "
                f"requested rho={request.rho or 0.0:.6g}, "
                f"remaining rho={max(0.0, rho_budget - (spent.rho or 0.0)):.6g} (epsilon={remaining:.6g}) "
                f"of epsilon {budget.epsilon:g} at delta {budget.delta:g}; together they would reach "
                f"epsilon={total.epsilon:.6g} (zcdp accounting)"
            )
        raise BudgetExceededError(f"release refused: {detail}")
    return total


def losses_agree(claimed: float, derived: float) -> bool:
    """Whether a claimed loss equals a re-derived one within :data:`CLAIM_TOLERANCE`.

    >>> losses_agree(0.5, 0.5), losses_agree(0.1, 0.5)
    (True, False)
    """
    return math.isclose(claimed, derived, rel_tol=CLAIM_TOLERANCE, abs_tol=1e-15)

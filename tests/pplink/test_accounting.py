"""Privacy-loss arithmetic: OpenDP's maps, the zCDP conversion, composition, the budget, the noise itself."""

from __future__ import annotations

import doctest
import math

import numpy as np
import pytest

import pplink.accounting as accounting
from pplink.accounting import (
    Mechanism,
    PrivacyLoss,
    QueryKind,
    Sensitivity,
    check_budget,
    compose,
    count_measurement,
    entry_loss,
    gaussian_rho,
    laplace_epsilon,
    release_loss,
    rho_for_epsilon,
    scale_for,
    zcdp_to_epsilon,
)
from pplink.agreement import Accounting, PrivacyBudget
from pplink.errors import BudgetExceededError, ReleaseError
from pplink.queries import query_sensitivity


def test_doctests_pass() -> None:
    """The module's examples are part of its specification."""
    result = doctest.testmod(accounting)
    assert result.attempted > 20 and result.failed == 0


@pytest.mark.parametrize("sensitivity", [1, 3, 9])
@pytest.mark.parametrize("scale", [0.3, 1.0, 3.0, 7.0, 25.0])
def test_opendp_maps_match_closed_forms_and_never_round_down(sensitivity: int, scale: float) -> None:
    """OpenDP's privacy maps equal the textbook formulas up to an upward rounding of a few ulps."""
    lap = entry_loss(Mechanism.LAPLACE, sensitivity, scale, 0.0)
    assert lap.rho is None and lap.delta == 0.0
    assert lap.epsilon >= laplace_epsilon(sensitivity, scale)
    assert math.isclose(lap.epsilon, laplace_epsilon(sensitivity, scale), rel_tol=1e-12)
    gau = entry_loss(Mechanism.GAUSSIAN, sensitivity, scale, 1e-6)
    assert gau.rho is not None and gau.rho >= gaussian_rho(sensitivity, scale)
    assert math.isclose(gau.rho, gaussian_rho(sensitivity, scale), rel_tol=1e-12)
    # The per-entry epsilon is OpenDP's conversion of that rho at the same delta.
    assert math.isclose(gau.epsilon, zcdp_to_epsilon(gau.rho, 1e-6), rel_tol=1e-9)


def test_zcdp_conversion_matches_the_checked_fact_and_is_tighter_than_the_classic_bound() -> None:
    """FACTS.md: Gaussian sigma=4 at sensitivity 1 gives rho 1/32 and epsilon 1.143 at delta 1e-6."""
    assert zcdp_to_epsilon(1 / 32, 1e-6) == pytest.approx(1.143, abs=1e-3)
    for rho in (1e-4, 0.01, 0.5, 2.0):
        classic = rho + 2 * math.sqrt(rho * math.log(1 / 1e-6))
        assert rho < zcdp_to_epsilon(rho, 1e-6) <= classic


def test_zcdp_conversion_is_increasing_in_rho_and_decreasing_in_delta() -> None:
    """Monotonicity is what makes rho_for_epsilon's bisection and the budget comparison sound."""
    rhos = np.geomspace(1e-5, 5.0, 25)
    eps = [zcdp_to_epsilon(float(r), 1e-6) for r in rhos]
    assert all(a < b for a, b in zip(eps, eps[1:], strict=False))
    assert zcdp_to_epsilon(0.1, 1e-9) > zcdp_to_epsilon(0.1, 1e-6) > zcdp_to_epsilon(0.1, 1e-4)


@pytest.mark.parametrize("epsilon", [0.05, 0.5, 1.0, 4.0])
def test_rho_for_epsilon_inverts_the_conversion_from_below(epsilon: float) -> None:
    """The chosen rho never costs more than asked, and wastes less than a millionth of it."""
    rho = rho_for_epsilon(epsilon, 1e-6)
    assert zcdp_to_epsilon(rho, 1e-6) <= epsilon
    assert zcdp_to_epsilon(rho, 1e-6) == pytest.approx(epsilon, rel=1e-6)


def test_scale_for_pure_is_sensitivity_over_epsilon() -> None:
    """Laplace calibrated on the L1 sensitivity: b = l1 / epsilon, costing exactly epsilon."""
    budget = PrivacyBudget(epsilon=1.0, accounting=Accounting.PURE)
    mechanism, d_in, scale = scale_for(budget, Sensitivity(l1=6, l2=3), epsilon=0.25)
    assert (mechanism, d_in, scale) == (Mechanism.LAPLACE, 6, 24.0)
    assert entry_loss(mechanism, d_in, scale, 0.0).epsilon == pytest.approx(0.25, rel=1e-12)
    with pytest.raises(ReleaseError, match="pure accounting"):
        scale_for(budget, Sensitivity(l1=1, l2=1), rho=0.1)


def test_scale_for_zcdp_costs_the_requested_epsilon_or_rho() -> None:
    """Gaussian calibrated on L2: asking epsilon gives that epsilon at delta; asking rho gives that rho."""
    budget = PrivacyBudget(epsilon=4.0, delta=1e-6, accounting=Accounting.ZCDP)
    mechanism, d_in, scale = scale_for(budget, Sensitivity(l1=6, l2=3), epsilon=0.5)
    assert (mechanism, d_in) == (Mechanism.GAUSSIAN, 3)
    loss = entry_loss(mechanism, d_in, scale, budget.delta)
    assert loss.epsilon == pytest.approx(0.5, rel=1e-6) and loss.epsilon <= 0.5 * (1 + 1e-9)
    _, _, scale = scale_for(budget, Sensitivity(l1=1, l2=1), rho=0.02)
    assert entry_loss(Mechanism.GAUSSIAN, 1, scale, 1e-6).rho == pytest.approx(0.02, rel=1e-12)


@pytest.mark.parametrize("kwargs", [{}, {"epsilon": 0.1, "rho": 0.1}, {"epsilon": 0.0}, {"epsilon": -1.0},
                                    {"epsilon": math.inf}, {"rho": math.nan}])
def test_scale_for_rejects_bad_requests(kwargs: dict[str, float]) -> None:
    """Exactly one positive, finite loss must be asked for."""
    with pytest.raises(ReleaseError):
        scale_for(PrivacyBudget(epsilon=1.0), Sensitivity(l1=1, l2=1), **kwargs)


def test_compose_adds_epsilons_under_pure_and_rhos_under_zcdp() -> None:
    """Pure: basic composition. zCDP: rhos add and only the total is converted (tighter than adding epsilons)."""
    pure = compose([PrivacyLoss(epsilon=0.1)] * 10, Accounting.PURE, 0.0)
    assert pure.epsilon == pytest.approx(1.0) and pure.rho is None
    one = entry_loss(Mechanism.GAUSSIAN, 1, 10.0, 1e-6)
    total = compose([one] * 10, Accounting.ZCDP, 1e-6)
    assert total.rho == pytest.approx(10 * one.rho)
    assert total.epsilon == pytest.approx(zcdp_to_epsilon(10 * one.rho, 1e-6))
    assert total.epsilon < 10 * one.epsilon


def test_check_budget_refuses_with_spent_requested_and_remaining_named() -> None:
    """A refusal tells the analyst what was spent, what they asked for and what is left."""
    budget = PrivacyBudget(epsilon=1.0, accounting=Accounting.PURE)
    with pytest.raises(BudgetExceededError) as info:
        check_budget(PrivacyLoss(epsilon=0.8), PrivacyLoss(epsilon=0.3), budget)
    message = str(info.value)
    assert "spent epsilon=0.8" in message and "requested epsilon=0.3" in message and "remaining epsilon=0.2" in message
    zbudget = PrivacyBudget(epsilon=1.0, delta=1e-6, accounting=Accounting.ZCDP)
    spent = compose([entry_loss(Mechanism.GAUSSIAN, 1, 2.0, 1e-6)], Accounting.ZCDP, 1e-6)
    with pytest.raises(BudgetExceededError, match=r"spent rho=.*requested rho=.*remaining rho="):
        check_budget(spent, entry_loss(Mechanism.GAUSSIAN, 1, 2.0, 1e-6), zbudget)


def test_check_budget_allows_exact_use_despite_opendp_rounding_up() -> None:
    """Three releases of epsilon 1/3 (OpenDP: 0.33333333333333337 each) fit a budget of 1."""
    budget = PrivacyBudget(epsilon=1.0, accounting=Accounting.PURE)
    third = entry_loss(Mechanism.LAPLACE, 1, 3.0, 0.0)
    assert third.epsilon > 1 / 3  # the rounding the slack exists for
    spent = PrivacyLoss(epsilon=0.0)
    for _ in range(3):
        spent = check_budget(spent, third, budget)
    with pytest.raises(BudgetExceededError):
        check_budget(spent, PrivacyLoss(epsilon=1e-6), budget)


def test_query_sensitivities() -> None:
    """One person moves one cell by 1 except in link-rate (brute-forced in tests/coordinator/test_release.py)."""
    for kind in (QueryKind.OVERLAP, QueryKind.COUNT_BY, QueryKind.HISTOGRAM, QueryKind.CONFUSION):
        assert query_sensitivity(kind, 4) == Sensitivity(l1=1, l2=1)
    assert query_sensitivity(QueryKind.LINK_RATE, 2) == Sensitivity(l1=3, l2=2)
    assert query_sensitivity(QueryKind.LINK_RATE, 4) == Sensitivity(l1=10, l2=4)
    for n in range(2, 10):
        s = query_sensitivity(QueryKind.LINK_RATE, n)
        assert s.l1 == n * (n + 1) // 2 and (s.l2 - 1) ** 2 < s.l1 <= s.l2**2  # l2 = ceil(sqrt(l1))


# --- the noise has the stated scale -----------------------------------------------------------
# OpenDP samples from the OS's CSPRNG and cannot be seeded, so the bounds are wide: six standard
# errors of the sample variance (false alarm rate ~1e-9 per test).


def _variance_bounds(true_var: float, n: int, kurtosis: float) -> tuple[float, float]:
    se = true_var * math.sqrt((kurtosis - 1) / n)
    return true_var - 6 * se, true_var + 6 * se


def test_laplace_noise_has_the_stated_scale() -> None:
    """Discrete Laplace with scale b has variance 2 e^{-1/b} / (1 - e^{-1/b})^2 (~2 b^2)."""
    b, n = 10.0, 20_000
    draws = np.array(count_measurement(Mechanism.LAPLACE, b)([0] * n), dtype=float)
    q = math.exp(-1 / b)
    true_var = 2 * q / (1 - q) ** 2
    assert true_var == pytest.approx(2 * b * b, rel=0.01)
    lo, hi = _variance_bounds(true_var, n, kurtosis=6.0)
    assert lo < draws.var() < hi
    assert abs(draws.mean()) < 6 * math.sqrt(true_var / n)
    assert np.all(draws == np.round(draws))  # integer noise: counts stay integers


def test_gaussian_noise_has_the_stated_scale() -> None:
    """Discrete Gaussian with sigma 10 has variance ~sigma^2 (within 1e-6 for sigma this large)."""
    sigma, n = 10.0, 20_000
    draws = np.array(count_measurement(Mechanism.GAUSSIAN, sigma)([0] * n), dtype=float)
    lo, hi = _variance_bounds(sigma**2, n, kurtosis=3.0)
    assert lo < draws.var() < hi
    assert abs(draws.mean()) < 6 * sigma / math.sqrt(n)


@pytest.mark.parametrize(("accounting", "ask"), [("pure", {"epsilon": 1e308}), ("pure", {"epsilon": 1e-300}),
                                                 ("zcdp", {"rho": 1e300}), ("zcdp", {"epsilon": 1e308}),
                                                 ("zcdp", {"rho": 1e-300}), ("pure", {"epsilon": math.nan})])
def test_extreme_requests_are_release_errors_not_overflows(accounting: str, ask: dict[str, float]) -> None:
    """Outside the per-release range: a ReleaseError naming it, before OpenDP is asked anything."""
    budget = PrivacyBudget(epsilon=1, accounting=accounting)
    with pytest.raises(ReleaseError, match="range|positive and finite"):
        scale_for(budget, Sensitivity(l1=1, l2=1), **ask)


def test_a_scale_that_would_saturate_counts_is_refused() -> None:
    """epsilon 1e-6 over link-rate's L1 78 (12 agencies) asks for noise wider than MAX_SCALE."""
    budget = PrivacyBudget(epsilon=1, accounting="pure")
    with pytest.raises(ReleaseError, match="saturate"):
        scale_for(budget, Sensitivity(l1=78, l2=9), epsilon=1e-6)
    with pytest.raises(ReleaseError, match="saturate"):
        release_loss(budget, Mechanism.LAPLACE, 1, 1e9)
    with pytest.raises(ReleaseError, match="most one release may cost"):
        release_loss(PrivacyBudget(epsilon=1, accounting="zcdp"), Mechanism.GAUSSIAN, 1, 1e-4)
    assert release_loss(budget, Mechanism.LAPLACE, 2, 4.0) == entry_loss(Mechanism.LAPLACE, 2, 4.0, 0.0)

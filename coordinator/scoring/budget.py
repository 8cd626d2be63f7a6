"""Refuse a scoring run up front when its allotments do not fit the budget left.

A run spends a training allotment (the two releases of ``G`` and ``b``) and an evaluation
allotment; both are checked against the ledger before anything is computed, so a run is never
left half-released for want of budget.
"""

from __future__ import annotations

from pathlib import Path

from coordinator.release.engine import spent_so_far
from pplink.accounting import PrivacyLoss, check_budget, compose, rho_for_epsilon
from pplink.agreement import Accounting, AgreementConfig
from pplink.errors import BudgetExceededError
from pplink.scoring.suffstats import SuffStatsSettings

__all__ = ["ENTITY_LIST_QUANTUM", "check_run_budget"]

#: The entity list is padded with random dummy pseudonyms to a multiple of this, so that agencies
#: learn the number of linked people only roughly.
ENTITY_LIST_QUANTUM = 1024


def check_run_budget(agreement: AgreementConfig, ledger_path: Path, settings: SuffStatsSettings) -> PrivacyLoss:
    """Refuse a run when its training and evaluation allotments do not both fit the budget left.

    Returns:
        The total the ledger would reach if the run spends both allotments.

    Raises:
        BudgetExceededError: they do not fit; nothing is released.
    """
    budget = agreement.budget
    if budget.accounting is Accounting.ZCDP:
        planned = [PrivacyLoss(epsilon=e, rho=rho_for_epsilon(e, budget.delta), delta=budget.delta)
                   for e in (settings.training_epsilon, settings.evaluation_epsilon)]
    else:
        planned = [PrivacyLoss(epsilon=settings.training_epsilon), PrivacyLoss(epsilon=settings.evaluation_epsilon)]
    spent = spent_so_far(agreement, Path(ledger_path))  # read under the ledger's lock, as for an append
    request = compose(planned, budget.accounting, budget.delta)
    try:
        return check_budget(spent, request, budget)
    except BudgetExceededError as err:
        raise BudgetExceededError(
            f"scoring run refused before any release: training epsilon {settings.training_epsilon:g} and "
            f"evaluation epsilon {settings.evaluation_epsilon:g} do not fit what is left ({err})"
        ) from None

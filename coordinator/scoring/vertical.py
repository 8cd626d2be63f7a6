"""The coordinator side of vertical scoring: plan a run, drive its steps, charge the ledger, release the evaluation.

The coordinator holds no features, no labels and no weights. Per step it asks every node for a
masked share, adds the shares mod 2**64 (the sum is still blinded by the label owner, so it
learns nothing), charges the step's residual release on the ledger **before** the label owner
draws any noise (refusing it with :class:`~pplink.errors.BudgetExceededError` past the budget),
then passes the blinded sum and the ledger receipt to the label owner and the noisy residuals it
returns on to every node with the next step's request.

Nodes are reached through objects satisfying :class:`pplink.scoring.protocol.VerticalNode`:
the node objects themselves in process, a Flower adapter in deployment.

Evaluation (:func:`evaluate_vertical`) makes three releases through the release engine
(:func:`coordinator.release.engine.release_vector`, :func:`~coordinator.release.engine.release_confusion_counts`),
each on the ledger before anyone sees it:

1. the holdout's counts per (score bin, outcome): AUC, calibration and the top-share threshold
   follow from them by post-processing;
2. error counts (tp/fp/fn/tn) at that threshold by the agreement's subgroup attribute;
3. error counts among people known / not known to each other agency, computed by a two-party
   masked sum (the label owner's per-entity outcomes masked with a stream only it and that agency
   can compute; the coordinator adds its sums over the agency's entities to the agency's sums of
   the masks), so nobody sees one person's outcome and no agency learns who the others hold.
"""

from __future__ import annotations

import logging
import math
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from coordinator.linkage.state import LinkageState
from coordinator.release.engine import Release, release_confusion_counts, release_vector
from coordinator.release.queries import QueryVector
from pplink.accounting import (
    OPENDP_LIBRARY,
    Mechanism,
    PrivacyLoss,
    QueryKind,
    Sensitivity,
    check_budget,
    compose,
    entry_loss,
    mechanism_for,
    rho_for_epsilon,
    within_budget,
)
from pplink.agreement import Accounting, AgreementConfig
from pplink.crypto import public_key_text
from pplink.errors import (
    AgreementMismatchError,
    BudgetExceededError,
    ConfigError,
    ReleaseError,
    SignatureError,
    TransportError,
)
from pplink.ledger import EntryDraft, ReleaseQuery, entry_line, line_hash, open_ledger
from pplink.scoring.evaluation import (
    CalibrationRow,
    ErrorRates,
    TopShare,
    auc_from_histogram,
    calibration_from_histogram,
    error_rates,
    fill_suppressed,
    top_share_from_histogram,
)
from pplink.scoring.protocol import (
    OUTCOME_KEYS,
    HoldoutRequest,
    LabelOwnerEndpoint,
    PresenceReply,
    PresenceRequest,
    ResidualRequest,
    RunPlan,
    ShareRequest,
    StepCharge,
    ThresholdReply,
    ThresholdRequest,
    VerticalNode,
    VerticalSettings,
)
from pplink.scoring.secure_sum import sum_shares

__all__ = [
    "ENTITY_LIST_QUANTUM",
    "EVALUATION_WEIGHTS",
    "ScoringEvaluation",
    "TrainingRun",
    "charge_step",
    "check_run_budget",
    "entity_layout",
    "evaluate_vertical",
    "plan_vertical_run",
    "presence_counts",
    "residual_query",
    "step_loss",
    "train_vertical",
]

log = logging.getLogger(__name__)

#: The entity list is padded with random dummy pseudonyms to a multiple of this, so that agencies
#: learn the number of linked people only roughly.
ENTITY_LIST_QUANTUM = 1024
#: How the evaluation budget is split: score histogram, errors by subgroup, errors by agency.
EVALUATION_WEIGHTS = (0.5, 0.25, 0.25)


# --- planning and charging ----------------------------------------------------------------------


def plan_vertical_run(
    agreement: AgreementConfig, state: LinkageState, settings: VerticalSettings, *, run_id: str | None = None
) -> RunPlan:
    """Fix a run's public parameters: parties, entity list, noise scale per step.

    The entity list holds every entity pseudonym of the linkage plus random dummies up to a
    multiple of :data:`ENTITY_LIST_QUANTUM`, sorted: pseudonyms are random, so the order says
    nothing about who linked to whom (the linkage state's cluster order would), and the dummies
    blur the exact number of people.

    The per-step noise follows from the training allotment: under zCDP the allotment's rho
    (``rho_for_epsilon(training_epsilon, delta)``) is split evenly over the steps and
    ``sigma = unit / sqrt(2 rho_step)``; under pure accounting ``b = unit * steps / training_epsilon``.

    Raises:
        ConfigError: no scoring section, or the label owner is not in the linkage.
        AgreementMismatchError: the linkage state was made under another agreement.
    """
    if agreement.scoring is None:
        raise ConfigError("the agreement has no [scoring] section")
    if state.agreement_id != agreement.agreement_id:
        raise AgreementMismatchError("the linkage state was made under another agreement")
    label_owner = agreement.scoring.label_owner
    if label_owner not in state.parties:
        raise ConfigError(f"label owner {label_owner} is not in the linkage")
    budget = agreement.budget
    mechanism = mechanism_for(budget.accounting)
    unit = settings.residual_unit
    if mechanism is Mechanism.GAUSSIAN:
        rho_step = rho_for_epsilon(settings.training_epsilon, budget.delta) / settings.steps
        scale = unit / math.sqrt(2.0 * rho_step)
    else:
        scale = unit * settings.steps / settings.training_epsilon
    real = state.entity_hex()
    taken = set(real)
    dummies: list[str] = []
    while len(dummies) < (-len(real)) % ENTITY_LIST_QUANTUM:
        candidate = secrets.token_hex(16)
        if candidate not in taken:
            taken.add(candidate)
            dummies.append(candidate)
    return RunPlan(
        run_id=run_id or secrets.token_hex(16), agreement_id=agreement.agreement_id, label_owner=label_owner,
        parties=tuple(state.parties), entity_ids=tuple(sorted([*real, *dummies])), settings=settings,
        mechanism=mechanism, residual_scale=scale,
    )


def entity_layout(plan: RunPlan, state: LinkageState) -> np.ndarray:
    """The linkage cluster at each position of the plan's entity list (-1 for a dummy).

    Raises:
        ConfigError: the plan lists an entity the state does not have more than once, or misses one.
    """
    cluster = {hex_id: i for i, hex_id in enumerate(state.entity_hex())}
    layout = np.fromiter((cluster.get(e, -1) for e in plan.entity_ids), dtype=np.int64, count=plan.n_entities)
    if np.count_nonzero(layout >= 0) != state.n_clusters:
        raise ConfigError("the run plan's entity list does not cover the linkage state's entities")
    return layout


def step_loss(plan: RunPlan, delta: float) -> PrivacyLoss:
    """The privacy loss of one residual release, from OpenDP's map of the measurement the label owner uses."""
    return entry_loss(plan.mechanism, plan.settings.residual_unit, plan.residual_scale, delta)


def check_run_budget(agreement: AgreementConfig, ledger_path: Path, settings: VerticalSettings) -> PrivacyLoss:
    """Refuse a run up front when its training and evaluation allotments do not both fit the budget left.

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
    with open_ledger(Path(ledger_path), agreement) as ledger:
        spent = ledger.spent
    request = compose(planned, budget.accounting, budget.delta)
    try:
        return check_budget(spent, request, budget)
    except BudgetExceededError as err:
        raise BudgetExceededError(
            f"scoring run refused before any release: training epsilon {settings.training_epsilon:g} and "
            f"evaluation epsilon {settings.evaluation_epsilon:g} do not fit what is left ({err})"
        ) from None


def _ledger_attribute(agreement: AgreementConfig) -> str:
    assert agreement.scoring is not None
    if agreement.scoring.subgroup_attribute is not None:
        return agreement.scoring.subgroup_attribute
    if agreement.release.attributes:
        return agreement.release.attributes[0].column
    raise ReleaseError("scoring releases need at least one release attribute in the agreement")


def residual_query(agreement: AgreementConfig, plan: RunPlan, step: int) -> ReleaseQuery:
    """How a residual release is described on the ledger.

    Kind ``residuals``, with the run, step and fixed-point unit in the subject; the auditor
    re-derives its loss from mechanism, sensitivity and scale like any other entry. Its cells are
    empty: the released vector is one value per entity and goes to the agencies, not onto the
    ledger.
    """
    subject = (f"residuals: vertical logistic regression run {plan.run_id[:12]}, step {step + 1} of "
               f"{plan.settings.steps}, {plan.n_entities} entities, unit 1/{plan.settings.residual_unit}")
    return ReleaseQuery(kind=QueryKind.RESIDUALS, subject=subject)


def charge_step(
    agreement: AgreementConfig,
    ledger_path: Path,
    coordinator_key: Ed25519PrivateKey,
    plan: RunPlan,
    step: int,
    *,
    spent_in_run: tuple[PrivacyLoss, ...] = (),
) -> StepCharge:
    """Charge one residual release on the ledger, before the label owner draws its noise.

    The step is refused if the ledger's total plus this step would pass the agreement's budget,
    or if the run's steps so far plus this one would pass its training allotment.

    Args:
        agreement: the agreement.
        ledger_path: the ledger file.
        coordinator_key: the coordinator's signing key.
        plan: the run.
        step: the step being charged.
        spent_in_run: the losses of this run's earlier steps.

    Returns:
        The receipt the label owner checks before drawing noise at exactly the recorded scale.

    Raises:
        BudgetExceededError: past the budget or the allotment; nothing was appended, no noise drawn.
        SignatureError: the key is not the agreement's coordinator key.
        LedgerError: the ledger does not verify or the append failed.
    """
    if public_key_text(coordinator_key) != agreement.coordinator.public_key:
        raise SignatureError("the signing key is not the agreement's coordinator key; entries would not verify")
    budget = agreement.budget
    loss = step_loss(plan, budget.delta)
    with open_ledger(Path(ledger_path), agreement) as ledger:
        check_budget(ledger.spent, loss, budget)
        run_total = compose([*spent_in_run, loss], budget.accounting, budget.delta)
        if not within_budget(run_total.epsilon, plan.settings.training_epsilon):
            raise BudgetExceededError(
                f"step {step + 1} refused: the run's residual releases would reach epsilon {run_total.epsilon:.6g}, "
                f"past its training allotment of {plan.settings.training_epsilon:g}"
            )
        draft = EntryDraft(
            query=residual_query(agreement, plan, step), accounting=budget.accounting, mechanism=plan.mechanism,
            sensitivity=plan.settings.residual_unit, scale=plan.residual_scale, loss=loss,
            min_cell_size=agreement.release.min_cell_size, cells=(), library=OPENDP_LIBRARY,
        )
        entry = ledger.append(draft, coordinator_key)
    return StepCharge(step=step, seq=entry.seq, entry_hash=line_hash(entry_line(entry)), mechanism=plan.mechanism,
                      sensitivity=plan.settings.residual_unit, scale=plan.residual_scale)


# --- training -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainingRun:
    """A finished training run, as the coordinator knows it.

    Attributes:
        plan: the run plan.
        steps_done: residual releases made (equals ``plan.settings.steps`` unless the budget stopped it).
        stop_reason: why training stopped.
        charges: the ledger receipts, one per step.
        loss: the run's total privacy loss (its residual releases composed).
        seconds: wall time of the whole run, setup and scoring round included.
        step_seconds: wall time of each step.
        messages: request/reply pairs exchanged with nodes (setup and scoring round included).
        messages_per_step: request/reply pairs per training step (K shares + 1 residual request).
        score_step: the step number of the final scoring round.
        blinded_scores: the summed final scores, still blinded by the label owner (uniform here).
    """

    plan: RunPlan
    steps_done: int
    stop_reason: str
    charges: tuple[StepCharge, ...]
    loss: PrivacyLoss
    seconds: float
    step_seconds: tuple[float, ...]
    messages: int
    messages_per_step: int
    score_step: int
    blinded_scores: np.ndarray = field(repr=False)


def _sum_round(nodes: Mapping[str, VerticalNode], plan: RunPlan, request: ShareRequest) -> np.ndarray:
    shares = []
    for agency in plan.parties:
        reply = nodes[agency].share(request)
        if reply.run_id != plan.run_id or reply.step != request.step or reply.agency_id != agency:
            raise TransportError(f"{agency}: reply to step {request.step} is for another run, step or agency")
        if np.asarray(reply.share).shape != (plan.n_entities,):
            raise TransportError(f"{agency}: share of step {request.step} has the wrong length")
        shares.append(np.asarray(reply.share, dtype=np.uint64))
    return sum_shares(shares)


def _endpoints(plan: RunPlan, nodes: Mapping[str, VerticalNode]) -> LabelOwnerEndpoint:
    missing = [a for a in plan.parties if a not in nodes]
    if missing:
        raise TransportError(f"no endpoint for {', '.join(missing)}: every agency in the linkage must take part")
    owner = nodes[plan.label_owner]
    if not hasattr(owner, "residuals"):
        raise TransportError(f"{plan.label_owner}: its endpoint cannot answer the label owner's messages")
    return owner  # type: ignore[return-value]


def train_vertical(
    agreement: AgreementConfig,
    state: LinkageState,
    ledger_path: Path,
    coordinator_key: Ed25519PrivateKey,
    nodes: Mapping[str, VerticalNode],
    settings: VerticalSettings,
    *,
    run_id: str | None = None,
    on_step: Callable[[int, float], None] | None = None,
) -> TrainingRun:
    """Train a vertical logistic regression: key setup, ``settings.steps`` steps, one scoring round.

    Args:
        agreement: the agreement (budget, scoring section, keys).
        state: the linkage state (parties and entity pseudonyms).
        ledger_path: the ledger every residual release is charged to.
        coordinator_key: the coordinator's signing key.
        nodes: an endpoint per agency of the linkage (the label owner's answers its messages too).
        settings: the run settings.
        run_id: fixes the run id (tests); random otherwise.
        on_step: called after each step with (step, seconds), e.g. for a progress bar.

    Returns:
        The run; training stops early, without error, when the budget refuses a step.

    Raises:
        TransportError: a node is missing or answers out of protocol.
        BudgetExceededError: the training and evaluation allotments do not fit the budget left
            (:func:`check_run_budget`); nothing was released.
        ConfigError, AgreementMismatchError: see :func:`plan_vertical_run`.
    """
    started = time.perf_counter()
    plan = plan_vertical_run(agreement, state, settings, run_id=run_id)
    owner = _endpoints(plan, nodes)
    check_run_budget(agreement, ledger_path, settings)
    k = len(plan.parties)
    announcements = tuple(nodes[a].announce(plan) for a in plan.parties)
    for agency in plan.parties:
        nodes[agency].join(plan, announcements)
    messages = 2 * k
    charges: list[StepCharge] = []
    losses: list[PrivacyLoss] = []
    step_seconds: list[float] = []
    pending: tuple[int, np.ndarray] | None = None
    stop_reason = f"completed {settings.steps} steps"
    delta = agreement.budget.delta
    for step in range(settings.steps):
        t0 = time.perf_counter()
        request = ShareRequest(run_id=plan.run_id, step=step, purpose="logits",
                               residual_step=pending[0] if pending else None,
                               residuals=pending[1] if pending else None)
        pending = None
        blinded = _sum_round(nodes, plan, request)
        messages += k
        try:
            charge = charge_step(agreement, ledger_path, coordinator_key, plan, step, spent_in_run=tuple(losses))
        except BudgetExceededError as err:
            log.warning("training stopped before step %d, no noise drawn: %s", step + 1, err)
            stop_reason = f"stopped before step {step + 1} of {settings.steps}: {err}"
            break
        charges.append(charge)
        losses.append(step_loss(plan, delta))
        reply = owner.residuals(ResidualRequest(run_id=plan.run_id, step=step, blinded_sum=blinded, charge=charge))
        messages += 1
        noisy = np.asarray(reply.noisy_residuals)
        if reply.run_id != plan.run_id or reply.step != step or noisy.shape != (plan.n_entities,):
            raise TransportError(f"{plan.label_owner}: residuals of step {step} are for another run or malformed")
        pending = (step, noisy)
        step_seconds.append(time.perf_counter() - t0)
        if on_step is not None:
            on_step(step, step_seconds[-1])
    score_step = len(charges)
    scores = _sum_round(nodes, plan, ShareRequest(
        run_id=plan.run_id, step=score_step, purpose="scores", residual_step=pending[0] if pending else None,
        residuals=pending[1] if pending else None))
    messages += k
    total = compose(losses, agreement.budget.accounting, delta) if losses else PrivacyLoss(
        epsilon=0.0, rho=0.0 if agreement.budget.accounting is Accounting.ZCDP else None,
        delta=delta if agreement.budget.accounting is Accounting.ZCDP else 0.0)
    return TrainingRun(
        plan=plan, steps_done=len(charges), stop_reason=stop_reason, charges=tuple(charges), loss=total,
        seconds=time.perf_counter() - started, step_seconds=tuple(step_seconds), messages=messages,
        messages_per_step=k + 1, score_step=score_step, blinded_scores=scores,
    )


# --- evaluation ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ScoringEvaluation:
    """The released evaluation of a run: every figure is post-processing of a ledgered DP release.

    Attributes:
        histogram: the release of holdout counts per (score bin, outcome).
        auc: AUC from the noisy histogram.
        top: precision and recall when the top ``top_share`` is flagged (whole bins).
        calibration: observed outcome rate per score bin.
        threshold: the logit at or above which a person is flagged (a bin edge).
        subgroups: the release of error counts by subgroup (None without a subgroup attribute).
        subgroup_rates: FPR and FNR per subgroup value, from the noisy counts.
        presence: the release of error counts among people known / not known to each other agency.
        presence_rates: ``{(agency, "known" | "not known"): rates}``.
    """

    histogram: Release
    auc: float
    top: TopShare
    calibration: tuple[CalibrationRow, ...]
    threshold: float
    subgroups: Release | None
    subgroup_rates: dict[str, ErrorRates]
    presence: Release | None
    presence_rates: dict[tuple[str, str], ErrorRates]


def _split(agreement: AgreementConfig, settings: VerticalSettings) -> list[dict[str, float]]:
    """Per evaluation release, the keyword (epsilon or rho) and amount to spend."""
    budget = agreement.budget
    if budget.accounting is Accounting.ZCDP:
        rho = rho_for_epsilon(settings.evaluation_epsilon, budget.delta)
        return [{"rho": rho * w} for w in EVALUATION_WEIGHTS]
    return [{"epsilon": settings.evaluation_epsilon * w} for w in EVALUATION_WEIGHTS]


def _bin_labels(edges: tuple[float, ...]) -> list[str]:
    inner = [f"[{a:g}, {b:g})" for a, b in zip(edges, edges[1:], strict=False)]
    return [f"< {edges[0]:g}", *inner, f">= {edges[-1]:g}"]


def _mask_sum(values: np.ndarray) -> np.ndarray:
    return np.asarray(values, dtype=np.uint64).sum(axis=0, dtype=np.uint64)


def _counts(total: np.ndarray, limit: int, agency: str) -> list[int]:
    signed = np.asarray(total, dtype=np.uint64).view(np.int64)
    if (signed < 0).any() or (signed > limit).any():
        raise TransportError(f"{agency}: masked outcome sums do not cancel "
                             "(a share was altered or is from another run)")
    return [int(v) for v in signed]


def presence_counts(
    plan: RunPlan, state: LinkageState, reply: ThresholdReply, answers: Mapping[str, PresenceReply]
) -> QueryVector:
    """Holdout error counts among people known / not known to each other agency, from masked sums.

    For agency ``k`` the label owner sent ``A = outcomes - M`` (``M`` a stream only it and ``k``
    can compute) and ``k`` sent the sums of ``M`` over the entities it holds and those it does not.
    The coordinator knows which entities ``k`` holds (the linkage), sums ``A`` over each set and
    adds ``k``'s sums: the masks cancel and only the two totals appear. Dummy entities are held
    by nobody and have no outcome.

    The vector's keys are ``(agency, "known" | "not known", outcome)``. One held-out person is in
    one cell per other agency, so L1 sensitivity is the number of other agencies and L2 its
    square root, rounded up.

    Raises:
        TransportError: a reply is missing, malformed or for another run, or the sums do not cancel.
    """
    layout = entity_layout(plan, state)
    real = layout >= 0
    membership = np.zeros((plan.n_entities, len(state.parties)), dtype=bool)
    membership[real] = state.membership()[layout[real]]
    keys: list[tuple[str, ...]] = []
    counts: list[int] = []
    for agency, answer in answers.items():
        masked = np.asarray(reply.masked_outcomes.get(agency, np.empty((0, 4))), dtype=np.uint64)
        if masked.shape != (plan.n_entities, 4):
            raise TransportError(f"{plan.label_owner}: masked outcomes for {agency} are malformed")
        if answer.run_id != plan.run_id or answer.agency_id != agency:
            raise TransportError(f"{agency}: presence sums are for another run or agency")
        held = membership[:, state.parties.index(agency)]
        known = _mask_sum(masked[held]) + np.asarray(answer.held, dtype=np.uint64)
        unknown = _mask_sum(masked[~held]) + np.asarray(answer.not_held, dtype=np.uint64)
        for where, total in (("known", known), ("not known", unknown)):
            for outcome, value in zip(OUTCOME_KEYS, _counts(total, plan.n_entities, agency), strict=True):
                keys.append((agency, where, outcome))
                counts.append(value)
    l1 = max(1, len(answers))
    return QueryVector(tuple(keys), np.array(counts, dtype=np.int64), Sensitivity(l1=l1, l2=math.isqrt(l1 - 1) + 1))


def evaluate_vertical(
    agreement: AgreementConfig,
    state: LinkageState,
    ledger_path: Path,
    coordinator_key: Ed25519PrivateKey,
    nodes: Mapping[str, VerticalNode],
    run: TrainingRun,
) -> ScoringEvaluation:
    """Release the run's evaluation: score histogram, errors by subgroup, errors by agency.

    Args:
        agreement: the agreement.
        state: the linkage state the run used (gives each agency's entities to the coordinator).
        ledger_path: the ledger.
        coordinator_key: the coordinator's signing key.
        nodes: the run's endpoints.
        run: the finished training run.

    Raises:
        BudgetExceededError: a release would pass the budget (earlier releases stay on the ledger).
        TransportError: a node answers out of protocol.
    """
    plan = run.plan
    settings = plan.settings
    owner = _endpoints(plan, nodes)
    spend = _split(agreement, settings)
    subject = f"model run {plan.run_id[:12]}, holdout"
    attribute = _ledger_attribute(agreement)

    hist = owner.holdout(HoldoutRequest(run_id=plan.run_id, step=run.score_step, blinded_scores=run.blinded_scores))
    n_bins = len(settings.score_edges) + 1
    if len(hist.positives) != n_bins or len(hist.negatives) != n_bins:
        raise TransportError(f"{plan.label_owner}: score histogram has the wrong number of bins")
    labels = _bin_labels(settings.score_edges)
    keys = tuple((label, outcome) for label in labels for outcome in ("positive", "negative"))
    counts = np.array([c for pair in zip(hist.positives, hist.negatives, strict=True) for c in pair], dtype=np.int64)
    histogram = release_vector(
        agreement, ledger_path, coordinator_key,
        ReleaseQuery(kind=QueryKind.SCORE_HISTOGRAM, subject=f"score bin x outcome: {subject}"),
        QueryVector(keys, counts, Sensitivity(l1=1, l2=1)), **spend[0])
    values = fill_suppressed([c.value for c in histogram.cells])
    pos, neg = values[0::2], values[1::2]
    top = top_share_from_histogram(pos, neg, settings.score_edges, settings.top_share)
    threshold = top.threshold

    others = tuple(a for a in plan.parties if a != plan.label_owner)
    reply = owner.threshold(ThresholdRequest(run_id=plan.run_id, threshold=threshold, presence_agencies=others))
    subgroups = None
    subgroup_rates: dict[str, ErrorRates] = {}
    assert agreement.scoring is not None
    share_text = f"top {100 * settings.top_share:g}% flagged"
    if agreement.scoring.subgroup_attribute is not None:
        subgroups = release_confusion_counts(
            agreement, ledger_path, coordinator_key, reply.by_group, attribute=agreement.scoring.subgroup_attribute,
            subject=f"{subject}, {share_text}", **spend[1])
        by_group: dict[str, dict[str, float | None]] = {}
        for cell in subgroups.cells:
            by_group.setdefault(cell.key[0], {})[cell.key[1]] = cell.value
        subgroup_rates = {group: error_rates(c) for group, c in by_group.items()}

    presence = None
    presence_rates: dict[tuple[str, str], ErrorRates] = {}
    if others:
        answers = {agency: nodes[agency].presence(PresenceRequest(run_id=plan.run_id)) for agency in others}
        presence = release_vector(
            agreement, ledger_path, coordinator_key,
            ReleaseQuery(kind=QueryKind.CONFUSION, attribute=attribute,
                         subject=f"errors by agency presence: {subject}, {share_text}"),
            presence_counts(plan, state, reply, answers), **spend[2])
        grouped: dict[tuple[str, str], dict[str, float | None]] = {}
        for cell in presence.cells:
            grouped.setdefault((cell.key[0], cell.key[1]), {})[cell.key[2]] = cell.value
        presence_rates = {key: error_rates(c) for key, c in grouped.items()}

    return ScoringEvaluation(
        histogram=histogram, auc=auc_from_histogram(pos, neg), top=top,
        calibration=tuple(calibration_from_histogram(pos, neg, settings.score_edges)), threshold=threshold,
        subgroups=subgroups, subgroup_rates=subgroup_rates, presence=presence, presence_rates=presence_rates,
    )

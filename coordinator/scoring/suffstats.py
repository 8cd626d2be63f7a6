"""The coordinator side of noisy-sufficient-statistics scoring: plan, relay, charge, release the evaluation.

The coordinator holds no features, labels, keys that open anything, or weights it could not
compute from a DP release. It relays signed ciphertexts it cannot open, charges the two training
releases on the ledger **before** any party draws noise (and passes each node the new ledger lines
so the node checks them itself), and sends the evaluation through the release engine.
"""

from __future__ import annotations

import math
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from coordinator.linkage.state import LinkageState
from coordinator.release.binding import binding_for_state
from coordinator.release.engine import Release, charge, release_confusion_counts, release_vector, spent_so_far
from coordinator.release.queries import QueryVector
from coordinator.scoring.budget import ENTITY_LIST_QUANTUM, check_run_budget
from pplink.accounting import (
    Mechanism,
    PrivacyLoss,
    QueryKind,
    Sensitivity,
    rho_for_epsilon,
)
from pplink.agreement import Accounting, AgreementConfig
from pplink.errors import AgreementMismatchError, ConfigError, ReleaseError, TransportError
from pplink.ledger import ReleaseQuery, read_ledger_lines
from pplink.ledger_genesis import LedgerBinding
from pplink.scoring.evaluation import auc_from_histogram, fill_suppressed, top_share_from_histogram
from pplink.scoring.fairness import GroupRates, group_rates
from pplink.scoring.he import SignedBundle
from pplink.scoring.suffstats import (
    EVALUATION_WEIGHTS,
    RELEASE_B,
    RELEASE_GRAM,
    SuffStatsSettings,
    noise_plan,
    presence_noise,
)
from pplink.scoring.suffstats_protocol import (
    BlockRequest,
    DecryptRequest,
    PresenceAsk,
    Released,
    ScoreRequest,
    SuffStatsEndpoint,
    SuffStatsOwnerEndpoint,
    SuffStatsPlan,
    presence_subject,
    release_subject,
)

__all__ = ["SuffStatsEvaluation", "SuffStatsRun", "charge_release", "evaluate_suffstats",
           "plan_suffstats_run", "presence_attribute", "train_suffstats"]



def plan_suffstats_run(agreement: AgreementConfig, state: LinkageState, settings: SuffStatsSettings, *,
                       run_id: str | None = None) -> SuffStatsPlan:
    """Fix a run's public parameters (label owner first, then the other agencies sorted).

    Raises:
        ConfigError: no scoring section, or the label owner is not in the linkage.
        AgreementMismatchError: the state was made under another agreement.
        ReleaseError: pure accounting (the releases are Gaussian; zCDP only).
    """
    if agreement.scoring is None:
        raise ConfigError("the agreement has no [scoring] section")
    if state.agreement_id != agreement.agreement_id:
        raise AgreementMismatchError("the linkage state was made under another agreement")
    if agreement.budget.accounting is not Accounting.ZCDP:
        raise ReleaseError("vertical scoring releases Gaussian sums and needs zCDP accounting")
    owner = agreement.scoring.label_owner
    if owner not in state.parties:
        raise ConfigError(f"label owner {owner} is not in the linkage")
    parties = (owner, *sorted(a for a in state.parties if a != owner))
    widths = tuple(len(agreement.scoring.features.get(a, ())) + 1 for a in parties)
    real = state.entity_hex()
    taken = set(real)
    dummies: list[str] = []
    while len(dummies) < (-len(real)) % ENTITY_LIST_QUANTUM:
        candidate = secrets.token_hex(16)
        if candidate not in taken:
            taken.add(candidate)
            dummies.append(candidate)
    return SuffStatsPlan(run_id=run_id or secrets.token_hex(16), agreement_id=agreement.agreement_id,
                         label_owner=owner, parties=parties, widths=widths,
                         entity_ids=tuple(sorted([*real, *dummies])), settings=settings,
                         noise=noise_plan(settings, len(parties), agreement.budget.delta, sum(widths)))


def charge_release(agreement: AgreementConfig, ledger_path: Path, key: Ed25519PrivateKey, plan: SuffStatsPlan,
                   release: str, *, binding: LedgerBinding | None = None) -> None:
    """Append one training release's charge (budget checked first); nobody has drawn its noise yet.

    Goes through the release engine's one charge path (:func:`coordinator.release.engine.charge`).

    Raises:
        BudgetExceededError: it does not fit the budget left; nothing appended.
    """
    noise = plan.noise
    sens, scale = ((noise.gram_sensitivity, noise.gram_scale) if release == RELEASE_GRAM
                   else (noise.b_sensitivity, noise.b_scale))
    charge(agreement, Path(ledger_path), key,
           ReleaseQuery(kind=QueryKind.SUFFICIENT_STATISTICS, parties=plan.parties,
                        subject=release_subject(release, plan)),
           mechanism=Mechanism.GAUSSIAN, sensitivity=sens, scale=scale, binding=binding)


@dataclass(frozen=True)
class SuffStatsRun:
    """A finished training run as the coordinator saw it.

    Attributes:
        plan: the plan.
        released: the released (noisy) ``G`` and ``b``.
        seconds: wall time by phase (setup, forward, block, decrypt, scores).
        bytes_by_message: bytes of ciphertext relayed per message kind.
        messages: request/reply pairs with nodes.
        ledger_seen: ledger lines every node has been shown so far.
    """

    plan: SuffStatsPlan
    released: Released = field(repr=False)
    seconds: dict[str, float]
    bytes_by_message: dict[str, int]
    messages: int
    ledger_seen: int = 0


def _size(bundle: SignedBundle) -> int:
    return sum(len(c) for chunks in bundle.items.values() for c in chunks)


def _ask_blocks(nodes: Mapping[str, SuffStatsEndpoint],
                requests: Mapping[str, BlockRequest]) -> dict[str, SignedBundle]:
    """Each agency's block; endpoints that can send several requests at once (``block_each``) do.

    The requests do not depend on each other's answers, so a transport with a round-trip cost
    (Flower: a SuperNode polls for work) sends them together.
    """
    each = getattr(nodes[next(iter(requests))], "block_each", None) if requests else None
    if callable(each):
        return each(requests)  # type: ignore[no-any-return]
    return {a: nodes[a].block(r) for a, r in requests.items()}


def train_suffstats(agreement: AgreementConfig, state: LinkageState, ledger_path: Path, key: Ed25519PrivateKey,
                    nodes: Mapping[str, SuffStatsEndpoint], settings: SuffStatsSettings, *,
                    run_id: str | None = None) -> SuffStatsRun:
    """Plan, set up, charge and compute the released statistics; then the label owner's scores.

    Raises:
        BudgetExceededError: the run's allotments do not fit (nothing released), or a charge is refused.
        TransportError: a node is missing or answers out of protocol.
    """
    plan = plan_suffstats_run(agreement, state, settings, run_id=run_id)
    binding = binding_for_state(agreement, key, state)  # the round's ledger (genesis checked)
    missing = [a for a in plan.parties if a not in nodes]
    if missing:
        raise TransportError(f"no endpoint for {', '.join(missing)}: every agency in the linkage must take part")
    check_run_budget(agreement, ledger_path, settings)
    owner: SuffStatsOwnerEndpoint = nodes[plan.label_owner]  # type: ignore[assignment]
    others = plan.parties[1:]
    seconds: dict[str, float] = {}
    sizes: dict[str, int] = {}
    t0 = time.perf_counter()
    lines = read_ledger_lines(Path(ledger_path))
    announcements = tuple(nodes[a].announce(plan) for a in plan.parties)
    for agency in plan.parties:
        nodes[agency].join(plan, announcements, lines)
    seen = len(lines)
    setup = owner.owner_setup(plan.run_id)
    sizes["owner-setup"] = _size(setup)
    seconds["setup"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    forwards = {a: nodes[a].forward(plan.run_id, setup) for a in others[:-1]}
    sizes["forward"] = sum(_size(b) for b in forwards.values())
    seconds["forward"] = time.perf_counter() - t0

    for release in (RELEASE_GRAM, RELEASE_B):
        charge_release(agreement, ledger_path, key, plan, release, binding=binding)
    lines = read_ledger_lines(Path(ledger_path))
    new = tuple(lines[seen:])
    t0 = time.perf_counter()
    requests = {agency: BlockRequest(plan.run_id, setup, tuple(forwards[a] for a in others[:i]), new)
                for i, agency in enumerate(others)}
    blocks = [answer for _, answer in sorted(_ask_blocks(nodes, requests).items(),
                                             key=lambda item: others.index(item[0]))]
    sizes["block"] = sum(_size(b) for b in blocks)
    seconds["block"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    released = owner.decrypt(DecryptRequest(plan.run_id, tuple(blocks), new))
    seconds["decrypt"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    shares = tuple(nodes[a].score_share(ScoreRequest(plan.run_id, released, setup)) for a in others)
    sizes["scores"] = sum(_size(b) for b in shares)
    owner.owner_scores(plan.run_id, shares)
    seconds["scores"] = time.perf_counter() - t0
    messages = 2 * len(plan.parties) + 1 + len(forwards) + len(others) + 1 + len(others) + 1
    return SuffStatsRun(plan=plan, released=released, seconds=seconds, bytes_by_message=sizes, messages=messages,
                        ledger_seen=len(lines))


@dataclass(frozen=True)
class SuffStatsEvaluation:
    """The released evaluation: every figure is post-processing of a ledgered DP release.

    Attributes:
        federated: the federated model's holdout histogram release.
        own: the label owner's own-feature model's histogram release (same holdout).
        auc: released AUC of the federated model.
        own_auc: released AUC of the own-feature model.
        threshold: the flagging threshold (a public bin edge, from the federated histogram).
        subgroups: error counts by subgroup at the threshold (None without a subgroup attribute).
        rates: FPR, FNR and selection rate by subgroup, each with a 95% interval.
        presence: released counts ``{(agency, "known" | "not known", outcome): count}`` (None with
            no other agency).
        presence_rates: the same rates per (agency, "known" | "not known").
        auc_sd: spread of each released AUC from the DP noise alone (federated, own), by re-noising
            the released histograms (post-processing).
        verdict: ``"helped"`` when the federated AUC exceeds the own-feature AUC by more than twice
            the noise spread of the difference, ``"did not help"`` otherwise (no gain the release
            can show is no reason to use a model built on other agencies' data).
    """

    federated: Release
    own: Release
    auc: float
    own_auc: float
    threshold: float
    subgroups: Release | None
    rates: dict[str, GroupRates]
    presence: dict[tuple[str, str, str], int] | None
    presence_rates: dict[tuple[str, str], GroupRates]
    auc_sd: tuple[float, float]
    verdict: str

    @property
    def linking_helped(self) -> bool:
        """Whether linking clearly helped (see ``verdict``)."""
        return self.verdict == "helped"


def _spend(agreement: AgreementConfig, settings: SuffStatsSettings) -> list[float]:
    rho = rho_for_epsilon(settings.evaluation_epsilon, agreement.budget.delta)
    return [rho * w for w in EVALUATION_WEIGHTS]


def _bin_keys(edges: tuple[float, ...]) -> tuple[tuple[str, str], ...]:
    labels = [f"< {edges[0]:g}", *(f"[{a:g}, {b:g})" for a, b in zip(edges, edges[1:], strict=False)),
              f">= {edges[-1]:g}"]
    return tuple((label, outcome) for label in labels for outcome in ("positive", "negative"))


def evaluate_suffstats(agreement: AgreementConfig, ledger_path: Path, key: Ed25519PrivateKey,
                       owner: SuffStatsOwnerEndpoint, run: SuffStatsRun,
                       nodes: Mapping[str, SuffStatsEndpoint] | None = None) -> SuffStatsEvaluation:
    """Release both models' holdout histograms and the federated model's errors by subgroup and by agency.

    With ``nodes``, also the errors among people known / not known to each other agency: the label
    owner encrypts its held-out outcomes, each agency sums them over the people it holds and adds
    the charged noise, the label owner decrypts four noisy counts per agency and adds noisy totals.

    Raises:
        BudgetExceededError: a release would pass the budget (earlier ones stay on the ledger).
        TransportError: the label owner answers out of protocol.
    """
    plan = run.plan
    settings = plan.settings
    rho = _spend(agreement, settings)
    counts = owner.holdout(plan.run_id)
    keys = _bin_keys(settings.score_edges)
    releases: dict[str, Release] = {}
    figures: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    # The own-feature histogram first: the audit report shows the latest score histogram as "the model".
    for i, name in ((0, "own"), (1, "federated")):
        pos, neg = counts[name]
        if len(pos) != len(keys) // 2 or len(neg) != len(keys) // 2:
            raise TransportError(f"{plan.label_owner}: a score histogram has the wrong number of bins")
        vector = np.array([c for pair in zip(pos, neg, strict=True) for c in pair], dtype=np.int64)
        what = "federated model" if name == "federated" else "label owner's own-feature model"
        releases[name] = release_vector(
            agreement, ledger_path, key,
            ReleaseQuery(kind=QueryKind.SCORE_HISTOGRAM,
                         subject=f"score bin x outcome: {what}, run {plan.run_id[:12]}"),
            QueryVector(keys, vector, Sensitivity(l1=1, l2=1)), rho=rho[i])
        values = fill_suppressed([c.value for c in releases[name].cells])
        figures[name] = (values[0::2], values[1::2])
    top = top_share_from_histogram(*figures["federated"], settings.score_edges, settings.top_share)
    auc_fed, auc_own = auc_from_histogram(*figures["federated"]), auc_from_histogram(*figures["own"])
    by_group = owner.threshold(plan.run_id, top.threshold)
    subgroups = None
    rates: dict[str, GroupRates] = {}
    assert agreement.scoring is not None
    if agreement.scoring.subgroup_attribute is not None:
        subgroups = release_confusion_counts(
            agreement, ledger_path, key, by_group, attribute=agreement.scoring.subgroup_attribute,
            subject=f"federated model run {plan.run_id[:12]}, holdout, top {100 * settings.top_share:g}% flagged",
            rho=rho[2])
        sd = subgroups.entry.scale
        grouped: dict[str, dict[str, float | None]] = {}
        for cell in subgroups.cells:
            grouped.setdefault(cell.key[0], {})[cell.key[1]] = cell.value
        rates = {g: group_rates(c, sd) for g, c in grouped.items()}
    presence, presence_rates = _presence(agreement, ledger_path, key, owner, nodes, run)
    sd = (_auc_spread(*figures["federated"], releases["federated"].entry.scale),
          _auc_spread(*figures["own"], releases["own"].entry.scale))
    margin = 2.0 * float(np.hypot(*sd))
    verdict = "helped" if auc_fed - auc_own > margin else "did not help"
    return SuffStatsEvaluation(federated=releases["federated"], own=releases["own"], auc=auc_fed, own_auc=auc_own,
                               threshold=top.threshold, subgroups=subgroups, rates=rates, presence=presence,
                               presence_rates=presence_rates, auc_sd=sd, verdict=verdict)


def presence_attribute(agreement: AgreementConfig) -> str | None:
    """The attribute the errors by agency presence are released by (None: that release is skipped)."""
    assert agreement.scoring is not None
    return agreement.scoring.subgroup_attribute or (
        agreement.release.attributes[0].column if agreement.release.attributes else None)


def _presence(agreement: AgreementConfig, ledger_path: Path, key: Ed25519PrivateKey, owner: SuffStatsOwnerEndpoint,
              nodes: Mapping[str, SuffStatsEndpoint] | None, run: SuffStatsRun
              ) -> tuple[dict[tuple[str, str, str], int] | None, dict[tuple[str, str], GroupRates]]:
    """Errors among people known / not known to each other agency: charged, then noised by the agencies."""
    plan = run.plan
    others = plan.parties[1:]
    if not others or nodes is None:
        return None, {}
    attribute = presence_attribute(agreement)
    if attribute is None:
        return None, {}
    sensitivity, scale = presence_noise(plan.settings, len(plan.parties), agreement.budget.delta)
    charge(agreement, Path(ledger_path), key,
           ReleaseQuery(kind=QueryKind.CONFUSION, attribute=attribute, parties=plan.parties,
                        subject=presence_subject(plan.run_id)),
           mechanism=Mechanism.GAUSSIAN, sensitivity=sensitivity, scale=scale)
    new = tuple(read_ledger_lines(Path(ledger_path))[run.ledger_seen:])
    outcomes = owner.presence_setup(plan.run_id)
    sums = tuple(nodes[a].presence(PresenceAsk(plan.run_id, outcomes, new)) for a in others)
    counts = owner.presence_counts(plan.run_id, sums, new)
    grouped: dict[tuple[str, str], dict[str, float | None]] = {}
    for (agency, where, outcome), value in counts.items():
        grouped.setdefault((agency, where), {})[outcome] = value
    # "not known" is a difference of two noisy counts: its noise sd is sqrt(2) times the scale.
    return counts, {k: group_rates(c, scale * math.sqrt(2.0)) for k, c in grouped.items()}


def _auc_spread(positives: np.ndarray, negatives: np.ndarray, scale: float, draws: int = 200) -> float:
    """Standard deviation of the histogram AUC under fresh noise of the release's scale (post-processing)."""
    rng = np.random.default_rng(0)
    values = []
    for _ in range(draws):
        pos = np.maximum(0.0, positives + rng.normal(0, scale, len(positives)))
        neg = np.maximum(0.0, negatives + rng.normal(0, scale, len(negatives)))
        values.append(auc_from_histogram(pos, neg))
    finite = [v for v in values if np.isfinite(v)]
    return float(np.std(finite)) if finite else float("nan")


def spent_loss(agreement: AgreementConfig, ledger_path: Path) -> PrivacyLoss:
    """The ledger's total so far."""
    return spent_so_far(agreement, Path(ledger_path))

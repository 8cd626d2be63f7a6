"""Compose a vertical scoring run (noisy sufficient statistics) in one process; write its scores and model card.

Used by ``pplink demo``, ``pplink score demo``, the benchmark and the tests. Every party is played
here, each by its own object, exchanging exactly the messages the Flower run sends. Imports of
``nodes`` and ``coordinator`` stay inside functions (the import-boundary rule for ``pplink/lab``).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pplink.agreement import AgreementConfig
from pplink.scoring.model_card import VERDICT_TEXT, model_card
from pplink.scoring.suffstats import SuffStatsSettings

__all__ = ["SYNTH_FEATURE_SCALES", "SuffStatsSummary", "build_suffstats_nodes", "demo_settings", "run_suffstats",
           "run_suffstats_demo", "truth_joined_inputs"]

#: Public centre and scale of each synthetic feature, from the generator's documented ranges
#: (``pplink.lab.synth`` profiles: Poisson counts of rate about e^-1 to e^1, attendance 80-100%),
#: fixed before any sample is drawn; never estimated from the data a run trains on.
SYNTH_FEATURE_SCALES: dict[str, tuple[float, float]] = {
    "social_care.referrals": (1.0, 2.0), "social_care.prior_assessments": (0.5, 1.0),
    "school.attendance_pct": (90.0, 10.0), "school.exclusions": (0.2, 0.5),
    "health.ae_visits": (1.0, 1.5), "health.missed_appointments": (1.0, 1.5),
    "police.callouts": (1.0, 2.0), "police.dv_incidents": (0.3, 1.0),
}

def truth_joined_inputs(agreement: AgreementConfig, data: Any, *, seed: int = 0) -> tuple[Any, dict[str, Any]]:
    """A linkage state and per-agency scoring inputs joined by the synthetic truth (no linkage errors).

    For benchmarks and the centralised comparison: every synthetic person on some agency's books
    is one entity; opted-out rows are left out, as encoding would.
    """
    import numpy as np

    from coordinator.linkage.state import LinkageState
    from nodes.scoring.data import build_agency_data

    rng = np.random.default_rng(seed)
    kept: dict[str, tuple[list[tuple[str, ...]], np.ndarray]] = {}
    for agency, table in data.tables.items():
        opt_out = table.columns.index("opt_out")
        rows = [i for i, row in enumerate(table.rows) if row[opt_out].strip().upper() != "Y"]
        kept[agency] = ([table.rows[i] for i in rows], table.persons[rows])
    persons = np.unique(np.concatenate([p for _, p in kept.values()]))
    pseudonyms = rng.integers(0, 256, size=(persons.size, 16), dtype=np.uint8)
    hexes = [bytes(row).hex() for row in pseudonyms]
    cluster_of: dict[str, np.ndarray] = {}
    inputs: dict[str, Any] = {}
    for agency, (rows, who) in kept.items():
        clusters = np.searchsorted(persons, who)
        cluster_of[agency] = clusters.astype(np.int64)
        entity_of = {row[0]: hexes[c] for row, c in zip(rows, clusters.tolist(), strict=True)}
        inputs[agency] = build_agency_data(agreement, agency, data.tables[agency].columns, rows, entity_of,
                                           source=f"synthetic {agency}")
    state = LinkageState(agreement_id=agreement.agreement_id, parties=tuple(kept), cluster_of=cluster_of,
                         pseudonyms=pseudonyms, attributes={},
                         threshold=agreement.linkage.fixed_threshold or 0.0)
    return state, inputs


def build_suffstats_nodes(agreement: AgreementConfig, data: Mapping[str, Any], keys: Mapping[str, Any], *,
                          holdout_key: bytes | None = None) -> dict[str, Any]:
    """One node per agency (the label owner's a ``SuffStatsOwner``)."""
    from nodes.scoring.suffstats import SuffStatsNode
    from nodes.scoring.suffstats_owner import SuffStatsOwner

    assert agreement.scoring is not None
    owner = agreement.scoring.label_owner
    return {a: (SuffStatsOwner(agreement, d, keys[a], holdout_key=holdout_key) if a == owner
                else SuffStatsNode(agreement, d, keys[a])) for a, d in data.items()}


@dataclass(frozen=True)
class SuffStatsSummary:
    """A finished run: the coordinator's run, the released evaluation, the owner's exact view, text lines."""

    run: Any
    evaluation: Any
    exact_auc: float
    own_exact_auc: float
    lines: list[str] = field(default_factory=list)
    card: str = ""
    scores_path: Path | None = None


def run_suffstats(agreement: AgreementConfig, state: Any, ledger_path: Path, coordinator_key: Any,
                  nodes: Mapping[str, Any], settings: Any, *, card_path: Path | None = None) -> SuffStatsSummary:
    """Train and evaluate; return the summary (and write the model card if asked)."""
    from coordinator.scoring.suffstats import evaluate_suffstats, spent_loss, train_suffstats

    run = train_suffstats(agreement, state, ledger_path, coordinator_key, nodes, settings)
    owner = nodes[run.plan.label_owner]
    evaluation = evaluate_suffstats(agreement, ledger_path, coordinator_key, owner, run, nodes)
    fed, own = owner.exact_auc()
    spent = spent_loss(agreement, ledger_path).epsilon
    card = model_card(agreement, run, evaluation, spent)
    if card_path is not None:
        Path(card_path).write_text(card, encoding="utf-8")
    helped = VERDICT_TEXT[evaluation.verdict]
    lines = [
        f"vertical scoring (noisy sufficient statistics), run {run.plan.run_id[:12]}: "
        f"{len(run.plan.parties)} agencies, {run.plan.n_entities} entities, d = {run.plan.dimension}",
        f"training epsilon {settings.training_epsilon:g} in two releases (G: sensitivity "
        f"{run.plan.noise.gram_sensitivity}, sigma {run.plan.noise.gram_scale:.1f}; b: sensitivity "
        f"{run.plan.noise.b_sensitivity}, sigma {run.plan.noise.b_scale:.1f}; fixed-point units)",
        f"released holdout AUC: federated {evaluation.auc:.3f}, own features {evaluation.own_auc:.3f}: {helped}",
        f"label owner's own view (never released): exact AUC federated {fed:.3f}, own features {own:.3f}",
        f"ledger total: epsilon {spent:.3f} of {agreement.budget.epsilon:g}",
        f"seconds: {', '.join(f'{k} {v:.2f}' for k, v in run.seconds.items())}",
    ]
    if math.isnan(fed):
        lines.append("no holdout scores")
    return SuffStatsSummary(run=run, evaluation=evaluation, exact_auc=fed, own_exact_auc=own, lines=lines, card=card)


def demo_settings(config: AgreementConfig, *, training_epsilon: float = 2.0,
                  evaluation_epsilon: float = 0.6) -> SuffStatsSettings:
    """The run settings for synthetic data: the generator's public feature scales for the declared columns."""
    assert config.scoring is not None
    declared = {f"{a}.{c}" for a, cols in config.scoring.features.items() for c in cols}
    return SuffStatsSettings(training_epsilon=training_epsilon, evaluation_epsilon=evaluation_epsilon,
                             feature_scales={k: v for k, v in SYNTH_FEATURE_SCALES.items() if k in declared})


def run_suffstats_demo(work_dir: Path, config: AgreementConfig, *, settings: SuffStatsSettings | None = None,
                       holdout_key: bytes | None = None) -> SuffStatsSummary:
    """Noisy-sufficient-statistics scoring over a ``pplink demo`` folder, after its linkage round.

    Each agency reads ``records/<agency>.csv`` and ``nodes/<agency>/<agency>.entities.csv``; the
    coordinator reads the linkage state and charges ``coordinator/ledger.jsonl``; the label owner's
    scores go to ``nodes/<owner>/<owner>.scores.csv`` (owner-only) with the model card beside them
    (``<owner>.model-card.md``, and at the head of ``<owner>.scores-evaluation.txt``).

    Raises:
        ConfigError: the agreement has no scoring section.
        BudgetExceededError: the run does not fit the budget left (nothing released).
    """
    from coordinator.linkage.state import STATE_FILE, load_linkage_state
    from nodes.scoring.data import load_agency_data
    from nodes.scoring.scores import write_scores
    from pplink.crypto import load_private_key
    from pplink.errors import ConfigError
    from pplink.keystore import private_key_path

    if config.scoring is None:
        raise ConfigError("the agreement has no [scoring] section")
    work_dir = Path(work_dir)
    keys_dir = work_dir / "keys"
    state = load_linkage_state(work_dir / "coordinator" / "linkage" / STATE_FILE, config.agreement_id)
    data = {a: load_agency_data(config, a, work_dir / "records" / f"{a}.csv",
                                work_dir / "nodes" / a / f"{a}.entities.csv") for a in state.parties}
    keys = {a: load_private_key(private_key_path(keys_dir, a)) for a in state.parties}
    nodes = build_suffstats_nodes(config, data, keys, holdout_key=holdout_key)
    owner = config.scoring.label_owner
    out = work_dir / "nodes" / owner
    summary = run_suffstats(config, state, work_dir / "coordinator" / "ledger.jsonl",
                            load_private_key(private_key_path(keys_dir, "coordinator")), nodes,
                            settings or demo_settings(config), card_path=out / f"{owner}.model-card.md")
    scores = out / f"{owner}.scores.csv"
    write_scores(scores, nodes[owner].score_rows(), evaluation_lines=summary.card.splitlines(), owner=owner)
    summary.lines.append(f"scores (label owner only): {scores}; model card: {out / f'{owner}.model-card.md'}")
    return dataclasses.replace(summary, scores_path=scores)

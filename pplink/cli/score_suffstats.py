"""Compose a noisy-sufficient-statistics scoring run in one process, and write its summary and model card.

Used by the benchmark, the tests and ``pplink score demo --protocol suffstats``. Imports of
``nodes`` and ``coordinator`` stay inside functions (the import-boundary rule for ``pplink``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from pplink.agreement import AgreementConfig
from pplink.scoring.suffstats import solve_model

__all__ = ["SYNTH_FEATURE_SCALES", "SuffStatsSummary", "build_suffstats_nodes", "model_card", "run_suffstats",
           "run_suffstats_demo", "suffstats_demo_command"]

#: Public centre and scale of each synthetic feature, from the generator's documented ranges
#: (``pplink.lab.synth`` profiles: Poisson counts of rate about e^-1 to e^1, attendance 80-100%),
#: fixed before any sample is drawn; never estimated from the data a run trains on.
SYNTH_FEATURE_SCALES: dict[str, tuple[float, float]] = {
    "social_care.referrals": (1.0, 2.0), "social_care.prior_assessments": (0.5, 1.0),
    "school.attendance_pct": (90.0, 10.0), "school.exclusions": (0.2, 0.5),
    "health.ae_visits": (1.0, 1.5), "health.missed_appointments": (1.0, 1.5),
    "police.callouts": (1.0, 2.0), "police.dv_incidents": (0.3, 1.0),
}

_VERDICT_TEXT = {
    "helped": "Linking helped.",
    "did not help": "LINKING DID NOT MEASURABLY HELP: the released AUCs do not show the federated model beating "
                    "the label owner's own model by more than the DP noise; use the label owner's own model.",
}

_POVERTY_WARNING = (
    "Warning: features that go with deprivation (school attendance, contacts with services, "
    "area) act as proxies for poverty. A model trained on them flags poorer families more often "
    "for the same underlying need; compare the error rates by group above before anyone acts on a score."
)


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


def model_card(agreement: AgreementConfig, run: Any, evaluation: Any, spent_epsilon: float) -> str:
    """The model card: features per agency, label, budget, baseline comparison, errors by group, warning."""
    assert agreement.scoring is not None
    plan = run.plan
    lines = ["# Model card: vertical scoring run " + plan.run_id[:12], "",
             "Model: linear probability model over every agency's block, fitted from noisy sufficient "
             "statistics (one DP release of G and one of b; docs/scoring.md).", "", "## Features per agency", ""]
    for agency in plan.parties:
        features = agreement.scoring.features.get(agency, ())
        indicator = "intercept" if agency == plan.label_owner else f"known_to_{agency}"
        lines.append(f"- {agency}: {', '.join([*features, indicator])}")
    lines += ["", "## Label", "",
              f"`{agreement.scoring.label_column}` at {plan.label_owner} (1 = the outcome happened); "
              f"{100 * agreement.scoring.holdout_share:g}% of labelled people held out by a keyed hash of "
              "their pseudonym.", "", "## Privacy budget", "",
              f"Training epsilon {plan.settings.training_epsilon:g}, evaluation epsilon "
              f"{plan.settings.evaluation_epsilon:g} (zCDP, delta {agreement.budget.delta:g}); the ledger's "
              f"total after this run: epsilon {spent_epsilon:.3f} of {agreement.budget.epsilon:g}. "
              "Privacy unit: one person.", "", "## Against the label owner's own data", "",
              f"Released holdout AUC: federated {evaluation.auc:.3f} (noise sd {evaluation.auc_sd[0]:.3f}), "
              f"own features only {evaluation.own_auc:.3f} (noise sd {evaluation.auc_sd[1]:.3f}). "
              + _VERDICT_TEXT[evaluation.verdict], "",
              "## Errors by group (released, 95% intervals include the DP noise)", "",
              "| group | false positive rate | false negative rate | selection rate |", "|---|---|---|---|"]
    for group, rates in sorted(evaluation.rates.items()):
        lines.append(f"| {group} | {rates.fpr.text()} | {rates.fnr.text()} | {rates.selection.text()} |")
    if not evaluation.rates:
        lines.append("| (no subgroup attribute in the agreement) | - | - | - |")
    lines += ["", "## Errors by agency presence (released, 95% intervals)", "",
              "| agency | held by it? | false positive rate | false negative rate | selection rate |",
              "|---|---|---|---|---|"]
    for (agency, where), rates in sorted(evaluation.presence_rates.items()):
        lines.append(f"| {agency} | {where} | {rates.fpr.text()} | {rates.fnr.text()} | {rates.selection.text()} |")
    lines += ["", _POVERTY_WARNING, "", "## Coefficients (DP: post-processing of the released G and b)", "",
              "Per standardised, clipped feature (public constants, docs/scoring.md); a positive weight "
              "raises the score. Check the weight of every feature that goes with deprivation.", "",
              "| agency | feature | weight |", "|---|---|---|"]
    weights = solve_model(run.released.gram, run.released.b, plan.noise, plan.settings)
    names = [(a, c) for a in plan.parties for c in (*agreement.scoring.features.get(a, ()),
                                                      "intercept" if a == plan.label_owner else f"known_to_{a}")]
    lines += [f"| {a} | {c} | {w:+.4f} |" for (a, c), w in zip(names, weights, strict=True)]
    lines.append("")
    return "\n".join(lines)


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
    helped = _VERDICT_TEXT[evaluation.verdict]
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


def run_suffstats_demo(work_dir: Path, config: AgreementConfig, *, training_epsilon: float = 2.0,
                       evaluation_epsilon: float = 0.6) -> SuffStatsSummary:
    """Noisy-sufficient-statistics scoring over a ``pplink demo`` folder, after its linkage round.

    Reads what :func:`pplink.cli.score.run_demo_scoring` reads; writes the label owner's scores to
    ``nodes/<owner>/<owner>.scores.csv`` (owner-only) and the model card to
    ``nodes/<owner>/<owner>.model-card.md``; charges ``coordinator/ledger.jsonl``.
    """
    from coordinator.linkage.state import STATE_FILE, load_linkage_state
    from nodes.scoring.data import load_agency_data
    from nodes.scoring.vertical import write_scores
    from pplink.crypto import load_private_key
    from pplink.errors import ConfigError
    from pplink.keystore import private_key_path
    from pplink.scoring.suffstats import SuffStatsSettings

    if config.scoring is None:
        raise ConfigError("the agreement has no [scoring] section")
    work_dir = Path(work_dir)
    keys_dir = work_dir / "keys"
    state = load_linkage_state(work_dir / "coordinator" / "linkage" / STATE_FILE, config.agreement_id)
    data = {a: load_agency_data(config, a, work_dir / "records" / f"{a}.csv",
                                work_dir / "nodes" / a / f"{a}.entities.csv") for a in state.parties}
    keys = {a: load_private_key(private_key_path(keys_dir, a)) for a in state.parties}
    declared = {f"{a}.{c}" for a, cols in config.scoring.features.items() for c in cols}
    settings = SuffStatsSettings(
        training_epsilon=training_epsilon, evaluation_epsilon=evaluation_epsilon,
        feature_scales={k: v for k, v in SYNTH_FEATURE_SCALES.items() if k in declared})
    nodes = build_suffstats_nodes(config, data, keys)
    owner = config.scoring.label_owner
    out = work_dir / "nodes" / owner
    summary = run_suffstats(config, state, work_dir / "coordinator" / "ledger.jsonl",
                            load_private_key(private_key_path(keys_dir, "coordinator")), nodes, settings,
                            card_path=out / f"{owner}.model-card.md")
    write_scores(out / f"{owner}.scores.csv", nodes[owner].score_rows(), evaluation_lines=summary.card.splitlines(),
                 owner=owner)
    summary.lines.append(f"scores (label owner only): {out / f'{owner}.scores.csv'}; model card: "
                         f"{out / f'{owner}.model-card.md'}")
    return summary


@click.command("suffstats-demo")
@click.option("--dir", "work_dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
              default=Path("pplink-demo"), show_default=True, help="A folder written by `pplink demo`.")
@click.option("--training-epsilon", type=click.FloatRange(min=0.0, min_open=True, max=100.0), default=2.0,
              show_default=True, help="Privacy loss of the two training releases (G and b) together.")
@click.option("--evaluation-epsilon", type=click.FloatRange(min=0.0, min_open=True, max=100.0), default=0.6,
              show_default=True, help="Privacy loss of the evaluation releases together.")
def suffstats_demo_command(work_dir: Path, training_epsilon: float, evaluation_epsilon: float) -> None:
    """Score by noisy sufficient statistics over a `pplink demo` folder (CKKS; two DP releases; a model card).

    Shows the label owner's own-feature model beside the federated one and says plainly when
    linking did not help.
    """
    from pplink.agreement import load_agreement

    config = load_agreement(work_dir / "agreement.toml")
    summary = run_suffstats_demo(work_dir, config, training_epsilon=training_epsilon,
                                 evaluation_epsilon=evaluation_epsilon)
    for line in summary.lines:
        click.echo(line)

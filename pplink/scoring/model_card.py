"""The model card of a vertical scoring run: what a reader needs before anyone acts on a score.

Features per agency, the label, the budget spent, the comparison with the label owner's own-feature
model and the plain verdict, errors by group and by agency presence (released, with intervals), a
warning about proxies for poverty, and every coefficient (post-processing of the released ``G``
and ``b``). Written beside the label owner's scores by the in-process run and over Flower.
"""

from __future__ import annotations

from typing import Any

from pplink.agreement import AgreementConfig
from pplink.scoring.suffstats import solve_model

__all__ = ["VERDICT_TEXT", "model_card"]

#: What each verdict of :func:`coordinator.scoring.suffstats.evaluate_suffstats` says.
VERDICT_TEXT = {
    "helped": "Linking helped.",
    "did not help": "LINKING DID NOT MEASURABLY HELP: the released AUCs do not show the federated model beating "
                    "the label owner's own model by more than the DP noise; use the label owner's own model.",
}

_POVERTY_WARNING = (
    "Warning: features that go with deprivation (school attendance, contacts with services, "
    "area) act as proxies for poverty. A model trained on them flags poorer families more often "
    "for the same underlying need; compare the error rates by group above before anyone acts on a score."
)


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
              + VERDICT_TEXT[evaluation.verdict], "",
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

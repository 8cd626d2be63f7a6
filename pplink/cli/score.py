"""``pplink score …``: federated scoring on linked people, every party played in one process.

The composition root for scoring: it builds each agency's :class:`nodes.scoring.vertical.ScoringNode`
from that agency's own files and lets :mod:`coordinator.scoring.vertical` drive them through plain method
calls (the Flower transport plugs in the same way later). :func:`run_demo_scoring` is what
``pplink demo`` calls after linkage; ``pplink score demo`` runs it over an existing demo folder.
``pplink score horizontal-demo`` (:func:`run_horizontal_demo`) runs horizontal DP FedAvg over three
synthetic areas on Flower's Message API, in process.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from pplink.cli.options import FORMAT_OPTION

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from pplink.agreement import AgreementConfig
    from pplink.lab.synth import SynthData
    from pplink.scoring.protocol import VerticalSettings

# The CLI may import nodes/ and coordinator/ only inside command functions (the import-boundary
# test reads every import, TYPE_CHECKING blocks included), so their types are named here as Any:
# ``coordinator.scoring.vertical.TrainingRun`` / ``ScoringEvaluation``, ``coordinator.linkage.state.LinkageState``,
# ``nodes.scoring.vertical.ScoringNode`` / ``LabelOwnerView``, ``nodes.scoring.data.AgencyScoringData``.
TrainingRun = ScoringEvaluation = LinkageState = ScoringNode = LabelOwnerView = AgencyScoringData = Any

__all__ = [
    "HorizontalDemoSummary",
    "ScoringSummary",
    "build_scoring_nodes",
    "render_scoring",
    "run_demo_scoring",
    "run_horizontal_demo",
    "run_vertical_scoring",
    "score_group",
    "truth_joined_inputs",
]


@dataclass(frozen=True)
class ScoringSummary:
    """What a scoring run produced, and text lines to print.

    Attributes:
        run: the training run (coordinator's view).
        evaluation: the released evaluation (every figure from a ledgered DP release).
        own_view: the label owner's exact holdout figures (never released; shown to it alone).
        scores_path: the label owner's score file, if one was written.
        lines: a human summary, one line per element, ready to print.
    """

    run: TrainingRun
    evaluation: ScoringEvaluation
    own_view: LabelOwnerView
    scores_path: Path | None
    lines: list[str] = field(default_factory=list)


def build_scoring_nodes(
    agreement: AgreementConfig,
    data: Mapping[str, AgencyScoringData],
    keys: Mapping[str, Ed25519PrivateKey],
    *,
    holdout_seed: int | None = None,
) -> dict[str, ScoringNode]:
    """One node per agency (the label owner's a :class:`~nodes.scoring.vertical.LabelOwnerNode`)."""
    from nodes.scoring.vertical import LabelOwnerNode, ScoringNode

    assert agreement.scoring is not None
    nodes: dict[str, ScoringNode] = {}
    for agency, agency_data in data.items():
        if agency == agreement.scoring.label_owner:
            nodes[agency] = LabelOwnerNode(agreement, agency_data, keys[agency], holdout_seed=holdout_seed)
        else:
            nodes[agency] = ScoringNode(agreement, agency_data, keys[agency])
    return nodes


def truth_joined_inputs(
    agreement: AgreementConfig, data: SynthData, *, seed: int = 0
) -> tuple[LinkageState, dict[str, AgencyScoringData]]:
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
    inputs: dict[str, AgencyScoringData] = {}
    for agency, (rows, who) in kept.items():
        clusters = np.searchsorted(persons, who)
        cluster_of[agency] = clusters.astype(np.int64)
        entity_of = {row[0]: hexes[c] for row, c in zip(rows, clusters.tolist(), strict=True)}
        inputs[agency] = build_agency_data(agreement, agency, data.tables[agency].columns, rows, entity_of,
                                           source=f"synthetic {agency}")
    state = LinkageState(agreement_id=agreement.agreement_id, parties=tuple(kept), cluster_of=cluster_of,
                         pseudonyms=pseudonyms, attributes={}, threshold=agreement.linkage.threshold)
    return state, inputs


def run_vertical_scoring(
    agreement: AgreementConfig,
    state: LinkageState,
    ledger_path: Path,
    coordinator_key: Ed25519PrivateKey,
    nodes: Mapping[str, ScoringNode],
    settings: VerticalSettings,
    *,
    scores_path: Path | None = None,
) -> ScoringSummary:
    """Train, evaluate and (optionally) write the label owner's scores; returns a summary with text lines.

    Raises:
        BudgetExceededError: the run does not fit the budget left (refused before any release).
        PplinkError: see :func:`coordinator.scoring.vertical.train_vertical` and ``evaluate_vertical``.
    """
    from coordinator.scoring.vertical import evaluate_vertical, train_vertical
    from nodes.scoring.vertical import LabelOwnerNode, write_scores

    run = train_vertical(agreement, state, ledger_path, coordinator_key, nodes, settings)
    evaluation = evaluate_vertical(agreement, state, ledger_path, coordinator_key, nodes, run)
    owner = nodes[run.plan.label_owner]
    assert isinstance(owner, LabelOwnerNode)
    view = owner.own_view(settings.top_share)
    if scores_path is not None:
        brief = render_scoring(agreement, run, evaluation, view, None, brief=True)
        write_scores(scores_path, owner.score_rows(), evaluation_lines=brief, owner=run.plan.label_owner)
    lines = render_scoring(agreement, run, evaluation, view, scores_path)
    return ScoringSummary(run=run, evaluation=evaluation, own_view=view, scores_path=scores_path, lines=lines)


def run_demo_scoring(
    work_dir: Path,
    config: AgreementConfig,
    *,
    settings: VerticalSettings | None = None,
    holdout_seed: int | None = None,
) -> ScoringSummary:
    """Vertical scoring over a ``pplink demo`` folder, after its match round.

    Each agency reads ``records/<agency>.csv`` and ``nodes/<agency>/<agency>.entities.csv`` with
    its key from ``keys/``; the coordinator reads ``coordinator/linkage/coordinator/linkage.npz``
    and charges ``coordinator/ledger.jsonl``. The label owner's scores go to
    ``nodes/<label owner>/<label owner>.scores.csv``.

    Args:
        work_dir: the demo folder.
        config: the demo's agreement.
        settings: run settings; the defaults spend training epsilon 2.0 and evaluation epsilon 0.6.
        holdout_seed: fixes the label owner's holdout split (tests); random otherwise.

    Returns:
        The summary; print ``summary.lines``.
    """
    from coordinator.linkage.state import STATE_FILE, load_linkage_state
    from nodes.scoring.data import load_agency_data
    from pplink.crypto import load_private_key
    from pplink.errors import ConfigError
    from pplink.keystore import private_key_path
    from pplink.scoring.protocol import VerticalSettings

    if config.scoring is None:
        raise ConfigError("the agreement has no [scoring] section")
    work_dir = Path(work_dir)
    keys_dir = work_dir / "keys"
    state = load_linkage_state(work_dir / "coordinator" / "linkage" / STATE_FILE, config.agreement_id)
    data = {agency: load_agency_data(config, agency, work_dir / "records" / f"{agency}.csv",
                                     work_dir / "nodes" / agency / f"{agency}.entities.csv")
            for agency in state.parties}
    keys = {agency: load_private_key(private_key_path(keys_dir, agency)) for agency in state.parties}
    nodes = build_scoring_nodes(config, data, keys, holdout_seed=holdout_seed)
    owner = config.scoring.label_owner
    return run_vertical_scoring(
        config, state, work_dir / "coordinator" / "ledger.jsonl",
        load_private_key(private_key_path(keys_dir, "coordinator")), nodes, settings or VerticalSettings(),
        scores_path=work_dir / "nodes" / owner / f"{owner}.scores.csv",
    )


@dataclass(frozen=True)
class HorizontalDemoSummary:
    """What ``pplink score horizontal-demo`` produced.

    Attributes:
        auc: the final model's AUC on fresh held-out synthetic people (the demo plays everyone;
            in a deployment no party holds such a set, and computing it would be a release).
        pooled_auc: the same, for a non-private model trained on all areas' rows pooled (reference).
        ledger_epsilon: the ledger's total epsilon after the run (zCDP converted at delta).
        ledger_rho: the ledger's total rho.
        rdp_epsilon: Flower's RDP accountant's epsilon for the run, at the same delta.
        delta: the agreement's delta.
        entries: ledger sequence numbers of the run's rounds.
        audit_ok: whether :func:`pplink.audit.verify.verify_ledger` found nothing.
        lines: a human summary.
    """

    auc: float
    pooled_auc: float
    ledger_epsilon: float
    ledger_rho: float
    rdp_epsilon: float
    delta: float
    entries: tuple[int, ...]
    audit_ok: bool
    lines: tuple[str, ...] = field(default=())


def run_horizontal_demo(work_dir: Path, *, people: int, rounds: int, noise_multiplier: float, clipping_norm: float,
                        budget_epsilon: float = 50.0, seed: int = 0) -> HorizontalDemoSummary:
    """Horizontal DP FedAvg, every party in this process: three areas of one service, one agreement.

    Writes into ``work_dir``: ``agreement.toml`` (agencies ``area_north``, ``area_central``,
    ``area_south``; zcdp budget ``budget_epsilon`` at delta 1e-6), ``keys/``, ``nodes/<area>.csv``
    (synthetic people from :func:`pplink.scoring.horizontal.synth_area_tables`) and ``ledger.jsonl``;
    runs :mod:`coordinator.flower.horizontal`'s ServerApp against :mod:`nodes.flower.horizontal`'s ClientApps on
    :class:`pplink.transport.inprocess.InProcessGrid`, then audits the ledger.
    """
    import logging
    import re

    import numpy as np

    from coordinator.flower.horizontal import app as server_app
    from nodes.flower.horizontal import app as client_app
    from nodes.flower.horizontal import train_locally
    from pplink.agreement import load_agreement
    from pplink.agreement_template import default_agreement_toml
    from pplink.audit.verify import verify_ledger
    from pplink.errors import UsageError
    from pplink.keystore import ensure_party_keys, private_key_path
    from pplink.scoring.evaluation import auc
    from pplink.scoring.horizontal import (
        AreaTable,
        HorizontalSettings,
        initial_weights,
        predict_logits,
        synth_area_tables,
        write_area_csv,
    )
    from pplink.transport.inprocess import InProcessGrid, InProcessNode, run_in_process

    areas = ("area_north", "area_central", "area_south")
    settings = HorizontalSettings(rounds=rounds, noise_multiplier=noise_multiplier, clipping_norm=clipping_norm)
    work_dir = Path(work_dir)
    if (work_dir / "agreement.toml").exists():
        raise UsageError(f"{work_dir}: already holds an agreement.toml; choose an empty folder")
    keys_dir = work_dir / "keys"
    public_keys, _ = ensure_party_keys(keys_dir, [*areas, "coordinator", "auditor"])
    text = default_agreement_toml(list(areas), public_keys)
    text = re.sub(r"(?m)^epsilon = .*$", f"epsilon = {float(budget_epsilon)!r}", text, count=1)
    text = re.sub(r"(?m)^accounting = .*$", 'accounting = "zcdp"', text, count=1)
    (work_dir / "agreement.toml").write_text(text, encoding="utf-8")
    agreement = load_agreement(work_dir / "agreement.toml")

    tables = synth_area_tables(people, areas, seed=seed)
    nodes = []
    for i, (area, table) in enumerate(tables.items()):
        path = work_dir / "nodes" / f"{area}.csv"
        write_area_csv(table, path)
        nodes.append(InProcessNode(node_id=10 + i, app=client_app, name=area, node_config={"data-path": str(path)}))
    ledger = work_dir / "ledger.jsonl"
    np.random.seed(seed)  # Flower draws its DP noise from numpy's global generator: fixed for a repeatable demo
    flwr_log = logging.getLogger("flwr")
    level = flwr_log.level
    flwr_log.setLevel(logging.ERROR)  # Flower logs every round at INFO; the summary below says what matters
    try:
        context = run_in_process(server_app, InProcessGrid(nodes), {
            "horizontal": settings.model_dump_json(), "agreement": str(work_dir / "agreement.toml"),
            "ledger": str(ledger), "key": str(private_key_path(keys_dir, "coordinator"))})
    finally:
        flwr_log.setLevel(level)
    summary = context.state["horizontal"]
    weights = np.asarray(summary["weights"], dtype=np.float64)

    held = synth_area_tables(max(3 * len(areas), people), areas, seed=seed + 1_000_003)
    x = np.vstack([t.features for t in held.values()])
    y = np.concatenate([t.labels for t in held.values()])
    pooled = AreaTable("pooled", np.vstack([t.features for t in tables.values()]),
                       np.concatenate([t.labels for t in tables.values()]))
    pooled_w = train_locally(initial_weights(), pooled, local_epochs=300, learning_rate=0.5)
    verdict = verify_ledger(agreement, ledger)
    rdp = list(summary["rdp-epsilons"])
    result = dict(
        auc=auc(predict_logits(weights, x), y), pooled_auc=auc(predict_logits(pooled_w, x), y),
        ledger_epsilon=verdict.spent.epsilon, ledger_rho=verdict.spent.rho or 0.0, rdp_epsilon=float(rdp[-1]),
        delta=agreement.budget.delta, entries=tuple(int(e) for e in summary["entries"]), audit_ok=verdict.ok)
    lines = (
        f"horizontal DP FedAvg: {len(areas)} areas, {people} synthetic people, {rounds} rounds, "
        f"clip {clipping_norm:g}, noise multiplier {noise_multiplier:g}",
        f"   held-out AUC {result['auc']:.3f} (non-private pooled model: {result['pooled_auc']:.3f})",
        "   privacy unit: one agency's update per round (NOT one person)",
        f"   ledger: entries {result['entries'][0]}-{result['entries'][-1]}, rho {result['ledger_rho']:.4g}, "
        f"epsilon {result['ledger_epsilon']:.4g} at delta {result['delta']:g} of budget {budget_epsilon:g}; "
        f"audit {'clean' if verdict.ok else 'FAILED'}",
        f"   Flower RDP accountant: epsilon {result['rdp_epsilon']:.4g} at delta {result['delta']:g}",
        f"   files in {work_dir}",
    )
    return HorizontalDemoSummary(**result, lines=lines)  # type: ignore[arg-type]


# --- rendering ------------------------------------------------------------------------------------


def _num(value: float, digits: int = 2) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def _pct(p: float) -> str:
    return f"{100 * p:.1f}%" if p < 0.1 else f"{100 * p:.0f}%"


def render_scoring(
    agreement: AgreementConfig,
    run: TrainingRun,
    evaluation: ScoringEvaluation,
    view: LabelOwnerView,
    scores_path: Path | None,
    *,
    brief: bool = False,
) -> list[str]:
    """Text lines describing a run: training, released evaluation with error rates side by side, own view."""
    plan = run.plan
    s = plan.settings
    budget = agreement.budget
    charges = run.charges
    entries = f"ledger entries {charges[0].seq}-{charges[-1].seq}" if charges else "no ledger entries"
    top = f"top {100 * s.top_share:g}%"
    lines = []
    if not brief:
        lines += [
            f"vertical scoring run {plan.run_id[:8]}: label owner {plan.label_owner}, {len(plan.parties)} agencies, "
            f"{plan.n_entities} entities",
            f"   training: {run.steps_done} of {s.steps} steps ({run.stop_reason}); {run.messages_per_step} "
            f"messages per step; {run.seconds:.1f} s",
            f"   each step's residuals released with {plan.mechanism.value} noise (sd {plan.noise_sd:.2f} per "
            f"entity), charged before any noise was drawn ({entries}); training epsilon {run.loss.epsilon:.3g} "
            f"({budget.accounting.value}, delta {budget.delta:g})",
        ]
    t = evaluation.top
    lines += [
        f"   released evaluation (DP, evaluation epsilon {s.evaluation_epsilon:g}, on the ledger): holdout AUC "
        f"{_num(evaluation.auc)}; {top} flagged (score >= {_num(1 / (1 + math.exp(-evaluation.threshold)), 3)}): "
        f"precision {_num(t.precision)}, recall {_num(t.recall)}",
    ]
    from pplink.scoring.evaluation import merge_calibration

    total = sum(row.people for row in evaluation.calibration)
    shown = merge_calibration(evaluation.calibration, max(50.0, total / 8))
    if shown:
        lines.append("   calibration (released): predicted probability -> observed outcome rate, holdout people")
        lines.append("      " + "; ".join(f"{_pct(r.low)}-{_pct(r.high)}: {_num(100 * r.observed_rate, 0)}% "
                                          f"(~{r.people:.0f})" for r in shown))
    if evaluation.subgroups is not None:
        assert agreement.scoring is not None
        lines.append(f"   error rates at the {top} threshold by {agreement.scoring.subgroup_attribute} "
                     "(from noisy counts; '-' = a count was suppressed):")
        lines.append(f"      {'group':<12} {'FPR':>6} {'FNR':>6}")
        for group, rates in evaluation.subgroup_rates.items():
            lines.append(f"      {group:<12} {_num(rates.fpr):>6} {_num(rates.fnr):>6}")
    if evaluation.presence_rates:
        lines.append(f"   error rates at the {top} threshold by whether another agency also knows the person:")
        lines.append(f"      {'agency':<12} {'known FPR':>9} {'FNR':>6}   {'not known FPR':>13} {'FNR':>6}")
        agencies = sorted({a for a, _ in evaluation.presence_rates})
        for agency in agencies:
            known = evaluation.presence_rates.get((agency, "known"))
            unknown = evaluation.presence_rates.get((agency, "not known"))
            if known is None or unknown is None:
                continue
            lines.append(f"      {agency:<12} {_num(known.fpr):>9} {_num(known.fnr):>6}   "
                         f"{_num(unknown.fpr):>13} {_num(unknown.fnr):>6}")
    if not brief:
        lines.append(f"   {plan.label_owner}'s own view (exact, never released): holdout AUC {_num(view.auc)} on "
                     f"{view.holdout} people; {top}: precision {_num(view.top.precision)}, "
                     f"recall {_num(view.top.recall)}")
        if scores_path is not None:
            lines.append(f"   scores for {plan.label_owner}'s own records -> {scores_path}: each is a prompt for a "
                         "second look by a person, never a decision")
    return lines


def _finite(value: Any) -> Any:
    """JSON has no NaN: suppressed or undefined figures become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


# --- commands ---------------------------------------------------------------------------------------


@click.group("score")
def score_group() -> None:
    """Federated scoring on linked people (vertical logistic regression with DP residuals)."""


@score_group.command("demo")
@click.option("--dir", "work_dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
              default=Path("pplink-demo"), show_default=True, help="A folder written by `pplink demo`.")
@click.option("--steps", type=click.IntRange(1, 500), default=None, help="Training steps (default 10).")
@click.option("--training-epsilon", type=float, default=None, help="Privacy loss of all residual releases (default 2).")
@click.option("--evaluation-epsilon", type=float, default=None,
              help="Privacy loss of the evaluation releases (default 0.6).")
@FORMAT_OPTION
def demo_command(work_dir: Path, steps: int | None, training_epsilon: float | None, evaluation_epsilon: float | None,
                 output_format: str) -> None:
    """Train and evaluate a model over a `pplink demo` folder; every release goes on its ledger.

    Agencies keep their features and weights; the coordinator sees only masked sums and noisy
    residuals; the label owner's residuals leave it only with charged DP noise. Error rates are
    shown by subgroup and by agency, side by side. Scores go to the label owner alone.
    """
    from pydantic import ValidationError

    from pplink.agreement import load_agreement
    from pplink.errors import UsageError
    from pplink.scoring.protocol import VerticalSettings

    asked: dict[str, Any] = {"steps": steps, "training_epsilon": training_epsilon,
                             "evaluation_epsilon": evaluation_epsilon}
    try:
        settings = VerticalSettings(**{k: v for k, v in asked.items() if v is not None})
    except ValidationError as err:
        reasons = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors(include_input=False))
        raise UsageError(f"bad scoring settings: {reasons}") from None
    config = load_agreement(work_dir / "agreement.toml")
    summary = run_demo_scoring(work_dir, config, settings=settings)
    if output_format == "json":
        ev = summary.evaluation
        click.echo(json.dumps(_finite({
            "run_id": summary.run.plan.run_id, "steps_done": summary.run.steps_done,
            "training_epsilon": summary.run.loss.epsilon, "messages_per_step": summary.run.messages_per_step,
            "released": {"auc": ev.auc, "precision": ev.top.precision, "recall": ev.top.recall,
                         "threshold_logit": ev.threshold,
                         "by_subgroup": {g: asdict(r) for g, r in ev.subgroup_rates.items()},
                         "by_agency": {f"{a}:{w}": asdict(r) for (a, w), r in ev.presence_rates.items()}},
            "ledger_entries": [c.entry_hash for c in summary.run.charges],
            "scores_path": str(summary.scores_path) if summary.scores_path else None,
        })))
        return
    for line in summary.lines:
        click.echo(line)


@score_group.command("horizontal-demo")
@click.option("--dir", "work_dir", type=click.Path(file_okay=False, path_type=Path),
              default=Path("pplink-horizontal-demo"), show_default=True, help="An empty folder to write into.")
@click.option("--people", type=click.IntRange(30, 1_000_000), default=3000, show_default=True,
              help="Synthetic people over the three areas.")
@click.option("--rounds", type=click.IntRange(1, 10_000), default=20, show_default=True, help="FedAvg rounds.")
@click.option("--noise-multiplier", type=click.FloatRange(min=0.0, min_open=True), default=2.0, show_default=True,
              help="z: noise on the sum of clipped updates is z times the clipping norm.")
@click.option("--clip", "clipping_norm", type=click.FloatRange(min=0.0, min_open=True), default=1.0,
              show_default=True, help="C: L2 bound on each agency's update per round.")
@click.option("--budget-epsilon", type=click.FloatRange(min=0.0, min_open=True, max=100.0), default=50.0,
              show_default=True, help="The demo agreement's total epsilon (zcdp, delta 1e-6).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seeds the data and the noise.")
@FORMAT_OPTION
def horizontal_demo_command(work_dir: Path, people: int, rounds: int, noise_multiplier: float, clipping_norm: float,
                            budget_epsilon: float, seed: int, output_format: str) -> None:
    """Horizontal DP FedAvg in one process: three areas of one service train a logistic regression.

    Flower's server-side fixed clipping adds Gaussian noise to each round's average; each round is
    a ledger entry. The privacy unit is one agency's update per round, not one person.
    """
    summary = run_horizontal_demo(work_dir, people=people, rounds=rounds, noise_multiplier=noise_multiplier,
                                  clipping_norm=clipping_norm, budget_epsilon=budget_epsilon, seed=seed)
    if output_format == "json":
        data = asdict(summary)
        data.pop("lines")
        click.echo(json.dumps(_finite(data)))
        return
    for line in summary.lines:
        click.echo(line)


# Noisy sufficient statistics (issue #13): its command lives beside its composition.
from pplink.cli.score_suffstats import suffstats_demo_command  # noqa: E402

score_group.add_command(suffstats_demo_command)

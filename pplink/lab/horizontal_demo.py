"""Horizontal DP FedAvg over three synthetic areas of one service, every party in this process.

Composition for ``pplink score horizontal-demo``: Flower's Message API on
:class:`pplink.transport.inprocess.InProcessGrid`. Imports of ``nodes`` and ``coordinator`` stay
inside functions (the import-boundary rule for ``pplink/lab``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["HorizontalDemoSummary", "run_horizontal_demo"]


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

"""Horizontal FedAvg with Flower's fixed-clipping DP, in process: ledger charges, audit, utility, refusals."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from coordinator.flower.horizontal import app as horizontal_server
from nodes.flower.horizontal import app as horizontal_client
from nodes.flower.horizontal import train_locally
from pplink.accounting import QueryKind, gaussian_rho, zcdp_to_epsilon
from pplink.agreement import AgreementConfig, load_agreement
from pplink.agreement_template import default_agreement_toml
from pplink.audit.verify import verify_ledger
from pplink.crypto import generate_signing_key, public_key_text, write_private_key
from pplink.errors import AgreementMismatchError, BudgetExceededError, ConfigError, RecordValidationError, ReleaseError
from pplink.ledger import read_ledger
from pplink.scoring.evaluation import auc
from pplink.scoring.horizontal import (
    HorizontalSettings,
    initial_weights,
    predict_logits,
    read_area_csv,
    round_rho,
    synth_area_tables,
    write_area_csv,
)
from pplink.transport.inprocess import InProcessGrid, InProcessNode, run_in_process

#: One service in three areas: each area is an agency in the agreement and a node.
AREAS = ("area_north", "area_central", "area_south")
SETTINGS = HorizontalSettings(rounds=8, noise_multiplier=1.0, clipping_norm=1.0, local_epochs=5, learning_rate=0.5)


@dataclass
class Setup:
    """An agreement on disk, the coordinator's key file and a ledger path."""

    agreement: AgreementConfig
    agreement_path: Path
    key_path: Path
    ledger: Path


def make_setup(root: Path, accounting: str = "zcdp", epsilon: float = 50.0) -> Setup:
    """Default agreement text with the budget replaced; fresh keys; the coordinator's key written 0600."""
    keys = {p: generate_signing_key() for p in (*AREAS, "coordinator", "auditor")}
    text = default_agreement_toml(list(AREAS), {p: public_key_text(k) for p, k in keys.items()})
    text = re.sub(r"(?m)^epsilon = .*$", f"epsilon = {epsilon!r}", text, count=1)
    text = re.sub(r'(?m)^accounting = .*$', f'accounting = "{accounting}"', text, count=1)
    agreement_path = root / "agreement.toml"
    agreement_path.write_text(text, encoding="utf-8")
    key_path = root / "coordinator.key"
    write_private_key(keys["coordinator"], key_path)
    agreement = load_agreement(agreement_path)
    assert agreement.budget.epsilon == epsilon and agreement.budget.accounting.value == accounting
    return Setup(agreement, agreement_path, key_path, root / "ledger.jsonl")


def run_server(setup: Setup, grid: InProcessGrid, settings: HorizontalSettings) -> dict[str, object]:
    """Run the horizontal ServerApp in process; return its run summary."""
    context = run_in_process(horizontal_server, grid, {
        "horizontal": settings.model_dump_json(), "agreement": str(setup.agreement_path),
        "ledger": str(setup.ledger), "key": str(setup.key_path)})
    return dict(context.state["horizontal"])


def make_grid(root: Path, people: int = 3000, seed: int = 5) -> InProcessGrid:
    """One node per area, each reading its own CSV (the synthetic tables of one service split by area)."""
    nodes = []
    for i, (area, table) in enumerate(synth_area_tables(people, AREAS, seed=seed).items()):
        path = root / f"{area}.csv"
        write_area_csv(table, path)
        nodes.append(InProcessNode(node_id=10 + i, app=horizontal_client, name=area,
                                   node_config={"data-path": str(path)}))
    return InProcessGrid(nodes)


def holdout_auc(weights: object) -> float:
    """AUC of a model on fresh synthetic people (another seed: nobody in training)."""
    held = synth_area_tables(3000, AREAS, seed=99)
    x = np.vstack([t.features for t in held.values()])
    y = np.concatenate([t.labels for t in held.values()])
    return auc(predict_logits(np.asarray(weights, dtype=np.float64), x), y)


def test_each_round_charges_the_theoretical_rho_and_the_ledger_audits_clean(tmp_path: Path) -> None:
    """One Gaussian entry per round, rho = 1/(2 z^2) each, cumulative = rounds/(2 z^2); verify_ledger finds nothing."""
    setup = make_setup(tmp_path)
    np.random.seed(0)  # Flower draws its DP noise from numpy's global generator
    summary = run_server(setup, make_grid(tmp_path), SETTINGS)
    entries = read_ledger(setup.ledger, setup.agreement)
    rdp = list(summary["rdp-epsilons"])  # type: ignore[call-overload]
    assert len(entries) == SETTINGS.rounds == len(rdp)
    assert list(summary["entries"]) == list(range(1, SETTINGS.rounds + 1))  # type: ignore[call-overload]
    rho = 1.0 / (2.0 * SETTINGS.noise_multiplier**2)
    for i, entry in enumerate(entries):
        assert entry.query.kind is QueryKind.FEDAVG
        assert entry.query.parties == AREAS
        assert entry.sensitivity == 1 and entry.scale == SETTINGS.noise_multiplier
        assert entry.loss.rho is not None and math.isclose(entry.loss.rho, rho, rel_tol=1e-12)
        assert entry.cumulative.rho is not None and math.isclose(entry.cumulative.rho, (i + 1) * rho, rel_tol=1e-12)
        assert f"round {i + 1}/{SETTINGS.rounds}" in entry.query.subject
        assert entry.cells == ()  # the model itself is not on the ledger
    ledger_epsilon = float(summary["ledger-epsilon"])  # type: ignore[arg-type]
    assert math.isclose(ledger_epsilon, zcdp_to_epsilon(SETTINGS.rounds * rho, 1e-6), rel_tol=1e-9)
    verdict = verify_ledger(setup.agreement, setup.ledger)
    assert verdict.ok, verdict.findings
    assert verdict.spent.rho is not None and math.isclose(verdict.spent.rho, SETTINGS.rounds * rho, rel_tol=1e-12)
    # Flower's RDP accountant grows every round and lands near the zCDP figure: both bound the same
    # Gaussian mechanism (measured: 17.861 both at z=1, 8 rounds; RDP over a finite grid of orders
    # can only be a little looser).
    assert all(a < b for a, b in zip(rdp, rdp[1:], strict=False))
    assert math.isclose(rdp[-1], ledger_epsilon, rel_tol=0.01)


def test_training_beats_chance_on_held_out_people(tmp_path: Path) -> None:
    """The noised FedAvg model ranks fresh synthetic people far better than chance (AUC > 0.6)."""
    setup = make_setup(tmp_path)
    np.random.seed(1)
    summary = run_server(setup, make_grid(tmp_path), SETTINGS)
    weights = np.asarray(summary["weights"], dtype=np.float64)
    assert not np.array_equal(weights, initial_weights())
    assert holdout_auc(weights) > 0.6


def test_whole_run_over_budget_is_refused_before_round_one(tmp_path: Path) -> None:
    """A run whose total rho passes the budget sends no message and leaves the ledger byte-identical."""
    setup = make_setup(tmp_path, epsilon=50.0)
    grid = make_grid(tmp_path)
    run_server(setup, grid, SETTINGS.model_copy(update={"rounds": 2}))
    before = setup.ledger.read_bytes()
    sent_before = len(grid.sent)
    too_long = SETTINGS.model_copy(update={"rounds": 500})  # rho 250, far past what epsilon 50 allows
    with pytest.raises(BudgetExceededError, match="refused before round 1"):
        run_server(setup, grid, too_long)
    assert setup.ledger.read_bytes() == before
    assert len(grid.sent) == sent_before


def test_pure_accounting_is_refused(tmp_path: Path) -> None:
    """Gaussian noise has no pure-DP bound: a pure agreement is refused, no message sent, no ledger written."""
    setup = make_setup(tmp_path, accounting="pure", epsilon=1.0)
    grid = make_grid(tmp_path)
    with pytest.raises(ReleaseError, match="zcdp"):
        run_server(setup, grid, SETTINGS)
    assert grid.sent == [] and not setup.ledger.exists()


def test_a_node_outside_the_agreement_is_refused(tmp_path: Path) -> None:
    """Only the agreement's agencies may train: a stranger node stops the run before any message or entry."""
    setup = make_setup(tmp_path)
    grid = make_grid(tmp_path)
    grid.nodes[99] = InProcessNode(node_id=99, app=horizontal_client, name="stranger",
                                   node_config={"data-path": str(tmp_path / "area_north.csv")})
    with pytest.raises(AgreementMismatchError, match="stranger"):
        run_server(setup, grid, SETTINGS)
    assert grid.sent == [] and not setup.ledger.exists()


def test_round_rho_matches_the_gaussian_closed_form() -> None:
    """rho per round is the Gaussian's at sensitivity 1 (one agency, units of C) and scale z."""
    for z in (0.5, 1.0, 3.0):
        assert math.isclose(round_rho(z), gaussian_rho(1, z))


def test_local_training_lowers_the_local_loss() -> None:
    """A few gradient steps from zero reduce the node's mean logistic loss."""
    table = synth_area_tables(600, ("a",), seed=2)["a"]
    w = train_locally(initial_weights(), table, local_epochs=20, learning_rate=0.5)
    z0, z1 = predict_logits(initial_weights(), table.features), predict_logits(w, table.features)
    y = table.labels

    def loss(z: np.ndarray) -> float:
        return float(np.mean(np.logaddexp(0.0, z) - y * z))

    assert loss(z1) < loss(z0)


def test_bad_csv_names_file_row_and_field(tmp_path: Path) -> None:
    """A non-numeric feature is refused naming the file, row and field, never the value."""
    path = tmp_path / "area.csv"
    write_area_csv(synth_area_tables(4, ("a",), seed=0)["a"], path)
    lines = path.read_text().splitlines()
    cells = lines[2].split(",")
    cells[1] = "secret-value"
    lines[2] = ",".join(cells)
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(RecordValidationError, match=r"row 3, field deprivation_quintile") as err:
        read_area_csv(path)
    assert "secret-value" not in str(err.value)


def test_cli_horizontal_demo_reports_auc_and_both_epsilons(tmp_path: Path) -> None:
    """`pplink score horizontal-demo` runs in process, audits clean and reports ledger and RDP epsilon
    for its rounds."""
    from click.testing import CliRunner

    from pplink.cli.main import cli

    result = CliRunner().invoke(cli, ["score", "horizontal-demo", "--dir", str(tmp_path / "demo"), "--people", "600",
                                      "--rounds", "3", "--noise-multiplier", "2", "--format", "json"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    data = json.loads(result.output.strip().splitlines()[-1])
    assert data["entries"] == [1, 2, 3] and data["audit_ok"] is True
    assert math.isclose(data["ledger_rho"], 3 * round_rho(2.0), rel_tol=1e-12)
    assert math.isclose(data["rdp_epsilon"], data["ledger_epsilon"], rel_tol=0.01)
    assert 0.0 <= data["auc"] <= 1.0


def test_a_ledger_with_per_person_releases_is_refused(tmp_path: Path) -> None:
    """Horizontal rounds (unit: one agency's round) never go into a per-person total: a ledger that already
    holds a per-person release is refused before any message, and left byte-identical."""
    from pplink.accounting import OPENDP_LIBRARY, Mechanism, entry_loss
    from pplink.crypto import load_private_key
    from pplink.ledger import EntryDraft, ReleaseQuery
    from pplink.ledger_writer import open_ledger

    setup = make_setup(tmp_path)
    budget = setup.agreement.budget
    with open_ledger(setup.ledger, setup.agreement) as ledger:
        ledger.append(EntryDraft(
            query=ReleaseQuery(kind=QueryKind.OVERLAP), accounting=budget.accounting, mechanism=Mechanism.GAUSSIAN,
            sensitivity=1, scale=10.0, loss=entry_loss(Mechanism.GAUSSIAN, 1, 10.0, budget.delta),
            min_cell_size=setup.agreement.release.min_cell_size, cells=(), library=OPENDP_LIBRARY),
            load_private_key(setup.key_path))
    before = setup.ledger.read_bytes()
    grid = make_grid(tmp_path)
    with pytest.raises(ConfigError, match="ledger of their own"):
        run_server(setup, grid, SETTINGS)
    assert grid.sent == [] and setup.ledger.read_bytes() == before

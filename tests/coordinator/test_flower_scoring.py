"""Vertical scoring (noisy sufficient statistics) over Flower's Message API, in process (``InProcessGrid``).

The Flower path drives the same node objects through ``query.score`` messages (signed, payload
beside them, node state saved between messages as a SuperNode's process-per-message needs) and
must give the same model as the plain in-process path.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import nodes.scoring.suffstats
from coordinator.flower.server_app import app as server_app
from nodes.flower.client_app import app as client_app
from nodes.scoring.round import holdout_key_for_seed
from pplink.agreement import load_agreement
from pplink.audit.verify import verify_ledger
from pplink.cli.main import cli
from pplink.keystore import private_key_path
from pplink.lab.scoring_run import demo_settings, run_suffstats_demo
from pplink.transport.inprocess import InProcessGrid, InProcessNode, run_in_process


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("flower-score") / "demo"
    result = CliRunner().invoke(cli, ["demo", "--dir", str(work), "--people", "600", "--seed", "3"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return work


def _noiseless(mechanism, scale):  # type: ignore[no-untyped-def]
    """Stands in for the nodes' noise so both paths are deterministic (the ledger still charges)."""
    return lambda values: list(values)


def _scores(path: Path) -> dict[str, float]:
    with open(path, newline="", encoding="utf-8") as fh:
        return {row["record_id"]: float(row["score"]) for row in csv.DictReader(fh)}


def _flower_run(demo: Path, root: Path, settings) -> tuple[InProcessGrid, Path]:  # type: ignore[no-untyped-def]
    """Copy the demo's node folders and the linkage into a coordinator state folder; run over Flower."""
    config = load_agreement(demo / "agreement.toml")
    state = root / "state"
    # The whole round folder: the state and the signed manifest that names the round's ledger.
    (state / "rounds").mkdir(parents=True)
    shutil.copytree(demo / "coordinator" / "linkage", state / "rounds" / "0123456789abcdef")
    nodes = []
    for i, party in enumerate(config.agency_ids):
        out = root / "nodes" / party
        shutil.copytree(demo / "nodes" / party, out)
        node_config: dict[str, object] = {
            "agreement": str(demo / "agreement.toml"), "party": party,
            "data-path": str(demo / "records" / f"{party}.csv"),
            "key": str(private_key_path(demo / "keys", party)), "out-dir": str(out), "holdout-seed": 1}
        nodes.append(InProcessNode(node_id=100 + i, app=client_app, name=party, node_config=node_config))
    grid = InProcessGrid(nodes)
    run_in_process(server_app, grid, {
        "task": "score", "scoring": settings.model_dump_json(), "agreement": str(demo / "agreement.toml"),
        "agreement-id": config.agreement_id, "state-dir": str(state),
        "key": str(private_key_path(demo / "keys", "coordinator")), "run-id": "fedcba9876543210",
        "wait-nodes": 5.0, "reply-timeout": 30.0})
    return grid, state


def test_flower_path_gives_the_same_model_as_the_in_process_path(demo_dir: Path, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Same holdout key, the nodes' noise switched off: the label owner's scores agree within the
    CKKS error on the masked scores and the agencies' score flood; the run costs a fixed number of exchanges (no steps);
    the ledger audits clean with the two training charges; node state and kept setups are removed."""
    monkeypatch.setattr(nodes.scoring.suffstats, "count_measurement", _noiseless)
    config = load_agreement(demo_dir / "agreement.toml")
    owner = config.scoring.label_owner  # type: ignore[union-attr]
    settings = demo_settings(config, training_epsilon=1.0, evaluation_epsilon=0.5)
    plain_dir = tmp_path / "plain"
    shutil.copytree(demo_dir, plain_dir)
    plain = run_suffstats_demo(plain_dir, config, settings=settings, holdout_key=holdout_key_for_seed(1))
    grid, state = _flower_run(demo_dir, tmp_path / "flower", settings)

    flower_scores = _scores(tmp_path / "flower" / "nodes" / owner / f"{owner}.scores.csv")
    plain_scores = _scores(plain.scores_path)  # type: ignore[arg-type]
    assert flower_scores.keys() == plain_scores.keys() and flower_scores
    # Same released G and b; the scores still differ by CKKS arithmetic error on the masked partial
    # scores (masks of +-2^16) and the agencies' flood: two in-process runs differ by ~0.015 too.
    assert max(abs(flower_scores[k] - plain_scores[k]) for k in flower_scores) <= 0.03
    assert (tmp_path / "flower" / "nodes" / owner / f"{owner}.scores-evaluation.txt").read_text().startswith(
        "These scores")

    summary = json.loads(next((state / "scoring").glob("*.json")).read_text())
    k = len(config.agency_ids)
    assert summary["protocol"] == "sufficient-statistics" and summary["verdict"] in ("helped", "did not help")
    # announce, join (the label owner's setup in the same message), forward, blocks (every agency at
    # once), decrypt, scores, owner scores (with the holdout histograms behind them).
    assert summary["training_exchanges"] == 7
    assert summary["training_messages"] == 2 * k + (k - 2) + (k - 1) + 1 + (k - 1) + 1
    # Evaluation: holdout went ahead; threshold (with the presence setup), presence, presence
    # counts; then finish.
    assert summary["exchanges"] == 7 + 3 + 1
    assert [name for name, _ in summary["exchange_seconds"]] == [
        "announce", "join+owner-setup", "forward", "block", "decrypt", "scores", "owner-scores+holdout",
        "threshold+presence-setup", "presence", "presence-counts", "finish"]
    assert [t for t, _ in grid.sent].count("query.score") == summary["messages"]
    verdict = verify_ledger(config, Path(summary["ledger"]))
    assert verdict.ok, verdict.findings
    assert len(summary["ledger_entries"]) == 2
    # The run's keys, seeds and kept setup bundles do not outlive it at any node.
    assert not [p for p in (tmp_path / "flower" / "nodes").rglob("*") if p.parent.name == "scoring"]
    # Nothing of a score reached the coordinator's state folder.
    assert not any("score" in p.name and p.suffix == ".csv" for p in state.rglob("*"))
    released = summary["released_auc"]
    assert released is None or not np.isfinite(released) or 0.0 <= released <= 1.0

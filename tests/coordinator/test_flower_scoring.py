"""Vertical scoring over Flower's Message API, in process (``pplink.transport.inprocess``).

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

import nodes.scoring.vertical
from coordinator.flower.server_app import app as server_app
from coordinator.linkage.state import STATE_FILE
from nodes.flower.client_app import app as client_app
from pplink.agreement import load_agreement
from pplink.audit.verify import verify_ledger
from pplink.cli.main import cli
from pplink.cli.score import run_demo_scoring
from pplink.keystore import private_key_path
from pplink.scoring.protocol import VerticalSettings
from pplink.transport.inprocess import InProcessGrid, InProcessNode, run_in_process

SETTINGS = VerticalSettings(steps=3, training_epsilon=1.0, evaluation_epsilon=0.5, score_edges=(-2.0, -1.0))


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("flower-score") / "demo"
    result = CliRunner().invoke(cli, ["demo", "--dir", str(work), "--people", "600", "--seed", "3"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return work


def _noiseless(mechanism, scale):  # type: ignore[no-untyped-def]
    """Stands in for the residual noise so both paths are deterministic (the ledger still charges)."""
    return lambda values: list(values)


def _scores(path: Path) -> dict[str, float]:
    with open(path, newline="", encoding="utf-8") as fh:
        return {row["record_id"]: float(row["score"]) for row in csv.DictReader(fh)}


def _flower_run(demo: Path, root: Path) -> tuple[InProcessGrid, Path]:
    """Copy the demo's node folders and the linkage into a coordinator state folder; run over Flower."""
    config = load_agreement(demo / "agreement.toml")
    state = root / "state"
    (state / "rounds" / "0123456789abcdef").mkdir(parents=True)
    (state / "rounds" / "0123456789abcdef" / STATE_FILE).parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(demo / "coordinator" / "linkage" / STATE_FILE, state / "rounds" / "0123456789abcdef" / STATE_FILE)
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
        "task": "score", "scoring": SETTINGS.model_dump_json(), "agreement": str(demo / "agreement.toml"),
        "agreement-id": config.agreement_id, "state-dir": str(state),
        "key": str(private_key_path(demo / "keys", "coordinator")), "run-id": "fedcba9876543210",
        "wait-nodes": 5.0, "reply-timeout": 30.0})
    return grid, state


def test_flower_path_gives_the_same_model_as_the_in_process_path(demo_dir: Path, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Same holdout seed, noise switched off: the label owner's scores agree to the printed 4 decimals;
    each step costs K + 1 messages in 2 exchanges; the ledger audits clean; node state is removed."""
    monkeypatch.setattr(nodes.scoring.vertical, "count_measurement", _noiseless)
    config = load_agreement(demo_dir / "agreement.toml")
    owner = config.scoring.label_owner  # type: ignore[union-attr]
    plain_dir = tmp_path / "plain"
    shutil.copytree(demo_dir, plain_dir)
    plain = run_demo_scoring(plain_dir, config, settings=SETTINGS, holdout_seed=1)
    grid, state = _flower_run(demo_dir, tmp_path / "flower")

    flower_scores = _scores(tmp_path / "flower" / "nodes" / owner / f"{owner}.scores.csv")
    plain_scores = _scores(plain.scores_path)  # type: ignore[arg-type]
    assert flower_scores.keys() == plain_scores.keys() and flower_scores
    assert max(abs(flower_scores[k] - plain_scores[k]) for k in flower_scores) <= 1e-4

    summary = json.loads(next((state / "scoring").glob("*.json")).read_text())
    k = len(config.agency_ids)
    assert summary["steps"] == 3 and summary["messages_per_step"] == k + 1
    # Setup (announce, join) 2 exchanges; per step 2; scoring round 1; evaluation 3; finish 1.
    assert summary["training_exchanges"] == 2 + 2 * 3 + 1
    assert [t for t, _ in grid.sent].count("query.score") == summary["messages"]
    verdict = verify_ledger(config, state / "ledger.jsonl")
    assert verdict.ok, verdict.findings
    assert len(summary["ledger_entries"]) == 3
    # The run's mask keys and seeds do not outlive it at any node.
    assert not list((tmp_path / "flower" / "nodes").rglob("*.state"))
    # Nothing of a score reached the coordinator's state folder.
    assert not any("score" in p.name and p.suffix == ".csv" for p in state.rglob("*"))
    # The released AUC comes from DP-noised counts on ~100 held-out people: a suppressed class
    # makes it not computable (NaN/None), which the summary must say rather than invent a value.
    released = summary["released_auc"]
    assert released is None or not np.isfinite(released) or 0.0 <= released <= 1.0

"""A vertical scoring run over a real Flower deployment on 127.0.0.1: TLS, node authentication, three agencies.

One SuperLink (`pplink coordinator serve`) and three SuperNodes (`pplink node join`) run as separate
processes; a match round over ~300 synthetic people links the agencies, then `pplink coordinator run
--task score` trains (noisy sufficient statistics under CKKS) and evaluates a vertical model on that
linkage. Every process tree is stopped (by pid) when the module ends, pass or fail. Synthetic people only.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from nodes.match_round import entities_path
from nodes.scoring.round import scores_path
from pplink.audit.verify import verify_ledger
from tests.deployment import PPLINK, LocalDeployment, _env, connected_deployment

pytestmark = [pytest.mark.integration, pytest.mark.slow]

AGENCIES = ("social_care", "school", "health")
#: The two training releases: G and b.
TRAINING_RELEASES = 2
#: Releases of the evaluation: two score histograms (own-feature and federated model), error counts
#: by subgroup, error counts by agency presence.
EVALUATION_RELEASES = 4


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalDeployment]:
    """Coordinator and three agencies, connected, for the whole module."""
    with connected_deployment(tmp_path_factory.mktemp("flower-score"), AGENCIES, people=300, seed=11) as d:
        yield d


def test_a_scoring_run_over_tls_charges_the_ledger_and_leaves_scores_at_the_label_owner_only(
        deployment: LocalDeployment) -> None:
    """Invariant: after a match round, `coordinator run --task score` finishes over real SuperNodes;
    its ledger audits clean with the two training releases plus the evaluation's releases; only
    the label owner's node holds a scores file (one row per linked record it holds); no node keeps
    a run state file; `coordinator runs` lists the run as a scoring run with its summary."""
    d = deployment
    assert d.setup is not None and d.setup.agreement.scoring is not None
    owner = d.setup.agreement.scoring.label_owner
    assert owner in AGENCIES

    started = time.monotonic()
    done, matched = d.run_round("--reply-timeout", "90")
    assert done.returncode == 0, done.stderr
    assert matched["status"] == "finished"
    match_seconds = time.monotonic() - started
    for party in AGENCIES:
        assert entities_path(d.out_dir(party), party).is_file()

    started = time.monotonic()
    done, record = d.run_round("--task", "score", "--match-run", matched["run_id"],
                               "--training-epsilon", "1.0", "--evaluation-epsilon", "0.5",
                               "--reply-timeout", "90", timeout=240)
    score_seconds = time.monotonic() - started
    assert done.returncode == 0, done.stderr
    assert record["status"] == "finished" and record["phase"] == "done"
    summary = json.loads((d.state / "scoring" / f"{record['run_id']}.json").read_text())
    assert summary["match_round"] == matched["run_id"] and summary["protocol"] == "sufficient-statistics"
    assert summary["verdict"] in ("helped", "did not help")

    # Charged on the match round's own ledger, the one its signed manifest names.
    assert Path(summary["ledger"]).parent.parent == d.state / "rounds" / matched["run_id"]
    verdict = verify_ledger(d.setup.agreement, Path(summary["ledger"]))
    assert verdict.ok, verdict.findings
    assert len(verdict.rows) == TRAINING_RELEASES + EVALUATION_RELEASES
    assert len(summary["ledger_entries"]) == TRAINING_RELEASES

    scores = scores_path(d.out_dir(owner), owner)
    assert scores.is_file() and summary["score_rows"] > 0
    for party in AGENCIES:
        if party != owner:
            assert not scores_path(d.out_dir(party), party).exists()
            assert not list(d.out_dir(party).rglob("*.scores.csv"))
    # The run's keys, seeds and kept setup bundles do not outlive it at any node; no score reached the coordinator.
    assert not [p for p in (d.root / "nodes").rglob("*") if p.parent.name == "scoring"]
    assert not any(p.name.endswith(".scores.csv") for p in d.state.rglob("*"))

    listed = subprocess.run([*PPLINK, "coordinator", "runs", "--dir", str(d.state), "--format", "json"],
                            capture_output=True, text=True, timeout=60, check=True, env=_env())
    tasks = {r["run_id"]: (r["task"], r.get("scoring")) for r in json.loads(listed.stdout)}
    assert tasks[matched["run_id"]] == ("match", None)
    assert tasks[record["run_id"]][0] == "score" and tasks[record["run_id"]][1] == summary
    print(f"\nmatch round {match_seconds:.1f} s; scoring run {score_seconds:.1f} s wall "
          f"({summary['seconds']:.1f} s in the ServerApp), {summary['messages']} messages in "
          f"{summary['exchanges']} exchanges, phases {summary['phase_seconds']} s")

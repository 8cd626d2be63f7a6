"""A match round over a real Flower deployment on 127.0.0.1: TLS, node authentication, three agencies.

One SuperLink (`pplink coordinator serve`) and three SuperNodes (`pplink node join`) are started as
separate processes on free ports, shared by the tests of this module, and stopped (every process
tree, by pid) when the module ends. Synthetic people only; nothing listens beyond 127.0.0.1.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from coordinator.linkage.match_round import run_match_round
from nodes.encode import encode_file
from nodes.match_round import entities_path, round_record_path
from nodes.resolve import resolve_files
from pplink.errors import TransportError
from pplink.keystore import flower_private_key_path, new_flower_node_key
from pplink.lab.linkage_eval import evaluate_linkage_by_agency, read_predictions, read_truth
from tests.deployment import PPLINK, LocalDeployment, _env, connected_deployment

pytestmark = [pytest.mark.integration, pytest.mark.slow]

AGENCIES = ("social_care", "school", "health")


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalDeployment]:
    """Coordinator and three agencies, connected, for the whole module."""
    with connected_deployment(tmp_path_factory.mktemp("flower"), AGENCIES, people=300, seed=11) as d:
        yield d


def _file_based_f1(d: LocalDeployment, work: Path) -> float:
    """The same agencies' records through the file-based path (encode, match, resolve)."""
    assert d.setup is not None
    encodings = []
    for party in AGENCIES:
        summary = encode_file(d.setup.agreement, party, d.setup.secret, d.setup.key(party),
                              d.root / "data" / f"{party}.csv", work / f"{party}.enc", skip_invalid=True)
        encodings.append(summary.output)
    match = run_match_round(d.setup.agreement, d.setup.key("coordinator"), encodings, work / "linkage")
    for party in AGENCIES:
        resolve_files(d.setup.agreement, party, work / f"{party}.tokens", match.maps[party],
                      work / f"{party}.entities.csv")
    return evaluate_linkage_by_agency(read_truth(d.root / "data" / "truth.csv"), read_predictions([work])).overall.f1


def test_a_round_over_tls_links_like_the_file_based_path(deployment: LocalDeployment, tmp_path: Path) -> None:
    """Invariant: each agency ends with record_id,entity_id for its rows, with the file-based path's
    F1 against the truth; a SuperNode whose key the coordinator never registered is refused."""
    d = deployment
    stray_keys = tmp_path / "stray-keys"
    new_flower_node_key(stray_keys, "school")
    stray = d.start_node("school", "--flower-key", str(flower_private_key_path(stray_keys, "school")),
                         "--retry-for", "0", name="stray")

    done, record = d.run_round("--reply-timeout", "90")
    assert done.returncode == 0, done.stderr
    assert record["status"] == "finished" and tuple(record["parties"]) == AGENCIES
    flower = evaluate_linkage_by_agency(read_truth(d.root / "data" / "truth.csv"),
                                        read_predictions([d.out_dir(p) for p in AGENCIES])).overall.f1
    assert flower == pytest.approx(_file_based_f1(d, tmp_path / "files"), abs=1e-12)
    assert flower > 0.8
    for party in AGENCIES:
        written = json.loads(round_record_path(d.out_dir(party), party).read_text())
        assert written["run_id"] == record["run_id"] and written["rows"] == record["records"][party]
    assert (Path(record["output_dir"]) / "manifest.json").is_file()
    # Every message (encode, resolve), the run and `flwr run` itself were warm-started processes.
    for party in AGENCIES:
        assert (d.out_dir(party) / "warm.log").read_text().count("started flwr.supernode.cli:flwr_clientapp") >= 2
    assert "started flwr.superlink.cli:flwr_serverapp" in (d.state / "warm.log").read_text()
    assert "started flwr.cli.app:app" in (d.state / "warm-cli.log").read_text()

    assert stray.wait(timeout=60) == TransportError("x").exit_code
    assert "refused" in d.node_log("stray")


def _runs(d: LocalDeployment) -> list[dict]:  # type: ignore[type-arg]
    done = subprocess.run([*PPLINK, "coordinator", "runs", "--dir", str(d.state), "--format", "json"],
                          capture_output=True, text=True, timeout=60, check=True, env=_env())
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def test_a_node_killed_mid_round_fails_cleanly_and_a_retry_after_restart_works(deployment: LocalDeployment) -> None:
    """Invariant: killing an agency's SuperNode while it encodes fails the round naming it, keeps
    nothing and changes no agency's result; after the coordinator restarts (it still lists the
    failed run) and the node returns, the next round finishes."""
    d = deployment
    assert d.setup is not None
    before = {p: entities_path(d.out_dir(p), p).read_bytes() if entities_path(d.out_dir(p), p).exists() else None
              for p in AGENCIES}
    args = ["coordinator", "run", "--agreement", str(d.setup.agreement_path), "--dir", str(d.state),
            "--key", str(d.setup.key_path("coordinator")), "--format", "json", "--reply-timeout", "25"]
    run = subprocess.Popen([*PPLINK, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           env=_env(), cwd=d.root)
    try:
        deadline = time.monotonic() + 90
        while "Receiving: query.encode" not in d.node_log("health"):
            assert time.monotonic() < deadline and run.poll() is None, "health never received the encode request"
            time.sleep(0.2)
        d.kill_node("health")
        # Back at once: the SuperLink lets a crashed node in again only once its session has
        # expired (two missed heartbeats, up to 60 s); `node join` keeps trying until then.
        d.start_node("health", "--retry-for", "150")
        out, err = run.communicate(timeout=120)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    assert run.returncode == TransportError("x").exit_code, err
    assert "health" in err
    failed = json.loads(out)
    assert failed["status"] == "failed" and list(failed["problems"]) == ["health"]
    assert not (d.state / "rounds" / failed["run_id"]).exists()
    assert not (d.state / "rounds" / f"{failed['run_id']}.partial").exists()
    for party in AGENCIES:
        path = entities_path(d.out_dir(party), party)
        assert (path.read_bytes() if path.exists() else None) == before[party]

    d.stop_coordinator()
    d.start_coordinator()
    assert {r["run_id"]: r["status"] for r in _runs(d)}[failed["run_id"]] == "failed"
    d.wait_connected(["health"], timeout=150)

    done, record = d.run_round("--reply-timeout", "90")
    assert done.returncode == 0, done.stderr
    assert record["status"] == "finished"
    for party in AGENCIES:
        assert json.loads(round_record_path(d.out_dir(party), party).read_text())["run_id"] == record["run_id"]

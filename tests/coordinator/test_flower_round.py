"""The match round over Flower, ServerApp and ClientApps in one process (no Ray, no SuperLink).

The real `coordinator.flower.server_app.app` and `nodes.flower.client_app.app` run against
`pplink.transport.inprocess.InProcessGrid`; messages cross Flower's own deflate/inflate step.
Bad actors are played by wrapping a node's ClientApp.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Context, Message

from coordinator.flower.match_round import rounds_dir
from coordinator.flower.node_directory import identify_nodes
from coordinator.flower.server_app import app as server_app
from coordinator.linkage.match_round import run_match_round
from coordinator.run_records import RunStatus, list_run_records
from nodes.encode import encode_file
from nodes.flower.client_app import app as client_app
from nodes.match_round import entities_path, round_record_path
from nodes.resolve import resolve_files
from pplink.encfile import encodings_from_bytes
from pplink.errors import TransportError
from pplink.lab.linkage_eval import evaluate_linkage_by_agency, read_predictions, read_truth
from pplink.lab.synth import generate_synth, write_synth
from pplink.messages import (
    EncodeReply,
    ResolveRequest,
    RoundStep,
    blob_digest,
    new_run_id,
    sign_message,
)
from pplink.transport.inprocess import InProcessGrid, InProcessNode, run_in_process
from pplink.wire import pack, unpack_reply, unpack_request
from tests.support import Setup, make_setup

AGENCIES = ("social_care", "school", "health")
SENTINEL = {"record_id": "SENTINEL-7731", "given_name": "Xanthippe", "surname": "Quillfeather"}
Handler = Callable[[Message, Context], Message]


@dataclass
class Round:
    """One in-process deployment: agreement, data, nodes, grid."""

    setup: Setup
    root: Path
    grid: InProcessGrid

    def node(self, party: str) -> InProcessNode:
        return next(n for n in self.grid.nodes.values() if n.node_config["party"] == party)

    def run(self, run_id: str | None = None, **config: object) -> str:
        run_id = run_id or new_run_id()
        run_in_process(server_app, self.grid, {
            "agreement": str(self.setup.agreement_path), "agreement-id": self.setup.agreement.agreement_id,
            "state-dir": str(self.state), "key": str(self.setup.key_path("coordinator")), "run-id": run_id,
            "wait-nodes": 0.2, "reply-timeout": 0.5, **config,
        })
        return run_id

    @property
    def state(self) -> Path:
        return self.root / "coordinator"

    def out(self, party: str) -> Path:
        return self.root / "nodes" / party


def _add_sentinel(path: Path) -> None:
    """Append a synthetic person with unmistakable values, to check nothing identifying leaves."""
    with path.open(encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    person = dict(rows[0]) | SENTINEL | {"opt_out": "N"}
    with path.open("a", encoding="utf-8", newline="") as fh:
        csv.DictWriter(fh, fieldnames=list(rows[0]), lineterminator="\n").writerow(person)


def _make_round(tmp_path: Path, *, named: bool = True, allow_missing: bool = False,
                agencies: Sequence[str] = AGENCIES) -> Round:
    edit = (lambda t: t.replace("allow_missing_parties = false", "allow_missing_parties = true")) \
        if allow_missing else None
    setup = make_setup(tmp_path, tuple(agencies), edit=edit)
    write_synth(generate_synth(150, tuple(agencies), seed=5), tmp_path / "data")
    for party in agencies:
        _add_sentinel(tmp_path / "data" / f"{party}.csv")
    nodes = [
        InProcessNode(node_id=1000 + i, app=client_app, name=party if named else "", node_config={
            "agreement": str(setup.agreement_path), "party": party,
            "data-path": str(tmp_path / "data" / f"{party}.csv"), "secret": str(setup.secret_path),
            "key": str(setup.key_path(party)), "out-dir": str(tmp_path / "nodes" / party), "skip-invalid": True,
        })
        for i, party in enumerate(agencies)
    ]
    return Round(setup, tmp_path, InProcessGrid(nodes))


def _record(r: Round, run_id: str):  # type: ignore[no-untyped-def]
    return next(rec for rec in list_run_records(r.state) if rec.run_id == run_id)


def _assert_nothing_kept(r: Round, run_id: str) -> None:
    """A failed round leaves no coordinator outputs and no staging folder."""
    rounds = rounds_dir(r.state)
    assert not (rounds / run_id).exists()
    assert not (rounds / f"{run_id}.partial").exists()


def test_round_links_like_the_file_based_path(tmp_path: Path) -> None:
    """Invariant: over Flower, each node ends with record_id,entity_id for every valid row, and the
    linkage (which records share an entity) is exactly the file-based path's, so F1 is equal."""
    r = _make_round(tmp_path / "flower")
    run_id = r.run()
    record = _record(r, run_id)
    assert record.status is RunStatus.FINISHED and record.parties == AGENCIES
    assert [m for m, _ in r.grid.sent] == ["query.encode"] * 3 + ["query.resolve"] * 3
    truth = read_truth(tmp_path / "flower" / "data" / "truth.csv")
    flower = evaluate_linkage_by_agency(truth, read_predictions([r.out(p) for p in AGENCIES]))

    # The file-based path on the same records, agreement and secret.
    files_dir = tmp_path / "files"
    enc = []
    for party in AGENCIES:
        summary = encode_file(r.setup.agreement, party, r.setup.secret, r.setup.key(party),
                              tmp_path / "flower" / "data" / f"{party}.csv", files_dir / f"{party}.enc",
                              skip_invalid=True)
        enc.append(summary.output)
    match = run_match_round(r.setup.agreement, r.setup.key("coordinator"), enc, files_dir / "linkage")
    for party in AGENCIES:
        resolve_files(r.setup.agreement, party, files_dir / f"{party}.tokens", match.maps[party],
                      files_dir / f"{party}.entities.csv")
    files = evaluate_linkage_by_agency(truth, read_predictions([files_dir]))
    assert flower.overall == files.overall
    assert flower.overall.f1 > 0.8
    assert record.entities == match.entities and record.linked_entities == match.linked_entities

    for party in AGENCIES:
        rows = entities_path(r.out(party), party).read_text(encoding="utf-8").splitlines()
        assert rows[0] == "record_id,entity_id" and len(rows) - 1 == record.records[party]
        assert json.loads(round_record_path(r.out(party), party).read_text())["run_id"] == run_id
    kept = rounds_dir(r.state) / run_id
    assert (kept / "manifest.json").is_file() and (kept / "coordinator" / "linkage.npz").is_file()


def test_identifiers_secret_and_token_map_never_leave_a_node(tmp_path: Path) -> None:
    """Invariant: no reply a node sends holds a record id, a name, the secret or a token-map line;
    each node receives only its own rows' pseudonyms."""
    r = _make_round(tmp_path)
    seen: dict[str, list[bytes]] = {p: [] for p in AGENCIES}
    maps: dict[str, int] = {}

    def spy(party: str) -> Handler:
        def handle(message: Message, context: Context) -> Message:
            request, blob = unpack_request(message.content)
            if isinstance(request, ResolveRequest):
                maps[party] = request.rows
                assert request.party == party
            reply = client_app(message, context)
            _, reply_blob = unpack_reply(reply.content)
            seen[party].append(reply.content.config_records["pplink"]["message"] + (reply_blob or b""))
            return reply
        return handle

    for party in AGENCIES:
        r.node(party).app = spy(party)
    run_id = r.run()
    record = _record(r, run_id)
    secret = r.setup.secret.reveal()
    for party in AGENCIES:
        sent = b"".join(seen[party])
        for value in SENTINEL.values():
            assert value.encode() not in sent
        assert secret not in sent and secret.hex().encode() not in sent
        tokens = (r.out(party) / "work" / run_id / f"{party}.tokens").read_text().splitlines()[1]
        assert tokens.split(",")[1].encode() not in sent  # a record id from the token map
        assert maps[party] == record.records[party]


def _tamper_encode_reply(r: Round, party: str, how: str) -> Handler:
    """A node whose encode reply is altered after the honest ClientApp produced it."""
    def handle(message: Message, context: Context) -> Message:
        reply = client_app(message, context)
        if message.metadata.message_type != RoundStep.ENCODE.value:
            return reply
        model, blob = unpack_reply(reply.content)
        assert isinstance(model, EncodeReply) and blob is not None
        signer = r.setup.key(party)
        if how == "flipped byte":
            bad = bytearray(blob)
            bad[len(bad) // 2] ^= 1
            blob = bytes(bad)
            model = model.model_copy(update={"blob_sha256": blob_digest(blob)})
        elif how == "wrong signer":
            signer = r.setup.key("health")
        elif how == "other party":
            model = model.model_copy(update={"party": "health"})
            signer = r.setup.key("health")
        elif how == "other agreement":
            model = model.model_copy(update={"agreement_digest": "0" * 64})
        elif how == "other run":
            model = model.model_copy(update={"run_id": "f" * 16})
        elif how == "another agency's encodings":
            other = _encodings_of(r, "health", model.run_id)
            blob = other
            model = model.model_copy(update={"blob_sha256": blob_digest(blob),
                                             "file_id": encodings_from_bytes(blob, r.setup.agreement).header.file_id})
        return Message(pack(sign_message(model.model_copy(update={"signature": ""}), signer), blob),
                       reply_to=message)
    return handle


def _encodings_of(r: Round, party: str, run_id: str) -> bytes:
    """Real, correctly signed encodings of another agency."""
    out = r.root / "stolen" / f"{party}.enc"
    encode_file(r.setup.agreement, party, r.setup.secret, r.setup.key(party), r.root / "data" / f"{party}.csv",
                out, skip_invalid=True)
    return out.read_bytes()


@pytest.mark.parametrize("how", ["flipped byte", "wrong signer", "other party", "other agreement", "other run",
                                 "another agency's encodings"])
def test_a_forged_encode_reply_is_refused_logged_and_fails_the_round(tmp_path: Path, how: str) -> None:
    """Invariant: a reply whose signature, agreement id, run or party does not match is refused and
    logged; the round fails naming that agency, and nothing of it is kept anywhere."""
    r = _make_round(tmp_path)
    r.node("school").app = _tamper_encode_reply(r, "school", how)
    run_id = new_run_id()
    with pytest.raises(TransportError, match="school"):
        r.run(run_id)
    record = _record(r, run_id)
    assert record.status is RunStatus.FAILED and record.error_code == TransportError.code
    assert "refused" in record.problems["school"]
    assert set(record.problems) == {"school"}
    log = (r.state / "runs" / f"{run_id}.log").read_text()
    assert "REFUSED" in log and "school" in log
    _assert_nothing_kept(r, run_id)
    assert [m for m, _ in r.grid.sent] == ["query.encode"] * 3  # no map went anywhere
    for party in AGENCIES:
        assert not entities_path(r.out(party), party).exists()


def test_a_refused_agency_is_left_out_when_the_agreement_allows_it(tmp_path: Path) -> None:
    """Invariant: with linkage.allow_missing_parties the round goes on without the refused agency,
    names it as missing in the record and the signed manifest, and sends it nothing more."""
    r = _make_round(tmp_path, allow_missing=True)
    r.node("school").app = _tamper_encode_reply(r, "school", "wrong signer")
    run_id = r.run()
    record = _record(r, run_id)
    assert record.status is RunStatus.FINISHED
    assert record.missing == ("school",) and record.parties == ("social_care", "health")
    manifest = json.loads((rounds_dir(r.state) / run_id / "manifest.json").read_text())
    assert manifest["missing"] == ["school"]
    assert ("query.resolve", r.node("school").node_id) not in r.grid.sent
    assert not entities_path(r.out("school"), "school").exists()
    assert entities_path(r.out("health"), "health").exists()


def test_a_node_that_drops_during_encode_fails_the_round_naming_it_and_a_retry_works(tmp_path: Path) -> None:
    """Invariant: a node that vanishes mid-round fails the round cleanly (named, nothing written);
    once it is back, the next run succeeds."""
    r = _make_round(tmp_path)
    r.node("health").drop_on = frozenset({RoundStep.ENCODE.value})
    run_id = new_run_id()
    with pytest.raises(TransportError, match="health"):
        r.run(run_id)
    record = _record(r, run_id)
    assert record.status is RunStatus.FAILED and list(record.problems) == ["health"]
    assert "offline" in record.problems["health"]
    _assert_nothing_kept(r, run_id)
    for party in AGENCIES:
        assert not entities_path(r.out(party), party).exists()

    r.node("health").online, r.node("health").drop_on = True, frozenset()
    retry = r.run()
    assert _record(r, retry).status is RunStatus.FINISHED
    assert all(entities_path(r.out(p), p).exists() for p in AGENCIES)


def test_a_node_that_drops_during_resolve_rolls_the_others_back(tmp_path: Path) -> None:
    """Invariant: when a node fails after others wrote this round's result, they put their previous
    result back (byte for byte), so a failed round changes no agency's output."""
    r = _make_round(tmp_path)
    first = r.run()
    before = {p: entities_path(r.out(p), p).read_bytes() for p in AGENCIES}
    r.node("health").drop_on = frozenset({RoundStep.RESOLVE.value})
    run_id = new_run_id()
    with pytest.raises(TransportError, match="health"):
        r.run(run_id)
    record = _record(r, run_id)
    assert record.status is RunStatus.FAILED and record.phase.value == "rollback"
    sent = [m for m, _ in r.grid.sent]
    assert sent.count("query.rollback") == 2
    for party in AGENCIES:
        assert entities_path(r.out(party), party).read_bytes() == before[party]
        assert json.loads(round_record_path(r.out(party), party).read_text())["run_id"] == first
    _assert_nothing_kept(r, run_id)
    assert (rounds_dir(r.state) / first).is_dir()


def test_a_node_that_is_missing_from_the_start_is_named(tmp_path: Path) -> None:
    """Invariant: an agency with no node online fails the round before any message is sent."""
    r = _make_round(tmp_path)
    r.node("school").online = False
    run_id = new_run_id()
    with pytest.raises(TransportError, match="school: no node online"):
        r.run(run_id)
    assert r.grid.sent == []
    assert _record(r, run_id).status is RunStatus.FAILED


def test_node_errors_come_back_as_codes_without_record_values(tmp_path: Path) -> None:
    """Invariant: a failing node replies with its pplink error code and a message naming rows and
    fields only; the traceback stays in the node's own log."""
    r = _make_round(tmp_path)
    bad = tmp_path / "data" / "school.csv"
    lines = bad.read_text(encoding="utf-8").splitlines()
    header = lines[0].split(",")
    row = lines[-1].split(",")  # the sentinel person (plain values: no quoting needed)
    assert row[header.index("record_id")] == SENTINEL["record_id"]
    row[header.index("date_of_birth")] = "31-31-Xanthippe"
    bad.write_text("\n".join([*lines[:-1], ",".join(row)]) + "\n", encoding="utf-8")
    r.node("school").node_config["skip-invalid"] = False
    run_id = new_run_id()
    with pytest.raises(TransportError, match="PPL301"):
        r.run(run_id)
    problem = _record(r, run_id).problems["school"]
    assert "PPL301" in problem and "date_of_birth" in problem
    assert "Xanthippe" not in problem and "Quillfeather" not in problem
    node_log = (r.out("school") / "pplink-node.log").read_text()
    assert "Traceback" in node_log


def test_unauthenticated_nodes_identify_themselves_by_signature(tmp_path: Path) -> None:
    """Invariant: where Flower names no node, each proves its agency with a signed reply; a node
    claiming an agency whose key it lacks is ignored, and the round fails naming that agency."""
    r = _make_round(tmp_path, named=False)
    run_id = r.run()
    assert _record(r, run_id).status is RunStatus.FINISHED
    assert [m for m, _ in r.grid.sent][:3] == ["query.identify"] * 3

    def impostor(message: Message, context: Context) -> Message:
        # Says "school" but can only sign with the auditor's key.
        reply = client_app(message, context)
        model, _ = unpack_reply(reply.content)
        forged = sign_message(model.model_copy(update={"signature": ""}), r.setup.key("auditor"))
        return Message(pack(forged), reply_to=message)

    r.node("school").app = impostor
    run_id = new_run_id()
    with pytest.raises(TransportError, match="school"):
        r.run(run_id)
    log = (r.state / "runs" / f"{run_id}.log").read_text()
    assert f"IGNORED node {r.node('school').node_id}" in log


def test_identify_nodes_trusts_registered_names_and_keys_only(setup: Setup) -> None:
    """Invariant: a node is an agency's only if registered under that agency's id with its key; a
    stranger, a wrong key, or two nodes under one name are ignored, each with a reason."""
    from types import SimpleNamespace as Node

    keys = {a: f"KEY-{a}".encode() for a in setup.agreement.agency_ids}
    nodes = [
        Node(node_id=1, name="social_care", public_key=b"KEY-social_care", status="online"),
        Node(node_id=2, name="intruder", public_key=b"KEY-x", status="online"),
        Node(node_id=3, name="school", public_key=b"KEY-health", status="online"),
        Node(node_id=4, name="health", public_key=b"KEY-health", status="online"),
        Node(node_id=5, name="health", public_key=b"KEY-health", status="online"),
        Node(node_id=6, name="police", public_key=b"KEY-police", status="offline"),
    ]
    directory = identify_nodes(setup.agreement, nodes, keys)
    assert directory.node_of == {"social_care": 1}
    assert set(directory.ignored) == {2, 3, 4, 5}
    assert "not an agency" in directory.ignored[2] and "not the one registered" in directory.ignored[3]
    assert "none of them is used" in directory.ignored[4]


def test_run_records_survive_and_say_what_happened(tmp_path: Path) -> None:
    """Invariant: every run leaves a record (finished or failed, with timings) readable later."""
    r = _make_round(tmp_path)
    ok = r.run()
    r.node("school").online = False
    with pytest.raises(TransportError):
        r.run()
    records = list_run_records(r.state)
    assert [rec.status for rec in records] == [RunStatus.FINISHED, RunStatus.FAILED]
    assert records[0].run_id == ok and records[0].seconds["total"] > 0
    assert np.isclose(sum(v for k, v in records[0].seconds.items() if k != "total"), records[0].seconds["total"],
                      atol=0.5)

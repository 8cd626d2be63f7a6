"""The agency's side of a round, without Flower: it answers only the agreement's coordinator, for
its own party and agreement, and a map must fit its own tokens."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from nodes.match_round import (
    NodeSettings,
    check_result,
    entities_path,
    error_reply,
    handle_request,
    round_record_path,
)
from pplink.encfile import encodings_from_bytes
from pplink.errors import (
    AgreementMismatchError,
    ConfigError,
    KeyFileError,
    LinkageMapError,
    RoundIntegrityError,
    SignatureError,
    TransportError,
)
from pplink.messages import (
    EncodeReply,
    EncodeRequest,
    ResolveReply,
    ResolveRequest,
    RollbackReply,
    RollbackRequest,
    RoundStep,
    blob_digest,
    sign_message,
    verify_message,
)
from tests.support import Setup, write_records

RUN = "00112233aabbccdd"


def _settings(setup: Setup, tmp_path: Path, people, party: str = "school") -> NodeSettings:  # type: ignore[no-untyped-def]
    data = write_records(tmp_path / f"{party}.csv", people(20, seed=3))
    return NodeSettings.from_node_config({
        "agreement": str(setup.agreement_path), "party": party, "data-path": str(data),
        "secret": str(setup.secret_path), "key": str(setup.key_path(party)), "out-dir": str(tmp_path / "out"),
    })


def _encode(setup: Setup, settings: NodeSettings, run_id: str = RUN) -> tuple[EncodeReply, bytes]:
    request = sign_message(EncodeRequest(run_id=run_id, agreement_digest=setup.agreement.agreement_id,
                                         party=settings.party), setup.key("coordinator"))
    reply, blob = handle_request(settings, request, None)
    assert isinstance(reply, EncodeReply) and blob is not None
    return reply, blob


def _map(blob: bytes, setup: Setup, entity: int = 0) -> bytes:
    tokens = encodings_from_bytes(blob, setup.agreement).tokens
    entities = np.zeros_like(tokens)
    entities[:, -1] = np.arange(len(tokens)) + entity
    return np.concatenate([tokens, entities], axis=1).tobytes()


def _resolve(setup: Setup, settings: NodeSettings, map_blob: bytes, run_id: str = RUN, rows: int | None = None):  # type: ignore[no-untyped-def]
    request = ResolveRequest(run_id=run_id, agreement_digest=setup.agreement.agreement_id, party=settings.party,
                             rows=rows if rows is not None else len(map_blob) // 32, blob_sha256=blob_digest(map_blob))
    return handle_request(settings, sign_message(request, setup.key("coordinator")), map_blob)[0]


def test_encode_replies_with_signed_encodings_and_keeps_the_token_map(setup: Setup, tmp_path: Path, people) -> None:  # type: ignore[no-untyped-def]
    """Invariant: the reply is signed by the agency, its bytes verify as the agency's encodings, and
    the token -> record id map stays in the node's work folder (owner-only)."""
    settings = _settings(setup, tmp_path, people)
    reply, blob = _encode(setup, settings)
    verify_message(reply, setup.agreement.agency("school").public_key, what="reply")
    enc = encodings_from_bytes(blob, setup.agreement, expected_party="school")
    assert reply.blob_sha256 == blob_digest(blob) and reply.records == enc.header.n_records == 20
    tokens = settings.work_dir(RUN) / "school.tokens"
    assert tokens.stat().st_mode & 0o077 == 0


@pytest.mark.parametrize("problem", ["not the coordinator", "other agreement", "other party", "unsigned"])
def test_requests_not_from_this_agreements_coordinator_are_refused(setup: Setup, tmp_path: Path, people,  # type: ignore[no-untyped-def]
                                                                   problem: str) -> None:
    """Invariant: a node encodes nothing for anyone but its agreement's coordinator, for itself."""
    settings = _settings(setup, tmp_path, people)
    request = EncodeRequest(run_id=RUN, agreement_digest=setup.agreement.agreement_id, party="school")
    signer = setup.key("coordinator")
    expected: type[Exception] = SignatureError
    if problem == "not the coordinator":
        signer = setup.key("health")
    elif problem == "other agreement":
        request = request.model_copy(update={"agreement_digest": "0" * 64})
        expected = AgreementMismatchError
    elif problem == "other party":
        request = request.model_copy(update={"party": "health"})
        expected = TransportError
    signed = request if problem == "unsigned" else sign_message(request, signer)
    with pytest.raises(expected):
        handle_request(settings, signed, None)
    assert not (settings.out_dir / "work" / RUN).exists()


def test_a_node_refuses_to_sign_with_another_partys_key(setup: Setup, tmp_path: Path, people) -> None:  # type: ignore[no-untyped-def]
    """Invariant: the node's configured key must be its own party's key in the agreement."""
    settings = _settings(setup, tmp_path, people)
    wrong = NodeSettings(**{**settings.__dict__, "key_path": setup.key_path("health")})
    request = sign_message(EncodeRequest(run_id=RUN, agreement_digest=setup.agreement.agreement_id, party="school"),
                           setup.key("coordinator"))
    with pytest.raises(KeyFileError, match="not school's signing key"):
        handle_request(wrong, request, None)


def test_resolve_writes_entities_and_rollback_restores_the_previous_result(setup: Setup, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                                           people) -> None:
    """Invariant: resolve writes record_id,entity_id for every row; rolling that run back puts the
    earlier run's files back byte for byte; rolling back another run changes nothing."""
    settings = _settings(setup, tmp_path, people)
    _, blob = _encode(setup, settings)
    reply = _resolve(setup, settings, _map(blob, setup))
    assert isinstance(reply, ResolveReply) and reply.rows == reply.entities == 20
    final, record = entities_path(settings.out_dir, "school"), round_record_path(settings.out_dir, "school")
    first = final.read_bytes(), record.read_bytes()
    assert final.read_text().splitlines()[0] == "record_id,entity_id" and final.stat().st_mode & 0o077 == 0

    second = "ffeeddccbbaa9988"
    _, blob2 = _encode(setup, settings, second)
    _resolve(setup, settings, _map(blob2, setup, entity=500), second)
    assert final.read_bytes() != first[0]

    unrelated = sign_message(RollbackRequest(run_id="1" * 16, agreement_digest=setup.agreement.agreement_id,
                                             party="school"), setup.key("coordinator"))
    rolled = handle_request(settings, unrelated, None)[0]
    assert isinstance(rolled, RollbackReply) and not rolled.restored
    rollback = sign_message(RollbackRequest(run_id=second, agreement_digest=setup.agreement.agreement_id,
                                            party="school"), setup.key("coordinator"))
    rolled = handle_request(settings, rollback, None)[0]
    assert isinstance(rolled, RollbackReply) and rolled.restored
    assert (final.read_bytes(), record.read_bytes()) == first
    assert json.loads(record.read_text())["run_id"] == RUN


def test_rolling_back_a_first_run_leaves_no_result(setup: Setup, tmp_path: Path, people) -> None:  # type: ignore[no-untyped-def]
    """Invariant: with nothing before the failed run, rollback removes its result entirely."""
    settings = _settings(setup, tmp_path, people)
    _, blob = _encode(setup, settings)
    _resolve(setup, settings, _map(blob, setup))
    rollback = sign_message(RollbackRequest(run_id=RUN, agreement_digest=setup.agreement.agreement_id,
                                            party="school"), setup.key("coordinator"))
    handle_request(settings, rollback, None)
    assert not entities_path(settings.out_dir, "school").exists()
    assert not round_record_path(settings.out_dir, "school").exists()


def test_maps_that_do_not_fit_are_refused(setup: Setup, tmp_path: Path, people) -> None:  # type: ignore[no-untyped-def]
    """Invariant: a map with changed bytes, a repeated token, a missing row, or for a run this node
    never encoded is refused and nothing is written."""
    settings = _settings(setup, tmp_path, people)
    _, blob = _encode(setup, settings)
    good = _map(blob, setup)
    request = ResolveRequest(run_id=RUN, agreement_digest=setup.agreement.agreement_id, party="school",
                             rows=20, blob_sha256=blob_digest(good))
    with pytest.raises(TransportError, match="do not match the digest"):
        handle_request(settings, sign_message(request, setup.key("coordinator")), good[:-1] + b"\x00")
    repeated = good[:32] * 2 + good[64:]
    with pytest.raises(LinkageMapError, match="appears twice"):
        _resolve(setup, settings, repeated)
    with pytest.raises(LinkageMapError, match="does not fit"):
        _resolve(setup, settings, good[:-32])
    with pytest.raises(LinkageMapError, match="no token map"):
        _resolve(setup, settings, good, run_id="9" * 16)
    assert not entities_path(settings.out_dir, "school").exists()


def test_node_config_problems_name_the_key() -> None:
    """Invariant: a missing, mistyped or unknown node-config key is a ConfigError naming it."""
    base = {"agreement": "a.toml", "party": "school", "data-path": "d.csv", "key": "k", "out-dir": "o"}
    with pytest.raises(ConfigError, match="'data-path' is missing"):
        NodeSettings.from_node_config({k: v for k, v in base.items() if k != "data-path"})
    with pytest.raises(ConfigError, match="unknown key"):
        NodeSettings.from_node_config({**base, "datapath": "x"})
    with pytest.raises(ConfigError, match="'workers' must be"):
        NodeSettings.from_node_config({**base, "workers": 0})
    assert NodeSettings.from_node_config(base).secret_path is None


def test_error_replies_carry_the_code_and_hide_unexpected_details(setup: Setup, tmp_path: Path, people) -> None:  # type: ignore[no-untyped-def]
    """Invariant: a pplink error travels as its code and message; any other exception only by its
    type, so its text (which might hold a value) stays at the node; replies are signed."""
    settings = _settings(setup, tmp_path, people)
    request = EncodeRequest(run_id=RUN, agreement_digest=setup.agreement.agreement_id, party="school")
    reply = error_reply(settings, request, RoundStep.ENCODE, LinkageMapError("map: row 3"))
    assert (reply.code, reply.message) == (LinkageMapError.code, "map: row 3")
    verify_message(reply, setup.agreement.agency("school").public_key, what="error")
    hidden = error_reply(settings, request, RoundStep.ENCODE, ValueError("Xanthippe Quillfeather"))
    assert hidden.code is None and "Xanthippe" not in hidden.message and "ValueError" in hidden.message
    assert error_reply(None, None, RoundStep.ENCODE, KeyError("x")).signature == ""


def test_a_result_torn_between_its_two_files_is_refused(setup: Setup, tmp_path: Path, people) -> None:  # type: ignore[no-untyped-def]
    """Invariant: the round record, written last, names its entities file's hash, so a resolve killed
    between the entities file and the record (new entities, old record), or an edited entities file,
    is refused before scoring reads it."""
    settings = _settings(setup, tmp_path, people)
    _, blob = _encode(setup, settings)
    _resolve(setup, settings, _map(blob, setup))
    check_result(settings.out_dir, "school")  # a whole result passes
    final = entities_path(settings.out_dir, "school")
    lines = final.read_text().splitlines()
    final.write_text("\n".join([lines[0], lines[2], lines[1], *lines[3:]]) + "\n")  # same rows, another file
    with pytest.raises(RoundIntegrityError, match="not the entities file its round record"):
        check_result(settings.out_dir, "school")

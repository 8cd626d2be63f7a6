"""Round messages: what is packed is unpacked unchanged; a changed field breaks the signature;
malformed content is refused with the bad fields named, never echoed."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict
from hypothesis import given, settings
from hypothesis import strategies as st

from pplink.crypto import generate_signing_key, public_key_text
from pplink.errors import SignatureError, TransportError
from pplink.messages import (
    MAX_ERROR_MESSAGE,
    EncodeReply,
    EncodeRequest,
    IdentifyReply,
    IdentifyRequest,
    NodeErrorReply,
    ResolveReply,
    ResolveRequest,
    RollbackReply,
    RollbackRequest,
    RoundStep,
    blob_digest,
    message_json,
    parse_reply,
    parse_request,
    sign_message,
    verify_message,
)
from pplink.wire import pack, unpack_reply, unpack_request

KEY = generate_signing_key()
BASE = {"run_id": "0123456789abcdef", "agreement_digest": "a" * 64}
REQUESTS = [
    EncodeRequest(**BASE, party="school"),
    ResolveRequest(**BASE, party="school", rows=3, blob_sha256=blob_digest(b"x" * 96)),
    RollbackRequest(**BASE, party="health"),
    IdentifyRequest(**BASE, node_id=42, nonce="f" * 32),
]
REPLIES = [
    EncodeReply(**BASE, party="school", file_id="b" * 32, records=5, opted_out=1, rejected=0, blob_sha256="c" * 64),
    ResolveReply(**BASE, party="school", rows=3, entities=2),
    RollbackReply(**BASE, party="school", restored=True),
    IdentifyReply(**BASE, party="police", node_id=7, nonce="e" * 32),
    NodeErrorReply(**BASE, party="school", step=RoundStep.ENCODE, code=301, message="school.csv: row 4: date_of_birth"),
]


@pytest.mark.parametrize("request_", REQUESTS, ids=lambda m: m.kind)
def test_requests_roundtrip_through_flower_records(request_) -> None:  # type: ignore[no-untyped-def]
    """Invariant: unpack(pack(m, blob)) == (m, blob), signed or not."""
    signed = sign_message(request_, KEY)
    assert unpack_request(pack(signed, b"\x00\x01\xff")) == (signed, b"\x00\x01\xff")
    assert unpack_request(pack(request_)) == (request_, None)


@pytest.mark.parametrize("reply", REPLIES, ids=lambda m: m.kind)
def test_replies_roundtrip_and_verify(reply) -> None:  # type: ignore[no-untyped-def]
    """Invariant: a signed reply verifies after the round trip; a reply is never parsed as a request."""
    signed = sign_message(reply, KEY)
    model, blob = unpack_reply(pack(signed))
    assert model == signed and blob is None
    verify_message(model, public_key_text(KEY), what="reply")
    with pytest.raises(TransportError, match="malformed pplink message"):
        parse_request(message_json(signed))


@settings(max_examples=50, deadline=None)
@given(rows=st.integers(0, 10_000), entities=st.integers(0, 10_000), field=st.sampled_from(["rows", "entities",
       "party", "run_id", "agreement_digest"]))
def test_any_changed_field_breaks_the_signature(rows: int, entities: int, field: str) -> None:
    """Invariant: changing any one field of a signed message makes verification fail."""
    signed = sign_message(ResolveReply(**BASE, party="school", rows=rows, entities=entities), KEY)
    changed = {"rows": rows + 1, "entities": entities + 1, "party": "health", "run_id": "f" * 16,
               "agreement_digest": "b" * 64}[field]
    with pytest.raises(SignatureError):
        verify_message(signed.model_copy(update={field: changed}), public_key_text(KEY), what="reply")


def test_unsigned_and_wrongly_signed_messages_are_refused() -> None:
    """Invariant: verification needs a signature by exactly the expected key."""
    with pytest.raises(SignatureError, match="not signed"):
        verify_message(REPLIES[0], public_key_text(KEY), what="reply")
    other = generate_signing_key()
    with pytest.raises(SignatureError):
        verify_message(sign_message(REPLIES[0], other), public_key_text(KEY), what="reply")


def test_big_blobs_travel_whole() -> None:
    """Invariant: 15 MB of encodings survive packing (Flower chunks large arrays)."""
    blob = np.random.default_rng(3).integers(0, 256, 15_000_000, dtype=np.uint8).tobytes()
    assert unpack_reply(pack(REPLIES[0], blob))[1] == blob


def test_malformed_content_is_refused_naming_fields_without_values() -> None:
    """Invariant: bad content raises TransportError naming locations, never the values sent."""
    with pytest.raises(TransportError, match="no pplink message"):
        unpack_reply(RecordDict({"other": ConfigRecord({"x": 1})}))
    with pytest.raises(TransportError, match="records") as err:
        parse_reply(b'{"kind":"encode_reply","run_id":"0123456789abcdef","agreement_digest":"' + b"a" * 64 +
                    b'","party":"school","file_id":"' + b"b" * 32 + b'","records":"Xanthippe","opted_out":0,'
                    b'"rejected":0,"blob_sha256":"' + b"c" * 64 + b'"}')
    assert "Xanthippe" not in str(err.value)
    bad_blob = RecordDict({"pplink": ConfigRecord({"message": message_json(REPLIES[1])}),
                           "pplink.blob": ArrayRecord({"blob": Array(np.zeros((2, 2), dtype=np.float32))})})
    with pytest.raises(TransportError, match="1-D uint8"):
        unpack_reply(bad_blob)


def test_error_messages_are_bounded() -> None:
    """Invariant: an error reply cannot carry more than MAX_ERROR_MESSAGE characters."""
    with pytest.raises(ValueError):
        NodeErrorReply(**BASE, party="school", step=RoundStep.ENCODE, code=301, message="x" * (MAX_ERROR_MESSAGE + 1))

"""The messages of a match round over Flower: one frozen model per message type, each signed.

A round is two exchanges between the coordinator's ServerApp and each agency's ClientApp, and a
third only when the round fails after some agencies wrote their result:

=================  ========================  ==========================================
Flower type        coordinator sends         agency replies
=================  ========================  ==========================================
``query.encode``   :class:`EncodeRequest`    :class:`EncodeReply` + the signed ``.enc`` bytes
``query.resolve``  :class:`ResolveRequest`   :class:`ResolveReply` (entities written, the
                   + that agency's map       previous ones kept aside)
``query.rollback`` :class:`RollbackRequest`  :class:`RollbackReply` (previous entities back)
``query.identify`` :class:`IdentifyRequest`  :class:`IdentifyReply` (only for nodes Flower
                                             could not authenticate: insecure test setups)
``query.score``    :class:`ScoringRequest`   :class:`ScoringReply` (vertical scoring, one
                   + the step's payload      per node method; payload beside it)
=================  ========================  ==========================================

Any step may instead be answered with :class:`NodeErrorReply`, which carries only a pplink
error code and a message without record values. Every message carries the pplink ``run_id`` and
the ``agreement_digest`` (the agreement id), names the agency it is to or from, and is signed
with its sender's Ed25519 key from the agreement (the coordinator's for requests, the agency's
for replies) over its canonical JSON. Bulk bytes (encodings, pseudonym maps) travel beside the
model and are bound to it by ``blob_sha256``. How the models are packed into Flower records is
:mod:`pplink.wire`.

>>> req = EncodeRequest(run_id="0" * 16, agreement_digest="a" * 64, party="school")
>>> parse_request(message_json(req)) == req
True
"""

from __future__ import annotations

import hashlib
import os
from enum import StrEnum
from typing import Annotated, Literal, TypeVar

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import Field, StringConstraints, TypeAdapter, ValidationError

from pplink.agreement import canonical_json
from pplink.crypto import sign, verify
from pplink.errors import SignatureError, TransportError
from pplink.models import PplinkModel

__all__ = [
    "AnyReply",
    "AnyRequest",
    "EncodeReply",
    "EncodeRequest",
    "IdentifyReply",
    "IdentifyRequest",
    "MAX_ERROR_MESSAGE",
    "NodeErrorReply",
    "ResolveReply",
    "ResolveRequest",
    "RollbackReply",
    "RollbackRequest",
    "RoundStep",
    "ScoringCall",
    "ScoringReply",
    "ScoringRequest",
    "blob_digest",
    "message_json",
    "new_run_id",
    "parse_reply",
    "parse_request",
    "sign_message",
    "verify_message",
]

#: Error messages sent upstream are cut to this many characters (a validation error may list
#: thousands of rows; the node's own log keeps them all).
MAX_ERROR_MESSAGE = 2000
_SIGN_CONTEXT = b"pplink message v1\x00"

Hex64 = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
RunId = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{16,32}$")]
PartyId = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,39}$")]
Signature = Annotated[str, StringConstraints(pattern=r"^([0-9a-f]{128})?$")]
Count = Annotated[int, Field(ge=0)]


class RoundStep(StrEnum):
    """The Flower message type of each step of a match round."""

    IDENTIFY = "query.identify"
    ENCODE = "query.encode"
    RESOLVE = "query.resolve"
    ROLLBACK = "query.rollback"
    #: One message of a vertical scoring run (:mod:`pplink.scoring.wire` carries its payload).
    SCORE = "query.score"


def new_run_id() -> str:
    """A fresh random pplink run id (16 hex digits).

    >>> len(new_run_id()), new_run_id() != new_run_id()
    (16, True)
    """
    return os.urandom(8).hex()


def blob_digest(blob: bytes) -> str:
    """SHA-256 (hex) of the bytes sent beside a message.

    >>> blob_digest(b"")[:12]
    'e3b0c44298fc'
    """
    return hashlib.sha256(blob).hexdigest()


class _Signed(PplinkModel):
    """Fields every round message carries."""

    run_id: RunId
    agreement_digest: Hex64
    #: Ed25519 signature (hex) by the sender over :meth:`signed_body`; empty until signed.
    signature: Signature = ""

    def signed_body(self) -> bytes:
        """The bytes the signature covers: every field but the signature, as canonical JSON."""
        return _SIGN_CONTEXT + canonical_json(self.model_dump(mode="json", exclude={"signature"}))


class _Message(_Signed):
    """A message to or from one agency."""

    #: The agency the message is addressed to (requests) or comes from (replies).
    party: PartyId


class IdentifyRequest(_Signed):
    """Coordinator -> a node the SuperLink knows by no agency name: which agency are you?

    Only needed where Flower cannot authenticate nodes (``--insecure`` test deployments): with
    node authentication each node is registered under its agency's id.
    """

    kind: Literal["identify_request"] = "identify_request"
    node_id: Annotated[int, Field(ge=0)]
    nonce: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{32}$")]


class IdentifyReply(_Message):
    """Agency -> coordinator: this node (``node_id``) speaks for ``party``; signed with its key."""

    kind: Literal["identify_reply"] = "identify_reply"
    node_id: Annotated[int, Field(ge=0)]
    nonce: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{32}$")]


class EncodeRequest(_Message):
    """Coordinator -> agency: encode your records under this agreement and send the encodings."""

    kind: Literal["encode_request"] = "encode_request"


class EncodeReply(_Message):
    """Agency -> coordinator: the signed ``.enc`` bytes travel beside this model."""

    kind: Literal["encode_reply"] = "encode_reply"
    file_id: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{32}$")]
    records: Count
    opted_out: Count
    rejected: Count
    blob_sha256: Hex64


class ResolveRequest(_Message):
    """Coordinator -> agency: your pseudonym map (``rows`` x 32 bytes: token, entity id) beside it."""

    kind: Literal["resolve_request"] = "resolve_request"
    rows: Count
    blob_sha256: Hex64


class ResolveReply(_Message):
    """Agency -> coordinator: the map fit the node's tokens and ``record_id,entity_id`` is written."""

    kind: Literal["resolve_reply"] = "resolve_reply"
    rows: Count
    entities: Count


class RollbackRequest(_Message):
    """Coordinator -> agency: the round failed elsewhere; put back the result you had before it."""

    kind: Literal["rollback_request"] = "rollback_request"


class RollbackReply(_Message):
    """Agency -> coordinator: the previous result (or none) is back in place."""

    kind: Literal["rollback_reply"] = "rollback_reply"
    restored: bool


class ScoringCall(StrEnum):
    """The node-side method a scoring message asks for (see :mod:`pplink.scoring.suffstats_protocol`)."""

    ANNOUNCE = "announce"
    JOIN = "join"
    OWNER_SETUP = "owner-setup"
    FORWARD = "forward"
    BLOCK = "block"
    DECRYPT = "decrypt"
    SCORES = "scores"
    OWNER_SCORES = "owner-scores"
    HOLDOUT = "holdout"
    THRESHOLD = "threshold"
    PRESENCE_SETUP = "presence-setup"
    PRESENCE = "presence"
    PRESENCE_COUNTS = "presence-counts"
    FINISH = "finish"
    #: Several of the above for one node, answered in order in one message (:class:`pplink.scoring.wire.Batch`).
    BATCH = "batch"


class ScoringRequest(_Message):
    """Coordinator -> agency: one vertical scoring message; its payload travels beside it.

    ``run_id`` is the scoring run's id (the run plan's). The payload (a
    :mod:`pplink.scoring.protocol` request, encoded by :mod:`pplink.scoring.wire`) is bound to
    the signed model by ``blob_sha256``.
    """

    kind: Literal["scoring_request"] = "scoring_request"
    call: ScoringCall
    blob_sha256: Hex64


class ScoringReply(_Message):
    """Agency -> coordinator: the answer to one scoring message; its payload travels beside it."""

    kind: Literal["scoring_reply"] = "scoring_reply"
    call: ScoringCall
    blob_sha256: Hex64


class NodeErrorReply(_Message):
    """Agency -> coordinator: the step failed at the node.

    Carries the pplink error code (``None`` for an unexpected error, whose details stay in the
    node's log) and a message that names files, rows and fields but never record values.
    """

    kind: Literal["node_error"] = "node_error"
    step: RoundStep
    code: Annotated[int, Field(ge=100, le=599)] | None
    message: Annotated[str, Field(max_length=MAX_ERROR_MESSAGE)]


AnyRequest = Annotated[IdentifyRequest | EncodeRequest | ResolveRequest | RollbackRequest | ScoringRequest,
                      Field(discriminator="kind")]
AnyReply = Annotated[IdentifyReply | EncodeReply | ResolveReply | RollbackReply | ScoringReply | NodeErrorReply,
                     Field(discriminator="kind")]

_REQUESTS: TypeAdapter[AnyRequest] = TypeAdapter(AnyRequest)
_REPLIES: TypeAdapter[AnyReply] = TypeAdapter(AnyReply)
M = TypeVar("M", bound=_Signed)


def message_json(message: _Signed) -> bytes:
    """The JSON bytes of a message, as sent."""
    return message.model_dump_json().encode("utf-8")


def _parse(adapter: TypeAdapter, data: bytes, what: str):  # type: ignore[no-untyped-def, type-arg]
    try:
        return adapter.validate_json(data)
    except ValidationError as err:
        # Locations only: pydantic's input echo could carry anything a peer sent.
        fields = ", ".join(".".join(map(str, e["loc"])) or "message" for e in err.errors(include_input=False))
        raise TransportError(f"{what}: malformed pplink message ({fields})") from None


def parse_request(data: bytes, *, what: str = "request") -> AnyRequest:
    """Parse a request the coordinator sent.

    Raises:
        TransportError: not a well-formed request (the message names the bad fields).
    """
    return _parse(_REQUESTS, data, what)  # type: ignore[no-any-return]


def parse_reply(data: bytes, *, what: str = "reply") -> AnyReply:
    """Parse a reply an agency sent.

    Raises:
        TransportError: not a well-formed reply (the message names the bad fields).
    """
    return _parse(_REPLIES, data, what)  # type: ignore[no-any-return]


def sign_message(message: M, key: Ed25519PrivateKey) -> M:
    """Return ``message`` signed with ``key``.

    >>> from pplink.crypto import generate_signing_key, public_key_text
    >>> key = generate_signing_key()
    >>> m = sign_message(RollbackRequest(run_id="1" * 16, agreement_digest="b" * 64, party="health"), key)
    >>> verify_message(m, public_key_text(key), what="rollback")
    """
    return message.model_copy(update={"signature": sign(key, message.signed_body()).hex()})


def verify_message(message: _Signed, public_key: str | Ed25519PublicKey, *, what: str) -> None:
    """Check a message's signature against the sender's key from the agreement.

    Raises:
        SignatureError: unsigned, or the signature does not verify.
    """
    if not message.signature:
        raise SignatureError(f"{what}: the message is not signed")
    verify(public_key, message.signed_body(), bytes.fromhex(message.signature), what=what)

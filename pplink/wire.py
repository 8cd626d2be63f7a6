"""Packing round messages into Flower 1.41 records and back.

A message's content is a ``RecordDict`` with one ``ConfigRecord`` named ``pplink`` holding the
model's JSON bytes under the key ``message`` and, when the message carries bulk bytes (encodings,
a pseudonym map), one ``ArrayRecord`` named ``pplink.blob`` holding them as a 1-D ``uint8`` array under
``blob``. Flower splits large arrays into chunks on the wire, so a 15 MB ``.enc`` travels as
well as a small one; a ``ConfigRecord`` bytes value would be sent whole.

>>> from pplink.messages import RollbackRequest
>>> req = RollbackRequest(run_id="0" * 16, agreement_digest="a" * 64, party="school")
>>> unpack_request(pack(req, b"xyz")) == (req, b"xyz")
True
"""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

from pplink.errors import TransportError
from pplink.messages import AnyReply, AnyRequest, message_json, parse_reply, parse_request

__all__ = ["BLOB_RECORD_NAME", "RECORD_NAME", "pack", "unpack_reply", "unpack_request"]

RECORD_NAME = "pplink"
BLOB_RECORD_NAME = "pplink.blob"
_MESSAGE_KEY = "message"
_BLOB_KEY = "blob"


def pack(message: AnyRequest | AnyReply, blob: bytes | None = None) -> RecordDict:
    """The Flower content for a message and its optional bulk bytes."""
    records: dict[str, ConfigRecord | ArrayRecord] = {
        RECORD_NAME: ConfigRecord({_MESSAGE_KEY: message_json(message)})
    }
    if blob is not None:
        records[BLOB_RECORD_NAME] = ArrayRecord({_BLOB_KEY: Array(np.frombuffer(blob, dtype=np.uint8))})
    return RecordDict(records)


def _unpack(content: RecordDict, what: str) -> tuple[bytes, bytes | None]:
    config = content.config_records.get(RECORD_NAME)
    data = config.get(_MESSAGE_KEY) if config is not None else None
    if not isinstance(data, bytes):
        raise TransportError(f"{what}: no pplink message in the Flower content")
    arrays = content.array_records.get(BLOB_RECORD_NAME)
    if arrays is None:
        return data, None
    array = arrays.get(_BLOB_KEY)
    if array is None or array.dtype != "uint8" or len(array.shape) != 1:
        raise TransportError(f"{what}: the bytes beside the message are not a 1-D uint8 array")
    return data, array.numpy().tobytes()


def unpack_request(content: RecordDict, *, what: str = "request") -> tuple[AnyRequest, bytes | None]:
    """The request model and its bulk bytes (or None) from Flower content.

    Raises:
        TransportError: the content holds no well-formed pplink request.
    """
    data, blob = _unpack(content, what)
    return parse_request(data, what=what), blob


def unpack_reply(content: RecordDict, *, what: str = "reply") -> tuple[AnyReply, bytes | None]:
    """The reply model and its bulk bytes (or None) from Flower content.

    Raises:
        TransportError: the content holds no well-formed pplink reply.
    """
    data, blob = _unpack(content, what)
    return parse_reply(data, what=what), blob

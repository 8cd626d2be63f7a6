"""Encoding vertical scoring payloads as bytes, for Flower messages and a node's saved run state.

The payloads of :mod:`pplink.scoring.suffstats_protocol` are dataclasses holding numpy vectors,
bytes (ciphertexts, ledger lines), pydantic models (settings, mask-key announcements) and enums.
:func:`encode_payload` writes one as an ``.npz`` archive: every array (and every long byte string)
under its own name, and a JSON tree (``$tree``) describing the rest,
with each array replaced by a reference to its name. :func:`decode_payload` reads it back with
``allow_pickle=False`` and rebuilds only the types listed in :data:`PAYLOAD_TYPES`, so bytes from
a peer can never make the reader run code or build an object it did not expect.

>>> back = decode_payload(encode_payload(ThresholdAsk(run_id="a" * 32, threshold=-1.5)))
>>> back.threshold
-1.5
"""

from __future__ import annotations

import dataclasses
import io
import json
import zipfile
from enum import Enum
from typing import Any

import numpy as np
from pydantic import ValidationError

from pplink.accounting import Mechanism
from pplink.errors import TransportError
from pplink.models import PplinkModel
from pplink.scoring.he import SignedBundle
from pplink.scoring.secure_sum import MaskKeyAnnouncement
from pplink.scoring.suffstats import NoisePlan, SuffStatsSettings
from pplink.scoring.suffstats_protocol import (
    BlockRequest,
    DecryptRequest,
    PresenceAsk,
    Released,
    ScoreRequest,
    SuffStatsPlan,
)

__all__ = ["PAYLOAD_TYPES", "Batch", "BatchReply", "CountsReply", "FinishReply", "FinishRequest", "ForwardAsk",
           "OwnerScoresAsk", "PresenceCountsAsk", "RunAsk", "SuffJoin", "ThresholdAsk", "decode_payload",
           "encode_payload", "register_payload_type"]

_TREE = "$tree"
#: The types a payload may hold, by name (dataclasses, pydantic models and enums).
PAYLOAD_TYPES: dict[str, type] = {
    cls.__name__: cls
    for cls in (Mechanism, MaskKeyAnnouncement, SuffStatsPlan, SuffStatsSettings, NoisePlan, SignedBundle,
                BlockRequest, DecryptRequest, Released, PresenceAsk, ScoreRequest)
}
#: Bytes values longer than this travel as arrays of the archive, not as hex in its JSON tree
#: (ciphertexts: tens of megabytes per message).
_INLINE_BYTES = 256


def register_payload_type(cls: type) -> type:
    """Allow another dataclass, pydantic model or enum in payloads (used as a class decorator)."""
    PAYLOAD_TYPES[cls.__name__] = cls
    return cls


@register_payload_type
@dataclasses.dataclass(frozen=True)
class FinishRequest:
    """Coordinator -> label owner: the released evaluation, to write beside its scores."""

    run_id: str
    evaluation_lines: tuple[str, ...]


@register_payload_type
@dataclasses.dataclass(frozen=True)
class FinishReply:
    """Label owner -> coordinator: how many score rows it wrote (the scores themselves stay)."""

    run_id: str
    rows: int


@register_payload_type
@dataclasses.dataclass(frozen=True)
class SuffJoin:
    """Coordinator -> node (sufficient statistics): the plan, every party's mask key, the ledger chain."""

    plan: SuffStatsPlan
    announcements: tuple[MaskKeyAnnouncement, ...]
    ledger_lines: tuple[bytes, ...]


@register_payload_type
@dataclasses.dataclass(frozen=True)
class RunAsk:
    """Coordinator -> label owner: a message with no content but its run (setup, holdout, presence setup)."""

    run_id: str


@register_payload_type
@dataclasses.dataclass(frozen=True)
class ForwardAsk:
    """Coordinator -> agency: forward the label owner's training vectors times your columns."""

    run_id: str
    owner: SignedBundle


@register_payload_type
@dataclasses.dataclass(frozen=True)
class OwnerScoresAsk:
    """Coordinator -> label owner: every agency's masked score share."""

    run_id: str
    shares: tuple[SignedBundle, ...]


@register_payload_type
@dataclasses.dataclass(frozen=True)
class ThresholdAsk:
    """Coordinator -> label owner: exact error counts by subgroup at a public threshold."""

    run_id: str
    threshold: float


@register_payload_type
@dataclasses.dataclass(frozen=True)
class PresenceCountsAsk:
    """Coordinator -> label owner: the agencies' noisy presence sums and the ledger lines charging them."""

    run_id: str
    sums: tuple[SignedBundle, ...]
    ledger_lines: tuple[bytes, ...]


@register_payload_type
@dataclasses.dataclass(frozen=True)
class CountsReply:
    """Label owner -> coordinator: released counts ``(agency, "known" | "not known", outcome, count)``."""

    run_id: str
    counts: tuple[tuple[str, str, str, int], ...]


@register_payload_type
@dataclasses.dataclass(frozen=True)
class Batch:
    """Coordinator -> one node: requests whose contents do not depend on each other's answers.

    The node answers them in order, in one message, each exactly as if it came alone (the same
    checks, answered once); it saves its run state once, after the last. Saves a round trip
    through the SuperLink per request after the first.

    Attributes:
        run_id: the run (every request in it must be for this run).
        calls: each request's :class:`~pplink.messages.ScoringCall` value, in order.
        payloads: each request's payload.
    """

    run_id: str
    calls: tuple[str, ...]
    payloads: tuple[Any, ...]


@register_payload_type
@dataclasses.dataclass(frozen=True)
class BatchReply:
    """Node -> coordinator: the answers to a :class:`Batch`, in its order."""

    run_id: str
    answers: tuple[Any, ...]


def _to_tree(obj: Any, arrays: dict[str, np.ndarray]) -> Any:
    if isinstance(obj, Enum):  # before str: a StrEnum is a str too
        _known(type(obj).__name__)
        return {"$enum": type(obj).__name__, "value": obj.value}
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    if isinstance(obj, np.ndarray):
        if obj.dtype == object:
            raise TransportError("scoring payload: object arrays cannot be sent")
        name = f"a{len(arrays)}"
        arrays[name] = obj
        return {"$array": name}
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, bytes):
        if len(obj) <= _INLINE_BYTES:
            return {"$bytes": obj.hex()}
        name = f"a{len(arrays)}"
        arrays[name] = np.frombuffer(obj, dtype=np.uint8)
        return {"$blob": name}
    name = type(obj).__name__
    if isinstance(obj, PplinkModel):
        _known(name)
        return {"$model": name, "value": obj.model_dump(mode="json")}
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        _known(name)
        return {"$type": name, "fields": {f.name: _to_tree(getattr(obj, f.name), arrays)
                                          for f in dataclasses.fields(obj)}}
    if isinstance(obj, tuple):
        return {"$tuple": [_to_tree(v, arrays) for v in obj]}
    if isinstance(obj, set | frozenset):
        return {"$set": [_to_tree(v, arrays) for v in sorted(obj)]}
    if isinstance(obj, list):
        return [_to_tree(v, arrays) for v in obj]
    if isinstance(obj, dict):
        if not all(isinstance(k, str) for k in obj):
            raise TransportError("scoring payload: mapping keys must be strings")
        return {"$dict": {k: _to_tree(v, arrays) for k, v in obj.items()}}
    raise TransportError(f"scoring payload: a {name} cannot be sent")


def _known(name: str) -> type:
    cls = PAYLOAD_TYPES.get(name)
    if cls is None:
        raise TransportError(f"scoring payload: type {name!r} is not a scoring payload type")
    return cls


def _from_tree(node: Any, arrays: Any) -> Any:
    if isinstance(node, list):
        return [_from_tree(v, arrays) for v in node]
    if not isinstance(node, dict):
        return node
    if "$array" in node:
        return arrays[node["$array"]]
    if "$bytes" in node:
        return bytes.fromhex(node["$bytes"])
    if "$blob" in node:
        blob = arrays[node["$blob"]]
        if blob.dtype != np.uint8 or blob.ndim != 1:
            raise TransportError("scoring payload: a byte string is not a 1-D uint8 array")
        return blob.tobytes()
    if "$tuple" in node:
        return tuple(_from_tree(v, arrays) for v in node["$tuple"])
    if "$set" in node:
        return {_from_tree(v, arrays) for v in node["$set"]}
    if "$dict" in node:
        return {k: _from_tree(v, arrays) for k, v in node["$dict"].items()}
    if "$enum" in node:
        return _known(node["$enum"])(node["value"])
    if "$model" in node:
        return _known(node["$model"]).model_validate(node["value"])  # type: ignore[attr-defined]
    if "$type" in node:
        cls = _known(node["$type"])
        return cls(**{k: _from_tree(v, arrays) for k, v in node["fields"].items()})
    raise TransportError("scoring payload: an unknown node in its tree")


def encode_payload(obj: Any) -> bytes:
    """The bytes of a scoring payload (an ``.npz`` archive; see the module docstring).

    Raises:
        TransportError: the payload holds something that cannot be sent.
    """
    arrays: dict[str, np.ndarray] = {}
    tree = json.dumps(_to_tree(obj, arrays), separators=(",", ":")).encode("utf-8")
    out = io.BytesIO()
    np.savez(out, **{_TREE: np.frombuffer(tree, dtype=np.uint8)}, **arrays)
    return out.getvalue()


def decode_payload(data: bytes, *, what: str = "scoring payload") -> Any:
    """Rebuild a payload from :func:`encode_payload`'s bytes.

    Raises:
        TransportError: not such an archive, or it names a type or field that does not belong.
    """
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
        tree = json.loads(arrays.pop(_TREE).tobytes().decode("utf-8"))
        return _from_tree(tree, arrays)
    except TransportError as err:
        raise TransportError(f"{what}: {err}") from None
    except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile, ValidationError, UnicodeDecodeError) as err:
        raise TransportError(f"{what}: malformed ({type(err).__name__})") from None

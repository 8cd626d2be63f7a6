"""An agency's side of a match round over Flower, as plain functions (no Flower here).

The ClientApp (:mod:`nodes.flower.client_app`) unpacks each request and calls :func:`handle_request`;
this module does the work with the same code as ``pplink node encode`` and ``pplink node
resolve``:

* ``identify`` (insecure test deployments only): say, signed, which agency this node is.
* ``encode``: validate, drop opt-outs, normalise and encode the records into a signed ``.enc``
  (written locally, its bytes sent); the token -> record id map stays in the node's work folder.
* ``resolve``: check the coordinator's pseudonym map covers exactly this node's tokens, set the
  current result aside, and write ``<out-dir>/<party>.entities.csv`` and then ``<party>.round.json``
  (which run it came from, and the entities file's SHA-256), each atomically; :func:`check_result`
  refuses a pair that does not match (a resolve killed between the two writes).
* ``rollback``: the round failed at another agency after this one resolved: put the result set
  aside back in place (or remove this run's, if there was none), so a failed round leaves every
  agency with the result of the last round that finished.

Every request must be signed by the agreement's coordinator, name this node's party and carry
this node's agreement id; every reply is signed with the agency's key. Identifiers, the linkage
secret and the token map never leave the node: only the ``.enc`` bytes and counts do.

Files under ``<out-dir>``::

    <party>.entities.csv        the result (record_id,entity_id), 0600
    <party>.round.json          run id, agreement id, rows and entities of that result
    work/<run_id>/              .enc, .tokens (0600), rejects, the result it replaced (previous/)
    pplink-node.log             the node's own log, with tracebacks of failed steps
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from nodes.export_settings import load_export_settings
from nodes.resolve import resolve_entities
from pplink.agreement import AgreementConfig, load_agreement
from pplink.atomic import atomic_replace, atomic_write
from pplink.crypto import load_private_key, load_secret, public_key_text
from pplink.encfile import TOKEN_BYTES, encodings_from_bytes
from pplink.entity_files import read_tokens, write_entities
from pplink.errors import (
    AgreementMismatchError,
    ConfigError,
    KeyFileError,
    LinkageMapError,
    PplinkError,
    RoundIntegrityError,
    TransportError,
)
from pplink.messages import (
    MAX_ERROR_MESSAGE,
    AnyReply,
    AnyRequest,
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
    sign_message,
    verify_message,
)
from pplink.round_manifest import file_sha256

__all__ = [
    "NODE_CONFIG_KEYS",
    "NODE_LOG",
    "NodeSettings",
    "check_result",
    "entities_path",
    "error_reply",
    "handle_request",
    "round_record_path",
]

#: The ``--node-config`` keys a SuperNode running pplink's ClientApp needs (``secret`` and
#: ``workers`` may be left out: the secret then comes from ``$PPLINK_SECRET``).
NODE_CONFIG_KEYS = ("agreement", "party", "data-path", "secret", "key", "out-dir", "skip-invalid", "workers",
                    "settings")
NODE_LOG = "pplink-node.log"
_PREVIOUS = "previous"
_PARTY = re.compile(r"^[a-z][a-z0-9_]{0,39}$")


@dataclass(frozen=True)
class NodeSettings:
    """What the node's ClientApp reads from its SuperNode's ``--node-config``."""

    agreement_path: Path
    party: str
    data_path: Path
    secret_path: Path | None
    key_path: Path
    out_dir: Path
    skip_invalid: bool = False
    workers: int | None = None
    #: The agency's export settings TOML (nodes.export_settings), if its export needs one.
    settings_path: Path | None = None

    @classmethod
    def from_node_config(cls, config: Mapping[str, object]) -> NodeSettings:
        """Read the settings from a Flower node config.

        Raises:
            ConfigError: a required key is missing, a value has the wrong type, or a key is unknown.
        """
        unknown = sorted(set(config) - set(NODE_CONFIG_KEYS))
        if unknown:
            raise ConfigError(f"node config: unknown key(s) {', '.join(unknown)}")

        def text(name: str, required: bool = True) -> str | None:
            value = config.get(name)
            if value is None or value == "":
                if required:
                    raise ConfigError(f"node config: '{name}' is missing")
                return None
            if not isinstance(value, str):
                raise ConfigError(f"node config: '{name}' must be a string")
            return value

        skip = config.get("skip-invalid", False)
        workers = config.get("workers")
        if not isinstance(skip, bool):
            raise ConfigError("node config: 'skip-invalid' must be true or false")
        if workers is not None and (not isinstance(workers, int) or isinstance(workers, bool) or workers < 1):
            raise ConfigError("node config: 'workers' must be a positive integer")
        secret = text("secret", required=False)
        export = text("settings", required=False)
        return cls(
            agreement_path=Path(text("agreement") or ""),
            party=text("party") or "",
            data_path=Path(text("data-path") or ""),
            secret_path=Path(secret) if secret else None,
            key_path=Path(text("key") or ""),
            out_dir=Path(text("out-dir") or ""),
            skip_invalid=skip,
            workers=workers,
            settings_path=Path(export) if export else None,
        )

    def work_dir(self, run_id: str) -> Path:
        """The folder holding one run's local files."""
        return self.out_dir / "work" / run_id


def entities_path(out_dir: Path, party: str) -> Path:
    """Where a node's committed ``record_id,entity_id`` file is."""
    return Path(out_dir) / f"{party}.entities.csv"


def round_record_path(out_dir: Path, party: str) -> Path:
    """Where a node records which run its committed entities came from."""
    return Path(out_dir) / f"{party}.round.json"


def check_result(out_dir: Path, party: str) -> None:
    """Refuse a committed result whose entities file is not the one its round record names.

    A result with no record (written by ``pplink node resolve``, not by a Flower round) is left
    to the reader.

    Raises:
        RoundIntegrityError: the record is unreadable, or names another entities file (a resolve
            killed between its two writes, or a file edited by hand).
    """
    record, final = round_record_path(out_dir, party), entities_path(out_dir, party)
    if not record.exists():
        return
    try:
        expected = json.loads(record.read_text(encoding="utf-8")).get("entities_sha256")
        actual = file_sha256(final)
    except (OSError, ValueError, AttributeError):
        raise RoundIntegrityError(f"{record}: unreadable, or its entities file is missing") from None
    if expected is not None and expected != actual:
        raise RoundIntegrityError(f"{final}: not the entities file its round record {record.name} names (an "
                                  "interrupted resolve, or edited by hand); run the match round again")


def _check_request(agreement: AgreementConfig, settings: NodeSettings, request: AnyRequest) -> None:
    if request.agreement_digest != agreement.agreement_id:
        raise AgreementMismatchError(
            f"request for agreement {request.agreement_digest[:12]}…, this node is under {agreement.agreement_id[:12]}…"
        )
    addressed = getattr(request, "party", settings.party)  # an identify request names no party
    if addressed != settings.party:
        raise TransportError(f"request addressed to {addressed!r}; this node is {settings.party!r}")
    verify_message(request, agreement.coordinator.public_key, what=f"{request.kind} of run {request.run_id}")


def _load_own_key(agreement: AgreementConfig, settings: NodeSettings) -> Ed25519PrivateKey:
    key = load_private_key(settings.key_path)
    if public_key_text(key) != agreement.agency(settings.party).public_key:
        raise KeyFileError(f"{settings.key_path}: not {settings.party}'s signing key in the agreement")
    return key


def _write_json(path: Path, value: object) -> None:
    atomic_write(path, json.dumps(value, indent=2, sort_keys=True))


def _encode(agreement: AgreementConfig, settings: NodeSettings, key: Ed25519PrivateKey,
            request: EncodeRequest) -> tuple[EncodeReply, bytes]:
    # Imported here: clkhash and the encoder cost ~0.6 s of a ClientApp process's start, and the
    # resolve and rollback steps (a fresh process each) never need them.
    from nodes.encode import encode_file

    secret = load_secret(settings.secret_path)
    work = settings.work_dir(request.run_id)
    if work.exists():
        shutil.rmtree(work)  # a repeated request for one run starts clean
    work.mkdir(parents=True, mode=0o700)
    enc_path = work / f"{settings.party}.enc"
    summary = encode_file(agreement, settings.party, secret, key, settings.data_path, enc_path,
                          settings=load_export_settings(settings.settings_path),
                          tokens=work / f"{settings.party}.tokens", skip_invalid=settings.skip_invalid,
                          workers=settings.workers)
    blob = enc_path.read_bytes()
    header = encodings_from_bytes(blob, agreement, source=str(enc_path), expected_party=settings.party).header
    reply = EncodeReply(run_id=request.run_id, agreement_digest=agreement.agreement_id, party=settings.party,
                        file_id=header.file_id, records=summary.encoded, opted_out=summary.opted_out,
                        rejected=summary.rejected, blob_sha256=blob_digest(blob))
    return reply, blob


def _set_aside(path: Path, previous: Path) -> None:
    """Keep the current version of ``path`` in ``previous`` (a hard link: the original stays in place)."""
    if path.exists():
        target = previous / path.name
        target.unlink(missing_ok=True)
        try:
            os.link(path, target)
        except OSError:
            shutil.copy2(path, target)


def _resolve(agreement: AgreementConfig, settings: NodeSettings, request: ResolveRequest,
             blob: bytes | None) -> ResolveReply:
    where = f"pseudonym map of run {request.run_id}"
    if blob is None or blob_digest(blob) != request.blob_sha256:
        raise TransportError(f"{where}: the bytes received do not match the digest the coordinator signed")
    width = 2 * TOKEN_BYTES
    if len(blob) != request.rows * width:
        raise LinkageMapError(f"{where}: {len(blob)} bytes, expected {request.rows} rows of {width}")
    raw = np.frombuffer(blob, dtype=np.uint8).reshape(request.rows, width).tobytes()
    entity_map = {raw[i : i + TOKEN_BYTES].hex(): raw[i + TOKEN_BYTES : i + width].hex()
                  for i in range(0, len(raw), width)}
    if len(entity_map) != request.rows:
        raise LinkageMapError(f"{where}: a row token appears twice")
    work = settings.work_dir(request.run_id)
    tokens_path = work / f"{settings.party}.tokens"
    if not tokens_path.is_file():
        raise LinkageMapError(f"{where}: this node holds no token map for that run")
    rows = resolve_entities(read_tokens(tokens_path), entity_map, map_name=where)
    entities = len({entity for _, entity in rows})
    final, record = entities_path(settings.out_dir, settings.party), round_record_path(settings.out_dir, settings.party)
    previous = work / _PREVIOUS
    if not previous.exists():  # a repeated resolve of one run keeps what was aside before its first
        previous.mkdir(mode=0o700)
        _set_aside(final, previous)
        _set_aside(record, previous)
    write_entities(final, rows)
    # The record, written last, names the entities file's hash: a kill between the two writes leaves
    # a record that does not match, and check_result refuses the pair (the round is re-run).
    _write_json(record, {
        "run_id": request.run_id, "agreement_id": agreement.agreement_id, "party": settings.party,
        "rows": len(rows), "entities": entities, "written": datetime.now(UTC).isoformat(timespec="seconds"),
        "entities_sha256": file_sha256(final),
    })
    for other in (settings.out_dir / "work").iterdir():
        if other.name != request.run_id and other.is_dir():
            shutil.rmtree(other)  # files of failed or older runs: tokens and encodings no longer needed
    return ResolveReply(run_id=request.run_id, agreement_digest=agreement.agreement_id, party=settings.party,
                        rows=len(rows), entities=entities)


def _rollback(agreement: AgreementConfig, settings: NodeSettings, request: RollbackRequest) -> RollbackReply:
    final, record = entities_path(settings.out_dir, settings.party), round_record_path(settings.out_dir, settings.party)
    try:
        current = json.loads(record.read_text(encoding="utf-8")).get("run_id")
    except (OSError, ValueError):
        current = None
    restored = False
    if current == request.run_id:  # only ever undo this run's own result
        previous = settings.work_dir(request.run_id) / _PREVIOUS
        for path in (final, record):
            kept = previous / path.name
            if kept.exists():
                atomic_replace(kept, path)
            else:
                path.unlink(missing_ok=True)
        restored = True
    return RollbackReply(run_id=request.run_id, agreement_digest=agreement.agreement_id, party=settings.party,
                         restored=restored)


def handle_request(settings: NodeSettings, request: AnyRequest, blob: bytes | None) -> tuple[AnyReply, bytes | None]:
    """Carry out one step of a round at this node and return the signed reply (and its bytes).

    Raises:
        PplinkError: the request is refused (wrong agreement, party or signature) or the step
            failed (bad records, a map that does not fit); the caller turns it into an
            :func:`error_reply`.
    """
    agreement = load_agreement(settings.agreement_path)
    agreement.agency(settings.party)
    _check_request(agreement, settings, request)
    key = _load_own_key(agreement, settings)
    settings.out_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    out_blob: bytes | None = None
    reply: AnyReply
    if isinstance(request, IdentifyRequest):
        reply = IdentifyReply(run_id=request.run_id, agreement_digest=agreement.agreement_id, party=settings.party,
                              node_id=request.node_id, nonce=request.nonce)
    elif isinstance(request, EncodeRequest):
        reply, out_blob = _encode(agreement, settings, key, request)
    elif isinstance(request, ResolveRequest):
        reply = _resolve(agreement, settings, request, blob)
    else:
        reply = _rollback(agreement, settings, request)
    return sign_message(reply, key), out_blob


def error_reply(
    settings: NodeSettings | None,
    request: AnyRequest | None,
    step: RoundStep,
    err: BaseException,
) -> NodeErrorReply:
    """The reply for a failed step: the pplink code and a value-free message, signed when possible.

    An error that is not a :class:`~pplink.errors.PplinkError` is reported only by its type; its
    message and traceback stay in the node's log.
    """
    if isinstance(err, PplinkError):
        code: int | None = err.code
        message = str(err)
    else:
        code, message = None, f"unexpected {type(err).__name__} at the node; details are in the node's log"
    if len(message) > MAX_ERROR_MESSAGE:
        message = message[: MAX_ERROR_MESSAGE - 1] + "…"
    party = settings.party if settings is not None else str(getattr(request, "party", "unknown"))
    reply = NodeErrorReply(
        run_id=request.run_id if request is not None else "0" * 16,
        agreement_digest=request.agreement_digest if request is not None else "0" * 64,
        party=party if _PARTY.match(party) else "unknown",
        step=step, code=code, message=message,
    )
    if settings is None:
        return reply
    try:
        return sign_message(reply, load_private_key(settings.key_path))
    except Exception:  # noqa: BLE001 - an unsigned error reply is better than none
        return reply

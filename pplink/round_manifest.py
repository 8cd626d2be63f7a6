"""A round's outputs, published all-or-nothing under a signed manifest.

The coordinator writes a round's files (one pseudonym map per agency, its linkage state, its
match report) into a fresh hidden staging folder inside the output folder, hashes each, and
publishes them with :func:`publish_round`:

1. the previous ``manifest.json`` is removed, so from here on no reader accepts the folder;
2. each staged file is renamed into place;
3. the signature ``manifest.json.sig`` is written, then ``manifest.json`` itself, last.

``manifest.json`` names every file of the round with its SHA-256, the agreement and a random
round id, and is signed with the coordinator's key from the agreement. A reader checks a file
with :func:`verify_round_file`: the signature, the agreement, and the file's hash. A crash at any
point leaves either no manifest (refused: the round is incomplete) or the complete new round; a
map from another round, a stale manifest or a map edited by hand has the wrong hash (refused).
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from pplink.agreement import AgreementConfig, canonical_json
from pplink.atomic import PARTIAL_SUFFIX, atomic_replace, atomic_write, fsync_dir, remove_partials
from pplink.crypto import sign, verify
from pplink.errors import PplinkError, RoundIntegrityError

__all__ = [
    "MANIFEST_FILE",
    "MANIFEST_FORMAT",
    "SIGNATURE_FILE",
    "file_sha256",
    "new_stage",
    "publish_round",
    "read_round_manifest",
    "verify_round_file",
    "verify_round_member",
]

MANIFEST_FILE = "manifest.json"
SIGNATURE_FILE = MANIFEST_FILE + ".sig"
MANIFEST_FORMAT = "pplink-linkage-manifest"
MANIFEST_VERSION = 2


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file's bytes, as hex."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def new_stage(out_dir: Path) -> Path:
    """A fresh, empty staging folder inside ``out_dir`` (created), after clearing earlier leftovers.

    Staging inside the output folder keeps every later rename on one file system.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    remove_partials(out_dir)
    return Path(tempfile.mkdtemp(prefix=".round-", suffix=PARTIAL_SUFFIX, dir=out_dir))


def _staged_files(stage: Path) -> dict[str, Path]:
    return {p.relative_to(stage).as_posix(): p for p in sorted(stage.rglob("*")) if p.is_file()}


def publish_round(out_dir: Path, stage: Path, manifest: Mapping[str, Any], key: Ed25519PrivateKey, *,
                  digests: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Move every file staged in ``stage`` into ``out_dir`` and publish the signed manifest last.

    Args:
        out_dir: the round's output folder.
        stage: a folder from :func:`new_stage` holding the round's files under their final
            relative names.
        manifest: the round's description (agreement id, inputs, …); ``format``, ``version``,
            ``round_id`` (unless given: the match round's, which its ledger is bound to) and
            ``files`` (every staged file's SHA-256) are added.
        key: the coordinator's signing key.
        digests: SHA-256 (hex) of staged files the caller hashed from the bytes it wrote, by
            relative name (those files are not read back); the others are hashed here.

    Returns:
        The manifest as published.
    """
    out_dir, stage = Path(out_dir), Path(stage)
    staged = _staged_files(stage)
    for path in staged.values():  # durable before anything points at them
        with open(path, "rb") as fh:
            os.fsync(fh.fileno())
    body_dict = {**manifest, "format": MANIFEST_FORMAT, "version": MANIFEST_VERSION,
                 "round_id": str(manifest.get("round_id") or secrets.token_hex(16)),
                 "files": {rel: (digests or {}).get(rel) or file_sha256(p) for rel, p in staged.items()}}
    body = canonical_json(body_dict)
    (out_dir / MANIFEST_FILE).unlink(missing_ok=True)  # from here until the end, no reader accepts the folder
    fsync_dir(out_dir)
    for rel, path in staged.items():
        target = out_dir / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_replace(path, target)
    atomic_write(out_dir / SIGNATURE_FILE, sign(key, body).hex() + "\n")
    atomic_write(out_dir / MANIFEST_FILE, body)
    shutil.rmtree(stage, ignore_errors=True)
    return body_dict


def read_round_manifest(agreement: AgreementConfig, manifest_path: Path) -> dict[str, Any]:
    """Read a round's manifest and check its signature and agreement.

    Raises:
        RoundIntegrityError: the manifest or its signature is missing (the round was never
            published, or is being published), unreadable, signed by anyone but the agreement's
            coordinator, or for another agreement.
    """
    manifest_path = Path(manifest_path)
    sig_path = manifest_path.with_name(manifest_path.name + ".sig")
    try:
        body = manifest_path.read_bytes()
        signature = bytes.fromhex(sig_path.read_text(encoding="ascii").strip())
    except FileNotFoundError as exc:
        raise RoundIntegrityError(f"{exc.filename}: missing; the round is incomplete or was never published") from None
    except (OSError, ValueError) as exc:
        raise RoundIntegrityError(f"{manifest_path}: cannot read the manifest or its signature "
                                  f"({type(exc).__name__})") from None
    try:
        verify(agreement.coordinator.public_key, body, signature, what=str(manifest_path))
    except PplinkError:
        raise RoundIntegrityError(f"{manifest_path}: the signature does not verify against the agreement's "
                                  "coordinator key (stale, mixed or edited round)") from None
    try:
        manifest = json.loads(body)
    except ValueError:
        raise RoundIntegrityError(f"{manifest_path}: not JSON") from None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT \
            or manifest.get("version") != MANIFEST_VERSION or not isinstance(manifest.get("files"), dict):
        raise RoundIntegrityError(f"{manifest_path}: not a version {MANIFEST_VERSION} round manifest")
    if manifest.get("agreement_id") != agreement.agreement_id:
        raise RoundIntegrityError(f"{manifest_path}: the round was made under another agreement")
    return manifest


def verify_round_file(agreement: AgreementConfig, manifest_path: Path, name: str, data: bytes) -> dict[str, Any]:
    """Check that ``data`` is the file the signed manifest names ``name``, byte for byte.

    The caller reads the file once and parses the same bytes it had checked.

    Returns:
        The verified manifest.

    Raises:
        RoundIntegrityError: see :func:`read_round_manifest`; or the manifest names no such file
            (another round, or a party left out of it); or the bytes' hash differs (a file from
            another round, a stale manifest, or a file edited by hand).
    """
    manifest = read_round_manifest(agreement, manifest_path)
    expected = manifest["files"].get(name)
    if expected is None:
        raise RoundIntegrityError(f"{manifest_path}: the round {str(manifest.get('round_id', ''))[:12]} has no {name}")
    if hashlib.sha256(data).hexdigest() != expected:
        raise RoundIntegrityError(f"{name}: its SHA-256 is not the one the signed manifest names "
                                  "(a file from another round, a stale manifest, or edited by hand)")
    return manifest


def verify_round_member(agreement: AgreementConfig, round_dir: Path, name: str) -> dict[str, Any]:
    """Check the file ``round_dir/name`` against the signed ``round_dir/manifest.json``.

    Raises:
        RoundIntegrityError: the file is unreadable; and see :func:`verify_round_file`.
    """
    path = Path(round_dir) / name
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise RoundIntegrityError(f"{path}: cannot read ({exc.strerror})") from None
    return verify_round_file(agreement, Path(round_dir) / MANIFEST_FILE, name, data)

"""Interoperation with anonlink-client and clkhash, both ways.

Out: the clkhash linkage schema (v3) of an agreement (:func:`clkhash_schema_json`) and, through
``pplink secret derive-key``, the per-agreement key as the text clkhash's tools take. An agency
that uses ``anonlink encode`` with both, on identifier values normalised as pplink normalises
them, makes bit for bit the encodings pplink makes.

In: :func:`read_clks_json` reads anonlink's ``{"clks": [base64, ...]}`` file for an agency the
agreement marks ``encodings = "clkhash-json"``. Such a file is not signed and carries no agreement
id, so the agreement's marking is the only thing that lets the coordinator take it; rows are
identified by their position in the file (the token of row ``i`` is ``i`` as 32 hex digits).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from pplink.agreement import AgreementConfig
from pplink.encfile import TOKEN_BYTES, EncodingsFile, EncodingsHeader
from pplink.encoding import clkhash_schema_dict
from pplink.errors import AgreementError, EncodingFileError

__all__ = ["CLKHASH_JSON", "clkhash_schema_json", "looks_like_clks_json", "read_clks_json", "row_tokens"]

#: The agreement's name for anonlink-client / clkhash JSON encodings (``[[parties]] encodings``).
CLKHASH_JSON = "clkhash-json"


def clkhash_schema_json(agreement: AgreementConfig) -> str:
    """The clkhash v3 linkage schema of the agreement's identifiers, as indented JSON.

    Raises:
        AgreementError: the agreement's hardening flips bits or salts fields, which clkhash cannot
            reproduce (its encodings would never match pplink's).
    """
    hardening = agreement.identifiers.hardening
    if hardening.flip_probability or hardening.salt is not None:
        raise AgreementError("identifiers.hardening uses flip_probability or salt, which clkhash does not have: "
                             "anonlink-client cannot make encodings that match this agreement's")
    return json.dumps(clkhash_schema_dict(agreement.identifiers), indent=2) + "\n"


def looks_like_clks_json(path: Path) -> bool:
    """Whether a file starts like JSON rather than like a pplink ``.enc`` (for a helpful refusal)."""
    try:
        with open(path, "rb") as fh:
            return fh.read(64).lstrip().startswith(b"{")
    except OSError:
        return False


def row_tokens(n: int) -> np.ndarray:
    """The tokens of a clkhash JSON file's rows: row ``i`` is ``i`` big-endian in 16 bytes.

    >>> row_tokens(2)[1].tobytes().hex()
    '00000000000000000000000000000001'
    """
    tokens = np.zeros((n, TOKEN_BYTES), dtype=np.uint8)
    tokens[:, -8:] = np.arange(n, dtype=">u8").view(np.uint8).reshape(n, 8)
    return tokens


def read_clks_json(path: Path, agreement: AgreementConfig, party: str) -> EncodingsFile:
    """Read an anonlink-client / clkhash ``{"clks": [...]}`` file as ``party``'s encodings.

    Raises:
        AgreementError: ``party`` is not an agency the agreement marks as sending clkhash JSON.
        EncodingFileError: not JSON, not the ``clks`` layout, or an encoding of the wrong length
            (naming its position, never its content).
    """
    path = Path(path)
    entry = agreement.agency(party)
    if entry.encodings != CLKHASH_JSON:
        raise AgreementError(f"{path}: the agreement does not mark {party} as sending clkhash JSON "
                             f'(its [[parties]] entry needs encodings = "{CLKHASH_JSON}")')
    try:
        raw = path.read_bytes()
        data = json.loads(raw)
    except OSError as exc:
        raise EncodingFileError(f"{path}: cannot read ({exc.strerror})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise EncodingFileError(f"{path}: not JSON ({type(exc).__name__})") from None
    if not isinstance(data, dict) or not isinstance(data.get("clks"), list):
        raise EncodingFileError(f'{path}: not the anonlink layout {{"clks": [base64, ...]}}')
    width = agreement.identifiers.filter_bits // 8
    clks = np.zeros((len(data["clks"]), width), dtype=np.uint8)
    for i, text in enumerate(data["clks"]):
        try:
            row = base64.b64decode(text, validate=True) if isinstance(text, str) else b""
        except (binascii.Error, ValueError):
            row = b""
        if len(row) != width:
            raise EncodingFileError(f"{path}: encoding {i} is not {width} base64 bytes "
                                    f"({agreement.identifiers.filter_bits} bits, as the agreement says)")
        clks[i] = np.frombuffer(row, dtype=np.uint8)
    n = len(clks)
    header = EncodingsHeader(
        agreement_id=agreement.agreement_id,
        schema_hash=agreement.identifiers.schema_hash,
        party=party,
        # The same file twice is a replay; its digest stands in for the random id a .enc carries.
        file_id=hashlib.sha256(raw).hexdigest()[:32],
        created=datetime.fromtimestamp(path.stat().st_mtime, UTC).isoformat(timespec="seconds"),
        n_records=n,
        filter_bits=agreement.identifiers.filter_bits,
        attributes=tuple(a.column for a in agreement.release.attributes),
    )
    attributes: dict[str, list[str | None]] = {a.column: [None] * n for a in agreement.release.attributes}
    return EncodingsFile(header=header, tokens=row_tokens(n), clks=clks, attributes=attributes, path=path)

"""Release receipts: what every party that receives a release keeps, so the ledger cannot quietly change.

A :class:`Receipt` is the signed ledger entry a party was shown, with the ledger it belongs to (the
SHA-256 of that ledger's genesis line) and the entry's hash. The coordinator's signature makes
it evidence: a party cannot invent one, and the coordinator cannot deny one. Given receipts from
any parties, the auditor (:func:`pplink.audit.verify.verify_ledger`) reports

* an entry that is not on the ledger at its sequence number while another one is (a **fork** or a
  **rewrite**: two signed entries with the same number),
* a ledger that ends before a receipt's entry (**truncation**),
* a receipt for another ledger of the same agreement (a second ledger, or the wrong receipts).

Receipts are kept in a JSON Lines file per party (:func:`keep_receipt`); :func:`load_receipts`
also reads the JSON a release writes with ``--out`` (it holds the receipt under ``receipt``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated

from pydantic import StringConstraints, ValidationError

from pplink.errors import LedgerError
from pplink.ledger import LedgerEntry, entry_line, line_hash
from pplink.models import PplinkModel

__all__ = ["Receipt", "keep_receipt", "load_receipts", "receipt_for"]

HexDigest = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]


class Receipt(PplinkModel):
    """One release as its recipient saw it.

    Attributes:
        ledger: the ledger id: SHA-256 of its genesis line (64 zeros for a ledger without one).
        seq: the entry's sequence number.
        entry_hash: SHA-256 of the entry's line (the next entry's ``prev_hash``).
        entry: the signed entry itself.
    """

    ledger: HexDigest
    seq: int
    entry_hash: HexDigest
    entry: LedgerEntry


def receipt_for(ledger: str, entry: LedgerEntry) -> Receipt:
    """The receipt for an entry just appended to the ledger with id ``ledger``."""
    return Receipt(ledger=ledger, seq=entry.seq, entry_hash=line_hash(entry_line(entry)), entry=entry)


def keep_receipt(path: Path, receipt: Receipt) -> None:
    """Append a receipt to a party's receipts file (JSON Lines), with one write and an fsync.

    Raises:
        LedgerError: the file cannot be written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = receipt.model_dump_json().encode("utf-8") + b"\n"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        raise LedgerError(f"{path}: cannot keep the receipt ({exc.strerror})") from None


def _receipts_in(text: str, path: Path) -> list[Receipt]:
    try:
        whole = json.loads(text)
    except json.JSONDecodeError:
        whole = None
    if isinstance(whole, dict):
        # A release's --out JSON, or one receipt on its own.
        return [Receipt.model_validate(whole["receipt"] if "receipt" in whole else whole)]
    out = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            out.append(Receipt.model_validate_json(line))
        except ValidationError:
            raise LedgerError(f"{path}: line {lineno} is not a release receipt") from None
    return out


def load_receipts(paths: Iterable[Path]) -> list[Receipt]:
    """Every receipt in the given files (receipts JSON Lines, or a release's ``--out`` JSON).

    Raises:
        LedgerError: a file cannot be read or holds something that is not a receipt.
    """
    receipts: list[Receipt] = []
    for path in paths:
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise LedgerError(f"{path}: cannot read receipts ({getattr(exc, 'strerror', None) or 'not UTF-8'})") \
                from None
        try:
            receipts.extend(_receipts_in(text, path))
        except (ValidationError, KeyError):
            raise LedgerError(f"{path}: not a release receipt or receipts file") from None
    return receipts

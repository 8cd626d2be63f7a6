"""Write an incremental round's outputs, all-or-nothing, in the layout of a full round.

``<out>/<party>.map.csv`` lists every live row of the agency (not only the rows it sent this
round: pseudonyms of older rows may change when new rows merge clusters), so ``pplink node
resolve`` works with the token file the agency's latest encode wrote. ``<out>/<party>.withdrawn.csv``
(``row_token,reason``) lists the agency's rows that left the linkage this round, including those
the coordinator expired for retention. ``coordinator/linkage.npz`` is the release engine's view,
``coordinator/match.json`` the round's counts, and ``manifest.json`` (signed) binds every file to
the agreement, the round and the inputs' digests (``pplink.round_manifest``: published last, so a
crashed round leaves no manifest and readers refuse the folder).
"""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from numba import njit

from coordinator.linkage.direct_writes import DirectFile
from coordinator.linkage.state import STATE_FILE, LinkageState, save_linkage_state
from coordinator.linkage.state_store import IncrementalState
from pplink.agreement import AgreementConfig
from pplink.atomic import atomic_write
from pplink.deltafile import WithdrawReason
from pplink.entity_files import MAP_HEADER, map_file_name
from pplink.round_manifest import new_stage, publish_round

__all__ = ["REASON_NAMES", "REPLACED", "WITHDRAWN_HEADER", "linkage_view", "map_bytes", "withdrawn_file_name",
           "write_incremental_outputs", "write_map"]

#: Reason code for the rows of an agency that starts over with a full file (nodes never send it).
REPLACED = 4
#: How each reason is written in ``<party>.withdrawn.csv`` and counted in reports.
REASON_NAMES = {int(WithdrawReason.WITHDRAWN): "withdrawn", int(WithdrawReason.CHANGED): "changed",
                int(WithdrawReason.RETENTION): "retention", REPLACED: "replaced"}

WITHDRAWN_HEADER = ("row_token", "reason")
_REPORT = "coordinator/match.json"


def withdrawn_file_name(party: str) -> str:
    """The name of a party's list of rows that left the linkage, in a round's folder and its manifest."""
    return f"{party}.withdrawn.csv"


def linkage_view(state: IncrementalState) -> LinkageState:
    """The release engine's view of the state: per party, each row's entity; the pseudonyms."""
    return LinkageState(
        agreement_id=state.agreement_id,
        parties=tuple(state.parties),
        cluster_of={name: state.entity[state.party == p] for p, name in enumerate(state.parties)},
        pseudonyms=state.pseudonyms,
        attributes={name: state.party_attributes(name) for name in state.parties},
        threshold=state.threshold,
        meta={"round": state.round, "incremental": True},
    )


#: Each byte's two lower-case hex characters, ``_HEX_PAIRS[b] == b"%02x" % b``.
_HEX_PAIRS = np.frombuffer(b"".join(b"%02x" % b for b in range(256)), dtype=np.uint8).reshape(256, 2)
#: One map line: 32 hex characters, a comma, 32 hex characters, a line feed.
_LINE = 66


@njit(nogil=True, cache=True)
def _format_lines(rows, tokens, entity, pseudonyms, pairs, out, offset):  # noqa: ANN001, ANN202
    """Write a ``row_token,entity_id`` line for each of ``rows`` into ``out`` from ``offset``, in one pass."""
    for i in range(rows.shape[0]):
        r = rows[i]
        at = offset + i * 66
        for k in range(16):
            b = tokens[r, k]
            out[at + 2 * k] = pairs[b, 0]
            out[at + 2 * k + 1] = pairs[b, 1]
        out[at + 32] = 44  # ","
        e = entity[r]
        for k in range(16):
            b = pseudonyms[e, k]
            out[at + 33 + 2 * k] = pairs[b, 0]
            out[at + 34 + 2 * k] = pairs[b, 1]
        out[at + 65] = 10  # "\n"


def map_bytes(rows: np.ndarray, tokens: np.ndarray, entity: np.ndarray, pseudonyms: np.ndarray) -> np.ndarray:
    """A pseudonym map's bytes, as ``pplink.entity_files.write_entity_map`` writes them, formatted in one pass.

    Args:
        rows: the rows to list, in order.
        tokens: ``(n, 16)`` every row's token.
        entity: ``(n,)`` every row's index into ``pseudonyms``.
        pseudonyms: ``(k, 16)`` the entity pseudonyms.

    Returns:
        The file's bytes (header, then one line per row) as a ``uint8`` array.
    """
    header = (",".join(MAP_HEADER) + "\n").encode("ascii")
    out = np.empty(len(header) + _LINE * len(rows), dtype=np.uint8)
    out[: len(header)] = np.frombuffer(header, dtype=np.uint8)
    if len(rows):
        _format_lines(np.ascontiguousarray(rows, dtype=np.int64), np.ascontiguousarray(tokens),
                      np.ascontiguousarray(entity, dtype=np.int64), np.ascontiguousarray(pseudonyms), _HEX_PAIRS,
                      out, len(header))
    return out


#: Rows formatted per write (4.3 MB of lines): one buffer, reused, instead of a whole map's worth of fresh memory.
_MAP_CHUNK_ROWS = 1 << 16


def write_map(path: Path, rows: np.ndarray, tokens: np.ndarray, entity: np.ndarray, pseudonyms: np.ndarray) -> str:
    """Write a party's pseudonym map (the bytes of :func:`map_bytes`) durably; return its SHA-256 (hex).

    The lines are formatted a chunk at a time into one reused buffer, hashed and written from it,
    so the digest is taken from the bytes written (publishing need not read the file back) and a
    map of millions of rows touches megabytes of fresh memory, not hundreds (each fresh page is
    faulted in, and large fresh allocations stalled for up to a second on a busy host); the file is
    written around the page cache where the system allows (:mod:`coordinator.linkage.direct_writes`).
    """
    header = (",".join(MAP_HEADER) + "\n").encode("ascii")
    digest = hashlib.sha256(header)
    rows = np.ascontiguousarray(rows, dtype=np.int64)
    tokens, pseudonyms = np.ascontiguousarray(tokens), np.ascontiguousarray(pseudonyms)
    entity = np.ascontiguousarray(entity, dtype=np.int64)
    buffer = np.empty(_LINE * min(len(rows), _MAP_CHUNK_ROWS), dtype=np.uint8)
    with DirectFile.create(path) as fh:  # around the page cache where allowed; fsynced when closed
        fh.write(header)
        for start in range(0, len(rows), _MAP_CHUNK_ROWS):
            part = rows[start : start + _MAP_CHUNK_ROWS]
            out = buffer[: _LINE * len(part)]
            _format_lines(part, tokens, entity, pseudonyms, _HEX_PAIRS, out, 0)
            digest.update(out)  # hashlib and the write release the GIL on large buffers
            fh.write(memoryview(out))
    return digest.hexdigest()


def write_incremental_outputs(
    agreement: AgreementConfig,
    key: Ed25519PrivateKey,
    state: IncrementalState,
    inputs: dict[str, str],
    removed: dict[str, list[tuple[bytes, int]]],
    report: dict[str, object],
    out_dir: Path,
) -> dict[str, Path]:
    """Stage every output, then publish them under a signed manifest (the manifest last); return each map's path.

    Args:
        agreement: the validated agreement.
        key: the coordinator's signing key (signs the manifest).
        state: the state after the round.
        inputs: each uploading agency's file digest.
        removed: per agency, the ``(token, reason code)`` rows that left this round.
        report: the round's counts for ``coordinator/match.json``.
        out_dir: the round's folder.
    """
    out_dir = Path(out_dir)
    stage = new_stage(out_dir)
    maps: dict[str, Path] = {}
    try:
        (stage / "coordinator").mkdir()

        def one_map(p: int) -> str:
            return write_map(stage / map_file_name(state.parties[p]), np.flatnonzero(state.party == p), state.tokens,
                             state.entity, state.pseudonyms)

        # The maps (every live row, ~66 bytes each) are most of the bytes: formatted, hashed and written on
        # two threads (the formatter, hashing and writing release the GIL) while this one writes the rest.
        with ThreadPoolExecutor(max_workers=2) as pool:
            pending = {map_file_name(party): pool.submit(one_map, p) for p, party in enumerate(state.parties)}
            for party in state.parties:
                maps[party] = out_dir / map_file_name(party)
                with open(stage / withdrawn_file_name(party), "w", newline="", encoding="ascii") as fh:
                    writer = csv.writer(fh, lineterminator="\n")
                    writer.writerow(WITHDRAWN_HEADER)
                    writer.writerows((token.hex(), REASON_NAMES[code]) for token, code in removed.get(party, []))
            save_linkage_state(stage / STATE_FILE, linkage_view(state))
            atomic_write(stage / _REPORT, json.dumps(report, indent=2))
            digests = {name: future.result() for name, future in pending.items()}
        manifest = {
            "agreement_id": agreement.agreement_id,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "incremental_round": state.round,
            "inputs": inputs,
            "missing": [],
            "maps": {party: map_file_name(party) for party in maps},
            "threshold": state.threshold,
        }
        publish_round(out_dir, stage, manifest, key, digests=digests)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return maps

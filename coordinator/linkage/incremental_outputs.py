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

import binascii
import csv
import json
import os
import shutil
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from coordinator.linkage.state import STATE_FILE, LinkageState, save_linkage_state
from coordinator.linkage.state_store import IncrementalState
from pplink.agreement import AgreementConfig
from pplink.atomic import atomic_write
from pplink.deltafile import WithdrawReason
from pplink.entity_files import MAP_HEADER, map_file_name
from pplink.round_manifest import new_stage, publish_round

__all__ = ["REASON_NAMES", "REPLACED", "WITHDRAWN_HEADER", "linkage_view", "withdrawn_file_name",
           "write_incremental_outputs"]

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


def _hex(rows: np.ndarray) -> np.ndarray:
    """``(n, 16)`` bytes as ``(n, 32)`` lower-case hex characters (uint8), in one C pass (``binascii``)."""
    return np.frombuffer(binascii.hexlify(np.ascontiguousarray(rows).tobytes()), dtype=np.uint8).reshape(len(rows), 32)


def write_map(path: Path, tokens: np.ndarray, entities: np.ndarray) -> None:
    """Write ``row_token,entity_id`` lines, as ``pplink.entity_map.write_entity_map`` does, vectorised."""
    lines = np.empty((len(tokens), 66), dtype=np.uint8)
    lines[:, :32], lines[:, 32], lines[:, 33:65], lines[:, 65] = _hex(tokens), ord(","), _hex(entities), ord("\n")
    with open(path, "wb") as fh:
        fh.write((",".join(MAP_HEADER) + "\n").encode("ascii"))
        fh.write(lines.tobytes())
        fh.flush()
        os.fsync(fh.fileno())


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
        for p, party in enumerate(state.parties):
            rows = (state.party == p).nonzero()[0]
            write_map(stage / map_file_name(party), state.tokens[rows], state.pseudonyms[state.entity[rows]])
            maps[party] = out_dir / map_file_name(party)
            with open(stage / withdrawn_file_name(party), "w", newline="", encoding="ascii") as fh:
                writer = csv.writer(fh, lineterminator="\n")
                writer.writerow(WITHDRAWN_HEADER)
                writer.writerows((token.hex(), REASON_NAMES[code]) for token, code in removed.get(party, []))
        save_linkage_state(stage / STATE_FILE, linkage_view(state))
        atomic_write(stage / _REPORT, json.dumps(report, indent=2))
        manifest = {
            "agreement_id": agreement.agreement_id,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "incremental_round": state.round,
            "inputs": inputs,
            "missing": [],
            "maps": {party: map_file_name(party) for party in maps},
            "threshold": state.threshold,
        }
        publish_round(out_dir, stage, manifest, key)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return maps

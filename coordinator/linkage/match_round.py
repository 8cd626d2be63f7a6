"""``pplink coordinator match``: verify every agency's encodings, link them, hand out pseudonyms.

The round is all-or-nothing: every input is read and verified before anything is matched, and
the outputs (one pseudonym map per agency, the coordinator's state, the match report) are written
into a fresh staging folder and published under a signed manifest, written last, that names every
file's SHA-256 (:mod:`pplink.round_manifest`).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from coordinator.linkage.auto import auto_match
from coordinator.linkage.blocking import BlockingConfig
from coordinator.linkage.blocking_budget import ALL_PAIRS_LIMIT, BlockingChoice, all_pairs_count, choose_blocking
from coordinator.linkage.match import MatchResult
from coordinator.linkage.second_pass import second_pass_budget
from coordinator.linkage.state import STATE_FILE, LinkageState, save_linkage_state
from pplink.agreement import AgreementConfig
from pplink.atomic import atomic_write
from pplink.crypto import public_key_text
from pplink.encfile import EncodingsFile, read_encodings
from pplink.entity_files import map_file_name, write_entity_map
from pplink.errors import EncodingFileError, KeyFileError, MatchError
from pplink.interop import looks_like_clks_json, read_clks_json
from pplink.ledger import line_hash
from pplink.ledger_genesis import genesis_line, new_round_id
from pplink.round_manifest import MANIFEST_FILE, new_stage, publish_round

__all__ = [
    "MANIFEST_FILE",
    "MatchRoundSummary",
    "ALL_PAIRS_LIMIT",
    "assign_pseudonyms",
    "blocking_for",
    "round_blocking",
    "check_coordinator_key",
    "check_inputs",
    "load_inputs",
    "match_files",
    "round_ledger",
    "run_match_round",
    "write_round_outputs",
]

MATCH_REPORT_FILE = "coordinator/match.json"


@dataclass(frozen=True)
class MatchRoundSummary:
    """What a match round produced, for the CLI and the demo to render."""

    out_dir: Path
    parties: tuple[str, ...]
    records: dict[str, int]
    missing: tuple[str, ...]
    entities: int
    linked_entities: int
    maps: dict[str, Path]
    seconds: float
    result: MatchResult
    #: The round's threshold method and estimated precision, recall and missed links (no truth;
    #: exact: for the coordinator's own operator only).
    calibration: dict[str, Any] | None = None
    #: What the round published about its calibration (DP, from its link-scores ledger entry; the
    #: round folder's ``calibration.json``), None when the agreement states no calibration epsilon.
    published_calibration: dict[str, Any] | None = None


def load_inputs(
    agreement: AgreementConfig, paths: Sequence[Path], clks: Mapping[str, Path] | None = None
) -> list[EncodingsFile]:
    """Read and verify every encodings file; refuse duplicates and replays.

    Args:
        agreement: the agreement.
        paths: signed ``.enc`` files.
        clks: ``{party: path}`` of anonlink-client / clkhash JSON files, for agencies the agreement
            marks ``encodings = "clkhash-json"`` (:func:`pplink.interop.read_clks_json`).

    Raises:
        EncodingFileError, SignatureError, AgreementMismatchError: a file fails verification
            (the message names it).
        MatchError: two files from one party, or the same upload twice.
    """
    for p in paths:
        if looks_like_clks_json(Path(p)):
            raise EncodingFileError(f"{p}: a JSON file, not a signed .enc; an anonlink-client or clkhash file is "
                                    "given as --clks PARTY=PATH, for a party the agreement marks "
                                    'encodings = "clkhash-json"')
    files = [read_encodings(Path(p), agreement) for p in paths]
    files += [read_clks_json(Path(path), agreement, party) for party, path in (clks or {}).items()]
    check_inputs(agreement, files)
    return files


def check_inputs(agreement: AgreementConfig, files: Sequence[EncodingsFile]) -> tuple[str, ...]:
    """Check a set of verified files can be matched together; return the agencies that are missing.

    Raises:
        MatchError: an empty file, fewer than two parties, a party twice, a replayed file, or a missing agency
            when the agreement does not allow a round without it.
    """
    seen: dict[str, str] = {}
    file_ids: dict[str, str] = {}
    for f in files:
        name = str(f.path) if f.path else f.header.party
        if f.header.file_id in file_ids:
            raise MatchError(f"{name}: the same upload as {file_ids[f.header.file_id]} (replayed file)")
        file_ids[f.header.file_id] = name
        if f.header.n_records == 0:
            raise MatchError(f"{name}: holds no records; an agency with nothing to link must not join the round "
                             "(re-encode: `pplink node encode` refuses to write an empty file)")
        if f.header.party in seen:
            raise MatchError(f"{name}: a second file from {f.header.party} (first: {seen[f.header.party]})")
        seen[f.header.party] = name
    if len(seen) < 2:
        raise MatchError("matching needs encodings from at least two agencies")
    missing = tuple(a for a in agreement.agency_ids if a not in seen)
    if missing and not agreement.linkage.allow_missing_parties:
        raise MatchError(
            f"no encodings from {', '.join(missing)}; the agreement does not allow a round without every agency"
        )
    return missing


def assign_pseudonyms(n_clusters: int) -> np.ndarray:
    """Random, distinct 128-bit entity pseudonyms, unrelated to tokens, rows or cluster order.

    >>> p = assign_pseudonyms(1000)
    >>> p.shape, len({row.tobytes() for row in p})
    ((1000, 16), 1000)
    """
    while True:
        pseudonyms = np.frombuffer(os.urandom(16 * n_clusters), dtype=np.uint8).reshape(n_clusters, 16)
        # A collision has probability ~n^2 / 2^129; checked anyway because a shared id would merge people.
        if len(np.unique(pseudonyms.view(np.dtype((np.void, 16))))) == n_clusters:
            return pseudonyms


def blocking_for(sizes: Sequence[int], encodings: Sequence[np.ndarray] | None = None) -> BlockingConfig | None:
    """The coordinator's blocking policy: exact all-pairs when affordable, else LSH blocking.

    All pairs up to :data:`ALL_PAIRS_LIMIT`; beyond it, with the encodings, the densest setting a
    comparison budget allows (:func:`coordinator.linkage.blocking_budget.choose_blocking`), and
    without them the sparsest one (96 x 21).

    >>> blocking_for([5_000, 5_000]) is None
    True
    >>> blocking_for([1_000_000, 1_000_000]).bands
    96
    """
    if all_pairs_count(sizes) <= ALL_PAIRS_LIMIT:
        return None
    return choose_blocking(encodings).config() if encodings is not None else BlockingConfig()


def round_blocking(
    encodings: Sequence[np.ndarray], blocking: BlockingConfig | None | Literal["auto"] = "auto"
) -> tuple[BlockingConfig | None, BlockingChoice]:
    """The blocking a round uses and how it was chosen (``"auto"``: the budget policy; else the setting given).

    >>> config, choice = round_blocking([np.zeros((3, 128), np.uint8)] * 2)
    >>> config is None, choice.method
    (True, 'all-pairs')
    """
    if blocking == "auto":
        choice = choose_blocking(encodings)
        return choice.config(), choice
    pairs = all_pairs_count([len(e) for e in encodings])
    if blocking is None:
        return None, BlockingChoice(method="all-pairs", all_pairs=pairs)
    return blocking, BlockingChoice(method="given", all_pairs=pairs, bits_per_band=blocking.bits_per_band,
                                    bands=blocking.bands)


def match_files(
    agreement: AgreementConfig,
    files: Sequence[EncodingsFile],
    *,
    workers: int = 2,
    blocking: BlockingConfig | None | Literal["auto"] = "auto",
    progress: Callable[[int, int], None] | None = None,
    threshold: float | None = None,
) -> tuple[LinkageState, MatchResult]:
    """Link verified files and build the coordinator's linkage state (pure: writes nothing).

    ``blocking="auto"`` applies :func:`round_blocking` to the encodings; how the blocking was chosen
    goes into ``state.meta["blocking_choice"]``. ``threshold`` overrides the
    agreement's for this round (within its bounds). Every round is calibrated (its estimated
    precision and recall go into ``state.meta["calibration"]``); with the agreement's ``"auto"`` and
    no override, the calibration also chooses the threshold.

    Raises:
        MatchError: ``threshold`` lies outside the agreement's ``threshold_bounds``.
    """
    blocking, choice = round_blocking([f.clks for f in files], blocking)
    linkage = agreement.linkage
    low, high = linkage.bounds
    if threshold is not None and not (low <= threshold <= high and 0.0 < threshold < 1.0):
        raise MatchError(f"threshold {threshold} lies outside the agreed bounds [{low}, {high}]")
    fixed = threshold if threshold is not None else (None if linkage.threshold == "auto" else linkage.threshold)
    result, calibration, per_pair = auto_match([f.clks for f in files], threshold=fixed,
                                        precision_floor=linkage.precision_floor, bounds=(low, high),
                                        blocking=blocking, workers=workers, progress=progress,
                                        second_budget=second_pass_budget(choice, fixed))
    method = "given" if threshold is not None else calibration.method
    parties = tuple(f.header.party for f in files)
    state = LinkageState(
        agreement_id=agreement.agreement_id,
        parties=parties,
        cluster_of=dict(zip(parties, result.labels, strict=True)),
        pseudonyms=assign_pseudonyms(result.n_clusters),
        attributes={f.header.party: dict(f.attributes) for f in files},
        threshold=result.stats.threshold,
        meta={
            "inputs": {f.header.party: f.header.file_id for f in files},
            "stats": result.stats.model_dump(mode="json"),
            "blocking_choice": choice.model_dump(mode="json"),
            "calibration": {"method": method, **calibration.estimate.model_dump(mode="json")},
            # Coordinator-only: the floor solve's linked-pair histogram, which only its link-scores DP
            # release (coordinator.release.calibration) may take out of the coordinator.
            "calibration_histogram": {"floor": calibration.floor, "counts": [int(c) for c in calibration.counts]},
            # Coordinator-only (match.json), never in the manifest: per agency pair, its own solve's estimate.
            "calibration_by_agency_pair": {
                f"{files[a].header.party}~{files[b].header.party}": c.estimate.model_dump(mode="json")
                for (a, b), c in per_pair.items()
            },
            # The round's privacy ledger is bound to this id (its genesis names it; see pplink.ledger_genesis).
            "round_id": new_round_id(),
        },
    )
    return state, result


def round_ledger(agreement: AgreementConfig, key: Ed25519PrivateKey, state: LinkageState) -> dict[str, object]:
    """The manifest's ``ledger``: the round id and the SHA-256 of the round's ledger genesis line."""
    round_id = str(state.meta.setdefault("round_id", new_round_id()))
    return {"round_id": round_id, "genesis": line_hash(genesis_line(agreement, key, round_id, state.parties))}


def check_coordinator_key(agreement: AgreementConfig, key: Ed25519PrivateKey) -> None:
    """Refuse a signing key that is not the agreement's coordinator key.

    Raises:
        KeyFileError: the key is another party's (or no party's).
    """
    if public_key_text(key) != agreement.coordinator.public_key:
        raise KeyFileError("the signing key given is not the coordinator's key in the agreement")


def write_round_outputs(
    agreement: AgreementConfig,
    key: Ed25519PrivateKey,
    files: Sequence[EncodingsFile],
    state: LinkageState,
    result: MatchResult,
    missing: Sequence[str],
    out_dir: Path,
) -> dict[str, Path]:
    """Write a matched round's outputs all-or-nothing; return each agency's map path.

    Writes ``<out>/<party>.map.csv`` (``row_token,entity_id``, one line per row sent),
    ``<out>/coordinator/linkage.npz`` (for releases), ``<out>/coordinator/match.json`` (stats and
    similarity histogram: coordinator-only) and ``<out>/manifest.json`` with its Ed25519
    signature ``manifest.json.sig``, which names every file's SHA-256 and binds them to the
    agreement and the inputs. Everything is written into a fresh staging folder first and
    published by :func:`pplink.round_manifest.publish_round`, the manifest last: a crash at any
    point leaves no manifest (readers refuse the folder) or the whole new round.
    """
    out_dir = Path(out_dir)
    ledger = round_ledger(agreement, key, state)  # before the state is saved: it carries the round id
    stage = new_stage(out_dir)
    try:
        (stage / "coordinator").mkdir()
        entity_hex = state.entity_hex()
        maps: dict[str, Path] = {}
        for f in files:
            party = f.header.party
            labels = state.cluster_of[party]
            write_entity_map(stage / map_file_name(party),
                             zip(f.token_hex(), (entity_hex[i] for i in labels.tolist()), strict=True))
            maps[party] = out_dir / map_file_name(party)
        save_linkage_state(stage / STATE_FILE, state)
        report = {"stats": result.stats.model_dump(mode="json"), "blocking_choice": state.meta.get("blocking_choice"),
                  "calibration": state.meta.get("calibration"),
                  "calibration_by_agency_pair": state.meta.get("calibration_by_agency_pair"),
                  "histogram": result.histogram.model_dump(mode="json") if result.histogram else None,
                  "missing": list(missing)}
        atomic_write(stage / MATCH_REPORT_FILE, json.dumps(report, indent=2))
        manifest = {
            "agreement_id": agreement.agreement_id,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "inputs": {f.header.party: f.header.file_id for f in files},
            "missing": list(missing),
            "maps": {party: map_file_name(party) for party in maps},
            "threshold": state.threshold,
            # How the threshold was set; the estimates are not here: exact ones stay on the coordinator,
            # published ones derive from the round's link-scores release (docs/privacy-accounting.md).
            "calibration": {"method": (state.meta.get("calibration") or {}).get("method", "given"),
                            "threshold": state.threshold},
            # The setting the round compared with (its estimates and budget stay in match.json).
            "blocking": {key: (state.meta.get("blocking_choice") or {}).get(key)
                         for key in ("method", "bits_per_band", "bands")},
            # The one ledger this round's releases may spend: its genesis (agreement, round, agencies).
            "ledger": ledger,
            "round_id": ledger["round_id"],
        }
        publish_round(out_dir, stage, manifest, key)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return maps


def run_match_round(
    agreement: AgreementConfig,
    key: Ed25519PrivateKey,
    paths: Sequence[Path],
    out_dir: Path,
    *,
    workers: int = 2,
    blocking: BlockingConfig | None | Literal["auto"] = "auto",
    progress: Callable[[int, int], None] | None = None,
    clks: Mapping[str, Path] | None = None,
    threshold: float | None = None,
) -> MatchRoundSummary:
    """Verify, match, and write every agency's pseudonym map plus the coordinator's state.

    Writes ``<out>/<party>.map.csv`` (``row_token,entity_id``, one line per row sent),
    ``<out>/coordinator/linkage.npz`` (for releases), ``<out>/coordinator/match.json`` (stats and
    similarity histogram: coordinator-only) and ``<out>/manifest.json`` with its Ed25519
    signature ``manifest.json.sig`` binding the maps to the agreement and the inputs. ``clks``
    names anonlink-client JSON files by party (see :func:`load_inputs`).
    """
    # Imported here: the round function builds on this module's steps (a top-level import would be a cycle).
    from coordinator.linkage.round_nodes import FileMatchNodes
    from coordinator.linkage.round_runner import run_round
    from coordinator.release.calibration import publish_calibration

    started = time.perf_counter()
    outcome = run_round(agreement, key, FileMatchNodes(agreement, paths, clks), out_dir, workers=workers,
                        blocking=blocking, progress=progress, threshold=threshold)
    # After publication: the round's ledger is the one its signed manifest names.
    published = (publish_calibration(agreement, key, Path(out_dir))
                 if agreement.linkage.calibration_epsilon is not None else None)
    return MatchRoundSummary(
        out_dir=Path(out_dir),
        parties=outcome.state.parties,
        records={f.header.party: f.header.n_records for f in outcome.files},
        missing=outcome.missing,
        entities=outcome.state.n_clusters,
        linked_entities=outcome.linked_entities,
        maps=outcome.maps,
        seconds=time.perf_counter() - started,
        result=outcome.result,
        calibration=outcome.state.meta.get("calibration"),
        published_calibration=published,
    )

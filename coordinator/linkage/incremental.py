"""``pplink coordinator match --state DIR``: link new rows into the clusters of earlier rounds.

A round reads the agencies' files (a full ``.enc`` from an agency new to the state or starting
over; otherwise a chained delta), checks each chain, then:

1. withdraws rows: those the deltas withdraw, those of an agency starting over, and those past
   ``retention.linkage_days`` (counted from the day the row arrived to the date of the agency's
   file this round, or to today for an agency that sent nothing);
2. adds the new rows, computes their blocking keys and their edges with every live row;
3. re-solves, with anonlink's greedy solver, the components that hold a new row or lost an
   edge, and carries pseudonyms over by overlap (``resolve_clusters``);
4. rotates every pseudonym when ``retention.pseudonym_days`` have passed since the last issue.

The result equals a full run over the live rows: the state keeps every edge at or above the
threshold, an edge depends only on its two rows (``edges``), and greedy solving decomposes by
component. The round's outputs are written before the state, so a failed round is simply run
again: until the state is saved, the same deltas still follow its chain heads.
"""

from __future__ import annotations

import fcntl
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from coordinator.linkage.blocking import BlockingConfig
from coordinator.linkage.edges import apply_skip, band_keys, find_edges, freeze_positions, giant_buckets, sentinel_for
from coordinator.linkage.incremental_outputs import REASON_NAMES, REPLACED, write_incremental_outputs
from coordinator.linkage.match_round import blocking_for, check_coordinator_key, check_inputs
from coordinator.linkage.resolve_clusters import ClusterChange, fresh_pseudonyms, recluster
from coordinator.linkage.state_arrays import keep_runs, replace_rows, small_pages
from coordinator.linkage.state_segments import append_delta, needs_compaction
from coordinator.linkage.state_store import (
    IncrementalState,
    RoundChange,
    derive_state_key,
    load_state,
    save_state,
    state_path,
)
from coordinator.linkage.state_tokens import lookup, lookup_all, repeats
from coordinator.linkage.uploads import Upload, check_chain, read_upload
from pplink.agreement import AgreementConfig
from pplink.deltafile import WithdrawReason, day_of
from pplink.errors import DeltaChainError, MatchError, StateError

__all__ = ["IncrementalSummary", "apply_round", "run_incremental_round"]


@dataclass(frozen=True)
class IncrementalSummary:
    """What an incremental round did (counts and timings only)."""

    round: int
    parties: tuple[str, ...]
    records: dict[str, int]
    added: int
    removed: dict[str, int]
    unknown_withdrawals: int
    entities: int
    linked_entities: int
    comparisons: int
    new_edges: int
    edges: int
    change: ClusterChange
    rotated: bool
    created: bool
    seconds: dict[str, float] = field(default_factory=dict)
    out_dir: Path | None = None
    maps: dict[str, Path] = field(default_factory=dict)
    #: How the state was saved: ``"whole"`` (a new base) or ``"delta"`` (a delta segment appended).
    saved_as: str = ""
    #: Bytes written to save the state.
    saved_bytes: int = 0


#: The threshold an incremental state keeps when the agreement says "auto".
INCREMENTAL_AUTO_THRESHOLD = 0.75


def _new_state(agreement: AgreementConfig, uploads: Sequence[Upload], blocking: BlockingConfig | None,
               today: int) -> IncrementalState:
    """An empty state; in blocked mode, with band positions chosen from the first round's rows."""
    if any(up.delta is not None for up in uploads):
        raise DeltaChainError("the first incremental round needs full encodings files, not deltas")
    order = {a: i for i, a in enumerate(agreement.agency_ids)}
    parties = sorted((up.party for up in uploads), key=order.__getitem__)
    width = agreement.identifiers.filter_bits // 8
    positions, skip = np.zeros((0, 0), dtype=np.int64), np.zeros((0, 2), dtype=np.uint64)
    if blocking is not None:
        by_party = {up.party: up.added.clks for up in uploads}
        clks = np.concatenate([by_party[p] for p in parties])
        party = np.repeat(np.arange(len(parties)), [len(by_party[p]) for p in parties])
        positions = freeze_positions(clks, party, blocking)
    # Incremental edges are kept at one threshold for the life of the state: "auto" (chosen per full
    # round from its own pairs) has no single value here, so it falls back to the template's former
    # fixed 0.75 (suits xor_folds = 1).
    threshold = agreement.linkage.fixed_threshold or INCREMENTAL_AUTO_THRESHOLD
    return IncrementalState(agreement_id=agreement.agreement_id, parties=parties, threshold=threshold,
                            mode="all-pairs" if blocking is None else "blocked", positions=positions, skip=skip,
                            width=width, epoch_day=today)


def _drop_edges(state: IncrementalState, drop: np.ndarray) -> np.ndarray:
    """Delete the edges of dropped rows and renumber the rest; return the surviving rows that lost an edge."""
    if not drop.any():  # a round that removes nothing keeps every edge and row number
        return np.zeros(0, dtype=np.int64)
    new_index = np.cumsum(~drop) - 1
    lost_a, lost_b = drop[state.edge_a], drop[state.edge_b]
    touched = np.unique(np.concatenate([state.edge_a[lost_b & ~lost_a], state.edge_b[lost_a & ~lost_b]]))
    live_edge = ~(lost_a | lost_b)
    state.edge_a = new_index[state.edge_a[live_edge]].astype(np.uint32)
    state.edge_b = new_index[state.edge_b[live_edge]].astype(np.uint32)
    state.edge_sim = state.edge_sim[live_edge]
    return new_index[touched].astype(np.int64)


def _attributes(state: IncrementalState, up: Upload, keep: np.ndarray) -> None:
    """Keep the surviving rows' attribute codes for ``up``'s party and append its new rows'."""
    enc = up.added
    if not keep.any():  # a party starting over (or new) may declare other columns
        state.attr_values[up.party], state.attr_codes[up.party] = {}, {}
    values = state.attr_values.setdefault(up.party, {})
    codes = state.attr_codes.setdefault(up.party, {})
    if values and set(values) != set(enc.attributes):
        raise MatchError(f"{up.source}: release attributes differ from those {up.party} sent before")
    for column, new in enc.attributes.items():
        seen = values.setdefault(column, [])
        index = {v: i for i, v in enumerate(seen)}
        added = np.fromiter((index.setdefault(v, len(index)) for v in new), dtype=np.int32, count=len(new))
        seen.extend(list(index)[len(seen) :])
        codes[column] = np.concatenate([codes.get(column, np.zeros(0, dtype=np.int32))[keep], added])


def _rebuild(state: IncrementalState, drop: np.ndarray, uploads: Sequence[Upload]) -> None:
    """Remove the dropped rows and append the uploads' rows, copying each big array once."""
    keep = ~drop
    for up in uploads:
        if up.party not in state.parties:
            state.parties.append(up.party)
    sent = {state.parties.index(up.party) for up in uploads}
    for p, name in enumerate(state.parties):
        kept = keep[state.party == p]
        if p not in sent:
            state.attr_codes[name] = {c: codes[kept] for c, codes in state.attr_codes.get(name, {}).items()}
    # One pass over the live tokens for every upload's new ones (not a copy of each party's tokens).
    owner = np.repeat([state.parties.index(up.party) for up in uploads], [len(up.added.tokens) for up in uploads])
    live, new = lookup_all(state.tokens, np.concatenate([up.added.tokens for up in uploads])) if uploads else ([], [])
    clash = keep[live] & (state.party[live] == owner[new]) if len(live) else np.zeros(0, dtype=bool)
    for up in uploads:
        if repeats(up.added.tokens) or (clash & (owner[new] == state.parties.index(up.party))).any():
            raise MatchError(f"{up.source}: repeats a row token (of this file or of a live row)")
    for up in uploads:
        _attributes(state, up, keep[state.party == state.parties.index(up.party)])
    n_keep = int(keep.sum())
    # The kept rows move left in place and the new ones follow (state_arrays: the buffers have spare rows).
    runs = keep_runs(keep)

    def rebuilt(old: np.ndarray, parts: list[np.ndarray], axis: int = 0) -> np.ndarray:
        shape = list(old.shape)
        shape[axis] = 0
        new = np.concatenate(parts, axis=axis) if parts else np.zeros(shape, dtype=old.dtype)
        return replace_rows(old, runs, n_keep, new.astype(old.dtype, copy=False), axis)

    state.party = rebuilt(state.party, [np.full(up.added.header.n_records, state.parties.index(up.party),
                                                dtype=np.uint16) for up in uploads])
    state.tokens = rebuilt(state.tokens, [up.added.tokens for up in uploads])
    state.clks = rebuilt(state.clks, [up.added.clks for up in uploads])
    state.added_day = rebuilt(state.added_day, [np.full(up.added.header.n_records, day_of(up.created),
                                                        dtype=np.int64) for up in uploads])
    state.entity = rebuilt(state.entity, [np.full(up.added.header.n_records, -1, dtype=np.int64) for up in uploads])
    if state.mode == "blocked":
        parts = [apply_skip(band_keys(up.added.clks, state.positions), state.skip, state.positions) for up in uploads]
        state.keys = rebuilt(state.keys, parts, axis=1)
    else:
        state.keys = np.zeros((0, state.n_rows), dtype=np.uint32)


def _withdrawals(state: IncrementalState, uploads: Sequence[Upload], agreement: AgreementConfig,
                 today: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Which rows leave this round and why: ``(mask, reason per row, unknown tokens)``."""
    n = state.n_rows
    reason = np.zeros(n, dtype=np.uint8)
    as_of = np.full(len(state.parties), today, dtype=np.int64)
    unknown = 0
    for up in uploads:
        if up.party not in state.parties:
            continue
        p = state.parties.index(up.party)
        as_of[p] = day_of(up.created)
        rows = np.flatnonzero(state.party == p)
        if up.delta is None:
            reason[rows] = REPLACED
            continue
        if not len(up.delta.withdrawn):
            continue
        found = lookup(state.tokens[rows], up.delta.withdrawn)
        # A token not found was already expired here, by the same retention rule the node applies.
        unknown += int((found < 0).sum())
        reason[rows[found[found >= 0]]] = up.delta.reasons[found >= 0]
    # Most rounds expire nothing: one pass for the oldest row's day, not a per-row comparison.
    if n and int(state.added_day.min()) + agreement.retention.linkage_days <= int(as_of.max()):
        expired = state.added_day + agreement.retention.linkage_days <= as_of[state.party]
        reason[expired & (reason == 0)] = WithdrawReason.RETENTION
    return reason > 0, reason, unknown


def apply_round(
    agreement: AgreementConfig,
    state: IncrementalState | None,
    uploads: Sequence[Upload],
    *,
    now: datetime | None = None,
    blocking: BlockingConfig | None | Literal["auto"] = "auto",
    workers: int = 2,
) -> tuple[IncrementalState, IncrementalSummary, dict[str, list[tuple[bytes, int]]]]:
    """Apply one round's uploads to the state; writes no file.

    Args:
        agreement: the validated agreement.
        state: the state from earlier rounds (edited in place), or ``None`` to start one.
        uploads: the round's verified files, at most one per agency.
        now: the round's time (default: now, UTC), for retention and rotation.
        blocking: for a new state, its blocking (``"auto"``: all-pairs when affordable); an
            existing state keeps the blocking it was created with.
        workers: threads for comparing.

    Returns:
        The state after the round, the summary, and per party the ``(token, reason)`` rows removed.

    Raises:
        DeltaChainError: a file is replayed, out of order, forked, or a delta comes first.
        MatchError: two files from one agency, a repeated token, changed attribute columns.
    """
    clock = {"start": time.perf_counter()}
    today = (now or datetime.now(UTC)).date().toordinal()
    seen = [up.party for up in uploads]
    if len(set(seen)) != len(seen):
        raise MatchError("two files from one agency in one round")
    created = state is None
    if state is None:
        # As a full round: two or more agencies, and every one unless the agreement allows otherwise.
        check_inputs(agreement, [up.added for up in uploads])
        if blocking == "auto":
            blocking = blocking_for([up.added.header.n_records for up in uploads])
        state = _new_state(agreement, uploads, blocking, today)
    for up in uploads:
        check_chain(state, up)
    drop, reason, unknown = _withdrawals(state, uploads, agreement, today)
    dropped = np.flatnonzero(drop)
    removed_rows = {name: [(state.tokens[r].tobytes(), int(reason[r]))
                           for r in dropped[state.party[dropped] == p].tolist()]
                    for p, name in enumerate(state.parties)}
    codes, counts = np.unique(reason[dropped], return_counts=True)
    removed = {REASON_NAMES[int(code)]: int(count) for code, count in zip(codes, counts, strict=True)}
    lost_edge = _drop_edges(state, drop)
    n_before, first_new = state.n_rows, int((~drop).sum())
    order = {a: i for i, a in enumerate(state.parties + [a for a in agreement.agency_ids if a not in state.parties])}
    _rebuild(state, drop, sorted(uploads, key=lambda u: order[u.party]))
    new_rows = np.arange(first_new, state.n_rows, dtype=np.int64)
    if created and state.mode == "blocked" and isinstance(blocking, BlockingConfig):
        state.skip = giant_buckets(state.keys, state.party, blocking.max_bucket_pairs)
        apply_skip(state.keys, state.skip, state.positions)
    clock["prepared"] = time.perf_counter()
    keys = state.keys if state.mode == "blocked" else None
    (a, b, sim), comparisons = find_edges(state.clks, state.party, keys, new_rows, state.threshold,
                                          sentinel=sentinel_for(state.positions) if keys is not None else 0,
                                          workers=workers)
    state.edge_a = np.concatenate([state.edge_a, a.astype(np.uint32)])
    state.edge_b = np.concatenate([state.edge_b, b.astype(np.uint32)])
    state.edge_sim = np.concatenate([state.edge_sim, sim])
    clock["compared"] = time.perf_counter()
    seeds = np.union1d(new_rows, lost_edge)
    entity_before, pseudonyms_before = state.entity, state.pseudonyms  # recluster returns new arrays
    state.entity, state.pseudonyms, change = recluster(state.party, (state.edge_a, state.edge_b, state.edge_sim), seeds,
                                                       state.entity, state.pseudonyms)
    rotated = False
    days = agreement.retention.pseudonym_days
    if days is not None and not created and today - state.epoch_day >= days:
        state.pseudonyms = fresh_pseudonyms(len(state.pseudonyms), state.pseudonyms)
        state.epoch_day, rotated = today, True
    clock["solved"] = time.perf_counter()
    for up in uploads:
        chain = state.chains.setdefault(up.party, {"head": "", "sequence": 0, "history": []})
        chain["head"] = up.digest
        chain["sequence"] = up.delta.header.sequence if up.delta is not None else 0
        chain["history"] = [*chain["history"], up.digest]  # type: ignore[misc]
    state.round += 1
    state.change = RoundChange(n_before, np.flatnonzero(drop), first_new, len(a), entity_before, pseudonyms_before)
    sizes = np.bincount(state.entity, minlength=len(state.pseudonyms))
    summary = IncrementalSummary(
        round=state.round, parties=tuple(state.parties),
        records={name: int((state.party == p).sum()) for p, name in enumerate(state.parties)},
        added=len(new_rows), removed=removed, unknown_withdrawals=unknown, entities=len(state.pseudonyms),
        linked_entities=int((sizes > 1).sum()), comparisons=comparisons, new_edges=len(a),
        edges=len(state.edge_a), change=change, rotated=rotated, created=created,
        seconds={"prepare": clock["prepared"] - clock["start"], "compare": clock["compared"] - clock["prepared"],
                 "solve": clock["solved"] - clock["compared"]},
    )
    state.log.append({"round": state.round, "day": today, "added": summary.added, "removed": removed,
                      "unknown_withdrawals": unknown, "new_edges": summary.new_edges,
                      "splits": change.splits, "merges": change.merges, "new_entities": change.new_entities,
                      "moved_rows": change.moved_rows, "rotated": rotated})
    return state, summary, removed_rows


def run_incremental_round(
    agreement: AgreementConfig,
    key: Ed25519PrivateKey,
    paths: Sequence[Path],
    out_dir: Path,
    state_dir: Path,
    *,
    workers: int = 2,
    blocking: BlockingConfig | None | Literal["auto"] = "auto",
    now: datetime | None = None,
    compact: bool = False,
) -> IncrementalSummary:
    """Verify the uploads, apply them to the encrypted state, write the round's outputs, save the state.

    Without a state in ``state_dir`` the round creates one from full encodings files. The state is
    saved as a delta segment holding what the round changed, or whole (compacted) when it is new,
    when ``compact`` is set, or when its deltas grew past the limits of
    :func:`coordinator.linkage.state_segments.needs_compaction`.

    Raises:
        KeyFileError: the key is not the agreement's coordinator key.
        StateError: the state cannot be opened with this key.
        DeltaChainError, MatchError, EncodingFileError, SignatureError, AgreementMismatchError: as
            :func:`apply_round` and :func:`read_upload`.
    """
    started = time.perf_counter()
    check_coordinator_key(agreement, key)
    secret = derive_state_key(key, agreement.agreement_id)
    path = state_path(state_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.parent / "linkage.lock", "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StateError(f"{path.parent}: another round is using this linkage state") from None
        with small_pages():
            return _locked_round(agreement, key, paths, Path(out_dir), path, secret, workers, blocking, now, started,
                                 compact)


def _locked_round(agreement: AgreementConfig, key: Ed25519PrivateKey, paths: Sequence[Path], out_dir: Path,
                  path: Path, secret: bytes, workers: int, blocking: BlockingConfig | None | Literal["auto"],
                  now: datetime | None, started: float, compact: bool) -> IncrementalSummary:
    state = load_state(path, secret, agreement.agreement_id) if path.exists() else None
    loaded = time.perf_counter()
    uploads = [read_upload(p, agreement) for p in paths]
    read = time.perf_counter()
    state, summary, removed = apply_round(agreement, state, uploads, now=now, blocking=blocking, workers=workers)
    written = time.perf_counter()
    report = {"round": summary.round, "records": summary.records, "added": summary.added, "removed": summary.removed,
              "unknown_withdrawals": summary.unknown_withdrawals, "entities": summary.entities,
              "linked_entities": summary.linked_entities, "comparisons": summary.comparisons,
              "new_edges": summary.new_edges, "edges": summary.edges, "changes": summary.change.__dict__,
              "rotated": summary.rotated}
    maps = write_incremental_outputs(agreement, key, state, {up.party: up.digest for up in uploads}, removed,
                                     report, Path(out_dir))
    outputs = time.perf_counter()
    whole = compact or needs_compaction(state)
    saved_bytes = save_state(path, state, secret) if whole else append_delta(path, state, secret)
    saved = time.perf_counter()
    seconds = {"load_state": loaded - started, "read_inputs": read - loaded, **summary.seconds,
               "write_outputs": outputs - written, "save_state": saved - outputs, "total": saved - started}
    return IncrementalSummary(**{**summary.__dict__, "seconds": seconds, "out_dir": Path(out_dir), "maps": maps,
                                 "saved_as": "whole" if whole else "delta", "saved_bytes": saved_bytes})

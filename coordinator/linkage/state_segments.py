r"""Append-only delta segments of the linkage state: a round writes what it changed, not the whole state.

The state on disk is a base file (``linkage.state``, :mod:`coordinator.linkage.state_store`)
followed by delta segments ``linkage.state.delta-000001``, ``-000002``, …, one per round since
the base was written. A delta holds the rows the round removed (their numbers), the rows it
added (token, encoding, band keys, day, party, attribute codes), the edges it added, what the
re-solve changed (the pseudonyms it retired and the fresh ones, and the rows whose entity is not
their old one renumbered: the new rows and the few it moved), and the state's small metadata.
Loading applies the deltas in order to the base; every few rounds the state is *compacted*:
written whole as a new base, and the deltas removed.

Each delta is sealed as the base is (AES-256-GCM in segments under the state key) with this
header, bound into every segment's associated data::

    b"PPLSDLT\x01" | header length | header (JSON: agreement_id, round, index, base, previous,
    nonce_prefix, segments) | per segment: length, ciphertext

``base`` is the digest of the base file's header (unique: it holds a random nonce prefix) and
``previous`` the digest of the previous delta's header (the base's for the first), so an edited,
reordered or dropped delta fails (``PPL416``); only the newest deltas can be dropped unseen, as a
whole state can be replaced by an older one, and the agencies' chains catch that at their next
delta. A delta naming another base was left by a compaction that was cut short: its rows are in
the new base, so it is skipped, and removed at the next save.

A row withdrawn by a delta is gone from the state in memory, but its encoding stays in the
(encrypted) base until the next compaction: at most :data:`COMPACT_AFTER_DELTAS` rounds later.
"""

from __future__ import annotations

import re
import struct
from pathlib import Path

import numpy as np
from cryptography.exceptions import InvalidTag
from numba import njit

from coordinator.linkage.direct_reads import DirectReader
from coordinator.linkage.state_arrays import keep_runs, open_sealed, replace_rows
from coordinator.linkage.state_store import (
    IncrementalState,
    SegmentChain,
    open_sized,
    pack,
    read_header,
    unpack,
    write_sealed,
)
from pplink.errors import StateError

__all__ = ["COMPACT_AFTER_DELTAS", "COMPACT_CHANGED_SHARE", "apply_deltas", "append_delta", "delta_paths",
           "needs_compaction", "remove_deltas"]

_MAGIC = b"PPLSDLT\x01"
#: A state with this many deltas is written whole at its next round (bounds load time and how long
#: a withdrawn row's encoding stays in the encrypted base).
COMPACT_AFTER_DELTAS = 8
#: ... as is one whose deltas added or removed this share of its base's rows.
COMPACT_CHANGED_SHARE = 0.25
_ROW_ARRAYS = ("party", "tokens", "clks", "added_day")


def delta_paths(path: Path) -> list[tuple[int, Path]]:
    """The delta segment files beside the state file ``path``, ``(index, path)`` by index."""
    pattern = re.compile(re.escape(Path(path).name) + r"\.delta-(\d{6})$")
    found = [(int(m[1]), p) for p in Path(path).parent.iterdir() if (m := pattern.match(p.name))]
    return sorted(found)


def remove_deltas(path: Path) -> None:
    """Remove every delta segment of the state file ``path`` (after a compaction wrote a new base)."""
    for _, delta in delta_paths(path):
        delta.unlink(missing_ok=True)


def needs_compaction(state: IncrementalState) -> bool:
    """Whether the round just applied should write the state whole rather than a delta.

    A round that removed rows (withdrawals, retention expiry) always does: a delta would leave the
    removed rows' encodings in the encrypted base or an earlier delta until the next compaction,
    and an opt-out or expiry promises they are gone from disk when the round ends.
    """
    stored, change = state.stored, state.change
    if stored is None or change is None or len(change.removed):
        return True
    changed = stored.changed_rows + len(change.removed) + state.n_rows - change.first_new
    return stored.deltas + 1 >= COMPACT_AFTER_DELTAS or changed > COMPACT_CHANGED_SHARE * max(stored.base_rows, 1)


def append_delta(path: Path, state: IncrementalState, key: bytes) -> int:
    """Seal what the last round changed as the next delta segment beside ``path``; return its bytes.

    Raises:
        StateError: the state was not loaded from ``path`` or no round was applied to it.
    """
    stored, change = state.stored, state.change
    if stored is None or change is None:
        raise StateError(f"{path}: no loaded state and round to write a delta of")
    path = Path(path)
    index = stored.deltas + 1
    tail = slice(change.first_new, None)
    arrays: dict[str, np.ndarray] = {"removed": change.removed.astype(np.int64)}
    arrays.update({name: getattr(state, name)[tail] for name in _ROW_ARRAYS})
    arrays["keys"] = state.keys[:, tail]
    arrays.update(_entity_change(change.entity_before, change.pseudonyms_before, state.entity, state.pseudonyms))
    for name in ("edge_a", "edge_b", "edge_sim"):
        arrays[name] = getattr(state, name)[len(getattr(state, name)) - change.new_edges :]
    new_party = state.party[tail]
    for i, party in enumerate(state.parties):
        added = int((new_party == i).sum())
        for j, column in enumerate(sorted(state.attr_values.get(party, {}))):
            codes = state.attr_codes[party][column]
            arrays[f"attr/{i}/{j}"] = codes[len(codes) - added :]
    meta = {**state.meta(), "change": {"n_before": change.n_before, "first_new": change.first_new,
                                       "n_after": state.n_rows}}
    header = {"format": "pplink-linkage-state-delta", "version": 1, "agreement_id": state.agreement_id,
              "round": state.round, "index": index, "base": stored.base_digest.hex(),
              "previous": stored.last_digest.hex()}
    target = path.with_name(f"{path.name}.delta-{index:06d}")
    digest = write_sealed(target, _MAGIC, header, pack(meta, arrays), key)
    state.stored = SegmentChain(stored.base_digest, digest, index, stored.base_rows,
                                stored.changed_rows + len(change.removed) + state.n_rows - change.first_new)
    state.change = None
    return target.stat().st_size


def apply_deltas(path: Path, state: IncrementalState, base_digest: bytes, key: bytes) -> IncrementalState:
    """Apply the delta segments beside ``path`` to its base ``state``, in order; record the chain.

    Raises:
        StateError: a delta is unreadable, tampered with, out of order or missing from the middle.
    """
    base_rows, changed, last, count = state.n_rows, 0, base_digest, 0
    for index, delta in delta_paths(path):
        fh, _ = open_sized(delta)
        with fh:
            try:
                header, digest = read_header(fh, _MAGIC)
                if header.get("base") != base_digest.hex():
                    continue  # left by a compaction cut short: already in the base
                if header.get("index") != index or index != count + 1 or header.get("previous") != last.hex():
                    raise ValueError("out of order")
                if header.get("agreement_id") != state.agreement_id:
                    raise ValueError("agreement")
                with DirectReader(fh.fileno(), delta) as reader:  # around the page cache where allowed
                    meta, arrays = unpack(open_sealed(reader, fh.tell(), header, digest, key))
                changed += _apply(state, meta, arrays)
            except (InvalidTag, ValueError, KeyError, TypeError, IndexError, struct.error):
                raise StateError(f"{delta}: the linkage state fails authentication (tampered with, reordered, "
                                 "a segment missing, or sealed under another coordinator key)") from None
        last, count = digest, index
    state.stored = SegmentChain(base_digest, last, count, base_rows, changed)
    return state


@njit(nogil=True, cache=True)
def _kept_in_order(old, new):  # noqa: ANN001, ANN202
    """Which of ``old``'s rows (``(k, 2)`` uint64) lead ``new``, in order: ``(kept mask, how many of new they are)``.

    Greedy: ``old[kept]`` equals ``new[:count]`` by construction, whatever the tables are.
    """
    kept = np.zeros(old.shape[0], dtype=np.bool_)
    j = 0
    for i in range(old.shape[0]):
        if j < new.shape[0] and old[i, 0] == new[j, 0] and old[i, 1] == new[j, 1]:
            kept[i] = True
            j += 1
    return kept, j


def _renumbering(kept: np.ndarray) -> np.ndarray:
    """Each old table entry's index in the new table (its kept entries, in order; ``-1`` if retired).

    One extra last entry maps ``-1`` (a row new this round, with no entity before) to ``-1``.
    """
    renumber = np.full(len(kept) + 1, -1, dtype=np.int64)
    renumber[:-1][kept] = np.arange(int(kept.sum()))
    return renumber


def _entity_change(entity_before: np.ndarray | None, table_before: np.ndarray | None, entity: np.ndarray,
                   table: np.ndarray) -> dict[str, np.ndarray]:
    """The arrays a delta records of the re-solve: only what moved, not every row's entity.

    The solver keeps the old pseudonyms it still uses in their order and appends fresh ones, so the
    table is written as the old entries ``retired`` and the ``fresh`` ones, and the rows as those
    whose entity is not their old one renumbered (``moved``, ``moved_entity``): the new rows and the
    few the round re-clustered. Any change (a rotation too) is recorded exactly: at worst every row
    moves. Without the state before the re-solve, every row's entity and the table go whole.
    """
    if entity_before is None or table_before is None:
        return {"entity": entity, "pseudonyms": table}
    words = np.ascontiguousarray(table_before).view(np.uint64)
    kept, count = _kept_in_order(words, np.ascontiguousarray(table).view(np.uint64))
    moved = np.flatnonzero(_renumbering(kept)[entity_before] != entity)
    return {"retired": np.flatnonzero(~kept), "fresh": np.ascontiguousarray(table[count:]), "moved": moved,
            "moved_entity": entity[moved].astype(np.int64)}


def _changed_entities(before: np.ndarray, table_before: np.ndarray,
                      arrays: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Every row's entity and the table after a delta (the inverse of :func:`_entity_change`)."""
    kept = np.ones(len(table_before), dtype=bool)
    kept[arrays["retired"]] = False
    entity = _renumbering(kept)[before]
    entity[arrays["moved"]] = arrays["moved_entity"]
    if (entity < 0).any():
        raise ValueError("inconsistent")
    return entity, np.concatenate([table_before[kept], arrays["fresh"]]).astype(np.uint8, copy=False)


def _apply(state: IncrementalState, meta: dict[str, object], arrays: dict[str, np.ndarray]) -> int:
    """Apply one delta (as :func:`coordinator.linkage.incremental.apply_round` changed the state)."""
    change = meta.pop("change")
    if not isinstance(change, dict) or change["n_before"] != state.n_rows or meta["agreement_id"] != state.agreement_id:
        raise ValueError("does not follow")
    keep = np.ones(state.n_rows, dtype=bool)
    keep[arrays["removed"]] = False
    n_keep = int(keep.sum())
    if n_keep != change["first_new"]:
        raise ValueError("inconsistent")
    runs = keep_runs(keep)

    def kept_then(old: np.ndarray, tail: np.ndarray, axis: int = 0) -> np.ndarray:
        # The kept rows move left in place (the few removed ones split long runs), then the new rows follow.
        return replace_rows(old, runs, n_keep, tail.astype(old.dtype, copy=False), axis)

    old_party = state.party
    parties: list[str] = meta["parties"]  # type: ignore[assignment]
    values: dict[str, dict[str, list[str | None]]] = meta["attr_values"]  # type: ignore[assignment]
    codes: dict[str, dict[str, np.ndarray]] = {}
    for i, party in enumerate(parties):
        kept = keep[old_party == i]
        old = state.attr_codes.get(party, {})
        codes[party] = {column: np.concatenate([old.get(column, np.zeros(len(kept), dtype=np.int32))[kept],
                                                arrays[f"attr/{i}/{j}"]])
                        for j, column in enumerate(sorted(values.get(party, {})))}
    for name in _ROW_ARRAYS:
        setattr(state, name, kept_then(getattr(state, name), arrays[name]))
    state.keys = kept_then(state.keys, arrays["keys"], axis=1)
    new_index = np.cumsum(keep) - 1
    live = keep[state.edge_a] & keep[state.edge_b]
    state.edge_a = np.concatenate([new_index[state.edge_a[live]].astype(np.uint32), arrays["edge_a"]])
    state.edge_b = np.concatenate([new_index[state.edge_b[live]].astype(np.uint32), arrays["edge_b"]])
    state.edge_sim = np.concatenate([state.edge_sim[live], arrays["edge_sim"]])
    if "entity" in arrays:  # a delta written before the entity changes were recorded alone
        state.entity, state.pseudonyms = arrays["entity"], arrays["pseudonyms"]
    else:
        before = kept_then(state.entity, np.full(len(arrays["party"]), -1, dtype=np.int64))
        state.entity, state.pseudonyms = _changed_entities(before, state.pseudonyms, arrays)
    if len(state.entity) != state.n_rows or state.n_rows != change["n_after"]:
        raise ValueError("inconsistent")
    state.attr_codes = codes
    for name in ("parties", "round", "epoch_day", "attr_values", "chains", "log"):
        setattr(state, name, meta[name])
    return len(arrays["removed"]) + len(arrays["party"])

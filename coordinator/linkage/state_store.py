r"""The coordinator's incremental linkage state, encrypted at rest under a key only it can derive.

What ``pplink coordinator match --state DIR`` keeps between rounds (``DIR/linkage.state``): every
live row's token, encoding, blocking keys, day added and release attributes; every candidate
edge at or above the threshold; each row's entity and the entity pseudonyms; each agency's chain
head (the digest of the last file accepted from it); and a log of what each round changed.
This module writes and reads the whole state (the *base* file); a round appends a delta segment
holding only what it changed (:mod:`coordinator.linkage.state_segments`), and every few rounds
the state is compacted into a new base.

File layout::

    b"PPLSTAT\x01"                        8 bytes magic and format version
    header length, header                 4 bytes, JSON: agreement id, round, nonce prefix, segments
    per segment: length, ciphertext       4 bytes, AES-256-GCM of up to 32 MiB of one plaintext piece

The plaintext is the metadata as JSON followed by each array's raw bytes (no pickles). Segment
``i`` is sealed with nonce ``prefix || i`` and associated data ``SHA-256(magic, header) || i ||
last-flag``, so a changed, reordered, dropped or appended segment, or an edited header, fails
authentication. The key is HKDF-SHA256 of the coordinator's Ed25519 private key, salted with the
agreement id: no extra key file to guard, and a state made under one agreement cannot be opened
under another.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from coordinator.linkage.direct_reads import DirectReader
from coordinator.linkage.direct_writes import direct_atomic_file
from pplink.errors import StateError

__all__ = ["STATE_NAME", "IncrementalState", "derive_state_key", "load_state", "save_state", "state_path"]

STATE_NAME = "linkage.state"
_MAGIC = b"PPLSTAT\x01"
_U32 = struct.Struct(">I")
_SEGMENT = 32 << 20
_DTYPES = {"|u1", "<u2", "<u4", "<u8", "<i4", "<i8", "<f8"}
_ARRAYS = ("party", "tokens", "clks", "keys", "added_day", "entity", "pseudonyms", "edge_a", "edge_b", "edge_sim",
           "positions", "skip")


def state_path(state_dir: Path) -> Path:
    """The state file inside a ``--state`` folder."""
    return Path(state_dir) / STATE_NAME


def derive_state_key(key: Ed25519PrivateKey, agreement_id: str) -> bytes:
    """The 256-bit state key: HKDF-SHA256 of the coordinator's private key, salted by the agreement."""
    raw = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                            serialization.NoEncryption())
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=bytes.fromhex(agreement_id),
                info=b"pplink linkage state v1").derive(raw)


@dataclass(frozen=True)
class RoundChange:
    """What one round changed in the state's rows and edges, for its delta segment (never saved itself).

    Attributes:
        n_before: rows before the round.
        removed: the row numbers (before the round) of the rows that left, ascending.
        first_new: the row number of the first row the round added (rows before it are the kept
            ones, in their order); every row from it on is new.
        new_edges: edges the round added, at the end of the edge arrays (after the kept edges).
        entity_before: every row's entity before the round re-solved (the kept rows' old
            entities, ``-1`` for new rows), against which its delta records the rows that moved.
        pseudonyms_before: the pseudonym table ``entity_before`` indexes.
    """

    n_before: int
    removed: np.ndarray
    first_new: int
    new_edges: int
    entity_before: np.ndarray | None = None
    pseudonyms_before: np.ndarray | None = None


@dataclass(frozen=True)
class SegmentChain:
    """Where the state on disk stands: its base and delta segments (set when loaded, never saved itself).

    Attributes:
        base_digest: the header digest of the base file, which every delta binds.
        last_digest: the header digest of the last delta (the base's when none).
        deltas: delta segments after the base.
        base_rows: rows in the base.
        changed_rows: rows added or removed by the deltas since the base.
    """

    base_digest: bytes
    last_digest: bytes
    deltas: int
    base_rows: int
    changed_rows: int


@dataclass
class IncrementalState:
    """The linkage state in memory (mutable: a round edits it, then saves it whole).

    Rows are numbered globally in the order they arrived; a party's rows, in that order, are
    its dataset for the solver, so the result equals a full run over the same rows.

    Attributes:
        agreement_id: the agreement the state belongs to.
        parties: agency ids, in dataset order (a new agency is appended).
        threshold: the Dice threshold every edge was kept at.
        mode: ``"all-pairs"`` (every pair compared) or ``"blocked"`` (frozen LSH bands).
        positions: ``(bands, bits)`` bit positions of each band (blocked mode).
        skip: ``(k, 2)`` ``(band, key)`` buckets too big to compare, frozen at creation.
        round: rounds applied so far.
        epoch_day: the day the current pseudonyms were issued (for rotation).
        party: ``(n,)`` each row's index into ``parties``.
        tokens: ``(n, 16)`` row tokens.
        clks: ``(n, bytes)`` packed encodings.
        keys: ``(bands, n)`` each row's key in each band (blocked mode; ``(0, n)`` otherwise).
        added_day: ``(n,)`` day number the row arrived (for retention).
        entity: ``(n,)`` index of each row's pseudonym in ``pseudonyms``.
        pseudonyms: ``(k, 16)`` entity pseudonyms.
        edge_a: lower-party row of each candidate edge at or above the threshold.
        edge_b: the other row.
        edge_sim: the edge's Dice similarity.
        attr_values: per party and release column, the distinct values seen (``None`` for missing).
        attr_codes: per party and column, each of the party's rows' index into ``attr_values``.
        chains: per party, ``{"head": digest, "sequence": n, "history": [digests]}``.
        log: what each round did (counts only).
    """

    agreement_id: str
    parties: list[str]
    threshold: float
    mode: str
    positions: np.ndarray
    skip: np.ndarray
    width: int
    round: int = 0
    epoch_day: int = 0
    party: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.uint16))
    tokens: np.ndarray = field(default_factory=lambda: np.zeros((0, 16), dtype=np.uint8))
    clks: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), dtype=np.uint8))
    keys: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), dtype=np.uint32))
    added_day: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    entity: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    pseudonyms: np.ndarray = field(default_factory=lambda: np.zeros((0, 16), dtype=np.uint8))
    edge_a: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.uint32))
    edge_b: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.uint32))
    edge_sim: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.float64))
    attr_values: dict[str, dict[str, list[str | None]]] = field(default_factory=dict)
    attr_codes: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    chains: dict[str, dict[str, object]] = field(default_factory=dict)
    log: list[dict[str, object]] = field(default_factory=list)
    #: The base and delta segments the state was loaded from (``None``: not saved yet).
    stored: SegmentChain | None = field(default=None, compare=False, repr=False)
    #: What the last round applied to the state changed (``None``: nothing since it was loaded).
    change: RoundChange | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.clks.shape[1] != self.width:
            self.clks = np.zeros((0, self.width), dtype=np.uint8)
        if self.keys.shape[0] != len(self.positions):
            self.keys = np.zeros((len(self.positions), 0), dtype=np.uint32)

    @property
    def n_rows(self) -> int:
        """Live rows."""
        return int(len(self.party))

    def rows_of(self, party: str) -> np.ndarray:
        """Global row numbers of one party's rows, in order."""
        return np.flatnonzero(self.party == self.parties.index(party))

    def party_attributes(self, party: str) -> dict[str, list[str | None]]:
        """One party's release attributes, ``{column: [value per row, in row order]}``."""
        return {column: np.array(values, dtype=object)[self.attr_codes[party][column]].tolist()
                for column, values in self.attr_values.get(party, {}).items()}

    def _arrays(self) -> dict[str, np.ndarray]:
        arrays = {name: getattr(self, name) for name in _ARRAYS}
        for i, party in enumerate(self.parties):
            for j, column in enumerate(sorted(self.attr_values.get(party, {}))):
                arrays[f"attr/{i}/{j}"] = self.attr_codes[party][column]
        return arrays

    def meta(self) -> dict[str, object]:
        """The state's fields other than arrays, JSON-ready."""
        return {"agreement_id": self.agreement_id, "parties": self.parties, "threshold": self.threshold,
                "mode": self.mode, "width": self.width, "round": self.round, "epoch_day": self.epoch_day,
                "attr_values": self.attr_values, "chains": self.chains, "log": self.log}

    def to_parts(self) -> list[memoryview]:
        """The plaintext in pieces, without copying the arrays: the metadata, then each array's bytes.

        Concatenated, the pieces are what :meth:`from_bytes` reads.
        """
        return pack(self.meta(), self._arrays())

    @classmethod
    def from_bytes(cls, data: bytearray) -> IncrementalState:
        """Rebuild the state from the joined :meth:`to_parts`; arrays are views of ``data``.

        Raises:
            ValueError: the layout is inconsistent or names a dtype a state never holds.
        """
        return cls.from_parts(*unpack(data))

    @classmethod
    def from_parts(cls, meta: dict, arrays: dict[str, np.ndarray]) -> IncrementalState:  # type: ignore[type-arg]
        """Rebuild the state from its metadata and arrays (as :func:`unpack` returns them)."""
        codes = {party: {column: arrays[f"attr/{i}/{j}"]
                         for j, column in enumerate(sorted(meta["attr_values"].get(party, {})))}
                 for i, party in enumerate(meta["parties"])}
        return cls(**meta, **{name: arrays[name] for name in _ARRAYS}, attr_codes=codes)


def pack(meta: dict[str, object], arrays: dict[str, np.ndarray]) -> list[memoryview]:
    """``meta`` as JSON (with the arrays' names, dtypes and shapes), then each array's bytes, uncopied."""
    from coordinator.linkage.state_arrays import COLUMN_ARRAYS, array_pieces

    head = json.dumps({**meta, "arrays": [[name, a.dtype.str, list(a.shape)] for name, a in arrays.items()]},
                      sort_keys=True).encode("utf-8")
    # The keys, (bands, n) views of a buffer with spare room per band, go band by band (a piece each).
    return [memoryview(_U32.pack(len(head)) + head),
            *(piece for name, a in arrays.items() for piece in array_pieces(a, by_row=name in COLUMN_ARRAYS))]


def unpack(data: bytearray) -> tuple[dict[str, object], dict[str, np.ndarray]]:
    """The inverse of :func:`pack` on the joined pieces; arrays are views of ``data``.

    Raises:
        ValueError: the layout is inconsistent or names a dtype a state never holds.
    """
    (head_len,) = _U32.unpack(data[:4])
    meta = json.loads(bytes(data[4 : 4 + head_len]))
    pos, arrays = 4 + head_len, {}
    for name, dtype, shape in meta.pop("arrays"):
        if dtype not in _DTYPES:
            raise ValueError("unexpected dtype")
        count = int(np.prod(shape, dtype=np.int64))
        arrays[name] = np.frombuffer(data, dtype=np.dtype(dtype), count=count, offset=pos).reshape(shape)
        pos += arrays[name].nbytes
    if pos != len(data):
        raise ValueError("trailing bytes")
    return meta, arrays


def _aad(header_digest: bytes, index: int, last: bool) -> bytes:
    return header_digest + _U32.pack(index) + (b"\x01" if last else b"\x00")


def write_sealed(path: Path, magic: bytes, header: dict[str, object], parts: list[memoryview], key: bytes) -> bytes:
    """Encrypt ``parts`` in segments and write them atomically, owner-only, under ``magic`` and ``header``.

    Returns:
        The header digest (SHA-256 of magic and header), which every segment's associated data binds.
    """
    # Segments never straddle two pieces, so each is sealed straight from the array's memory.
    pieces = [part[i : i + _SEGMENT] for part in parts for i in range(0, len(part), _SEGMENT)]
    segments = len(pieces)
    prefix = os.urandom(8)
    head = json.dumps({**header, "nonce_prefix": prefix.hex(), "segments": segments}, sort_keys=True).encode("utf-8")
    head_digest = hashlib.sha256(magic + head).digest()
    aead = AESGCM(key)
    # Around the page cache where allowed (coordinator.linkage.direct_writes): a whole 4 x 1M state is 2.3 GB.
    with direct_atomic_file(path, mode=0o600) as fh:
        fh.write(magic + _U32.pack(len(head)) + head)
        for i, piece in enumerate(pieces):
            sealed = aead.encrypt(prefix + _U32.pack(i), piece, _aad(head_digest, i, i == segments - 1))
            fh.write(_U32.pack(len(sealed)))
            fh.write(sealed)
    return head_digest


def open_sized(path: Path) -> tuple[BinaryIO, int]:
    """Open a state file (base or delta) for reading, with its size.

    Raises:
        StateError: it cannot be opened.
    """
    try:
        fh = open(path, "rb")  # noqa: SIM115 (the caller closes it, after every read)
        return fh, os.fstat(fh.fileno()).st_size
    except OSError as exc:
        raise StateError(f"{path}: cannot read the linkage state ({exc.strerror})") from None


def read_header(fh: BinaryIO, magic: bytes) -> tuple[dict[str, object], bytes]:
    """A sealed file's header and its digest; leaves ``fh`` at the first segment.

    Raises:
        ValueError: not a file of this kind.
    """
    if fh.read(len(magic)) != magic:
        raise ValueError("magic")
    (head_len,) = _U32.unpack(fh.read(4))
    header_bytes = fh.read(head_len)
    header = json.loads(header_bytes)
    if not isinstance(header, dict):
        raise ValueError("header")
    return header, hashlib.sha256(magic + header_bytes).digest()


def save_state(path: Path, state: IncrementalState, key: bytes) -> int:
    """Encrypt and write the whole state atomically, owner-only, and drop its delta segments; return the bytes.

    The delta segments of the state it replaces (:mod:`coordinator.linkage.state_segments`) are
    removed after the new state is in place; any a crash leaves behind name the old base and are
    ignored.
    """
    from coordinator.linkage.state_segments import remove_deltas

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    header = {"format": "pplink-linkage-state", "version": 1, "agreement_id": state.agreement_id,
              "round": state.round}
    write_sealed(path, _MAGIC, header, state.to_parts(), key)
    remove_deltas(path)
    return path.stat().st_size


def load_base(path: Path, key: bytes, agreement_id: str) -> tuple[IncrementalState, bytes]:
    """Read, authenticate and decrypt the state's base file; return it and its header digest.

    Raises:
        StateError: unreadable, truncated, tampered with, sealed under another key, or made
            under another agreement.
    """
    from coordinator.linkage.state_arrays import read_sealed_arrays

    path = Path(path)
    fh, _ = open_sized(path)
    with fh:
        try:
            header, head_digest = read_header(fh, _MAGIC)
            int(header["segments"]), bytes.fromhex(header["nonce_prefix"])  # type: ignore[call-overload]
        except (ValueError, KeyError, TypeError, struct.error):
            raise StateError(f"{path}: not a pplink linkage state") from None
        if header.get("agreement_id") != agreement_id:
            raise StateError(f"{path}: the linkage state belongs to another agreement")
        try:
            with DirectReader(fh.fileno(), path) as reader:  # around the page cache where allowed
                state = IncrementalState.from_parts(*read_sealed_arrays(reader, fh.tell(), header, head_digest,
                                                                        key, _DTYPES))
        except (InvalidTag, ValueError, KeyError, TypeError, struct.error):
            raise StateError(f"{path}: the linkage state fails authentication (tampered with, truncated, "
                             "or sealed under another coordinator key)") from None
    if state.agreement_id != agreement_id:
        raise StateError(f"{path}: the linkage state belongs to another agreement")
    return state, head_digest


def load_state(path: Path, key: bytes, agreement_id: str) -> IncrementalState:
    """Read, authenticate and decrypt the state: its base file, then its delta segments in order.

    Raises:
        StateError: unreadable, truncated, tampered with (a segment edited, dropped from the
            middle or reordered), sealed under another key, or made under another agreement.
    """
    from coordinator.linkage.state_segments import apply_deltas

    state, head_digest = load_base(path, key, agreement_id)
    return apply_deltas(Path(path), state, head_digest, key)

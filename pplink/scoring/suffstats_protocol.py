"""Messages of the noisy-sufficient-statistics scoring protocol, and the ledger chain a node follows.

One run, K agencies, the label owner first in the party order (docs/scoring.md has the table)::

    coordinator -> every node    announce(plan)                 signed X25519 key (score masks)
    coordinator -> every node    join(plan, keys, ledger lines)  the whole ledger chain so far
    coordinator -> label owner   owner_setup                     signed Enc(t x_c), Enc(t (y - 1/2)), Enc(h)
    coordinator -> each agency   forward(owner bundle)           signed Enc(t x_kc) for later agencies
    coordinator                  charges G and b on the ledger (budget check first)
    coordinator -> each agency   block(owner, forwards, new ledger lines)   noisy encrypted sums
    coordinator -> label owner   decrypt(blocks, new ledger lines)          released G and b
    coordinator -> each agency   score_share(released)           signed Enc(h (u_k + m_k))
    coordinator -> label owner   owner_scores(released, shares)  its own people's scores
    coordinator -> label owner   holdout() once, threshold(t) once   exact counts to the release engine

``t`` marks the label owner's training people, ``h`` the people it holds, ``y`` their outcomes;
``m_k`` are pairwise masks between the other agencies that cancel in the sum. Every request that
leads to noise carries the ledger lines appended since the node last saw the ledger; the node
checks they extend the chain it has seen and that they charge exactly this run's release.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from pplink.accounting import Mechanism
from pplink.agreement import AgreementConfig, canonical_json
from pplink.crypto import verify
from pplink.errors import LedgerError, ReleaseError, SignatureError, TransportError
from pplink.ledger import GENESIS_HASH, LedgerEntry, decode_signature, line_hash, parse_line, signing_payload
from pplink.ledger_genesis import check_genesis, is_genesis_object
from pplink.scoring.he import SignedBundle
from pplink.scoring.secure_sum import MaskKeyAnnouncement
from pplink.scoring.suffstats import (
    CKKS_ERROR_BOUND,
    RELEASE_GRAM,
    NoisePlan,
    SuffStatsSettings,
    person_bound,
    release_values,
)

__all__ = ["BlockRequest", "DecryptRequest", "LedgerFollower", "PresenceAsk", "Released", "ScoreRequest",
           "SuffStatsEndpoint", "SuffStatsOwnerEndpoint", "SuffStatsPlan", "presence_subject", "release_subject",
           "require_run"]


def release_subject(release: str, plan: SuffStatsPlan) -> str:
    """The ledger subject of a training release; a node accepts only exactly this (from its own plan).

    It names everything the release's sensitivity is made of (:func:`pplink.scoring.suffstats.release_sensitivity`):
    the person bound ``C`` (exactly, as Python writes the float), the fixed-point unit, the CKKS
    slack per value and how many values, so the auditor re-derives the sensitivity and refuses an
    entry that states less (:mod:`pplink.queries`).

    >>> from pplink.scoring.suffstats import noise_plan
    >>> plan = SuffStatsPlan("ab" * 16, "cd" * 32, "a", ("a", "b"), (2, 2), ("e1",), SuffStatsSettings(),
    ...                      noise_plan(SuffStatsSettings(), 2, 1e-6, 4))
    >>> release_subject("b", plan).split("; ")[1]
    'C 1.7677669529663689, unit 1/32, CKKS slack 0.015625 on 4 values'
    """
    bound = person_bound(plan.settings, len(plan.parties))
    unit = plan.noise.gram_unit if release == RELEASE_GRAM else plan.noise.b_unit
    return (f"sufficient statistics {release}: vertical run {plan.run_id}; C {bound!r}, unit 1/{unit}, "
            f"CKKS slack {CKKS_ERROR_BOUND!r} on {release_values(release, plan.dimension)} values")


@dataclass(frozen=True)
class SuffStatsPlan:
    """What every party knows about a run before it starts.

    Attributes:
        run_id: 32 random hex characters.
        agreement_id: the agreement.
        label_owner: the agency with the outcome (first in ``parties``).
        parties: block order: the label owner, then the other agencies sorted.
        widths: columns per agency block (features plus the indicator), from the agreement.
        entity_ids: every entity pseudonym of the linkage plus dummies, sorted.
        settings: the run settings.
        noise: sensitivities and scales of the two training releases.
    """

    run_id: str
    agreement_id: str
    label_owner: str
    parties: tuple[str, ...]
    widths: tuple[int, ...]
    entity_ids: tuple[str, ...]
    settings: SuffStatsSettings
    noise: NoisePlan

    @property
    def n_entities(self) -> int:
        """Length of every entity vector."""
        return len(self.entity_ids)

    @property
    def dimension(self) -> int:
        """Weights in the model."""
        return sum(self.widths)

    def offset(self, agency: str) -> int:
        """Where an agency's block starts in the weight vector."""
        i = self.parties.index(agency)
        return sum(self.widths[:i])

    def width(self, agency: str) -> int:
        """An agency's block width."""
        return self.widths[self.parties.index(agency)]


@dataclass(frozen=True)
class BlockRequest:
    """Coordinator -> agency: compute your noisy encrypted sums (after the two charges)."""

    run_id: str
    owner: SignedBundle = field(repr=False)
    forwards: tuple[SignedBundle, ...] = field(repr=False)
    ledger_lines: tuple[bytes, ...] = field(repr=False)


@dataclass(frozen=True)
class DecryptRequest:
    """Coordinator -> label owner: every agency's block bundle, to decrypt the sums."""

    run_id: str
    blocks: tuple[SignedBundle, ...] = field(repr=False)
    ledger_lines: tuple[bytes, ...] = field(repr=False)


@dataclass(frozen=True)
class Released:
    """The released training statistics (a DP release, public): ``G`` (symmetric) and ``b``, integer units.

    Signed by the label owner, which decrypted them, so the coordinator cannot hand the agencies
    other weights (chosen ones would make the label owner's score totals read out a feature).
    """

    run_id: str
    gram: np.ndarray = field(repr=False)
    b: np.ndarray = field(repr=False)
    signature: bytes = field(repr=False, default=b"")

    def payload(self, agreement_id: str) -> bytes:
        """The signed bytes: run, agreement and the two integer vectors."""
        return canonical_json({
            "purpose": "pplink scoring release: G and b", "agreement_id": agreement_id, "run_id": self.run_id,
            "gram": [int(v) for v in np.asarray(self.gram, dtype=np.int64).ravel()],
            "shape": list(np.asarray(self.gram).shape), "b": [int(v) for v in np.asarray(self.b, dtype=np.int64)],
        })

    def verify(self, agreement: AgreementConfig, label_owner: str) -> None:
        """Check the label owner's signature.

        Raises:
            SignatureError: not signed by the label owner for this agreement and run.
        """
        verify(agreement.agency(label_owner).public_key, self.payload(agreement.agreement_id), self.signature,
               what="the released statistics")


@dataclass(frozen=True)
class PresenceAsk:
    """Coordinator -> agency: noisy encrypted counts of the held-out outcomes among the people you hold."""

    run_id: str
    outcomes: SignedBundle = field(repr=False)
    ledger_lines: tuple[bytes, ...] = field(repr=False)


def presence_subject(run_id: str) -> str:
    """The ledger subject of the errors-by-agency-presence release.

    >>> presence_subject("ab" * 16)[:38]
    'errors by agency presence: vertical ru'
    """
    return f"errors by agency presence: vertical run {run_id}"


@dataclass(frozen=True)
class ScoreRequest:
    """Coordinator -> agency: your masked, encrypted partial scores for the label owner's people."""

    run_id: str
    released: Released = field(repr=False)
    owner: SignedBundle = field(repr=False)


class LedgerFollower:
    """The ledger chain as one node has seen it, and the charges it has consumed.

    A node starts from the whole chain at join and afterwards accepts only lines that extend it:
    the next sequence number, the previous line's hash, this agreement, the coordinator's
    signature. A charge is consumed at most once.
    """

    def __init__(self, agreement: AgreementConfig) -> None:
        self._agreement = agreement
        self._head = GENESIS_HASH
        self._seq = 0
        self._entries: list[LedgerEntry] = []
        self._lines: list[bytes] = []
        self._used: set[int] = set()

    @property
    def seq(self) -> int:
        """The last sequence number seen."""
        return self._seq

    def extend(self, lines: Sequence[bytes]) -> None:
        """Append lines after the head seen so far.

        Raises:
            LedgerError: a line that does not extend the chain (forged, reordered, from a fork) or
                does not verify.
        """
        for line in lines:
            if self._seq == 0 and self._head == GENESIS_HASH and _is_genesis(bytes(line)):
                # The ledger's first line: its signed genesis; the first entry chains to its hash.
                check_genesis(self._agreement, bytes(line), "ledger genesis offered")
                self._head = line_hash(bytes(line))
                self._lines.append(bytes(line))  # kept with the entries, so a restored follower re-checks it
                continue
            where = f"ledger line offered as entry {self._seq + 1}"
            obj, entry = parse_line(bytes(line), where, self._seq + 1)  # type: ignore[arg-type]
            if entry.seq != self._seq + 1 or entry.prev_hash != self._head:
                raise LedgerError(f"{where} does not extend the ledger chain this node has seen")
            if entry.agreement_id != self._agreement.agreement_id:
                raise LedgerError(f"{where} was made under another agreement")
            try:
                verify(self._agreement.coordinator.public_key, signing_payload(obj), decode_signature(entry.signature),
                       what=where)
            except SignatureError as exc:
                raise LedgerError(str(exc)) from None
            self._entries.append(entry)
            self._lines.append(bytes(line))
            self._head = line_hash(bytes(line))
            self._seq = entry.seq

    def saved(self) -> tuple[tuple[bytes, ...], tuple[int, ...]]:
        """The lines seen and the charges consumed (a node's saved run state; see :meth:`restored`)."""
        return tuple(self._lines), tuple(sorted(self._used))

    @classmethod
    def restored(cls, agreement: AgreementConfig, lines: Sequence[bytes], used: Sequence[int]) -> LedgerFollower:
        """A follower rebuilt from :meth:`saved` (every line is checked again).

        Raises:
            LedgerError: the saved lines no longer verify.
        """
        follower = cls(agreement)
        follower.extend(lines)
        follower._used = set(used)
        return follower

    def consume(self, subject: str, *, sensitivity: int, scale: float) -> LedgerEntry:
        """The one unconsumed entry charging ``subject`` at this sensitivity and scale; marks it used.

        Raises:
            ReleaseError: no such charge on the chain seen, or it was already used (a replay).
        """
        for entry in self._entries:
            if entry.query.subject != subject:
                continue
            if entry.seq in self._used:
                raise ReleaseError(f"the charge for '{subject[:40]}' was already answered once")
            if (entry.mechanism is not Mechanism.GAUSSIAN or entry.sensitivity != sensitivity
                    or abs(entry.scale - scale) > 1e-9 * scale):
                raise ReleaseError("the ledger charge does not record the run plan's sensitivity and scale")
            self._used.add(entry.seq)
            return entry
        raise ReleaseError(f"no ledger charge for '{subject[:40]}' on the chain this node has seen")


def _is_genesis(line: bytes) -> bool:
    try:
        return is_genesis_object(json.loads(line))
    except (ValueError, UnicodeDecodeError):
        return False


def require_run(plan: SuffStatsPlan | None, run_id: str, who: str) -> SuffStatsPlan:
    """The joined plan, if the message is for it.

    Raises:
        TransportError: nothing joined, or a message for another run.
    """
    if plan is None:
        raise TransportError(f"{who}: no run joined")
    if run_id != plan.run_id:
        raise TransportError(f"{who}: message for another run")
    return plan


class SuffStatsEndpoint(Protocol):
    """What the coordinator can ask of every agency (one method per message)."""

    @property
    def agency_id(self) -> str:
        """The agency."""
        ...

    def announce(self, plan: SuffStatsPlan) -> MaskKeyAnnouncement:
        """Check the plan; a signed X25519 key for the score masks."""
        ...

    def join(self, plan: SuffStatsPlan, announcements: Sequence[MaskKeyAnnouncement],
             ledger_lines: Sequence[bytes]) -> None:
        """Verify keys and the ledger chain; lay out the block."""
        ...

    def forward(self, run_id: str, owner: SignedBundle) -> SignedBundle:
        """Encrypted ``t * x_c`` for the agencies after this one."""
        ...

    def block(self, request: BlockRequest) -> SignedBundle:
        """Noisy encrypted sums of this agency's part of ``G`` and ``b``."""
        ...

    def score_share(self, request: ScoreRequest) -> SignedBundle:
        """Masked encrypted partial scores for the label owner's people."""
        ...

    def presence(self, request: PresenceAsk) -> SignedBundle:
        """Noisy encrypted counts of the held-out outcomes among the people this agency holds."""
        ...


class SuffStatsOwnerEndpoint(SuffStatsEndpoint, Protocol):
    """The label owner answers five more messages."""

    def owner_setup(self, run_id: str) -> SignedBundle:
        """Public context and encrypted training vectors."""
        ...

    def decrypt(self, request: DecryptRequest) -> Released:
        """Decrypt the noisy sums, add its own noisy block: the released statistics."""
        ...

    def owner_scores(self, run_id: str, shares: tuple[SignedBundle, ...]) -> None:
        """Decrypt its own people's total scores; fit the own-feature model."""
        ...

    def holdout(self, run_id: str) -> dict[str, tuple[tuple[int, ...], tuple[int, ...]]]:
        """Exact holdout counts per (score bin, outcome), federated and own-feature model."""
        ...

    def threshold(self, run_id: str, threshold: float) -> dict[str, dict[str, int]]:
        """Exact error counts by subgroup at a public threshold."""
        ...

    def presence_setup(self, run_id: str) -> SignedBundle:
        """Encrypted one-hot outcomes of the held-out people at the threshold."""
        ...

    def presence_counts(self, run_id: str, sums: tuple[SignedBundle, ...],
                        ledger_lines: Sequence[bytes]) -> dict[tuple[str, str, str], int]:
        """Decrypt the agencies' noisy counts, add noisy totals: the released errors by agency presence."""
        ...

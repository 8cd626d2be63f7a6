"""The agency side of noisy-sufficient-statistics scoring: encrypted sums, DP noise, and the rules a node keeps.

Each agency runs a :class:`SuffStatsNode`; the label owner a :class:`nodes.scoring.suffstats_owner.SuffStatsOwner`.
One method per message of :mod:`pplink.scoring.suffstats_protocol`.

A node enforces the protocol itself, whatever the coordinator does:

* it joins a run once (a repeated announce or join is refused) and checks the plan: its own
  agreement, the label owner, block widths from the agreement, and **the noise plan recomputed
  from the settings** (a coordinator cannot pick smaller noise);
* it follows the ledger chain (:class:`~pplink.scoring.suffstats_protocol.LedgerFollower`): lines
  must extend what it has seen, signed by the agreement's coordinator key; it draws noise only for a
  charge on that chain with the plan's sensitivity and scale, and answers each charge once;
* it answers every message kind once per run (forward, block, scores), and uses only ciphertexts
  signed by their maker for that run and purpose (the coordinator relays, never substitutes).
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from nodes.scoring.data import AgencyScoringData
from pplink.accounting import Mechanism, count_measurement
from pplink.agreement import AgreementConfig
from pplink.crypto import public_key_text
from pplink.errors import ConfigError, SignatureError, TransportError
from pplink.scoring import he
from pplink.scoring.protocol import OUTCOME_KEYS
from pplink.scoring.secure_sum import (
    MaskKeyAnnouncement,
    announce_mask_key,
    mask_stream,
    new_mask_key,
    pair_seed,
    verify_mask_key,
)
from pplink.scoring.suffstats import (
    RELEASE_B,
    RELEASE_GRAM,
    block_columns,
    encode_block,
    noise_plan,
    presence_noise,
    solve_model,
    split_weights,
)
from pplink.scoring.suffstats_protocol import (
    BlockRequest,
    LedgerFollower,
    PresenceAsk,
    ScoreRequest,
    SuffStatsPlan,
    presence_subject,
    release_subject,
    require_run,
)

__all__ = ["SCORE_MASK_RANGE", "SuffStatsNode", "draw_noise", "plan_widths", "training_item"]

#: Pairwise score masks are uniform in +-this (statistically hiding a partial score of size ~1
#: from the label owner, well inside CKKS's exact range).
SCORE_MASK_RANGE = 2.0**16
_MASK_PURPOSE = "suffstats-score-mask"
#: Each agency adds uniform noise in +-this to every entity's encrypted partial score (about 2**20
#: times the CKKS error it hides; a negligible change to a score).
SCORE_FLOOD = 2.0**-8


def plan_widths(agreement: AgreementConfig, parties: Sequence[str]) -> tuple[int, ...]:
    """Block widths (features plus the indicator) for the run's party order, from the agreement."""
    assert agreement.scoring is not None
    return tuple(len(agreement.scoring.features.get(a, ())) + 1 for a in parties)


def training_item(plan: SuffStatsPlan) -> str:
    """The owner bundle's item that encrypts ``t`` itself: its intercept column (1 for everyone) times ``t``."""
    return f"x:{plan.width(plan.label_owner) - 1}"


def draw_noise(scale: float, length: int) -> np.ndarray:
    """OpenDP's discrete Gaussian noise at ``scale`` for ``length`` integer values."""
    measurement = count_measurement(Mechanism.GAUSSIAN, scale)
    return np.asarray(measurement([0] * length), dtype=np.int64)


def _float_mask(seed: bytes, length: int) -> np.ndarray:
    words = mask_stream(seed, step=0, purpose=_MASK_PURPOSE, length=length)
    return ((words >> np.uint64(11)).astype(np.float64) * 2.0**-53 - 0.5) * 2.0 * SCORE_MASK_RANGE


class SuffStatsNode:
    """One agency (not the label owner) in a run.

    Args:
        agreement: the agreement (keys, scoring section, budget delta).
        data: the agency's scoring inputs (:func:`nodes.scoring.data.load_agency_data`).
        signing_key: the agency's Ed25519 key named in the agreement.

    Raises:
        ConfigError: the agreement has no scoring section.
        SignatureError: the key is not this agency's key in the agreement.
    """

    def __init__(self, agreement: AgreementConfig, data: AgencyScoringData, signing_key: Ed25519PrivateKey) -> None:
        if agreement.scoring is None:
            raise ConfigError("the agreement has no [scoring] section")
        if public_key_text(signing_key) != agreement.agency(data.agency_id).public_key:
            raise SignatureError(f"the signing key is not agency {data.agency_id}'s key in the agreement")
        self._agreement = agreement
        self._data = data
        self._key = signing_key
        self._plan: SuffStatsPlan | None = None
        self._announced: dict[str, tuple[SuffStatsPlan, object]] = {}
        self._joined: set[str] = set()
        self._answered: set[tuple[str, str]] = set()
        self._ledger = LedgerFollower(agreement)
        self._seeds: dict[str, bytes] = {}

    @property
    def agency_id(self) -> str:
        """The agency."""
        return self._data.agency_id

    @property
    def ledger_seq(self) -> int:
        """The last ledger sequence number this node has seen."""
        return self._ledger.seq

    # --- setup ------------------------------------------------------------------------------

    def _check_plan(self, plan: SuffStatsPlan) -> None:
        agreement = self._agreement
        assert agreement.scoring is not None
        who = self.agency_id
        if plan.agreement_id != agreement.agreement_id:
            raise TransportError(f"{who}: the run plan is for another agreement")
        if who not in plan.parties or plan.label_owner != agreement.scoring.label_owner:
            raise TransportError(f"{who}: not a party to this run, or the plan names another label owner")
        if plan.parties[0] != plan.label_owner or len(set(plan.parties)) != len(plan.parties):
            raise TransportError(f"{who}: the plan's party order is not the protocol's")
        if plan.widths != plan_widths(agreement, plan.parties):
            raise TransportError(f"{who}: the plan's block widths differ from the agreement's features")
        if plan.noise != noise_plan(plan.settings, len(plan.parties), agreement.budget.delta, plan.dimension):
            raise TransportError(f"{who}: the plan's noise is not what its settings give (refused)")
        ids = plan.entity_ids
        if list(ids) != sorted(set(ids)):
            raise TransportError(f"{who}: the entity list is not sorted and distinct")

    def announce(self, plan: SuffStatsPlan) -> MaskKeyAnnouncement:
        """Check the plan and return this run's signed X25519 key (for the pairwise score masks).

        Raises:
            TransportError: a plan this node refuses, or a run it already announced for (re-join).
        """
        self._check_plan(plan)
        if plan.run_id in self._announced:
            raise TransportError(f"{self.agency_id}: run already announced; a repeated join is refused")
        mask_key = new_mask_key()
        self._announced[plan.run_id] = (plan, mask_key)
        return announce_mask_key(self._key, mask_key, agreement_id=plan.agreement_id, run_id=plan.run_id,
                                 agency_id=self.agency_id)

    def join(self, plan: SuffStatsPlan, announcements: Sequence[MaskKeyAnnouncement],
             ledger_lines: Sequence[bytes]) -> None:
        """Verify the keys and the whole ledger chain, lay out the block.

        Raises:
            TransportError: not announced for this plan, already joined, or keys missing/repeated.
            LedgerError: the ledger chain does not verify.
            SignatureError, AgreementMismatchError: a key does not verify.
        """
        if plan.run_id not in self._announced or plan.run_id in self._joined:
            raise TransportError(f"{self.agency_id}: join refused (not announced for this run, or already joined)")
        announced, mask_key = self._announced[plan.run_id]
        if plan != announced:
            raise TransportError(f"{self.agency_id}: join refused: the plan differs from the one announced for")
        self._check_plan(plan)
        self._joined.add(plan.run_id)
        by_agency = {a.agency_id: a for a in announcements}
        if len(by_agency) != len(announcements) or set(by_agency) != set(plan.parties):
            raise TransportError(f"{self.agency_id}: mask keys must come from exactly the run's parties, once each")
        own = announce_mask_key(self._key, mask_key, agreement_id=plan.agreement_id,  # type: ignore[arg-type]
                                run_id=plan.run_id, agency_id=self.agency_id)
        if by_agency[self.agency_id].public_key != own.public_key:
            raise SignatureError(f"{self.agency_id}: the coordinator relayed a different key for this node")
        self._seeds = {}
        for peer, ann in by_agency.items():
            if peer in (self.agency_id, plan.label_owner):
                continue
            peer_key = verify_mask_key(self._agreement, ann, run_id=plan.run_id)
            self._seeds[peer] = pair_seed(mask_key, peer_key, agreement_id=plan.agreement_id,  # type: ignore[arg-type]
                                          run_id=plan.run_id, own_id=self.agency_id, peer_id=peer)
        self._ledger = LedgerFollower(self._agreement)
        self._ledger.extend(ledger_lines)
        self._plan = plan
        self._layout(plan)

    def _layout(self, plan: SuffStatsPlan) -> None:
        index = {e: i for i, e in enumerate(plan.entity_ids)}
        rows = np.fromiter((index.get(e, -1) for e in self._data.entity_ids), dtype=np.int64,
                           count=len(self._data.entity_ids))
        if (rows < 0).any():
            raise TransportError(f"{self.agency_id}: {int((rows < 0).sum())} of its entities are not on the run's list")
        columns = self._data.feature_columns
        block = encode_block(self.agency_id, columns, self._data.features, plan.settings)
        x = np.zeros((plan.n_entities, block.shape[1]), dtype=np.int64)
        x[rows] = block
        self._rows = rows
        self._x = x
        self._held = np.zeros(plan.n_entities, dtype=bool)
        self._held[rows] = True

    @property
    def columns(self) -> tuple[str, ...]:
        """This agency's block columns."""
        assert self._plan is not None
        return block_columns(self.agency_id, self._data.feature_columns,
                             label_owner=self.agency_id == self._plan.label_owner)

    def _once(self, run_id: str, what: str) -> SuffStatsPlan:
        plan = require_run(self._plan, run_id, self.agency_id)
        if (run_id, what) in self._answered:
            raise TransportError(f"{self.agency_id}: {what} was already answered for this run; refused")
        self._answered.add((run_id, what))
        return plan

    def _owner_context(self, plan: SuffStatsPlan, owner: he.SignedBundle):  # noqa: ANN202 - tenseal Context
        he.verify_bundle(self._agreement, owner, run_id=plan.run_id, maker=plan.label_owner, purpose="owner-setup")
        self._context_bytes = owner.item("context")[0]
        return he.public_context(self._context_bytes)

    # --- training -----------------------------------------------------------------------------

    def forward(self, run_id: str, owner: he.SignedBundle) -> he.SignedBundle:
        """``Enc(t * x_c)`` for each of this agency's columns, for the agencies after it (signed)."""
        plan = self._once(run_id, "forward")
        ctx = self._owner_context(plan, owner)
        train = he.load(ctx, owner.item(training_item(plan)), plan.n_entities)
        grid = plan.settings.grid
        items = {f"x:{j}": tuple(ct.serialize() for ct in he.mul_plain(train, self._x[:, j] / grid))
                 for j in range(self._x.shape[1])}
        return he.sign_bundle(self._key, plan.agreement_id, he.SignedBundle(plan.run_id, self.agency_id, "forward",
                                                                              items))

    def _charges(self, plan: SuffStatsPlan, lines: Sequence[bytes]) -> None:
        self._ledger.extend(lines)
        noise = plan.noise
        self._ledger.consume(release_subject(RELEASE_GRAM, plan), sensitivity=noise.gram_sensitivity,
                             scale=noise.gram_scale)
        self._ledger.consume(release_subject(RELEASE_B, plan), sensitivity=noise.b_sensitivity,
                             scale=noise.b_scale)

    def block(self, request: BlockRequest) -> he.SignedBundle:
        """Noisy encrypted sums of this agency's part of ``G`` and ``b``, once, after both charges.

        Entries: ``g:i:j`` (global indices, ``i <= j``) for this block's upper triangle, the label
        owner's columns against this block's, and each earlier agency's columns against this
        block's; ``b:i`` for this block. Each gets discrete Gaussian noise at the charged scale.

        Raises:
            LedgerError, ReleaseError: no valid charge on the chain (noise is never drawn then).
            SignatureError: a ciphertext not signed by its maker for this run and purpose.
            TransportError: asked twice, or another run.
        """
        plan = self._once(request.run_id, "block")
        self._charges(plan, request.ledger_lines)
        ctx = self._owner_context(plan, request.owner)
        n, grid, me = plan.n_entities, plan.settings.grid, self.agency_id
        mine = plan.parties.index(me)
        x = self._x / grid
        base = plan.offset(me)
        train = he.load(ctx, request.owner.item(training_item(plan)), n)
        sums: list[tuple[str, list, np.ndarray, int]] = []  # (name, ciphertext, plaintext, unit)
        for i in range(x.shape[1]):
            for j in range(i, x.shape[1]):
                sums.append((f"g:{base + i}:{base + j}", train, x[:, i] * x[:, j], 0))
        sources = {plan.label_owner: request.owner}
        forwards = {b.maker: b for b in request.forwards}
        for earlier in plan.parties[1:mine]:
            bundle = forwards.get(earlier)
            if bundle is None:
                raise TransportError(f"{me}: no forwarded ciphertexts from {earlier}")
            he.verify_bundle(self._agreement, bundle, run_id=plan.run_id, maker=earlier, purpose="forward")
            sources[earlier] = bundle
        for agency, bundle in sources.items():
            if sum(k.startswith("x:") for k in bundle.items) != plan.width(agency):
                raise TransportError(f"{me}: {agency}'s ciphertexts do not match its block width")
            for a in range(plan.width(agency)):
                enc = he.load(ctx, bundle.item(f"x:{a}"), n)
                for j in range(x.shape[1]):
                    sums.append((f"g:{plan.offset(agency) + a}:{base + j}", enc, x[:, j], 0))
        label = he.load(ctx, request.owner.item("label"), n)
        for j in range(x.shape[1]):
            sums.append((f"b:{base + j}", label, x[:, j], 1))
        gram_noise = draw_noise(plan.noise.gram_scale, len(sums))
        b_noise = draw_noise(plan.noise.b_scale, len(sums))
        items: dict[str, tuple[bytes, ...]] = {}
        for k, (name, enc, plain, is_b) in enumerate(sums):
            added = b_noise[k] / plan.noise.b_unit if is_b else gram_noise[k] / plan.noise.gram_unit
            items[name] = (he.dot(enc, plain, add=float(added)),)
        return he.sign_bundle(self._key, plan.agreement_id, he.SignedBundle(plan.run_id, me, "block", items))

    def presence(self, request: PresenceAsk) -> he.SignedBundle:
        """Noisy encrypted counts, per outcome, of the label owner's held-out people this agency holds (once).

        Drawn only after the charge is on the chain this node has seen; the label owner decrypts
        four noisy counts, never who is held.
        """
        plan = self._once(request.run_id, "presence")
        sensitivity, scale = presence_noise(plan.settings, len(plan.parties), self._agreement.budget.delta)
        self._ledger.extend(request.ledger_lines)
        self._ledger.consume(presence_subject(plan.run_id), sensitivity=sensitivity, scale=scale)
        he.verify_bundle(self._agreement, request.outcomes, run_id=plan.run_id, maker=plan.label_owner,
                         purpose="presence-setup")
        context = getattr(self, "_context_bytes", None)
        if context is None:
            raise TransportError(f"{self.agency_id}: presence asked before the training round")
        ctx = he.public_context(context)
        noise = draw_noise(scale, len(OUTCOME_KEYS))
        held = self._held.astype(np.float64)
        items = {f"o:{k}": (he.dot(he.load(ctx, request.outcomes.item(f"o:{k}"), plan.n_entities), held,
                                   add=float(noise[i])),) for i, k in enumerate(OUTCOME_KEYS)}
        return he.sign_bundle(self._key, plan.agreement_id,
                              he.SignedBundle(plan.run_id, self.agency_id, "presence-sums", items))

    # --- scores -------------------------------------------------------------------------------

    def weights(self, plan: SuffStatsPlan, gram: np.ndarray, b: np.ndarray) -> np.ndarray:
        """This agency's block of the model solved from the released statistics."""
        w = solve_model(gram, b, plan.noise, plan.settings)
        return split_weights(w, dict(zip(plan.parties, plan.widths, strict=True)), plan.parties)[self.agency_id]

    def score_share(self, request: ScoreRequest) -> he.SignedBundle:
        """``Enc(h * (x_k . w_k + m_k))``: partial scores for the label owner's people, masked pairwise.

        The masks cancel in the sum over agencies, so the label owner can decrypt the total score
        of each of its people but no single agency's part of it.
        """
        plan = self._once(request.run_id, "scores")
        ctx = self._owner_context(plan, request.owner)
        if request.released.run_id != plan.run_id:
            raise TransportError(f"{self.agency_id}: released statistics of another run")
        request.released.verify(self._agreement, plan.label_owner)
        w = self.weights(plan, request.released.gram, request.released.b)
        partial = (self._x / plan.settings.grid) @ w
        others = list(plan.parties[1:])
        for peer, seed in self._seeds.items():
            sign = 1.0 if others.index(peer) > others.index(self.agency_id) else -1.0
            partial = partial + sign * _float_mask(seed, plan.n_entities)
        held = he.load(ctx, request.owner.item("held"), plan.n_entities)
        # Flood the CKKS error: without it the label owner, who knows its encryption noise, could
        # read a trace of the partial scores in the (near-zero) totals of people it does not hold.
        rng = np.random.default_rng(secrets.randbits(128))
        flood = rng.uniform(-SCORE_FLOOD, SCORE_FLOOD, size=plan.n_entities)
        masked = he.mul_plain(held, partial)
        items = {"scores": tuple((ct + part.tolist()).serialize() for ct, part in zip(masked, he.chunked(flood),
                                                                                        strict=True))}
        return he.sign_bundle(self._key, plan.agreement_id, he.SignedBundle(plan.run_id, self.agency_id, "scores",
                                                                              items))

"""The agency side of vertical scoring: local features, masked partial logits, local weight updates.

Each agency runs a :class:`ScoringNode` behind its firewall; the label owner runs a
:class:`LabelOwnerNode`. Their methods answer the messages of :mod:`pplink.scoring.protocol`, one
method per message, so the same objects serve the in-process run and a Flower ``ClientApp``.

What stays at the agency: its records, its features and their standardisation, its weights (one
per feature, one for "known to this agency", and the intercept at the label owner), its X25519
private key and pair seeds, and at the label owner the labels, the holdout split, the exact scores
and the exact residuals.

What leaves it: a masked share per step (uniform to the coordinator), and from the label owner
the residuals with the DP noise the ledger was charged for (every entity gets a value, so nobody
learns who is in the training set), the holdout's exact score histogram and error counts (to the
release engine only, which noises them before anyone sees them) and per-entity outcomes masked
so that the coordinator cannot read them.

Model: logistic regression, ``logit = sum over agencies of x_k . w_k``, trained by full-batch
gradient descent where each agency preconditions its own gradient with the inverse of its own
features' second-moment matrix (a block-diagonal Newton step; local, so it costs no privacy),
adds heavy-ball momentum, and averages its weights over the second half of the run (Polyak
averaging damps the noise). All of this is post-processing of the noisy residuals.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from nodes.scoring.data import AgencyScoringData
from nodes.scoring.scores import SCORES_HEADER, ScoreRow, write_scores
from pplink.accounting import count_measurement
from pplink.agreement import AgreementConfig
from pplink.crypto import public_key_text
from pplink.errors import ConfigError, ReleaseError, SignatureError, TransportError
from pplink.scoring.evaluation import TopShare, auc, bin_scores, sigmoid, top_share_metrics
from pplink.scoring.protocol import (
    MISSING_GROUP,
    OUTCOME_KEYS,
    HoldoutReply,
    HoldoutRequest,
    PresenceReply,
    PresenceRequest,
    ResidualReply,
    ResidualRequest,
    RunPlan,
    ShareReply,
    ShareRequest,
    ThresholdReply,
    ThresholdRequest,
)
from pplink.scoring.secure_sum import (
    MaskKeyAnnouncement,
    announce_mask_key,
    decode_fixed,
    encode_fixed,
    mask_stream,
    masked_share,
    new_mask_key,
    pair_seed,
    unblind,
    verify_mask_key,
)

__all__ = ["SCORES_HEADER", "LabelOwnerNode", "LabelOwnerView", "ScoreRow", "ScoringNode", "standardise",
           "write_scores"]

#: Ridge added to each agency's second-moment matrix before inverting it.
_RIDGE = 1e-3
_PRESENCE = "presence"


def standardise(features: np.ndarray, clip: float) -> tuple[np.ndarray, int]:
    """Centre and scale each column over the agency's own entities; impute missing values with 0.

    Columns with no spread become all zero. Values are clipped to ``+-clip`` standard deviations,
    which bounds how far one person's features can move a partial logit.

    Returns:
        ``(standardised matrix, number of imputed cells)``.

    >>> z, imputed = standardise(np.array([[1.0], [3.0], [np.nan]]), 5.0)
    >>> z.ravel().tolist(), imputed
    ([-1.0, 1.0, 0.0], 1)
    """
    x = np.array(features, dtype=np.float64, copy=True)
    missing = np.isnan(x)
    z = np.zeros_like(x)
    for j in range(x.shape[1]):
        present = x[~missing[:, j], j]
        sd = float(present.std()) if present.size else 0.0
        if sd > 0:
            z[:, j] = (x[:, j] - present.mean()) / sd
    z[missing] = 0.0
    return np.clip(z, -clip, clip), int(missing.sum())


class ScoringNode:
    """One agency in a vertical training run.

    Args:
        agreement: the agreement (keys of the other agencies, scoring section).
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
        self._plan: RunPlan | None = None
        self._mask_key = None
        self._seeds: dict[str, bytes] = {}
        self._joined = False
        #: Feature cells imputed with the column mean (reported, never silent).
        self.imputed = 0

    # --- setup ------------------------------------------------------------------------------

    @property
    def agency_id(self) -> str:
        """The agency."""
        return self._data.agency_id

    @property
    def is_label_owner(self) -> bool:
        """Whether this node holds the labels."""
        return False

    def announce(self, plan: RunPlan) -> MaskKeyAnnouncement:
        """Make this run's X25519 key and return its public half, signed."""
        if plan.agreement_id != self._agreement.agreement_id:
            raise TransportError(f"{self.agency_id}: the run plan is for another agreement")
        if self.agency_id not in plan.parties:
            raise TransportError(f"{self.agency_id}: not a party to run {plan.run_id[:8]}")
        self._plan = plan
        self._mask_key = new_mask_key()
        self._joined = False
        return announce_mask_key(self._key, self._mask_key, agreement_id=plan.agreement_id, run_id=plan.run_id,
                                 agency_id=self.agency_id)

    def join(self, plan: RunPlan, announcements: Sequence[MaskKeyAnnouncement]) -> None:
        """Check every party's key, derive the pair seeds and lay out the features for the plan.

        Raises:
            TransportError: another plan than the one announced for, or a party's key is missing or repeated.
            SignatureError, AgreementMismatchError: a key does not verify (see :func:`verify_mask_key`).
        """
        if self._plan is None or plan != self._plan or self._mask_key is None:
            raise TransportError(f"{self.agency_id}: join for a run this node did not announce a key for")
        by_agency: dict[str, MaskKeyAnnouncement] = {}
        for ann in announcements:
            if ann.agency_id in by_agency:
                raise TransportError(f"{self.agency_id}: two mask keys for {ann.agency_id}")
            by_agency[ann.agency_id] = ann
        if set(by_agency) != set(plan.parties):
            raise TransportError(f"{self.agency_id}: mask keys must come from exactly the run's parties")
        own = announce_mask_key(self._key, self._mask_key, agreement_id=plan.agreement_id, run_id=plan.run_id,
                                agency_id=self.agency_id)
        if by_agency[self.agency_id].public_key != own.public_key:
            raise SignatureError(f"{self.agency_id}: the coordinator relayed a different key for this node")
        self._seeds = {}
        for peer, ann in by_agency.items():
            if peer == self.agency_id:
                continue
            peer_key = verify_mask_key(self._agreement, ann, run_id=plan.run_id)
            self._seeds[peer] = pair_seed(self._mask_key, peer_key, agreement_id=plan.agreement_id,
                                          run_id=plan.run_id, own_id=self.agency_id, peer_id=peer)
        self._layout(plan)
        self._joined = True

    def _layout(self, plan: RunPlan) -> None:
        """The design matrix over the plan's entity list: zeros for entities this agency does not hold."""
        index = {e: i for i, e in enumerate(plan.entity_ids)}
        rows = np.fromiter((index.get(e, -1) for e in self._data.entity_ids), dtype=np.int64,
                           count=len(self._data.entity_ids))
        if (rows < 0).any():
            raise TransportError(
                f"{self.agency_id}: {int((rows < 0).sum())} of this agency's entities are not on the run's entity list"
            )
        z, self.imputed = standardise(self._data.features, plan.settings.feature_clip)
        n = plan.n_entities
        columns = z.shape[1] + 1 + (1 if self.is_label_owner else 0)
        x = np.zeros((n, columns), dtype=np.float64)
        x[rows, : z.shape[1]] = z
        x[rows, z.shape[1]] = 1.0  # "known to this agency"
        if self.is_label_owner:
            x[:, -1] = 1.0  # the intercept, for every entity
        self._rows = rows
        self._held = np.zeros(n, dtype=bool)
        self._held[rows] = True
        self._x = x
        second = x.T @ x / n
        self._precondition = np.linalg.inv(second + _RIDGE * np.eye(columns))
        self._weights = np.zeros(columns)
        self._velocity = np.zeros(columns)
        self._sum_weights = np.zeros(columns)
        self._averaged = 0
        self._applied = -1
        # (step, purpose) pairs already answered: a mask must never cover two different vectors.
        self._answered: set[tuple[int, str]] = set()

    def _require(self, run_id: str) -> RunPlan:
        if not self._joined or self._plan is None:
            raise TransportError(f"{self.agency_id}: no run joined")
        if run_id != self._plan.run_id:
            raise TransportError(f"{self.agency_id}: message for another run")
        return self._plan

    # --- training ---------------------------------------------------------------------------

    @property
    def weight_names(self) -> tuple[str, ...]:
        """Names of this agency's weights (they never leave the agency)."""
        names = (*self._data.feature_columns, f"known_to_{self.agency_id}")
        return (*names, "intercept") if self.is_label_owner else names

    @property
    def weights(self) -> np.ndarray:
        """The model's weights as they stand: the running average once averaging has begun."""
        return self._sum_weights / self._averaged if self._averaged else self._weights.copy()

    def _blind_seed(self) -> bytes | None:
        return None

    def share(self, request: ShareRequest) -> ShareReply:
        """Apply the previous step's noisy residuals, then mask this step's partial logits.

        Raises:
            TransportError: another run, a step asked for twice, residuals out of order or of the wrong length.
        """
        plan = self._require(request.run_id)
        if request.purpose not in ("logits", "scores"):
            raise TransportError(f"{self.agency_id}: unknown share purpose")
        if (request.step, request.purpose) in self._answered:
            raise TransportError(f"{self.agency_id}: step {request.step} was already answered; masks are never reused")
        if request.residuals is not None:
            self._apply(plan, request.residual_step, request.residuals)
        self._answered.add((request.step, request.purpose))
        weights = self.weights if request.purpose == "scores" else self._weights
        partial = self._x @ weights
        share = masked_share(encode_fixed(partial), own_id=self.agency_id, seeds=self._seeds, step=request.step,
                             purpose=request.purpose, blind_seed=self._blind_seed())
        return ShareReply(run_id=plan.run_id, step=request.step, agency_id=self.agency_id, share=share)

    def _apply(self, plan: RunPlan, step: int | None, residuals: np.ndarray) -> None:
        if step is None or step != self._applied + 1:
            raise TransportError(f"{self.agency_id}: residuals of step {step} arrived out of order")
        noisy = np.asarray(residuals)
        if noisy.shape != (plan.n_entities,):
            raise TransportError(f"{self.agency_id}: residuals of step {step} have the wrong length")
        r = noisy.astype(np.float64) / plan.settings.residual_unit
        gradient = self._x.T @ r / plan.n_entities
        self._velocity = plan.settings.momentum * self._velocity + self._precondition @ gradient
        self._weights = self._weights - plan.settings.learning_rate * self._velocity
        self._applied = step
        if step >= plan.settings.average_from_step:
            self._sum_weights += self._weights
            self._averaged += 1

    def presence(self, request: PresenceRequest) -> PresenceReply:
        """Sum the outcome masks shared with the label owner over held and not-held entities.

        The coordinator adds these to its sums of the label owner's masked outcomes, so the masks
        cancel and it obtains error counts among people known and not known to this agency,
        without anyone seeing a single person's outcome or who this agency holds.
        """
        plan = self._require(request.run_id)
        seed = self._seeds.get(plan.label_owner)
        if seed is None:
            raise TransportError(f"{self.agency_id}: the label owner does not ask itself for presence sums")
        masks = mask_stream(seed, step=0, purpose=_PRESENCE, length=plan.n_entities * 4).reshape(plan.n_entities, 4)
        # uint64 sums wrap mod 2**64, as the masks need.
        return PresenceReply(run_id=plan.run_id, agency_id=self.agency_id, held=masks[self._held].sum(axis=0),
                             not_held=masks[~self._held].sum(axis=0))


@dataclass(frozen=True)
class LabelOwnerView:
    """What the label owner alone sees of its model: exact figures on its own holdout (never released).

    Attributes:
        auc: exact holdout AUC.
        top: exact precision and recall at the top share.
        holdout: held-out people.
        training: people trained on.
        prevalence: share of the holdout with the outcome.
    """

    auc: float
    top: TopShare
    holdout: int
    training: int
    prevalence: float


class LabelOwnerNode(ScoringNode):
    """The agency holding the outcome: residuals with charged noise, holdout, scores.

    Args:
        agreement: the agreement.
        data: its scoring inputs, with labels and subgroups.
        signing_key: its Ed25519 key.
        holdout_seed: seeds the holdout split (tests and reproducible reports); None draws it
            from the OS, so nobody else can predict who is held out.
    """

    def __init__(self, agreement: AgreementConfig, data: AgencyScoringData, signing_key: Ed25519PrivateKey, *,
                 holdout_seed: int | None = None) -> None:
        super().__init__(agreement, data, signing_key)
        assert agreement.scoring is not None
        if data.agency_id != agreement.scoring.label_owner or data.labels is None:
            raise ConfigError(f"{data.agency_id} is not the label owner, or its data has no labels")
        self._holdout_seed = holdout_seed
        self._scores: np.ndarray | None = None
        self._threshold: float | None = None
        self.receipts: list[str] = []

    @property
    def is_label_owner(self) -> bool:
        """Whether this node holds the labels."""
        return True

    def _blind_seed(self) -> bytes | None:
        return self._blind

    def _layout(self, plan: RunPlan) -> None:
        if plan.label_owner != self.agency_id:
            raise TransportError(f"{self.agency_id}: the plan names another label owner")
        super()._layout(plan)
        assert self._data.labels is not None and self._agreement.scoring is not None
        n = plan.n_entities
        labels = np.full(n, -1, dtype=np.int8)
        labels[self._rows] = self._data.labels
        labelled = np.flatnonzero(labels >= 0)
        rng = np.random.default_rng(self._holdout_seed if self._holdout_seed is not None else secrets.randbits(128))
        n_holdout = int(round(self._agreement.scoring.holdout_share * labelled.size))
        chosen = rng.choice(labelled, size=n_holdout, replace=False) if n_holdout else np.array([], dtype=np.int64)
        self._holdout = np.zeros(n, dtype=bool)
        self._holdout[chosen] = True
        self._train = (labels >= 0) & ~self._holdout
        self._labels = labels
        groups = np.full(n, MISSING_GROUP, dtype=object)
        if self._data.subgroups is not None:
            groups[self._rows] = np.asarray(self._data.subgroups, dtype=object)
        self._groups = groups
        self._blind = secrets.token_bytes(32)
        self._scores = None
        self._threshold = None
        self.receipts = []

    @property
    def training_size(self) -> int:
        """Labelled people used for training (not released)."""
        return int(self._train.sum())

    @property
    def holdout_size(self) -> int:
        """Labelled people held out (not released)."""
        return int(self._holdout.sum())

    def residuals(self, request: ResidualRequest) -> ResidualReply:
        """Residuals ``sigmoid(logit) - y`` on training entities, 0 elsewhere, plus the charged noise, for all.

        The noise is drawn here (the coordinator never sees a residual without it) with OpenDP's
        measurement for exactly the mechanism and scale the ledger entry records, and only after
        the coordinator has shown that entry's receipt.

        Raises:
            ReleaseError: the receipt does not match the plan (another scale, mechanism, unit or step).
            TransportError: another run or a sum of the wrong length.
        """
        plan = self._require(request.run_id)
        charge = request.charge
        if (charge.step != request.step or charge.mechanism is not plan.mechanism
                or charge.sensitivity != plan.settings.residual_unit
                or not math.isclose(charge.scale, plan.residual_scale, rel_tol=1e-12)):
            raise ReleaseError(f"{self.agency_id}: the ledger receipt for step {request.step} "
                               "does not match the run plan")
        total = np.asarray(request.blinded_sum, dtype=np.uint64)
        if total.shape != (plan.n_entities,):
            raise TransportError(f"{self.agency_id}: the summed logits have the wrong length")
        logits = decode_fixed(unblind(total, self._blind, step=request.step, purpose="logits"))
        exact = np.where(self._train, sigmoid(logits) - self._labels, 0.0)
        # Clip: one person moves one entry by at most 1 in absolute value (see docs/scoring.md).
        units = np.rint(np.clip(exact, -1.0, 1.0) * plan.settings.residual_unit).astype(np.int64)
        measurement = count_measurement(charge.mechanism, charge.scale)
        noisy = np.asarray(measurement(units.tolist()), dtype=np.int64)
        self.receipts.append(charge.entry_hash)
        return ResidualReply(run_id=plan.run_id, step=request.step, noisy_residuals=noisy)

    def holdout(self, request: HoldoutRequest) -> HoldoutReply:
        """Unblind the final scores, keep them, and count the holdout per (score bin, outcome)."""
        plan = self._require(request.run_id)
        total = np.asarray(request.blinded_scores, dtype=np.uint64)
        if total.shape != (plan.n_entities,):
            raise TransportError(f"{self.agency_id}: the summed scores have the wrong length")
        self._scores = decode_fixed(unblind(total, self._blind, step=request.step, purpose="scores"))
        bins = bin_scores(self._scores[self._holdout], plan.settings.score_edges)
        y = self._labels[self._holdout] == 1
        size = len(plan.settings.score_edges) + 1
        positives = np.bincount(bins[y], minlength=size)
        negatives = np.bincount(bins[~y], minlength=size)
        return HoldoutReply(run_id=plan.run_id, positives=tuple(int(v) for v in positives),
                            negatives=tuple(int(v) for v in negatives))

    def _outcomes(self, threshold: float) -> np.ndarray:
        """Per entity, the index into OUTCOME_KEYS for holdout people, -1 for everyone else."""
        assert self._scores is not None
        flagged = self._scores >= threshold
        y = self._labels == 1
        code = np.where(flagged, np.where(y, 0, 1), np.where(y, 2, 3))
        return np.where(self._holdout, code, -1)

    def threshold(self, request: ThresholdRequest) -> ThresholdReply:
        """Error counts at a public threshold by subgroup, and per-agency masked outcome vectors.

        Raises:
            TransportError: no scores yet (holdout not asked for), asked twice, another run, or an unknown agency.
        """
        plan = self._require(request.run_id)
        if self._scores is None:
            raise TransportError(f"{self.agency_id}: threshold asked for before the final scores")
        if self._threshold is not None:
            # A second answer would cover other outcomes with the same masks.
            raise TransportError(f"{self.agency_id}: the threshold was already answered for this run")
        self._threshold = float(request.threshold)
        codes = self._outcomes(self._threshold)
        by_group: dict[str, dict[str, int]] = {}
        for group in sorted(set(self._groups[self._holdout].tolist())):
            in_group = codes[(self._groups == group) & self._holdout]
            counts = np.bincount(in_group, minlength=4)
            by_group[group] = {k: int(counts[i]) for i, k in enumerate(OUTCOME_KEYS)}
        onehot = np.zeros((plan.n_entities, 4), dtype=np.uint64)
        held_out = np.flatnonzero(codes >= 0)
        onehot[held_out, codes[held_out]] = 1
        masked: dict[str, np.ndarray] = {}
        for agency in request.presence_agencies:
            seed = self._seeds.get(agency)
            if seed is None:
                raise TransportError(f"{self.agency_id}: no pair seed with {agency}")
            masks = mask_stream(seed, step=0, purpose=_PRESENCE, length=plan.n_entities * 4).reshape(-1, 4)
            masked[agency] = onehot - masks  # wraps mod 2**64
        return ThresholdReply(run_id=plan.run_id, by_group=by_group, masked_outcomes=masked)

    # --- the label owner's own view ------------------------------------------------------------

    def own_view(self, top_share: float) -> LabelOwnerView:
        """Exact holdout figures for the label owner's own eyes (they are never released)."""
        if self._scores is None:
            raise TransportError(f"{self.agency_id}: no final scores yet")
        held = self._holdout
        y = self._labels[held] == 1
        return LabelOwnerView(auc(self._scores[held], y), top_share_metrics(self._scores[held], y, top_share),
                              int(held.sum()), int(self._train.sum()), float(y.mean()) if y.size else math.nan)

    def score_rows(self) -> list[ScoreRow]:
        """A score for each of the label owner's own records, for a person's second look.

        ``percentile`` ranks the score among the label owner's own people; ``second_look`` is true
        at or above the released top-share threshold.
        """
        if self._scores is None:
            raise TransportError(f"{self.agency_id}: no final scores yet")
        own = self._scores[self._rows]
        ranks = np.argsort(np.argsort(own, kind="mergesort"), kind="mergesort")
        percentile = 100.0 * (ranks + 1) / max(1, own.size)
        threshold = self._threshold if self._threshold is not None else math.inf
        rows = []
        probabilities = sigmoid(own)
        for i, entity in enumerate(self._data.entity_ids):
            for record_id in self._data.record_ids[i]:
                rows.append(ScoreRow(record_id, entity, float(probabilities[i]), float(percentile[i]),
                                     bool(self._holdout[self._rows[i]]), bool(own[i] >= threshold)))
        return rows

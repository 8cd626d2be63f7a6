"""The vertical scoring protocol: run settings, the run plan and one payload type per message.

Shared by both sides: the coordinator drives a run (:mod:`coordinator.scoring.vertical`) by sending the
requests below to node endpoints, and each agency answers them (:mod:`nodes.scoring.vertical`). Every
request maps to one message and one reply, so a Flower adapter can carry them one per step: the
scalars go in a ``ConfigRecord``, the numpy vectors in an ``ArrayRecord`` (entity vectors are
always in the run plan's public entity order). In process, the "transport" is a plain method
call on an object that satisfies :class:`VerticalNode` (or :class:`LabelOwnerEndpoint`).

Messages of one step (K agencies), in order::

    coordinator -> every node   ShareRequest  (noisy residuals of the previous step, if any)
    every node  -> coordinator  ShareReply    (masked partial logits for every entity)
    coordinator                 sums the shares, charges the step on the ledger (budget check first)
    coordinator -> label owner  ResidualRequest (the blinded sum and the ledger receipt)
    label owner -> coordinator  ResidualReply (noisy residuals for every entity)

That is K + 1 request/reply pairs per step; the noisy residuals ride on the next step's
``ShareRequest``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Annotated, Protocol

import numpy as np
from pydantic import Field, model_validator

from pplink.accounting import Mechanism
from pplink.models import PplinkModel
from pplink.scoring.secure_sum import MaskKeyAnnouncement

__all__ = [
    "DEFAULT_SCORE_EDGES",
    "MISSING_GROUP",
    "OUTCOME_KEYS",
    "HoldoutReply",
    "HoldoutRequest",
    "LabelOwnerEndpoint",
    "PresenceReply",
    "PresenceRequest",
    "ResidualReply",
    "ResidualRequest",
    "RunPlan",
    "ShareReply",
    "ShareRequest",
    "StepCharge",
    "ThresholdReply",
    "ThresholdRequest",
    "VerticalNode",
    "VerticalSettings",
]

#: Score-bin edges on the logit scale (public, fixed before any data is seen): -4 to 2 by 0.25,
#: i.e. probabilities from 1.8% to 88%. The first and last bins are open-ended.
DEFAULT_SCORE_EDGES: tuple[float, ...] = tuple(-4.0 + 0.25 * i for i in range(25))
#: The subgroup of people with no value for the subgroup attribute (the release engine's public
#: key for missing values, ``coordinator.release.queries.MISSING``).
MISSING_GROUP = "(missing)"
#: Outcome keys of a confusion table, as the release engine names them.
OUTCOME_KEYS = ("tp", "fp", "fn", "tn")


class VerticalSettings(PplinkModel):
    """How a vertical training run is set up; chosen by the coordinator, public to every party.

    Attributes:
        steps: full-batch gradient steps (each one residual release).
        learning_rate: step size of each node's (locally preconditioned) gradient step. The
            gradient is averaged over every entity on the list, not only the labelled ones, so
            the useful step grows as the training set's share of the list shrinks. The defaults
            (10 steps, 4.0, momentum 0.5) suit tight budgets on the synthetic pilot, where about a
            quarter of the entities are labelled; with a loose budget, 40 steps at 8.0 get closer
            to a centralised fit (see docs/scoring.md).
        momentum: heavy-ball momentum of each node's local update (0 for plain gradient descent).
        average_from: weights are averaged over the steps from this share of the run onwards
            (Polyak averaging, which damps the DP noise); 1.0 keeps the last weights.
        training_epsilon: privacy loss all residual releases of the run may spend together (zCDP:
            converted at the agreement's delta; the per-step rho is this total's rho / steps).
        evaluation_epsilon: privacy loss of the evaluation releases together (score histogram,
            error counts by subgroup, error counts by agency).
        residual_unit: fixed-point unit of a released residual: a residual r in [-1, 1] is
            released as ``round(r * unit)`` plus integer noise (the ledger's sensitivity is the unit).
        top_share: the share of the holdout with the highest scores counted as "flagged" for the
            precision, recall and error-rate figures.
        score_edges: public logit bin edges of the released score histogram.
        feature_clip: standardised features are clipped to +-this.
    """

    steps: Annotated[int, Field(ge=1, le=500)] = 10
    learning_rate: Annotated[float, Field(gt=0.0, le=100.0)] = 4.0
    momentum: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.5
    average_from: Annotated[float, Field(ge=0.0, le=1.0)] = 0.5
    training_epsilon: Annotated[float, Field(gt=0.0, le=100.0)] = 2.0
    evaluation_epsilon: Annotated[float, Field(gt=0.0, le=100.0)] = 0.6
    residual_unit: Annotated[int, Field(ge=1, le=1 << 20)] = 1024
    top_share: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.1
    score_edges: tuple[float, ...] = DEFAULT_SCORE_EDGES
    feature_clip: Annotated[float, Field(gt=0.0)] = 5.0

    @model_validator(mode="after")
    def _edges_increase(self) -> VerticalSettings:
        edges = self.score_edges
        if (len(edges) < 2 or any(not math.isfinite(e) for e in edges)
                or any(b <= a for a, b in zip(edges, edges[1:], strict=False))):
            raise ValueError("score_edges must be at least two finite, strictly increasing logits")
        return self

    @property
    def average_from_step(self) -> int:
        """The first step whose updated weights enter the average."""
        return min(self.steps - 1, int(self.average_from * self.steps))


@dataclass(frozen=True)
class RunPlan:
    """What every party knows about a run before it starts (sent to each node once).

    Attributes:
        run_id: 32 random hex characters; binds mask keys and ledger entries to this run.
        agreement_id: the agreement.
        label_owner: the agency holding the outcome.
        parties: the agencies taking part (every one must answer every step).
        entity_ids: every entity pseudonym of the linkage, in one public order. Every node computes
            a value for every entity, so no node learns who is in the training set.
        settings: the run settings.
        mechanism: Gaussian (zCDP) or Laplace (pure), from the agreement.
        residual_scale: noise scale in residual units (sigma or b times ``residual_unit``).
    """

    run_id: str
    agreement_id: str
    label_owner: str
    parties: tuple[str, ...]
    entity_ids: tuple[str, ...]
    settings: VerticalSettings
    mechanism: Mechanism
    residual_scale: float

    @property
    def n_entities(self) -> int:
        """Length of every entity vector in the run."""
        return len(self.entity_ids)

    @property
    def noise_sd(self) -> float:
        """Standard deviation of the noise on one residual (in residual terms, not units)."""
        unit_scale = self.residual_scale / self.settings.residual_unit
        return unit_scale if self.mechanism is Mechanism.GAUSSIAN else unit_scale * math.sqrt(2.0)


@dataclass(frozen=True)
class StepCharge:
    """The ledger receipt for one residual release, given to the label owner before it draws noise.

    Attributes:
        step: the training step.
        seq: the ledger entry's sequence number.
        entry_hash: SHA-256 of the entry's line (a receipt anyone can check against the ledger).
        mechanism: the noise the entry records.
        sensitivity: the entry's sensitivity (in residual units).
        scale: the noise scale the entry records; the label owner must draw exactly this noise.
    """

    step: int
    seq: int
    entry_hash: str
    mechanism: Mechanism
    sensitivity: int
    scale: float


@dataclass(frozen=True)
class ShareRequest:
    """Coordinator -> node: apply the previous step's noisy residuals, then send a masked share.

    Attributes:
        run_id: the run.
        step: the step whose share is asked for (``purpose="scores"``: the final scoring round).
        purpose: ``"logits"`` during training, ``"scores"`` for the final model's scores.
        residual_step: the step ``residuals`` belong to (None: nothing to apply).
        residuals: noisy residuals in integer residual units, one per entity.
    """

    run_id: str
    step: int
    purpose: str = "logits"
    residual_step: int | None = None
    residuals: np.ndarray | None = field(default=None, repr=False)


@dataclass(frozen=True)
class ShareReply:
    """Node -> coordinator: fixed-point partial logits plus masks (``uint64``, one per entity)."""

    run_id: str
    step: int
    agency_id: str
    share: np.ndarray = field(repr=False)


@dataclass(frozen=True)
class ResidualRequest:
    """Coordinator -> label owner: the blinded sum of the shares and the step's ledger receipt."""

    run_id: str
    step: int
    blinded_sum: np.ndarray = field(repr=False)
    charge: StepCharge


@dataclass(frozen=True)
class ResidualReply:
    """Label owner -> coordinator -> every node: noisy residuals (``int64`` units, one per entity)."""

    run_id: str
    step: int
    noisy_residuals: np.ndarray = field(repr=False)


@dataclass(frozen=True)
class HoldoutRequest:
    """Coordinator -> label owner: the blinded final scores; reply with the holdout's score histogram."""

    run_id: str
    step: int
    blinded_scores: np.ndarray = field(repr=False)


@dataclass(frozen=True)
class HoldoutReply:
    """Label owner -> coordinator: exact counts of holdout people per (score bin, outcome).

    ``positives[b]`` and ``negatives[b]`` count held-out people whose score falls in bin ``b`` of
    the settings' edges (``len(edges) + 1`` bins). Each person is in one cell (sensitivity 1).
    These exact counts go only to the release engine, which noises them before anyone sees them.
    """

    run_id: str
    positives: tuple[int, ...]
    negatives: tuple[int, ...]


@dataclass(frozen=True)
class ThresholdRequest:
    """Coordinator -> label owner: count errors at this public threshold (from the noisy histogram).

    Attributes:
        run_id: the run.
        threshold: a logit; a score at or above it is "flagged".
        presence_agencies: the agencies for which to send masked per-entity outcome vectors.
    """

    run_id: str
    threshold: float
    presence_agencies: tuple[str, ...]


@dataclass(frozen=True)
class ThresholdReply:
    """Label owner -> coordinator: exact error counts by subgroup, and masked outcome vectors.

    Attributes:
        run_id: the run.
        by_group: ``{subgroup value: {"tp"|"fp"|"fn"|"tn": count}}`` over the holdout (to the release engine).
        masked_outcomes: per agency ``k``, the holdout's one-hot outcomes (``n_entities x 4``,
            :data:`OUTCOME_KEYS` order, zeros for everyone else) minus a mask only the label
            owner and ``k`` can compute: uniform to the coordinator.
    """

    run_id: str
    by_group: dict[str, dict[str, int]]
    masked_outcomes: dict[str, np.ndarray] = field(repr=False)


@dataclass(frozen=True)
class PresenceRequest:
    """Coordinator -> agency k: sum your outcome masks over the entities you hold and those you do not."""

    run_id: str


@dataclass(frozen=True)
class PresenceReply:
    """Agency k -> coordinator: ``uint64`` mask sums, ``held`` and ``not_held``, 4 each (OUTCOME_KEYS order)."""

    run_id: str
    agency_id: str
    held: np.ndarray = field(repr=False)
    not_held: np.ndarray = field(repr=False)


class VerticalNode(Protocol):
    """What the coordinator can ask of every agency in a run (one method per message)."""

    @property
    def agency_id(self) -> str:
        """The agency."""
        ...

    def announce(self, plan: RunPlan) -> MaskKeyAnnouncement:
        """Make this run's X25519 key and return its signed public half."""
        ...

    def join(self, plan: RunPlan, announcements: tuple[MaskKeyAnnouncement, ...]) -> None:
        """Verify the other nodes' keys, derive pair seeds and align features to the plan."""
        ...

    def share(self, request: ShareRequest) -> ShareReply:
        """Apply noisy residuals (if any) and return the masked share of the requested step."""
        ...

    def presence(self, request: PresenceRequest) -> PresenceReply:
        """Return this agency's outcome-mask sums (for error counts by agency)."""
        ...


class LabelOwnerEndpoint(VerticalNode, Protocol):
    """The label owner answers three more messages."""

    def residuals(self, request: ResidualRequest) -> ResidualReply:
        """Unblind the sum, compute residuals, add the charged noise, return them for every entity."""
        ...

    def holdout(self, request: HoldoutRequest) -> HoldoutReply:
        """Unblind the final scores, keep them, return the holdout's (bin, outcome) counts."""
        ...

    def threshold(self, request: ThresholdRequest) -> ThresholdReply:
        """Count errors at the threshold by subgroup; mask per-entity outcomes per agency."""
        ...

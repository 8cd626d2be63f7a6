"""Vertical scoring by noisy sufficient statistics: the model, its per-person bound and its noise.

Every party computes the same things from public settings, so this module is shared by the nodes
(:mod:`nodes.scoring.suffstats`) and the coordinator (:mod:`coordinator.scoring.suffstats`).

The model is a linear probability model ``E[y | x] = 1/2 + x . w`` over the concatenation of every
agency's block. Its least-squares fit needs only two sums over the training people::

    G = sum_i x_i x_i^T          (the Gram matrix, d x d)
    b = sum_i x_i (y_i - 1/2)    (d)

and these are released **once**, each with Gaussian noise, instead of a noisy release per
gradient step. Everyone then solves ``(G + lambda I) w = b`` locally (post-processing).

Per-person bound, by construction (no dependence on anyone else's data):

* each agency maps a raw feature with **public** constants, ``z = (x - centre) / scale``, clips it
  to ``+-coordinate_clip``, scales its block of features to L2 norm at most ``feature_norm`` and
  rounds each value toward zero onto the grid ``1 / grid`` (which never increases the norm);
* each block also has one indicator (``known_to_<agency>``, or the intercept at the label owner),
  so a person's block has norm at most ``sqrt(feature_norm^2 + 1)`` and their whole row at most
  ``C = sqrt(K (feature_norm^2 + 1))`` over K agencies;
* adding or removing one person changes ``G`` by ``x x^T`` (Frobenius norm ``|x|^2 <= C^2``; the
  released upper triangle is a subset of its entries) and ``b`` by ``x (y - 1/2)`` (norm at most
  ``C / 2``). Nothing else moves: the holdout is a keyed hash of the person's own pseudonym
  (:func:`in_holdout`) and the feature map uses no statistic of the data.

Values are exact integers in fixed units (``G`` in ``1 / grid^2``, ``b`` in ``1 / (2 grid)``), so
the noise is OpenDP's discrete Gaussian over integer vectors at the ledger's sensitivity and scale.
"""

from __future__ import annotations

import hashlib
import hmac
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated

import numpy as np
from pydantic import Field, model_validator

from pplink.accounting import rho_for_epsilon
from pplink.models import PplinkModel
from pplink.queries import CKKS_SLACK, release_sensitivity, release_values

__all__ = [
    "CKKS_ERROR_BOUND",
    "EVALUATION_EDGES",
    "EVALUATION_WEIGHTS",
    "RELEASE_B",
    "RELEASE_GRAM",
    "release_sensitivity",
    "release_values",
    "NoisePlan",
    "SuffStatsSettings",
    "block_columns",
    "encode_block",
    "in_holdout",
    "noise_plan",
    "person_bound",
    "presence_noise",
    "score_logits",
    "solve_model",
    "split_weights",
    "upper_pairs",
]

#: A bound on the arithmetic error of one encrypted sum (value terms). Measured: at most 1.3e-3
#: over 81 sums at 20,000 entities (docs/scoring.md); the stated sensitivities include it. It is
#: the ledger contract's ``CKKS_SLACK`` (``2**-6``), the least slack the auditor accepts.
CKKS_ERROR_BOUND = CKKS_SLACK
#: Public logit bin edges of the evaluation histograms: -3 to 1 by 0.5 (10 bins).
EVALUATION_EDGES: tuple[float, ...] = tuple(-3.0 + 0.5 * i for i in range(9))
#: Evaluation budget split: own-feature histogram, federated histogram, errors by subgroup, errors
#: by agency presence.
EVALUATION_WEIGHTS = (0.3, 0.3, 0.2, 0.2)
#: The two training releases, as named in ledger subjects and node receipts.
RELEASE_GRAM = "gram"
RELEASE_B = "b"


class SuffStatsSettings(PplinkModel):
    """How a run is set up: public, fixed before any data is seen, the same at every party.

    Attributes:
        training_epsilon: privacy loss of the two training releases together (zCDP, at the
            agreement's delta).
        evaluation_epsilon: privacy loss of the evaluation releases together.
        gram_share: share of the training rho spent on ``G`` (the rest on ``b``).
        feature_norm: each agency's standardised features are scaled to at most this L2 norm per person.
        coordinate_clip: a standardised feature is clipped to +-this first.
        grid: features are rounded toward zero to multiples of ``1 / grid``.
        ridge: ``lambda = max(0, -smallest eigenvalue) + ridge * sigma_G * sqrt(d)`` (in value terms).
        feature_scales: ``{"agency.column": (centre, scale)}``, public constants (domain knowledge
            or earlier published statistics, never this run's data); a column without one is
            mapped with ``asinh`` and no centring.
        top_share: the share of the holdout flagged for the error-rate figures.
        score_edges: public logit bin edges of the released score histograms (coarser than the
            residual protocol's: with few held-out positives, fewer bins keep the released AUC readable).
    """

    training_epsilon: Annotated[float, Field(gt=0.0, le=100.0)] = 2.0
    evaluation_epsilon: Annotated[float, Field(gt=0.0, le=100.0)] = 0.6
    gram_share: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.5
    feature_norm: Annotated[float, Field(gt=0.0, le=10.0)] = 0.75
    coordinate_clip: Annotated[float, Field(gt=0.0, le=100.0)] = 3.0
    grid: Annotated[int, Field(ge=1, le=1024)] = 16
    ridge: Annotated[float, Field(ge=0.0, le=100.0)] = 1.0
    feature_scales: dict[str, tuple[float, float]] = Field(default_factory=dict)
    top_share: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.1
    score_edges: tuple[float, ...] = EVALUATION_EDGES

    @model_validator(mode="after")
    def _check(self) -> SuffStatsSettings:
        for name, (_, scale) in self.feature_scales.items():
            if not (math.isfinite(scale) and scale > 0):
                raise ValueError(f"feature scale of {name} must be positive and finite")
        edges = self.score_edges
        if len(edges) < 2 or any(b <= a for a, b in zip(edges, edges[1:], strict=False)):
            raise ValueError("score_edges must be at least two strictly increasing logits")
        return self


def block_columns(agency: str, features: Sequence[str], *, label_owner: bool) -> tuple[str, ...]:
    """Names of an agency's block: its features, then its indicator.

    >>> block_columns("health", ["ae_visits"], label_owner=False)
    ('ae_visits', 'known_to_health')
    """
    return (*features, "intercept" if label_owner else f"known_to_{agency}")


def encode_block(agency: str, columns: Sequence[str], features: np.ndarray, settings: SuffStatsSettings
                 ) -> np.ndarray:
    """An agency's block for the people it holds, in integer grid units (``value * grid``).

    The last column is the indicator (1 for every held person). Missing values become 0 (the
    centre). Rows have feature norm at most ``feature_norm`` and are exact multiples of ``1 / grid``.

    >>> s = SuffStatsSettings(feature_scales={"a.x": (10.0, 2.0)})
    >>> encode_block("a", ["x"], np.array([[12.0], [np.nan], [1e9]]), s).tolist()
    [[12, 16], [0, 16], [12, 16]]
    """
    raw = np.asarray(features, dtype=np.float64).reshape(len(features), len(columns))
    z = np.zeros_like(raw)
    for j, column in enumerate(columns):
        scale = settings.feature_scales.get(f"{agency}.{column}")
        col = raw[:, j]
        z[:, j] = (col - scale[0]) / scale[1] if scale is not None else np.arcsinh(col)
    z = np.clip(np.nan_to_num(z, nan=0.0, posinf=0.0, neginf=0.0), -settings.coordinate_clip,
                settings.coordinate_clip)
    norms = np.linalg.norm(z, axis=1)
    z *= np.minimum(1.0, settings.feature_norm / np.maximum(norms, 1e-300))[:, None]
    units = np.trunc(z * settings.grid).astype(np.int64)  # toward zero: the norm never grows
    return np.hstack([units, np.full((len(units), 1), settings.grid, dtype=np.int64)])


def person_bound(settings: SuffStatsSettings, n_agencies: int) -> float:
    """``C``: the largest L2 norm one person's whole row can have (every agency's block)."""
    return math.sqrt(n_agencies * (settings.feature_norm**2 + 1.0))


def in_holdout(key: bytes, entity_id: str, share: float) -> bool:
    """Whether a person is held out: a keyed hash of their own pseudonym, so nobody else moves them.

    Adding or removing one person never changes anyone else's side of the split (the old
    protocol redrew the split from the whole labelled list). The key is the label owner's secret.

    >>> in_holdout(b"k" * 32, "ab" * 16, 0.0), in_holdout(b"k" * 32, "ab" * 16, 1.0)
    (False, True)
    """
    digest = hmac.new(key, entity_id.encode("ascii"), hashlib.sha256).digest()
    return int.from_bytes(digest[:8], "big") < share * 2.0**64


@dataclass(frozen=True)
class NoisePlan:
    """Sensitivities (integer units) and discrete Gaussian scales of the two training releases."""

    gram_sensitivity: int
    gram_scale: float
    b_sensitivity: int
    b_scale: float
    gram_unit: int
    b_unit: int

    @property
    def gram_sd(self) -> float:
        """Noise sd on one entry of ``G`` in value terms."""
        return self.gram_scale / self.gram_unit


def noise_plan(settings: SuffStatsSettings, n_agencies: int, delta: float, dimension: int) -> NoisePlan:
    """The noise of the two releases: ``rho_G + rho_b`` is the training allotment's rho.

    ``G``'s L2 sensitivity is ``C^2`` (``C^2 grid^2`` units), ``b``'s is ``C / 2`` (``C grid`` units),
    plus the CKKS slack (each of the ``m`` released values may carry an arithmetic error of at most
    :data:`CKKS_ERROR_BOUND`, so a neighbour's vector can differ by ``2 E sqrt(m)`` more), rounded
    up to integers for OpenDP (:func:`release_sensitivity`); ``sigma = sensitivity / sqrt(2 rho)``.

    >>> p = noise_plan(SuffStatsSettings(), 4, 1e-6, 12)
    >>> p.gram_sensitivity, p.b_sensitivity
    (1671, 44)
    """
    c = person_bound(settings, n_agencies)
    rho = rho_for_epsilon(settings.training_epsilon, delta)
    gram_unit, b_unit = settings.grid**2, 2 * settings.grid
    gram_sens = release_sensitivity(RELEASE_GRAM, c, gram_unit, CKKS_ERROR_BOUND,
                                    release_values(RELEASE_GRAM, dimension))
    b_sens = release_sensitivity(RELEASE_B, c, b_unit, CKKS_ERROR_BOUND, release_values(RELEASE_B, dimension))
    rho_g = rho * settings.gram_share
    rho_b = rho - rho_g
    return NoisePlan(gram_sensitivity=gram_sens, gram_scale=gram_sens / math.sqrt(2.0 * rho_g),
                     b_sensitivity=b_sens, b_scale=b_sens / math.sqrt(2.0 * rho_b),
                     gram_unit=gram_unit, b_unit=b_unit)


def upper_pairs(d: int) -> list[tuple[int, int]]:
    """Index pairs ``(i, j)``, ``i <= j``, of the released upper triangle, row by row.

    >>> upper_pairs(2)
    [(0, 0), (0, 1), (1, 1)]
    """
    return [(i, j) for i in range(d) for j in range(i, d)]


def solve_model(gram_units: np.ndarray, b_units: np.ndarray, noise: NoisePlan, settings: SuffStatsSettings
                ) -> np.ndarray:
    """The weights from the released statistics (post-processing; every party gets the same).

    ``gram_units`` is the released symmetric ``G`` in ``1 / grid^2`` units, ``b_units`` the released
    ``b``. The ridge makes the noisy matrix positive definite and shrinks the noisiest directions.
    """
    gram = (np.asarray(gram_units, dtype=np.float64) + np.asarray(gram_units, dtype=np.float64).T) / (
        2.0 * noise.gram_unit)
    b = np.asarray(b_units, dtype=np.float64) / noise.b_unit
    d = len(b)
    smallest = float(np.linalg.eigvalsh(gram).min()) if d else 0.0
    lam = max(0.0, -smallest) + settings.ridge * noise.gram_sd * math.sqrt(d)
    return np.linalg.solve(gram + lam * np.eye(d), b)


def score_logits(centred: np.ndarray) -> np.ndarray:
    """Logit scores from the model's ``x . w`` (the predicted probability minus 1/2), strictly increasing.

    Between probabilities 0.001 and 0.999 this is the logit; beyond, it goes on in a straight line
    (the logit's slope there), so no two different predictions tie and ranking is kept.

    >>> score_logits(np.array([0.0, -0.6, -0.7])).round(2).tolist()
    [0.0, -108.01, -208.11]
    """
    p = 0.5 + np.asarray(centred, dtype=np.float64)
    low = 1e-3
    clipped = np.clip(p, low, 1.0 - low)
    return np.log(clipped / (1.0 - clipped)) + (p - clipped) / (low * (1.0 - low))


def split_weights(weights: np.ndarray, widths: Mapping[str, int], order: Sequence[str]) -> dict[str, np.ndarray]:
    """Cut the weight vector into each agency's block, in the run's party order."""
    out: dict[str, np.ndarray] = {}
    start = 0
    for agency in order:
        out[agency] = np.asarray(weights[start:start + widths[agency]], dtype=np.float64)
        start += widths[agency]
    return out


def presence_noise(settings: SuffStatsSettings, n_agencies: int, delta: float) -> tuple[int, float]:
    """Sensitivity and discrete Gaussian scale of the errors-by-agency-presence release.

    The released vector holds, per outcome, the holdout count among people each other agency holds
    and the holdout total: one person is in at most one cell per agency plus one total, so its L2
    sensitivity is ``sqrt(K)``, rounded up.

    >>> presence_noise(SuffStatsSettings(), 4, 1e-6)[0]
    2
    """
    sensitivity = math.isqrt(max(0, n_agencies - 1)) + 1
    rho = rho_for_epsilon(settings.evaluation_epsilon, delta) * EVALUATION_WEIGHTS[3]
    return sensitivity, sensitivity / math.sqrt(2.0 * rho)

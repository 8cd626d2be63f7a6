"""Horizontal federated learning: the shared schema, model maths and settings of FedAvg training.

Horizontal mode is for agencies that hold the *same kind* of data (the same feature columns and an
outcome label at each) about *different people*, e.g. one service in several areas. Each node
trains a logistic regression locally (:mod:`nodes.flower.horizontal`); the coordinator averages the
updates with Flower's ``FedAvg`` wrapped in ``DifferentialPrivacyServerSideFixedClipping``
(:mod:`coordinator.flower.horizontal`). This module holds what both sides must agree on:

* :data:`FEATURES` and their **public, fixed standardisation constants** (:data:`STANDARDISATION`):
  declared with the schema, never estimated from any node's data, so standardising costs no
  privacy and every node maps a value to the same input;
* the model (:func:`predict_logits`: a weight per feature plus an intercept, last);
* :class:`HorizontalSettings`, what a run is configured with, and :func:`round_rho`, the zCDP
  cost of one round for one agency's update (see ``docs/scoring.md``, "Horizontal mode");
* :func:`synth_area_tables`, a seeded synthetic generator (one table per area) for tests and the
  demo, and the CSV reader/writer of a node's local table.

Pure functions over numpy arrays; no Flower, no files except the CSV helpers.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import numpy as np
from pydantic import Field

from pplink.errors import RecordValidationError
from pplink.models import PplinkModel

__all__ = [
    "FEATURES",
    "LABEL",
    "WEIGHTS_KEY",
    "WEIGHT_METRIC",
    "STANDARDISATION",
    "AreaTable",
    "HorizontalSettings",
    "initial_weights",
    "predict_logits",
    "read_area_csv",
    "round_rho",
    "run_rho",
    "standardise",
    "synth_area_tables",
    "write_area_csv",
]

#: The feature columns every node's table has, in model order.
FEATURES: tuple[str, ...] = ("age_years", "deprivation_quintile", "prior_referrals", "school_absence_rate",
                             "household_size")
#: The outcome column (0 or 1).
LABEL = "outcome"
#: Key of the model array in the ``ArrayRecord`` both ways.
WEIGHTS_KEY = "weights"
#: The FedAvg weighting metric; every node reports 1 (equal weights, as the DP analysis assumes).
WEIGHT_METRIC = "weight"

#: Public (centre, scale) per feature, fixed with the schema (plausible ranges for the population,
#: not estimates from anyone's data): standardising with them releases nothing.
STANDARDISATION: Mapping[str, tuple[float, float]] = {
    "age_years": (9.0, 5.0),
    "deprivation_quintile": (3.0, 1.4),
    "prior_referrals": (1.0, 1.5),
    "school_absence_rate": (0.1, 0.1),
    "household_size": (4.0, 1.5),
}

#: The true coefficients the synthetic generator draws outcomes from (on standardised features).
_TRUE_COEF = np.array([-0.3, 0.6, 0.9, 0.7, 0.2])
_TRUE_INTERCEPT = -1.5


class HorizontalSettings(PplinkModel):
    """How a horizontal FedAvg run is configured (sent to the ServerApp as JSON in the run config).

    Attributes:
        rounds: FedAvg rounds; each is one Gaussian release on the ledger.
        noise_multiplier: z; the noise on the *sum* of clipped updates has standard deviation
            ``z * clipping_norm`` (Flower adds ``z * C / n`` to their mean).
        clipping_norm: C, the L2 bound on each agency's model update per round.
        local_epochs: full-batch gradient steps each node takes per round.
        learning_rate: local gradient-descent step size.
        l2_penalty: local ridge penalty on the weights (not the intercept).
    """

    rounds: Annotated[int, Field(ge=1, le=10_000)] = 10
    noise_multiplier: Annotated[float, Field(gt=0.0, allow_inf_nan=False)] = 1.0
    clipping_norm: Annotated[float, Field(gt=0.0, allow_inf_nan=False)] = 1.0
    local_epochs: Annotated[int, Field(ge=1, le=1000)] = 5
    learning_rate: Annotated[float, Field(gt=0.0, allow_inf_nan=False)] = 0.5
    l2_penalty: Annotated[float, Field(ge=0.0, allow_inf_nan=False)] = 0.0


def round_rho(noise_multiplier: float) -> float:
    """The zCDP cost of one round for one agency's update: ``1 / (2 z**2)``.

    Adding or removing one agency moves the sum of clipped updates by at most C (L2); the noise on
    that sum has standard deviation ``z * C``; so the round is a Gaussian mechanism with
    sensitivity 1 and sigma z in units of C.

    >>> round_rho(1.0), round_rho(2.0)
    (0.5, 0.125)
    """
    return 1.0 / (2.0 * noise_multiplier**2)


def run_rho(settings: HorizontalSettings) -> float:
    """The zCDP cost of a whole run: ``rounds / (2 z**2)`` (zCDP composes by addition).

    >>> run_rho(HorizontalSettings(rounds=4, noise_multiplier=2.0))
    0.5
    """
    return settings.rounds * round_rho(settings.noise_multiplier)


def initial_weights() -> np.ndarray:
    """The starting model: all zeros (one weight per feature, then the intercept)."""
    return np.zeros(len(FEATURES) + 1, dtype=np.float64)


def standardise(features: np.ndarray) -> np.ndarray:
    """Standardise raw feature columns with the public constants.

    >>> standardise(np.array([[9.0, 3.0, 1.0, 0.1, 4.0]])).tolist()
    [[0.0, 0.0, 0.0, 0.0, 0.0]]
    """
    centre = np.array([STANDARDISATION[f][0] for f in FEATURES])
    scale = np.array([STANDARDISATION[f][1] for f in FEATURES])
    return (np.asarray(features, dtype=np.float64) - centre) / scale


def predict_logits(weights: np.ndarray, features: np.ndarray) -> np.ndarray:
    """Logits of raw (unstandardised) feature rows under ``weights`` (intercept last)."""
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (len(FEATURES) + 1,):
        raise ValueError(f"the model has {w.shape} weights; {len(FEATURES) + 1} expected")
    return standardise(features) @ w[:-1] + w[-1]


@dataclass(frozen=True)
class AreaTable:
    """One node's local table: raw features (rows x :data:`FEATURES`) and 0/1 outcomes."""

    area: str
    features: np.ndarray
    labels: np.ndarray


def synth_area_tables(people: int, areas: Sequence[str] = ("north", "central", "south"), *,
                      seed: int = 0) -> dict[str, AreaTable]:
    """Seeded synthetic people split over areas, each with its own feature mix (not IID).

    Every area draws the same features from slightly different distributions (deprivation and
    referrals shift by area) and the outcome from one shared logistic model, so a pooled model is
    the right target and an area-only model is noisier. Synthetic people only.

    Args:
        people: total people (split as evenly as possible over the areas).
        areas: area names (each becomes one node).
        seed: the same seed gives the same tables.

    >>> tables = synth_area_tables(30, ("a", "b"), seed=1)
    >>> [t.features.shape for t in tables.values()]
    [(15, 5), (15, 5)]
    """
    if people < len(areas) or not areas:
        raise ValueError("need at least one person per area and at least one area")
    rng = np.random.default_rng(seed)
    tables: dict[str, AreaTable] = {}
    sizes = [people // len(areas) + (1 if i < people % len(areas) else 0) for i in range(len(areas))]
    for i, (area, n) in enumerate(zip(areas, sizes, strict=True)):
        shift = (i - (len(areas) - 1) / 2.0) / max(1, len(areas))
        age = rng.integers(0, 19, n).astype(np.float64)
        quintile = np.clip(np.round(rng.normal(3.0 + 1.5 * shift, 1.3, n)), 1, 5)
        referrals = rng.poisson(np.exp(0.2 * (quintile - 3.0) + shift), n).astype(np.float64)
        absence = np.clip(rng.beta(2.0, 18.0, n) + 0.02 * (quintile - 3.0), 0.0, 1.0)
        household = np.clip(rng.poisson(3.0, n) + 1, 1, 12).astype(np.float64)
        features = np.column_stack([age, quintile, referrals, absence, household])
        p = 1.0 / (1.0 + np.exp(-(standardise(features) @ _TRUE_COEF + _TRUE_INTERCEPT)))
        labels = (rng.random(n) < p).astype(np.int64)
        tables[area] = AreaTable(area=area, features=features, labels=labels)
    return tables


def write_area_csv(table: AreaTable, path: Path) -> None:
    """Write a node's table as CSV (header :data:`FEATURES` then :data:`LABEL`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow([*FEATURES, LABEL])
        for row, label in zip(table.features, table.labels, strict=True):
            writer.writerow([repr(float(v)) for v in row] + [int(label)])


def read_area_csv(path: Path, area: str = "") -> AreaTable:
    """Read a node's local table.

    Raises:
        RecordValidationError: a missing column, or a value that is not a finite number (or an
            outcome not 0/1), naming the file, row and field (never the value).
    """
    path = Path(path)
    try:
        fh = open(path, newline="", encoding="utf-8")  # noqa: SIM115 - closed below
    except OSError as exc:
        raise RecordValidationError(f"{path}: cannot read ({exc.strerror})") from None
    with fh:
        reader = csv.DictReader(fh)
        missing = [c for c in (*FEATURES, LABEL) if c not in (reader.fieldnames or ())]
        if missing:
            raise RecordValidationError(f"{path}: missing column(s) {', '.join(missing)}")
        rows: list[list[float]] = []
        labels: list[int] = []
        for lineno, record in enumerate(reader, start=2):
            values = []
            for column in FEATURES:
                try:
                    value = float(record[column])
                except (TypeError, ValueError):
                    value = math.nan
                if not math.isfinite(value):
                    raise RecordValidationError(f"{path}: row {lineno}, field {column}: not a finite number")
                values.append(value)
            if record[LABEL] not in ("0", "1"):
                raise RecordValidationError(f"{path}: row {lineno}, field {LABEL}: must be 0 or 1")
            rows.append(values)
            labels.append(int(record[LABEL]))
    if not rows:
        raise RecordValidationError(f"{path}: no rows")
    return AreaTable(area=area or path.stem, features=np.array(rows, dtype=np.float64).reshape(-1, len(FEATURES)),
                     labels=np.array(labels, dtype=np.int64))

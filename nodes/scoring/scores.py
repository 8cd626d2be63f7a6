"""The label owner's score file: one line per own record, and the released evaluation beside it.

A score is a prompt for a second look by a person, never a decision; the file and its note are
written with owner-only permissions and never leave the label owner's node.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pplink.atomic import atomic_file

__all__ = ["SCORES_HEADER", "ScoreRow", "write_scores"]


#: Columns of the label owner's score file.
SCORES_HEADER = ("record_id", "entity_id", "score", "percentile", "in_holdout", "second_look")
_SCORES_NOTE = (
    "These scores are for {owner}'s own records only, for a person to take a second look.",
    "A score is a prompt for a second look by a person, never a decision about a family.",
    "The model's evaluation on held-out people, as released with differential privacy:",
)


@dataclass(frozen=True)
class ScoreRow:
    """One of the label owner's own records with its score: a prompt for a second look, never a decision.

    Attributes:
        record_id: the label owner's own record id.
        entity_id: the linked entity's pseudonym.
        score: the model's probability of the outcome.
        percentile: the score's rank among the label owner's own people (100 = highest).
        in_holdout: whether the person was held out of training (their score is out-of-sample).
        second_look: at or above the released top-share threshold.
    """

    record_id: str
    entity_id: str
    score: float
    percentile: float
    in_holdout: bool
    second_look: bool


def _write_private(path: Path, write: object) -> None:
    with atomic_file(path, mode=0o600, text=True) as fh:
        write(fh)  # type: ignore[operator]


def write_scores(path: Path, rows: Sequence[ScoreRow], *, evaluation_lines: Sequence[str], owner: str = "") -> Path:
    """Write the label owner's scores (owner-only permissions) and, beside them, the model's evaluation.

    ``<path>`` gets one CSV line per record (:data:`SCORES_HEADER`); ``<stem>-evaluation.txt``
    says what a score is for and gives the released evaluation, so the two are read together.

    Returns:
        The evaluation file's path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)

    def scores(fh: object) -> None:
        writer = csv.writer(fh, lineterminator="\n")  # type: ignore[arg-type]
        writer.writerow(SCORES_HEADER)
        for r in rows:
            writer.writerow((r.record_id, r.entity_id, f"{r.score:.4f}", f"{r.percentile:.1f}",
                             "yes" if r.in_holdout else "no", "yes" if r.second_look else "no"))

    note = path.with_name(f"{path.stem}-evaluation.txt")
    text = "\n".join([*(line.format(owner=owner or "the label owner") for line in _SCORES_NOTE),
                      *evaluation_lines]) + "\n"
    _write_private(path, scores)
    _write_private(note, lambda fh: fh.write(text))
    return note

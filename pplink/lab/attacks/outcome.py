"""The scored result every attack returns."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

__all__ = ["AttackOutcome"]


@dataclass(frozen=True)
class AttackOutcome:
    """How well one attack re-identified records of one encoding, scored against the truth.

    Attributes:
        attack: ``frequency``, ``frequency-cluster``, ``pattern`` or ``graph``.
        target: the field whose values the attack recovers, or ``record`` (the graph attack maps
            encodings to the attacker's own records).
        records: records attacked (the denominator of :attr:`rate`).
        guessed: records the attack named a value (or record) for.
        correct: guesses that were right.
        top_n: for the frequency attacks, how many of the most frequent values were tried.
        values_recovered: of those ``top_n`` values, how many were placed on the right encodings.
        detail: attack-specific figures (overlap, patterns found, ...).

    Examples:
        >>> o = AttackOutcome("pattern", "given_name", records=200, guessed=50, correct=40)
        >>> o.precision, o.rate
        (0.8, 0.2)
    """

    attack: str
    target: str
    records: int
    guessed: int
    correct: int
    top_n: int | None = None
    values_recovered: int | None = None
    detail: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def precision(self) -> float:
        """Share of guesses that were right (0 when nothing was guessed)."""
        return self.correct / self.guessed if self.guessed else 0.0

    @property
    def rate(self) -> float:
        """Share of all attacked records re-identified correctly."""
        return self.correct / self.records if self.records else 0.0

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dict, precision and rate included."""
        return {
            "attack": self.attack,
            "target": self.target,
            "records": self.records,
            "guessed": self.guessed,
            "correct": self.correct,
            "precision": round(self.precision, 4),
            "rate": round(self.rate, 4),
            "top_n": self.top_n,
            "values_recovered": self.values_recovered,
            "detail": dict(self.detail),
        }

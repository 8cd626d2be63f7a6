"""The agencies of a match round as the coordinator reaches them: :class:`MatchNodes`.

One round function (:func:`coordinator.linkage.round_runner.run_round`) serves every transport. A
transport implements :class:`MatchNodes`, one batch call per step, so that a step's messages to
every agency go out together:

* :class:`FileMatchNodes` (here): the ``.enc`` files an operator hands to ``pplink coordinator
  match``. Every file is read and verified at once; the maps are delivered by publishing the
  round folder, from which each agency resolves later (``pplink node resolve``).
* ``coordinator.flower.match_round.FlowerMatchNodes``: the agencies' SuperNodes over a Flower
  ``Grid`` (a SuperLink's, or :class:`pplink.transport.inprocess.InProcessGrid` in tests and demos).

A step returns what it got from each agency that answered usably, and for every other agency a
reason (a *problem*, without record values); the round function decides what the problems mean.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from coordinator.linkage.match_round import load_inputs
from pplink.agreement import AgreementConfig
from pplink.encfile import EncodingsFile

__all__ = ["FileMatchNodes", "MatchNodes", "PartyMap"]


@dataclass(frozen=True)
class PartyMap:
    """One agency's pseudonym map: for every row it sent, in order, its token and its entity.

    Attributes:
        party: the agency.
        tokens: ``(rows, 16)`` ``uint8`` row tokens, as in the agency's encodings.
        entities: ``(rows, 16)`` ``uint8`` entity pseudonyms, row for row.
    """

    party: str
    tokens: np.ndarray
    entities: np.ndarray

    @property
    def rows(self) -> int:
        """How many rows the map has (every row the agency sent, linked or not)."""
        return int(self.tokens.shape[0])


class MatchNodes(Protocol):
    """What the round function asks of the agencies (one batch call per step)."""

    def connect(self, agencies: Sequence[str]) -> tuple[tuple[str, ...], dict[str, str]]:
        """Find the agencies that can take part.

        Returns:
            The agencies that can be asked (in the order given), and per other agency why not.
        """
        ...

    def encode(self, parties: Sequence[str]) -> tuple[dict[str, EncodingsFile], dict[str, str]]:
        """Obtain each party's verified encodings.

        Returns:
            Per party that sent usable encodings, its file, in match order; per other party, why not.

        Raises:
            PplinkError: a failure that ends the round whatever the agreement allows.
        """
        ...

    def resolve(self, maps: Mapping[str, PartyMap]) -> tuple[tuple[str, ...], dict[str, str]]:
        """Deliver each party its own map (only its own); each keeps its ``record_id,entity_id`` result.

        Returns:
            The parties that wrote this round's result, and per other party why not.
        """
        ...

    def rollback(self, parties: Sequence[str]) -> dict[str, str]:
        """Ask parties that wrote this round's result to put their previous one back.

        Returns:
            Per party that could not, why not.
        """
        ...


class FileMatchNodes:
    """The file-based path: the agencies' uploaded ``.enc`` files.

    Args:
        agreement: the validated agreement.
        paths: the uploaded encodings files, in the order they were given (the match order).
        clks: ``{party: path}`` of anonlink-client / clkhash JSON files (parties the agreement marks
            ``encodings = "clkhash-json"``).
    """

    def __init__(self, agreement: AgreementConfig, paths: Sequence[Path],
                 clks: Mapping[str, Path] | None = None) -> None:
        self.agreement = agreement
        self.paths = [Path(p) for p in paths]
        self.clks = dict(clks or {})

    def connect(self, agencies: Sequence[str]) -> tuple[tuple[str, ...], dict[str, str]]:
        """Every agency can be asked: which of them sent a file shows when the files are read."""
        return tuple(agencies), {}

    def encode(self, parties: Sequence[str]) -> tuple[dict[str, EncodingsFile], dict[str, str]]:
        """Read and verify every file (:func:`~coordinator.linkage.match_round.load_inputs`).

        Raises:
            EncodingFileError, SignatureError, AgreementMismatchError: a file fails verification.
            MatchError: two files from one party, a replayed file, fewer than two agencies, or a
                missing agency when the agreement does not allow a round without it.
        """
        files = {f.header.party: f for f in load_inputs(self.agreement, self.paths, self.clks)}
        return files, {p: "no encodings file given" for p in parties if p not in files}

    def resolve(self, maps: Mapping[str, PartyMap]) -> tuple[tuple[str, ...], dict[str, str]]:
        """Nothing to send: each map is in the published round folder, where its agency reads it."""
        return tuple(maps), {}

    def rollback(self, parties: Sequence[str]) -> dict[str, str]:
        """Nothing to undo: no agency has resolved anything of this round yet."""
        return {}

"""Frequency alignment: rank encodings by how often they occur, rank public values likewise, align.

An encoding that depends on one value alone (an attribute-level Bloom filter of a name) repeats
exactly as often as the value does, so the most frequent encoding is almost surely the most frequent
name. Typos and nicknames split a value's encodings, so the clustered variant first groups
near-identical encodings (Dice at or above a threshold, 0.9 by default) and ranks the groups.
A record-level CLK repeats only when a whole record does, so its frequencies follow people, not
names, and the alignment should fail: the attack measures whether it does.

The attacker skips the all-zero encoding (a missing value) and assigns the ``i``-th largest group
the ``i``-th most frequent public value, for the ``top_n`` largest groups.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np

from pplink.lab.attacks._bits import leader_clusters
from pplink.lab.attacks.outcome import AttackOutcome

__all__ = ["frequency_attack"]


def _distinct(clks: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct encodings, the distinct index of every row, and each distinct encoding's count."""
    rows = np.ascontiguousarray(clks, dtype=np.uint8)
    keys = rows.view(np.dtype((np.void, rows.shape[1]))).ravel()
    _, first, inverse, counts = np.unique(keys, return_index=True, return_inverse=True, return_counts=True)
    return rows[first], inverse.ravel(), counts


def frequency_attack(
    clks: np.ndarray,
    public: Sequence[tuple[str, int]],
    truth: Sequence[str],
    *,
    target: str,
    top_n: int = 20,
    cluster_threshold: float | None = None,
) -> AttackOutcome:
    """Align the most frequent encodings (or clusters of them) with the most frequent public values.

    Args:
        clks: the encodings the attacker holds, packed.
        public: the attacker's public list, ``(value, count)`` pairs, most frequent first.
        truth: the true (normalised) value of ``target`` for every encoding: used only to score.
        target: the field attacked, for the report.
        top_n: how many of the most frequent groups to name.
        cluster_threshold: ``None`` ranks exact duplicates; a Dice threshold (0.9) ranks groups
            of near-identical encodings.

    Returns:
        Records guessed (the members of the ``top_n`` groups), those right, and how many of the
        ``top_n`` values landed on a group whose most common true value they are.
    """
    if len(truth) != clks.shape[0]:
        raise ValueError("truth must give one value per encoding")
    distinct, inverse, counts = _distinct(clks)
    if cluster_threshold is None:
        group_of_distinct = np.arange(distinct.shape[0])
    else:
        group_of_distinct = leader_clusters(distinct, cluster_threshold, counts)
    group = group_of_distinct[inverse]
    empty = ~distinct.any(axis=1)
    empty_groups = set(group_of_distinct[empty].tolist())
    sizes = np.bincount(group)
    order = [g for g in np.lexsort((np.arange(sizes.size), -sizes)).tolist() if g not in empty_groups]
    guesses = {g: public[i][0] for i, g in enumerate(order[: min(top_n, len(public))])}
    members: dict[int, list[int]] = {g: [] for g in guesses}
    for row, g in enumerate(group.tolist()):
        if g in members:
            members[g].append(row)
    guessed = correct = recovered = 0
    for g, value in guesses.items():
        values = [truth[row] for row in members[g]]
        guessed += len(values)
        hits = sum(v == value for v in values)
        correct += hits
        most_common = Counter(values).most_common(1)[0]
        recovered += int(most_common[0] == value)
    name = "frequency" if cluster_threshold is None else "frequency-cluster"
    detail = {"groups": int(sizes.size), "largest_group": int(sizes.max(initial=0))}
    if cluster_threshold is not None:
        detail["cluster_threshold"] = cluster_threshold
    return AttackOutcome(name, target, records=len(truth), guessed=guessed, correct=correct,
                         top_n=top_n, values_recovered=recovered, detail=detail)

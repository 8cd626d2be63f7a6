"""Similarity-graph matching: align the encodings' similarity graph with the attacker's own.

In the style of Vidanage, Ranbaduge, Christen and Schnell ("A graph matching attack on privacy-
preserving record linkage", CIKM 2020), sharpened with seed-and-extend propagation (Narayanan and
Shmatikov, "De-anonymizing social networks", 2009). The attacker holds a plaintext database that
overlaps the encoded records. It cannot encode with the agencies' secret, but it knows the schema
from the agreement, so it encodes its own records under a key of its own: Dice scores between its
encodings then follow the real encodings' scores (same fields, weights, filter length and
hardening), apart from hash-collision noise. Similarity is what linkage must preserve, so this
attack works against any encoding that links well; noise (flips, folding), salting (names then
agree only within a birth year, which removes most of the structure between strangers) and a
small overlap slow it down (docs/hardening.md).

1. **Graphs.** Each side first collapses near-identical encodings (one person's records at several
   agencies) into one node; edges join nodes whose Dice is at least ``edge_threshold`` (each node
   keeps its ``neighbours`` best).
2. **Seeds.** A node's feature is its sorted list of edge scores. Nodes with a strong edge are
   matched to the node on the other side with the nearest feature, when each is the other's
   nearest and clearly nearer than the runner-up. Most seeds are wrong.
3. **Bootstrap.** With the seeds as anchors, every node gets a profile: its Dice scores to the
   anchors on its own side. A wrong anchor only adds an uninformative dimension, so the few right
   ones still make a handful of true pairs mutually nearest: those become the anchors.
4. **Extend.** Each round takes the most confident matches as anchors, twice as many as the
   round before, and re-derives every match from the profiles, until the matches stop growing.
   A run that takes off ends with thousands of consistent matches, one that does not with few,
   so the attacker can tell without any ground truth; it tries a few seed sets and keeps the
   run with the most matches.

Given ``known`` pairs (an attacker who already knows a few matches), steps 2 and 3 are skipped:
the known pairs are the first anchors. The outcome counts an encoding as re-identified when it is
matched to an attacker record of the same person.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pplink.lab.attacks._bits import dice_to_rows, leader_clusters_from_pairs, neighbours
from pplink.lab.attacks.outcome import AttackOutcome

__all__ = ["GraphAttackSettings", "graph_attack"]

#: A run with fewer matches than this after a few rounds has not taken off.
_TAKE_OFF = 50
#: Neighbours fetched per record: enough to hold its near-duplicates and its best edges.
_CANDIDATES = 30


@dataclass(frozen=True)
class GraphAttackSettings:
    """Tuning of the graph attack.

    Attributes:
        duplicate_threshold: each side first collapses encodings at least this similar (one
            person's records at several agencies) into one node.
        edge_threshold: Dice at or above which two nodes share an edge.
        neighbours: edges kept per node (the best).
        seed_threshold: nodes whose best edge is below this are not used as seeds.
        seed_ratio: a seed's feature distance must be below this share of the runner-up's.
        bootstrap_ratio: the looser ratio test of the bootstrap step.
        bootstraps: seed sets tried (the most confident ``max_anchors`` seeds, then halves).
        rounds: rounds of extension.
        max_anchors: anchors used per round (the most confident matches).
        match_ratio: a profile match's distance must be below this share of the runner-up's.
    """

    duplicate_threshold: float = 0.85
    edge_threshold: float = 0.5
    neighbours: int = 10
    seed_threshold: float = 0.6
    seed_ratio: float = 0.5
    bootstrap_ratio: float = 0.95
    bootstraps: int = 3
    rounds: int = 10
    max_anchors: int = 200
    match_ratio: float = 0.8


def _graph(clks: np.ndarray, settings: GraphAttackSettings) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Collapse near-duplicates and describe each remaining node by its best edges.

    One all-pairs pass serves both: a node's near-duplicates are among its best
    ``_CANDIDATES`` neighbours.

    Returns:
        The node of every row, one representative row per node, and each node's
        feature: its best ``neighbours`` edge scores to other nodes, descending, padded with the
        edge threshold.
    """
    n = clks.shape[0]
    rows, cols, sims = neighbours(clks, settings.edge_threshold, _CANDIDATES)
    close = sims >= settings.duplicate_threshold
    dup_rows = rows[close]
    cluster = leader_clusters_from_pairs(n, dup_rows, cols[close], np.bincount(dup_rows, minlength=n) + 1)
    _, first = np.unique(cluster, return_index=True)
    # Nodes are numbered in row order of their representatives, so the edge list stays sorted.
    order = np.argsort(first, kind="stable")
    representative = first[order]
    node_of_cluster = np.empty(first.size, dtype=np.int64)
    node_of_cluster[order] = np.arange(first.size)
    is_rep = np.zeros(n, dtype=bool)
    is_rep[representative] = True
    node_of = np.full(n, -1, dtype=np.int64)
    node_of[representative] = np.arange(representative.size)
    keep = is_rep[rows] & is_rep[cols]
    rows, sims = node_of[rows[keep]], sims[keep]  # still sorted by row, then by decreasing score
    starts = np.searchsorted(rows, np.arange(representative.size))
    rank = np.arange(rows.size) - starts[rows]
    inside = rank < settings.neighbours
    features = np.full((representative.size, settings.neighbours), settings.edge_threshold, dtype=np.float32)
    features[rows[inside], rank[inside]] = sims[inside]
    return node_of_cluster[cluster], representative, features


def _nearest(left: np.ndarray, right: np.ndarray,
             block: int = 2048) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Squared-distance nearest neighbours both ways.

    Returns:
        For each left row: nearest right row, its distance, the runner-up's distance; and for each
        right row its nearest left row.
    """
    left = left.astype(np.float32)
    right = right.astype(np.float32)
    best = np.zeros(left.shape[0], dtype=np.int64)
    best_d = np.zeros(left.shape[0], dtype=np.float32)
    second_d = np.full(left.shape[0], np.inf, dtype=np.float32)
    back = np.zeros(right.shape[0], dtype=np.int64)
    back_d = np.full(right.shape[0], np.inf, dtype=np.float32)
    right_sq = (right**2).sum(axis=1)
    right_t = np.ascontiguousarray(right.T)
    for start in range(0, left.shape[0], block):
        part = left[start : start + block]
        d = part @ right_t
        d *= -2.0
        d += (part**2).sum(axis=1)[:, None]
        d += right_sq[None, :]
        np.maximum(d, 0.0, out=d)
        rows = np.arange(d.shape[0])
        first = np.argmin(d, axis=1)
        best[start : start + block] = first
        best_d[start : start + block] = d[rows, first]
        if d.shape[1] >= 2:
            d[rows, first] = np.inf
            second_d[start : start + block] = d.min(axis=1)
            d[rows, first] = best_d[start : start + block]
        col_best = np.argmin(d, axis=0)
        col_d = d[col_best, np.arange(d.shape[1])]
        better = col_d < back_d
        back[better] = col_best[better] + start
        back_d[better] = col_d[better]
    return best, best_d, second_d, back


def _mutual_matches(left: np.ndarray, right: np.ndarray, ratio: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mutually nearest pairs clearly nearer than the runner-up: (left rows, right rows, margin).

    The margin is the best distance over the runner-up's: lower is more confident.
    """
    if left.shape[0] == 0 or right.shape[0] == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, np.zeros(0)
    best, best_d, second_d, back = _nearest(left, right)
    rows = np.arange(left.shape[0])
    with np.errstate(divide="ignore", invalid="ignore"):
        margin = np.where(second_d > 0, best_d / second_d, 1.0)
    keep = (back[best] == rows) & (margin < ratio)
    return rows[keep], best[keep], margin[keep]


def _profile_matches(nodes_e: np.ndarray, nodes_r: np.ndarray, anchors_e: np.ndarray, anchors_r: np.ndarray,
                     ratio: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    profile_e = dice_to_rows(nodes_e, nodes_e[anchors_e])
    profile_r = dice_to_rows(nodes_r, nodes_r[anchors_r])
    return _mutual_matches(profile_e, profile_r, ratio)


def _extend(nodes_e: np.ndarray, nodes_r: np.ndarray, seeds_e: np.ndarray, seeds_r: np.ndarray,
            settings: GraphAttackSettings, ratio: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Bootstrap from (mostly wrong) seed anchors, then grow the anchors round by round."""
    match_e, match_r, margin = _profile_matches(nodes_e, nodes_r, seeds_e, seeds_r,
                                                settings.bootstrap_ratio if ratio is None else ratio)
    if match_e.size < 3:
        return match_e, match_r
    take = match_e.size
    previous = 0
    for round_number in range(settings.rounds):
        if match_e.size < 2:
            break
        order = np.argsort(margin, kind="stable")[:take]
        match_e, match_r, margin = _profile_matches(nodes_e, nodes_r, match_e[order], match_r[order],
                                                    settings.match_ratio)
        if take >= settings.max_anchors and match_e.size <= previous * 1.01:
            break  # converged
        if round_number >= 3 and match_e.size < _TAKE_OFF:
            break  # never took off: the attacker sees it and stops
        previous = match_e.size
        take = min(2 * take, settings.max_anchors)
    return match_e, match_r


def _structural_run(nodes_e: np.ndarray, nodes_r: np.ndarray, features_e: np.ndarray, features_r: np.ndarray,
                    settings: GraphAttackSettings) -> tuple[int, tuple[np.ndarray, np.ndarray]]:
    """Seed from node features, try a few seed sets, keep the run with the most matches."""
    strong_e = np.flatnonzero(features_e[:, 0] >= settings.seed_threshold)
    strong_r = np.flatnonzero(features_r[:, 0] >= settings.seed_threshold)
    left, right, margin = _mutual_matches(features_e[strong_e], features_r[strong_r], settings.seed_ratio)
    seeds_e, seeds_r = strong_e[left], strong_r[right]
    by_margin = np.argsort(margin, kind="stable")[: settings.max_anchors]
    tries = [by_margin] + [by_margin[t - 1 :: 2] for t in range(1, settings.bootstraps)]
    best = (np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64))
    for anchors in tries:
        if anchors.size:
            found = _extend(nodes_e, nodes_r, seeds_e[anchors], seeds_r[anchors], settings)
            if found[0].size > best[0].size:
                best = found
    return int(seeds_e.size), best


def graph_attack(
    encoded: np.ndarray,
    reference: np.ndarray,
    encoded_persons: np.ndarray,
    reference_persons: np.ndarray,
    *,
    overlap: float | None = None,
    known: tuple[np.ndarray, np.ndarray] | None = None,
    settings: GraphAttackSettings = GraphAttackSettings(),
) -> AttackOutcome:
    """Match encodings to the attacker's records by aligning the two similarity graphs.

    Args:
        encoded: the encodings the attacker holds, packed.
        reference: the attacker's own encodings of its plaintext records (same schema, its own key).
        encoded_persons: person of each encoding: used only to score.
        reference_persons: person of each attacker record: used only to score.
        overlap: the share of encoded records the attacker's database holds, for the report.
        known: pairs ``(encoded rows, attacker rows)`` the attacker already knows to match (from
            an earlier breach, say); they replace the structural seeds.
        settings: tuning.

    Returns:
        Encodings matched to an attacker record (guessed) and matched to one of the same person
        (correct).
    """
    if encoded.shape[1] != reference.shape[1]:
        raise ValueError("encodings and the attacker's encodings must have one filter length")
    node_of_e, rep_e, features_e = _graph(encoded, settings)
    node_of_r, rep_r, features_r = _graph(reference, settings)
    nodes_e, nodes_r = encoded[rep_e], reference[rep_r]
    if known is not None:
        row_node_e, row_node_r = node_of_e[np.asarray(known[0])], node_of_r[np.asarray(known[1])]
        seeds = int(row_node_e.size)
        match_e, match_r = _extend(nodes_e, nodes_r, row_node_e, row_node_r, settings, settings.match_ratio)
    else:
        seeds, (match_e, match_r) = _structural_run(nodes_e, nodes_r, features_e, features_r, settings)
    node_match = np.full(nodes_e.shape[0], -1, dtype=np.int64)
    node_match[match_e] = rep_r[match_r]
    record_match = node_match[node_of_e]
    guessed = record_match >= 0
    correct = int((encoded_persons[guessed] == reference_persons[record_match[guessed]]).sum())
    detail: dict[str, float | int] = {"seeds": seeds, "known_pairs": 0 if known is None else seeds,
                                      "attacker_records": int(reference.shape[0])}
    if overlap is not None:
        detail["overlap"] = overlap
    return AttackOutcome("graph", "record", records=int(encoded.shape[0]), guessed=int(guessed.sum()),
                         correct=correct, detail=detail)

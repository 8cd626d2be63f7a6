"""Pattern mining: find the bit positions each frequent q-gram sets, name them, read values back.

In the style of the pattern-mining attacks of Christen, Ranbaduge, Vatsalan and Schnell ("Precise
and fast cryptanalysis for Bloom filter based privacy-preserving record linkage", IEEE TKDE 2019):
every encoding whose value holds a q-gram has all ``k`` of that q-gram's positions set, so those
positions are set together far more often than chance. The attacker, who holds the encodings and
a public list of the target field's values with their frequencies, proceeds in three steps:

1. **Mine patterns.** From the positions' pairwise correlation (phi) matrix, grow from every
   position the clique of the ``k`` positions most correlated with it and with each other; keep the
   most cohesive cliques that do not overlap. Each is, hopefully, one q-gram's positions. An
   encoding *holds* a pattern when at least ``presence`` of its positions are set.
2. **Name patterns.** The public list gives every q-gram's frequency and every pair of q-grams'
   joint frequency; the encodings give the same for the patterns. Patterns are named greedily,
   most frequent first, by the q-gram whose frequency and joint frequencies with the patterns
   already named fit best, then refined until no renaming helps. A pattern whose joint frequencies
   fit independence better than any q-gram (a token of another field, in a record-level CLK)
   stays unnamed.
3. **Re-identify.** Each public value has a signature over the named q-grams (holds each or not);
   so has each encoding. An encoding whose signature matches exactly one public value is
   re-identified as that value (Christen et al.'s 1-1 matches).

The attacker knows the agreement, hence the target field's ``bits_per_token`` and n-gram size.
What the hardening does to this: a record-level CLK adds every other field's positions as
background, which weakens the correlations; XOR folding breaks "q-gram present implies position
set"; salting a name with the year of birth splits each q-gram into one token per year.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from pplink.lab.attacks._bits import unpack
from pplink.lab.attacks.outcome import AttackOutcome

__all__ = ["PatternAttackSettings", "pattern_attack", "qgrams"]

_SALT_SEPARATOR = "\x1f"
#: Sweeps of renaming every pattern given the others; naming settles in two or three.
_NAMING_SWEEPS = 6


def qgrams(value: str, n: int = 2) -> list[str]:
    """The q-grams clkhash hashes for ``value`` (padded with ``n - 1`` spaces each side).

    >>> qgrams("ann")
    [' a', 'an', 'nn', 'n ']
    >>> qgrams("")
    []
    """
    if not value:
        return []
    padded = " " * (n - 1) + value + " " * (n - 1)
    return [padded[i : i + n] for i in range(len(padded) - n + 1)]


@dataclass(frozen=True)
class PatternAttackSettings:
    """Tuning of the pattern-mining attack.

    Attributes:
        min_support: q-grams and positions rarer than this share of encodings are ignored.
        presence: an encoding holds a pattern when at least this share of its positions are set
            (below 1 it tolerates flipped bits and a wrongly mined position or two).
        max_overlap: a clique sharing more than this share of its positions with a more cohesive
            one is dropped as a duplicate.
        refinements: rounds of re-choosing a clique's members by their mean correlation with it.
        candidates: q-grams considered per pattern, by closeness of frequency.
    """

    min_support: float = 0.02
    presence: float = 0.8
    max_overlap: float = 0.5
    refinements: int = 3
    candidates: int = 12


def _phi(bits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Position frequencies and the phi (Pearson) correlation matrix of positions."""
    n = bits.shape[0]
    as_float = bits.astype(np.float32)
    together = as_float.T @ as_float / n
    freq = bits.mean(axis=0)
    spread = np.sqrt(freq * (1 - freq))
    with np.errstate(invalid="ignore", divide="ignore"):
        phi = (together - np.outer(freq, freq)) / np.outer(spread, spread)
    phi = np.nan_to_num(phi, nan=0.0, posinf=0.0, neginf=0.0)
    np.fill_diagonal(phi, 0.0)
    return freq, phi


def _cliques(freq: np.ndarray, phi: np.ndarray, size: int, settings: PatternAttackSettings) -> list[np.ndarray]:
    """Cohesive sets of ``size`` positions, most cohesive first, overlapping little."""
    seeds = np.flatnonzero((freq >= settings.min_support) & (freq <= 0.98))
    found: dict[tuple[int, ...], float] = {}
    for seed in seeds.tolist():
        group = np.concatenate([[seed], np.argsort(-phi[seed], kind="stable")[: size - 1]])
        for _ in range(settings.refinements):
            score = phi[:, group].sum(axis=1) / (group.size - 1)
            group = np.sort(np.argsort(-score, kind="stable")[:size])
        key = tuple(group.tolist())
        if key not in found:
            found[key] = float(phi[np.ix_(group, group)].sum() / (size * (size - 1)))
    chosen: list[np.ndarray] = []
    taken = np.zeros(freq.size, dtype=np.int32)
    for key, _ in sorted(found.items(), key=lambda item: -item[1]):
        group = np.array(key)
        if taken[group].sum() <= settings.max_overlap * size:
            chosen.append(group)
            taken[group] += 1
    return chosen


def _tokens(value: str, ngram: int, salted: bool) -> set[str]:
    if not salted:
        return set(qgrams(value, ngram))
    # A salted value is "name<US>salt": its tokens are the name's q-grams, each with the salt.
    name, _, salt = value.partition(_SALT_SEPARATOR)
    return {f"{g}{_SALT_SEPARATOR}{salt}" for g in qgrams(name, ngram)}


def _gram_table(public: Sequence[tuple[str, int]], ngram: int,
                salted: bool) -> tuple[list[str], np.ndarray, np.ndarray, list[str]]:
    """Public values, their weights, the value x token incidence matrix and the tokens."""
    values = [v for v, _ in public]
    weights = np.array([c for _, c in public], dtype=np.float64)
    vocabulary: dict[str, int] = {}
    columns = [[vocabulary.setdefault(g, len(vocabulary)) for g in _tokens(v, ngram, salted)] for v in values]
    holds = np.zeros((len(values), len(vocabulary)), dtype=bool)
    for i, cols in enumerate(columns):
        holds[i, cols] = True
    return values, weights, holds, list(vocabulary)


def _name_patterns(observed: np.ndarray, expected: np.ndarray, n: int, settings: PatternAttackSettings) -> list[int]:
    """Name each pattern by a q-gram (or ``-1``): fit of frequencies and joint frequencies.

    Args:
        observed: ``(p, p)`` joint frequencies of the patterns (diagonal: frequencies).
        expected: ``(g, g)`` joint frequencies of the q-grams from the public list.
        n: number of encodings (sets the sampling noise).
        settings: tuning.
    """
    p = observed.shape[0]
    support_obs = np.diag(observed)
    support_exp = np.diag(expected)

    def noise(e: np.ndarray) -> np.ndarray:
        # Sampling noise plus a relative allowance for typos and a sample unlike the public list.
        return np.sqrt(np.clip(e, 1e-6, None) / n) + 0.1 * e + 0.002

    def cost(j: int, q: int, names: list[int]) -> float:
        total = abs(support_obs[j] - support_exp[q]) / float(noise(support_exp[q : q + 1])[0])
        named = [(i, names[i]) for i in range(p) if i != j and names[i] >= 0]
        if named:
            idx = np.array([i for i, _ in named])
            grams = np.array([g for _, g in named])
            e = expected[q, grams]
            total += float(np.sum(np.abs(observed[j, idx] - e) / noise(e)))
        return total

    def independent_cost(j: int, names: list[int]) -> float:
        idx = np.array([i for i in range(p) if i != j and names[i] >= 0], dtype=np.int64)
        if idx.size == 0:
            return math.inf
        e = support_obs[j] * support_obs[idx]
        return float(np.sum(np.abs(observed[j, idx] - e) / noise(e))) + 1.0

    order = np.argsort(-support_obs, kind="stable").tolist()
    names = [-1] * p
    for _ in range(_NAMING_SWEEPS):
        changed = False
        for j in order:
            used = {names[i] for i in range(p) if i != j}
            near = np.argsort(np.abs(support_exp - support_obs[j]), kind="stable")
            options = [int(q) for q in near[: settings.candidates + len(used)] if int(q) not in used]
            options = options[: settings.candidates]
            costs = [cost(j, q, names) for q in options]
            best = options[int(np.argmin(costs))] if options else -1
            if best >= 0 and min(costs) >= independent_cost(j, names):
                best = -1
            if best != names[j]:
                names[j] = best
                changed = True
        if not changed:
            break
    return names


def pattern_attack(
    clks: np.ndarray,
    public: Sequence[tuple[str, int]],
    truth: Sequence[str],
    *,
    target: str,
    bits_per_token: int,
    ngram: int = 2,
    salted: bool = False,
    settings: PatternAttackSettings = PatternAttackSettings(),
) -> AttackOutcome:
    r"""Mine q-gram bit patterns from the encodings and re-identify values of ``target``.

    Args:
        clks: the encodings the attacker holds, packed.
        public: the attacker's public list for the target field, ``(value, count)`` pairs.
        truth: the true (normalised) target value of every encoding: used only to score.
        target: the field attacked, for the report.
        bits_per_token: the target field's ``bits_per_token`` (public, in the agreement).
        ngram: the target field's n-gram size.
        salted: the field is salted (see :class:`pplink.agreement.Salt`): ``public`` and ``truth``
            then hold ``value + "\x1f" + salt`` and the attacker's tokens are (q-gram, salt)
            pairs, as a census of names by year of birth would give it.
        settings: tuning.

    Returns:
        Records re-identified: guessed are those whose signature matched exactly one public value.
    """
    if len(truth) != clks.shape[0]:
        raise ValueError("truth must give one value per encoding")
    if not public or clks.shape[0] == 0:
        return AttackOutcome("pattern", target, records=clks.shape[0], guessed=0, correct=0,
                             detail={"patterns": 0, "named": 0})
    bits = unpack(clks)
    n, filter_bits = bits.shape
    size = max(2, round(filter_bits * (1 - (1 - 1 / filter_bits) ** bits_per_token)))
    freq, phi = _phi(bits)
    cliques = _cliques(freq, phi, size, settings)
    holds_pattern = np.stack([bits[:, c].sum(axis=1) >= math.ceil(settings.presence * c.size) for c in cliques],
                             axis=1) if cliques else np.zeros((n, 0), dtype=bool)
    support = holds_pattern.mean(axis=0)
    keep = support >= settings.min_support
    cliques = [c for c, k in zip(cliques, keep.tolist(), strict=True) if k]
    holds_pattern = holds_pattern[:, keep]
    values, weights, holds, _ = _gram_table(public, ngram, salted)
    share = weights / weights.sum()
    gram_support = share @ holds
    frequent = np.flatnonzero(gram_support >= settings.min_support / 2)
    holds = holds[:, frequent]
    expected = (holds.T * share) @ holds.astype(np.float64)
    as_float = holds_pattern.astype(np.float32)
    observed = (as_float.T @ as_float / n).astype(np.float64)
    names = _name_patterns(observed, expected, n, settings) if cliques else []
    named = [j for j, q in enumerate(names) if q >= 0]
    guessed = correct = 0
    if named:
        record_sig = np.packbits(holds_pattern[:, named], axis=1)
        value_sig = np.packbits(holds[:, [names[j] for j in named]], axis=1)
        by_signature: dict[bytes, list[int]] = {}
        for i, sig in enumerate(value_sig):
            by_signature.setdefault(sig.tobytes(), []).append(i)
        for row, sig in enumerate(record_sig):
            matches = by_signature.get(sig.tobytes(), ())
            if len(matches) == 1:
                guessed += 1
                correct += int(values[matches[0]] == truth[row])
    detail = {"patterns": len(cliques), "named": len(named)}
    return AttackOutcome("pattern", target, records=n, guessed=guessed, correct=correct, detail=detail)

"""Run every attack against named encodings of one synthetic corpus, with linkage quality alongside.

:func:`run_attacks` attacks one encoding; :func:`sweep` does it for several (weak settings, the
defaults, hardening variants) and, when given a ``link`` function, also links the agencies'
encodings of each and scores the linkage against the truth, so that attack success and linkage
F1 sit side by side. ``link`` is passed in (the CLI passes :func:`coordinator.linkage.match.match_clks`)
because ``pplink`` does not import the coordinator.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from pplink.agreement import Hardening, IdentifierSchema, Salt
from pplink.errors import ConfigError
from pplink.lab.attacks.corpus import PlaintextCorpus, attacker_database, encode_corpus
from pplink.lab.attacks.frequency import frequency_attack
from pplink.lab.attacks.graph import GraphAttackSettings, graph_attack
from pplink.lab.attacks.outcome import AttackOutcome
from pplink.lab.attacks.pattern import PatternAttackSettings, pattern_attack

__all__ = [
    "ATTACKS",
    "AttackPlan",
    "LinkFunction",
    "SweepRow",
    "hardening_variants",
    "run_attacks",
    "sweep",
    "synthetic_key",
]

#: The attack families :class:`AttackPlan` can select.
ATTACKS = ("frequency", "pattern", "graph")

#: ``link(datasets, threshold) -> labels``: cluster labels per dataset, as ``match_clks`` gives.
LinkFunction = Callable[[Sequence[np.ndarray], float], Sequence[np.ndarray]]


@dataclass(frozen=True)
class AttackPlan:
    """Which attacks to run and how.

    Attributes:
        attacks: attack families to run (of :data:`ATTACKS`).
        targets: fields the frequency and pattern attacks go after (those in the schema).
        top_n: values the frequency attacks name.
        cluster_threshold: Dice threshold of the clustered frequency attack.
        overlaps: shares of the encoded records the graph attacker's database holds.
        known_pairs: also run the graph attack with this many matching pairs handed to the
            attacker (0: do not).
        presences: the pattern attack is run at each of these ``presence`` settings and the most
            successful run is reported: the attacker's best case (a folding- or flip-aware
            attacker lowers it), chosen with hindsight, so an upper bound on this attack.
        pattern: pattern-attack tuning (its ``presence`` is replaced by each of ``presences``).
        graph: graph-attack tuning.
    """

    attacks: tuple[str, ...] = ATTACKS
    targets: tuple[str, ...] = ("given_name", "surname")
    top_n: int = 20
    cluster_threshold: float = 0.9
    overlaps: tuple[float, ...] = (0.1, 0.5, 1.0)
    known_pairs: int = 25
    presences: tuple[float, ...] = (0.8, 0.6, 0.5)
    pattern: PatternAttackSettings = PatternAttackSettings()
    graph: GraphAttackSettings = GraphAttackSettings()

    def __post_init__(self) -> None:
        unknown = sorted(set(self.attacks) - set(ATTACKS))
        if unknown:
            raise ConfigError(f"unknown attack(s) {', '.join(unknown)}: choose from {', '.join(ATTACKS)}")
        if not self.presences or any(not 0.0 < p <= 1.0 for p in self.presences):
            raise ConfigError("presences must be shares in (0, 1], at least one")


@dataclass(frozen=True)
class SweepRow:
    """One named encoding: the attacks' outcomes and, when linked, pairwise linkage quality."""

    setting: str
    outcomes: list[AttackOutcome]
    fill: float
    linkage: Mapping[str, float] | None = field(default=None)


def synthetic_key(seed: int, role: str) -> bytes:
    """A reproducible 32-byte key for synthetic runs (never for real data).

    >>> synthetic_key(0, "agencies") == synthetic_key(0, "agencies") != synthetic_key(0, "attacker")
    True
    """
    return hashlib.sha256(f"pplink attack harness {role} {seed}".encode()).digest()


def hardening_variants(defaults: IdentifierSchema) -> dict[str, IdentifierSchema]:
    """The default fields and weights under each hardening the trade-off table compares."""
    salt = Salt(source="date_of_birth", fields=("given_name", "surname"), prefix=4)

    def hardened(**settings: object) -> IdentifierSchema:
        return defaults.model_copy(update={"hardening": Hardening.model_validate(settings)})

    return {
        "none": hardened(),
        "xor1": hardened(xor_folds=1),
        "flip0.02": hardened(flip_probability=0.02),
        "flip0.05": hardened(flip_probability=0.05),
        "salt-yob": hardened(salt=salt),
        "salt-yob+flip0.02": hardened(salt=salt, flip_probability=0.02),
        "salt-yob+xor1": hardened(salt=salt, xor_folds=1),
    }


def _salted(identifiers: IdentifierSchema, column: str) -> Salt | None:
    salt = identifiers.hardening.salt
    return salt if salt is not None and column in salt.fields else None


def _salted_values(corpus: PlaintextCorpus, column: str, salt: Salt) -> tuple[list[tuple[str, int]], list[str]]:
    """Public list and truth of ``value + separator + salt`` pairs.

    This is a salt-aware attacker's census (names by year of birth).
    """
    from collections import Counter

    at, source = corpus.columns.index(column), corpus.columns.index(salt.source)

    def joint(row: tuple[str, ...]) -> str:
        value = row[source][: salt.prefix] if salt.prefix else row[source]
        return f"{row[at]}\x1f{value}" if row[at] else ""

    truth = [joint(row) for row in corpus.records]
    public = Counter(joint(row) for row in corpus.records + corpus.outside if row[at]).most_common()
    return public, truth


def run_attacks(
    corpus: PlaintextCorpus,
    identifiers: IdentifierSchema,
    *,
    seed: int = 0,
    plan: AttackPlan = AttackPlan(),
    clks: np.ndarray | None = None,
) -> list[AttackOutcome]:
    """Encode the corpus with ``identifiers`` and run the planned attacks on it.

    Args:
        corpus: from :func:`pplink.lab.attacks.corpus.synth_corpus`.
        identifiers: the encoding under attack.
        seed: seeds the keys and the attacker's database.
        plan: which attacks, targets and overlaps.
        clks: the encodings, if already made with :func:`synthetic_key` ``(seed, "agencies")``.

    Returns:
        One outcome per attack, target and overlap.
    """
    if clks is None:
        clks = encode_corpus(corpus.records, identifiers, synthetic_key(seed, "agencies"))
    fields = {f.column: f for f in identifiers.fields}
    outcomes: list[AttackOutcome] = []
    for target in (t for t in plan.targets if t in fields):
        salt = _salted(identifiers, target)
        if salt is None:
            public, truth = corpus.public[target], corpus.column(target)
        else:
            public, truth = _salted_values(corpus, target, salt)
        if "frequency" in plan.attacks:
            for threshold in (None, plan.cluster_threshold):
                outcomes.append(frequency_attack(clks, public, truth, target=target, top_n=plan.top_n,
                                                 cluster_threshold=threshold))
        if "pattern" in plan.attacks:
            runs = [
                pattern_attack(clks, public, truth, target=target, bits_per_token=fields[target].bits_per_token,
                               ngram=fields[target].ngram, salted=salt is not None,
                               settings=replace(plan.pattern, presence=presence))
                for presence in plan.presences
            ]
            best = max(range(len(runs)), key=lambda i: (runs[i].correct, -i))
            outcomes.append(replace(runs[best], detail={**runs[best].detail, "presence": plan.presences[best]}))
    if "graph" in plan.attacks:
        # The attacker copies the schema (salting and folding are public) but adds no flips of
        # its own: noise on its side would only hurt it.
        mirror = identifiers.model_copy(
            update={"hardening": identifiers.hardening.model_copy(update={"flip_probability": 0.0})}
        )
        attacker_key = synthetic_key(seed, "attacker")
        for overlap in plan.overlaps:
            records, persons = attacker_database(corpus, overlap, seed)
            reference = encode_corpus(records, mirror, attacker_key)
            outcomes.append(graph_attack(clks, reference, corpus.persons, persons, overlap=overlap,
                                         settings=plan.graph))
            if plan.known_pairs and overlap > 0:
                known = _known_pairs(corpus, persons, plan.known_pairs, seed)
                outcomes.append(graph_attack(clks, reference, corpus.persons, persons, overlap=overlap,
                                             known=known, settings=plan.graph))
    return outcomes


def _known_pairs(corpus: PlaintextCorpus, reference_persons: np.ndarray, count: int,
                 seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``count`` random (encoded row, attacker row) pairs of one person."""
    first_row: dict[int, int] = {}
    for row, person in enumerate(reference_persons.tolist()):
        first_row.setdefault(person, row)
    candidates = [(i, first_row[p]) for i, p in enumerate(corpus.persons.tolist()) if p in first_row]
    rng = np.random.default_rng([seed, 9_173])
    picked = rng.choice(len(candidates), size=min(count, len(candidates)), replace=False)
    pairs = np.array([candidates[i] for i in sorted(picked.tolist())], dtype=np.int64).reshape(-1, 2)
    return pairs[:, 0], pairs[:, 1]


def _linkage(corpus: PlaintextCorpus, clks: np.ndarray, threshold: float, link: LinkFunction) -> dict[str, float]:
    from pplink.lab.linkage_eval import evaluate_linkage_by_agency

    datasets, truth, predicted = [], {}, {}
    for code, name in enumerate(corpus.agency_names):
        rows = np.flatnonzero(corpus.agencies == code)
        datasets.append(clks[rows])
        truth[name] = {str(r): int(corpus.persons[r]) for r in rows.tolist()}
    labels = link(datasets, threshold)
    for code, name in enumerate(corpus.agency_names):
        rows = np.flatnonzero(corpus.agencies == code)
        predicted[name] = {str(r): int(label) for r, label in zip(rows.tolist(), labels[code].tolist(), strict=True)}
    overall = evaluate_linkage_by_agency(truth, predicted).overall
    return {"precision": overall.precision or 0.0, "recall": overall.recall or 0.0, "f1": overall.f1 or 0.0}


def sweep(
    corpus: PlaintextCorpus,
    settings: Mapping[str, IdentifierSchema],
    *,
    seed: int = 0,
    plan: AttackPlan = AttackPlan(),
    link: LinkFunction | None = None,
    threshold: float = 0.8,
    on_row: Callable[[SweepRow], None] | None = None,
) -> list[SweepRow]:
    """Attack (and optionally link) the corpus under each named encoding.

    Args:
        corpus: the plaintext corpus.
        settings: named identifier schemas (:func:`~pplink.lab.attacks.corpus.attack_settings`,
            :func:`hardening_variants`).
        seed: seeds keys and attacker databases.
        plan: the attacks.
        link: links the agencies' encodings; ``None`` skips linkage quality.
        threshold: the linkage threshold.
        on_row: called with each row as it is finished (for progress).

    Returns:
        One row per setting, in the order given.
    """
    rows = []
    for name, identifiers in settings.items():
        clks = encode_corpus(corpus.records, identifiers, synthetic_key(seed, "agencies"))
        outcomes = run_attacks(corpus, identifiers, seed=seed, plan=plan, clks=clks)
        fill = float(np.unpackbits(clks, axis=1).mean()) if clks.size else 0.0
        linkage = _linkage(corpus, clks, threshold, link) if link is not None else None
        row = SweepRow(setting=name, outcomes=outcomes, fill=fill, linkage=linkage)
        if on_row is not None:
            on_row(row)
        rows.append(row)
    return rows

"""Attacks on Bloom-filter encodings by the party that holds them all: the coordinator.

The coordinator holds every agency's encodings and the agreement, but not the linkage secret, so it
cannot encode a guess and compare (no dictionary attack). What it can try, each implemented here
as a pure function over encodings and the attacker's knowledge and scored against a truth the
attacker never sees:

* :func:`frequency_attack`: align the most frequent encodings (or groups of near-identical ones)
  with a public frequency list.
* :func:`pattern_attack`: mine the bit positions of frequent q-grams, name them from a public list,
  and read values back.
* :func:`graph_attack`: with a plaintext database overlapping the encoded records, align the two
  similarity graphs.

:func:`synth_corpus` and :func:`encode_corpus` build the test material from ``pplink synth`` data;
:func:`sweep` runs everything across named encodings with linkage quality alongside. The measured
figures and the hardening defaults they led to are in ``docs/hardening.md``.
"""

from pplink.lab.attacks.corpus import (
    COLUMNS,
    PlaintextCorpus,
    attack_settings,
    attacker_database,
    default_identifiers,
    encode_corpus,
    synth_corpus,
)
from pplink.lab.attacks.files import read_public_list, read_truth_column
from pplink.lab.attacks.frequency import frequency_attack
from pplink.lab.attacks.graph import GraphAttackSettings, graph_attack
from pplink.lab.attacks.outcome import AttackOutcome
from pplink.lab.attacks.pattern import PatternAttackSettings, pattern_attack, qgrams
from pplink.lab.attacks.sweep import (
    ATTACKS,
    AttackPlan,
    LinkFunction,
    SweepRow,
    hardening_variants,
    run_attacks,
    sweep,
    synthetic_key,
)

__all__ = [
    "ATTACKS",
    "AttackOutcome",
    "AttackPlan",
    "COLUMNS",
    "GraphAttackSettings",
    "LinkFunction",
    "PatternAttackSettings",
    "PlaintextCorpus",
    "SweepRow",
    "attack_settings",
    "attacker_database",
    "default_identifiers",
    "encode_corpus",
    "frequency_attack",
    "graph_attack",
    "hardening_variants",
    "pattern_attack",
    "qgrams",
    "read_public_list",
    "read_truth_column",
    "run_attacks",
    "sweep",
    "synth_corpus",
    "synthetic_key",
]

"""Where the UK-style linkage errors are: missed and false pairs by cause, with defaults and no truth given.

Encodes a UK-style (or household) dataset exactly as ``benchmarks/quality.py`` does (the default
agreement, the automatic threshold), then reads the truth to sort every cross-agency pair the round got
wrong by what differs between the two records, field by field (values normalised with the plain ``name``
normaliser, so a diminutive still shows as one):

* missed pairs: ``given:nickname`` (a known-as form of the generator's table), ``given|surname|dob|
  postcode:blank`` (one side empty), ``surname:double`` (one surname inside the other, e.g. double-barrelled),
  ``dob:daymonth`` (day and month swapped), ``postcode:inward`` (same district), ``postcode:moved``,
  ``…:other`` (typos, phonetic spellings, a changed surname);
* false pairs: ``twin``, ``household`` (same household) or ``stranger``, with the fields that differ.

The generator does not label its errors, so the causes are read from the values; one pair can have several.

    uv run python benchmarks/quality_errors.py --people 3200 --seed 3
    uv run python benchmarks/quality_errors.py --households --people 800
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import tempfile
import warnings
from collections import Counter, defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _normalised(row: tuple[str, ...]) -> tuple[str, ...]:
    from pplink.normalise import InvalidValue, normalise_date, normalise_name, normalise_postcode

    given, surname, date, sex, postcode = row
    try:
        date = normalise_date(date, ("%Y-%m-%d", "%d/%m/%Y"))
    except InvalidValue:
        date = "?"
    try:
        postcode = normalise_postcode(postcode)
    except InvalidValue:
        postcode = "?"
    return normalise_name(given), normalise_name(surname), date, sex.strip().lower()[:1], postcode


def _known_as() -> dict[str, set[str]]:
    from pplink.lab.datasets._errors import KNOWN_AS

    forms: dict[str, set[str]] = defaultdict(set)
    for formal, variants in KNOWN_AS.items():
        for variant in variants:
            forms[variant.lower()].add(formal.lower())
    return forms


def causes(a: tuple[str, ...], b: tuple[str, ...], known_as: dict[str, set[str]]) -> list[str]:
    """What differs between two normalised records, one label per differing field.

    >>> causes(("liz", "smith", "2011-03-04", "f", "M1 1AA"), ("elizabeth", "", "2011-04-03", "f", "M1 2AB"),
    ...        {"liz": {"elizabeth"}})
    ['given:nickname', 'surname:blank', 'dob:daymonth', 'postcode:inward']
    """
    out = []
    g1, s1, d1, _, p1 = a
    g2, s2, d2, _, p2 = b
    if g1 != g2:
        if not g1 or not g2:
            out.append("given:blank")
        elif (known_as.get(g1, set()) | {g1}) & (known_as.get(g2, set()) | {g2}):
            out.append("given:nickname")
        else:
            out.append("given:other")
    if s1 != s2:
        out.append("surname:blank" if not s1 or not s2 else
                   "surname:double" if set(s1.split()) & set(s2.split()) else "surname:other")
    if d1 != d2:
        swapped = d1[:4] == d2[:4] and d1[5:7] == d2[8:10] and d1[8:10] == d2[5:7]
        out.append("dob:blank" if not d1 or not d2 else "dob:daymonth" if swapped else "dob:other")
    if p1 != p2:
        out.append("postcode:blank" if not p1 or not p2 else
                   "postcode:inward" if p1.split()[0] == p2.split()[0] else "postcode:moved")
    return out


def analyse(people: int, seed: int, households: bool) -> dict:
    """Run one round on a generated dataset and count its wrong pairs by cause."""
    from benchmarks.quality import _pplink
    from pplink.lab.datasets.uk_style import generate_uk_style

    data = generate_uk_style(people, households=households, seed=seed)
    with tempfile.TemporaryDirectory() as tmp:
        _, predicted, calibration, _ = _pplink(data, Path(tmp))
    known_as = _known_as()
    records = []
    for agency in data.agencies:
        extract = data.extracts[agency]
        for rid, row, person in zip(extract.record_ids, extract.rows, extract.persons, strict=True):
            records.append((agency, person, _normalised(row), predicted[agency][rid]))
    by_person, by_label = defaultdict(list), defaultdict(list)
    for r in records:
        by_person[r[1]].append(r)
        by_label[r[3]].append(r)
    missed, missed_alone, false = Counter(), Counter(), Counter()
    true_pairs = 0
    for group in by_person.values():
        for x, y in itertools.combinations(group, 2):
            if x[0] == y[0]:
                continue
            true_pairs += 1
            if x[3] != y[3]:
                found = causes(x[2], y[2], known_as)
                missed.update(found)
                missed_alone["+".join(found) or "none"] += 1
    for group in by_label.values():
        for x, y in itertools.combinations(group, 2):
            if x[0] == y[0] or x[1] == y[1]:
                continue
            same_home = data.households.get(x[1]) == data.households.get(y[1])
            twin = same_home and "twin" in data.tags.get(x[1], ()) and x[2][2] == y[2][2]
            kind = "twin" if twin else "household" if same_home else "stranger"
            false[kind + ":" + "+".join(sorted({c.split(":")[0] for c in causes(x[2], y[2], known_as)}))] += 1
    return {"dataset": data.name, "people": people, "seed": seed, "threshold": calibration.threshold,
            "true_pairs": true_pairs, "missed": sum(missed_alone.values()), "false": sum(false.values()),
            "missed_by_cause": dict(missed.most_common()), "missed_by_combination": dict(missed_alone.most_common(15)),
            "false_by_kind": dict(false.most_common(15))}


def main(argv: list[str] | None = None) -> dict:
    """Print one JSON object with the counts."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--people", type=int, default=3200, help="people, or households with --households")
    parser.add_argument("--seed", type=int, default=12)
    parser.add_argument("--households", action="store_true")
    args = parser.parse_args(argv)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        result = analyse(args.people, args.seed, args.households)
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()

"""The DP query table: one :class:`QuerySpec` row per query kind, shared by the release engine and the auditor.

A row says, for one kind of release, everything that is not a label the coordinator could choose:

* which options it takes (attribute, ``by_combination``, subject);
* whose agencies it is over (:class:`PartiesRule`): the linkage round's agencies, the agencies
  that trained (FedAvg), or none;
* the public key set of its cells (:attr:`QuerySpec.keys`), derived from the agreement, the
  agencies and the options alone, or ``None`` where its released vector goes to the agencies
  and not onto the ledger;
* how far one person (the privacy unit; one agency's update for ``fedavg``) can move the vector
  (:attr:`QuerySpec.sensitivity`).

The engine builds an entry from the row and checks it with :func:`derive` before appending; the
auditor re-derives every entry with the same :func:`derive`, so a forged kind, party list, key set
or sensitivity shows as a problem instead of being believed. Adding a query kind means adding its
:class:`~pplink.accounting.QueryKind` member and one row to :data:`QUERY_SPECS`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from itertools import combinations

from pplink.accounting import QueryKind, Sensitivity
from pplink.agreement import AgreementConfig, ReleaseAttribute
from pplink.errors import ReleaseError
from pplink.link_scores import (
    link_score_keys,
    parse_link_score_subject,
)
from pplink.query_keys import (
    CONFUSION_OUTCOMES,
    MAX_AGENCIES,
    MISSING,
    PRESENCE_KEYS,
    attribute_labels,
    combination_keys,
    declared_attribute,
    presence_agencies,
)
from pplink.query_sensitivity import (
    CKKS_SLACK,
    confusion_rule,
    link_rate_rule,
    link_rate_sensitivity,
    link_scores_rule,
    one_unit,
    release_sensitivity,
    release_values,
    residuals_rule,
    sufficient_statistics_rule,
)

__all__ = [
    "CKKS_SLACK",
    "CONFUSION_OUTCOMES",
    "MAX_AGENCIES",
    "MISSING",
    "QUERY_SPECS",
    "Derivation",
    "Keys",
    "Option",
    "PartiesRule",
    "QuerySpec",
    "attribute_labels",
    "check_options",
    "combination_keys",
    "command_kinds",
    "declared_attribute",
    "derive",
    "link_rate_sensitivity",
    "query_sensitivity",
    "release_sensitivity",
    "release_values",
    "spec_for",
    "worst_case_sensitivity",
]

Keys = tuple[tuple[str, ...], ...]


class Option(StrEnum):
    """Whether a query takes an option."""

    REQUIRED = "required"
    OPTIONAL = "optional"
    NONE = "none"


class PartiesRule(StrEnum):
    """Whose agencies a query is over, and so what its ``parties`` must be."""

    #: The linkage round's agencies, in state order (they define combination and link-rate keys).
    LINKAGE = "linkage"
    #: The agencies that trained (FedAvg): at least two, all in the agreement.
    TRAINERS = "trainers"
    #: None: ``parties`` is empty.
    NONE = "none"
    #: Optionally some of the agreement's agencies (scoring's errors by presence name the run's agencies).
    ANY = "any"


@dataclass(frozen=True)
class QuerySpec:
    """One query kind's definition.

    Attributes:
        kind: the kind, as recorded on the ledger.
        summary: what it counts, for help texts and docs.
        attribute: whether it takes a release attribute.
        by_combination: whether it may be crossed with the agency combination.
        subject: whether it carries a subject text (scoring and FedAvg releases).
        parties: whose agencies it is over.
        min_parties: the fewest agencies it is defined for.
        command: offered by ``pplink coordinator release``.
        numeric_attribute: its attribute must be numeric (binned).
        keys: ``(agreement, parties, attribute, by_combination, cells, subject) -> keys``: the public
            key set the cells must have, or None where the vector is not on the ledger (then there must
            be no cells). ``cells`` is only read by kinds whose key set depends on a parameter recorded
            nowhere else (score bins, presence agencies); ``subject`` only by ``link-scores`` (its
            floor and bins).
        sensitivity: ``(n_parties, subject, cells) -> Sensitivity`` for one privacy unit.
    """

    kind: QueryKind
    summary: str
    attribute: Option
    by_combination: bool
    subject: bool
    parties: PartiesRule
    min_parties: int
    command: bool
    numeric_attribute: bool
    keys: Callable[[AgreementConfig, tuple[str, ...], ReleaseAttribute | None, bool, Keys, str], Keys | None]
    sensitivity: Callable[[int, str, Keys], Sensitivity]


# --- public key sets --------------------------------------------------------------------------


def _labels(attribute: ReleaseAttribute | None) -> tuple[str, ...]:
    return ("all",) if attribute is None else attribute_labels(attribute)


def _overlap_keys(_a: AgreementConfig, parties: tuple[str, ...], _at: ReleaseAttribute | None, _c: bool,
                  _cells: Keys, _subject: str = "") -> Keys:
    return tuple((label,) for _, label in combination_keys(parties))


def _count_by_keys(_a: AgreementConfig, parties: tuple[str, ...], attribute: ReleaseAttribute | None,
                   by_combination: bool, _cells: Keys, _subject: str = "") -> Keys:
    labels = _labels(attribute)
    if not by_combination:
        return tuple((label,) for label in labels)
    return tuple((combo, label) for _, combo in combination_keys(parties) for label in labels)


def _link_rate_keys(_a: AgreementConfig, parties: tuple[str, ...], attribute: ReleaseAttribute | None, _c: bool,
                    _cells: Keys, _subject: str = "") -> Keys:
    labels = _labels(attribute)
    keys: list[tuple[str, ...]] = [("at", party, label) for party in parties for label in labels]
    keys += [("both", a, b, label) for a, b in combinations(parties, 2) for label in labels]
    return tuple(keys)


def _confusion_keys(_a: AgreementConfig, parties: tuple[str, ...], attribute: ReleaseAttribute | None, _c: bool,
                    cells: Keys, _subject: str = "") -> Keys | None:
    if parties and not cells:
        # Errors by presence under the label owner's key: the agencies noise their own counts after
        # this charge and the vector goes to the label owner, not onto the ledger.
        return None
    if cells and len(cells[0]) == 3:
        # Scoring's errors by agency presence: (agency, known | not known, outcome) per agency asked.
        return tuple((agency, where, outcome) for agency in presence_agencies(cells)
                     for where in PRESENCE_KEYS for outcome in CONFUSION_OUTCOMES)
    return tuple((group, outcome) for group in _labels(attribute) for outcome in CONFUSION_OUTCOMES)


def _score_histogram_keys(_a: AgreementConfig, _p: tuple[str, ...], _at: ReleaseAttribute | None, _c: bool,
                          cells: Keys, _subject: str = "") -> Keys:
    # The score bins are the run's (public) settings, not the agreement's: the shape is checked
    # instead: every bin once as positive and once as negative, in that order.
    bins = tuple(dict.fromkeys(key[0] for key in cells if key))
    return tuple((label, outcome) for label in bins for outcome in ("positive", "negative"))


def _link_score_keys(_a: AgreementConfig, _p: tuple[str, ...], _at: ReleaseAttribute | None, _c: bool,
                     _cells: Keys, subject: str = "") -> Keys:
    return link_score_keys(*parse_link_score_subject(subject))


def _no_cells(*_args: object) -> None:
    return None


#: The table. One row per :class:`~pplink.accounting.QueryKind`.
QUERY_SPECS: dict[QueryKind, QuerySpec] = {spec.kind: spec for spec in (
    QuerySpec(QueryKind.OVERLAP, "people per combination of agencies", Option.NONE, False, False,
              PartiesRule.LINKAGE, 1, True, False, _overlap_keys, one_unit),
    QuerySpec(QueryKind.COUNT_BY, "people by a release attribute (optionally by agency combination)",
              Option.REQUIRED, True, False, PartiesRule.LINKAGE, 1, True, False, _count_by_keys, one_unit),
    QuerySpec(QueryKind.HISTOGRAM, "people by the bins of a numeric release attribute", Option.REQUIRED, False,
              False, PartiesRule.LINKAGE, 1, True, True, _count_by_keys, one_unit),
    QuerySpec(QueryKind.LINK_RATE, "share of each agency's people found at each other agency",
              Option.OPTIONAL, False, False, PartiesRule.LINKAGE, 2, True, False, _link_rate_keys, link_rate_rule),
    QuerySpec(QueryKind.CONFUSION, "model error counts (tp/fp/fn/tn) by subgroup or by agency presence",
              Option.REQUIRED, False, True, PartiesRule.ANY, 0, False, False, _confusion_keys, confusion_rule),
    QuerySpec(QueryKind.RESIDUALS, "one vertical-scoring step's noisy residuals (sent to the agencies)",
              Option.NONE, False, True, PartiesRule.NONE, 0, False, False, _no_cells, residuals_rule),
    QuerySpec(QueryKind.SCORE_HISTOGRAM, "held-out people by score bin and outcome", Option.NONE, False, True,
              PartiesRule.NONE, 0, False, False, _score_histogram_keys, one_unit),
    QuerySpec(QueryKind.SUFFICIENT_STATISTICS, "a sufficient-statistics scoring run's G or b (sent to the parties); "
              "C^2 or C/2 in fixed-point units plus the CKKS slack, each named in its subject", Option.NONE,
              False, True, PartiesRule.TRAINERS, 2, False, False, _no_cells, sufficient_statistics_rule),
    QuerySpec(QueryKind.FEDAVG, "one horizontal FedAvg round's noised model (sent to the agencies)", Option.NONE,
              False, True, PartiesRule.TRAINERS, 2, False, False, _no_cells, one_unit),
    QuerySpec(QueryKind.LINK_SCORES, "a match round's linked pairs by Dice bin, from its calibration floor "
              "(the published precision and recall estimates derive from it)", Option.NONE, False, True,
              PartiesRule.LINKAGE, 2, False, False, _link_score_keys, link_scores_rule),
)}


def spec_for(kind: QueryKind | str) -> QuerySpec:
    """The row for ``kind``.

    >>> spec_for("link-rate").min_parties
    2
    """
    return QUERY_SPECS[QueryKind(kind)]


def command_kinds() -> tuple[str, ...]:
    """The kinds ``pplink coordinator release`` offers, in table order.

    >>> command_kinds()
    ('overlap', 'count-by', 'histogram', 'link-rate')
    """
    return tuple(spec.kind.value for spec in QUERY_SPECS.values() if spec.command)


def check_options(kind: QueryKind, attribute: str | None, by_combination: bool, subject: str) -> None:
    """Refuse options the kind does not take (the ledger's :class:`~pplink.ledger.ReleaseQuery` validator).

    Raises:
        ValueError: naming the option.
    """
    spec = spec_for(kind)
    if spec.attribute is Option.REQUIRED and attribute is None:
        raise ValueError(f"query {kind.value} needs an attribute")
    if spec.attribute is Option.NONE and attribute is not None:
        raise ValueError(f"query {kind.value} takes no attribute")
    if by_combination and not spec.by_combination:
        raise ValueError(f"by_combination does not apply to query {kind.value}")
    if subject and not spec.subject:
        raise ValueError(f"query {kind.value} takes no subject")


def query_sensitivity(kind: QueryKind | str, n_parties: int) -> Sensitivity:
    """The table's sensitivity of a kind over ``n_parties`` agencies, in its plain form.

    Residuals: one unit (the entry's subject names how many fixed-point units that is); sufficient
    statistics: one unit (the subject names C, the unit and the slack the real one is derived from);
    confusion: by subgroup (one cell per person).

    >>> query_sensitivity(QueryKind.OVERLAP, 4), query_sensitivity(QueryKind.LINK_RATE, 3)
    (Sensitivity(l1=1, l2=1), Sensitivity(l1=6, l2=3))
    """
    if QueryKind(kind) in (QueryKind.RESIDUALS, QueryKind.SUFFICIENT_STATISTICS):
        return Sensitivity(l1=1, l2=1)
    spec = spec_for(kind)
    over = n_parties if spec.parties in (PartiesRule.LINKAGE, PartiesRule.TRAINERS) else 0
    return spec.sensitivity(over, "", ())


def worst_case_sensitivity(n_parties: int) -> Sensitivity:
    """The largest per-person sensitivity any linkage query over ``n_parties`` agencies has.

    What the auditor charges a release whose cells do not have the shape of its stated kind.

    >>> worst_case_sensitivity(4)
    Sensitivity(l1=10, l2=4)
    """
    return link_rate_sensitivity(max(2, n_parties))


@dataclass(frozen=True)
class Derivation:
    """What an entry's kind, options and cells imply, and every label that does not fit.

    Attributes:
        sensitivity: the per-unit sensitivity the release really has (never below what its cells
            could need: a mislabelled release is charged the worst case over its agencies).
        problems: sentences naming each label that does not fit (empty when the entry is consistent).
    """

    sensitivity: Sensitivity
    problems: tuple[str, ...]


def _check_parties(spec: QuerySpec, agreement: AgreementConfig, parties: tuple[str, ...],
                   round_parties: tuple[str, ...] | None, problems: list[str]) -> None:
    agencies = set(agreement.agency_ids)
    strangers = sorted(set(parties) - agencies)
    if strangers:
        problems.append(f"names agencies not in the agreement ({', '.join(strangers)})")
    if len(set(parties)) != len(parties):
        problems.append("names an agency twice")
    if spec.parties is PartiesRule.ANY:
        return
    if spec.parties is PartiesRule.NONE:
        if parties:
            problems.append(f"{spec.kind.value} is over no agencies, but the entry lists {len(parties)}")
        return
    if len(parties) < spec.min_parties:
        problems.append(f"{spec.kind.value} needs at least {spec.min_parties} agencies; the entry lists "
                        f"{len(parties)}")
    if spec.parties is PartiesRule.LINKAGE and round_parties is not None and parties != round_parties:
        problems.append(f"lists agencies {', '.join(parties) or 'none'}, but the linkage round's agencies are "
                        f"{', '.join(round_parties)}")


def derive(
    agreement: AgreementConfig,
    kind: QueryKind,
    *,
    attribute: str | None,
    by_combination: bool,
    parties: Sequence[str],
    subject: str,
    cells: Keys,
    round_parties: Sequence[str] | None = None,
) -> Derivation:
    """Re-derive an entry's sensitivity from the agreement and the table, listing every label that does not fit.

    Args:
        agreement: declares the agencies and attributes (and so every public key set).
        kind: the entry's stated kind.
        attribute: its attribute.
        by_combination: its combination flag.
        parties: the agencies it names.
        subject: its subject text.
        cells: the keys of its released cells, in order.
        round_parties: the linkage round's agencies, from the ledger's genesis; None when unknown
            (then a linkage query is charged as if over every agency it could be over).

    Returns:
        The derivation; ``problems`` is empty for a consistent entry.
    """
    spec = spec_for(kind)
    parties = tuple(parties)
    bound = None if round_parties is None else tuple(round_parties)
    problems: list[str] = []
    _check_parties(spec, agreement, parties, bound, problems)
    declared: ReleaseAttribute | None = None
    if attribute is not None:
        try:
            declared = declared_attribute(agreement, attribute)
        except ReleaseError as exc:
            problems.append(str(exc))
        else:
            if spec.numeric_attribute and declared.values is not None:
                problems.append(f"{kind.value} needs a numeric attribute; {attribute} is categorical")
    # Over how many agencies a linkage query really ran: the round's, or (when the ledger names
    # no round) the most it could be, the agreement's.
    n = len(bound) if bound is not None else max(len(parties), len(agreement.agency_ids))
    n_parties = len(parties) if spec.parties is not PartiesRule.LINKAGE else n
    try:
        sensitivity = spec.sensitivity(n_parties, subject, cells)
    except ValueError as exc:
        problems.append(str(exc))
        sensitivity = worst_case_sensitivity(n)
    try:
        expected = spec.keys(agreement, parties, declared, by_combination, cells, subject)
    except ReleaseError as exc:
        problems.append(str(exc))
        expected = cells
    if expected is None and cells:
        problems.append(f"{kind.value} releases go to the agencies, not onto the ledger, but the entry has "
                        f"{len(cells)} cells")
    elif expected is not None and tuple(cells) != expected:
        problems.append(f"its {len(cells)} cells do not have the key set a {kind.value} release has "
                        f"({len(expected)} cells from the agreement and its agencies)")
        worst = worst_case_sensitivity(n)
        sensitivity = Sensitivity(l1=max(sensitivity.l1, worst.l1), l2=max(sensitivity.l2, worst.l2))
    return Derivation(sensitivity=sensitivity, problems=tuple(problems))

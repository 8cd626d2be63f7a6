"""The query table (``pplink.queries``): one row per DP query kind, shared by the release engine and the auditor."""

from __future__ import annotations

import tomllib

import pytest

from pplink.accounting import QueryKind, Sensitivity
from pplink.agreement import AgreementConfig, parse_agreement
from pplink.agreement_template import default_agreement_toml
from pplink.crypto import generate_signing_key, public_key_text
from pplink.queries import QUERY_SPECS, PartiesRule, command_kinds, derive, spec_for

AGENCIES = ("social_care", "school", "health")


def _agreement() -> AgreementConfig:
    keys = {p: public_key_text(generate_signing_key()) for p in (*AGENCIES, "coordinator", "auditor")}
    data = tomllib.loads(default_agreement_toml(list(AGENCIES), keys))
    data["release"]["attributes"].append({"column": "age_years", "lower": 0.0, "upper": 18.0, "bins": 6})
    return parse_agreement(data)


def test_every_query_kind_has_exactly_one_row() -> None:
    """Adding a kind without its row (or a row for no kind) fails here, not in an audit."""
    assert set(QUERY_SPECS) == set(QueryKind)
    assert all(spec.kind is kind for kind, spec in QUERY_SPECS.items())


def test_the_release_command_offers_exactly_the_linkage_queries() -> None:
    """`coordinator release --query` choices come from the table: the kinds over the linkage's agencies."""
    from pplink.cli.release import release_command

    choice = next(p for p in release_command.params if p.name == "kind")
    assert tuple(choice.type.choices) == command_kinds()  # type: ignore[attr-defined]
    assert all(spec_for(kind).parties is PartiesRule.LINKAGE for kind in command_kinds())


@pytest.mark.parametrize(("kind", "attribute", "by_combination", "n_keys", "sensitivity"), [
    ("overlap", None, False, 7, Sensitivity(l1=1, l2=1)),
    ("count-by", "area", True, 7 * (len(_agreement().release.attributes[0].values or ()) + 1), Sensitivity(l1=1, l2=1)),
    ("histogram", "age_years", False, 7, Sensitivity(l1=1, l2=1)),
    ("link-rate", None, False, 3 + 3, Sensitivity(l1=6, l2=3)),
])
def test_an_honest_linkage_entry_derives_cleanly(kind: str, attribute: str | None, by_combination: bool, n_keys: int,
                                                 sensitivity: Sensitivity) -> None:
    """The table's own key set and the round's agencies give no problems and the documented sensitivity."""
    agreement = _agreement()
    spec = spec_for(kind)
    declared = next((a for a in agreement.release.attributes if a.column == attribute), None)
    keys = spec.keys(agreement, AGENCIES, declared, by_combination, ())
    assert keys is not None and len(keys) == n_keys
    derived = derive(agreement, QueryKind(kind), attribute=attribute, by_combination=by_combination, parties=AGENCIES,
                     subject="", cells=keys, round_parties=AGENCIES)
    assert derived.problems == () and derived.sensitivity == sensitivity


def test_without_a_round_a_linkage_query_is_charged_over_every_agency() -> None:
    """A ledger bound to no round: a link-rate naming two agencies is charged as if over the agreement's three."""
    agreement = _agreement()
    keys = spec_for("link-rate").keys(agreement, AGENCIES[:2], None, False, ())
    assert keys is not None
    derived = derive(agreement, QueryKind.LINK_RATE, attribute=None, by_combination=False, parties=AGENCIES[:2],
                     subject="", cells=keys, round_parties=None)
    assert derived.sensitivity == Sensitivity(l1=6, l2=3)

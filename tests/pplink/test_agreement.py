"""The agreement: the default is valid, every rule has a named error, the id is content-bound."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from pplink.agreement import load_agreement, parse_agreement
from pplink.errors import AgreementError
from tests.support import Setup


def _data(setup: Setup) -> dict:
    return tomllib.loads(setup.agreement_path.read_text())


def test_default_agreement_is_valid_and_lists_all_agencies(setup: Setup) -> None:
    config = load_agreement(setup.agreement_path)
    assert config.agency_ids == ["social_care", "school", "health", "police"]
    assert config.coordinator.id == "coordinator"
    assert len(config.agreement_id) == 64


def test_agreement_id_is_stable_and_content_bound(setup: Setup) -> None:
    data = _data(setup)
    a = parse_agreement(data).agreement_id
    assert parse_agreement(_data(setup)).agreement_id == a
    data["linkage"]["threshold"] = 0.85
    assert parse_agreement(data).agreement_id != a


def test_every_problem_is_listed_with_its_location(setup: Setup) -> None:
    data = _data(setup)
    data["parties"][0]["role"] = "boss"
    data["budget"]["epsilon"] = -1
    data["identifiers"]["fields"][0]["bits_per_token"] = 0
    with pytest.raises(AgreementError) as info:
        parse_agreement(data, "agreement.toml")
    msg = str(info.value)
    assert "3 problem(s)" in msg
    assert "parties.0.role" in msg and "budget.epsilon" in msg and "identifiers.fields.0.bits_per_token" in msg


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d["parties"].append(dict(d["parties"][0])), "party ids appear twice"),
        (lambda d: d["parties"].__setitem__(4, {**d["parties"][4], "role": "agency"}),
         "exactly one party must have role 'coordinator'"),
        (lambda d: d["scoring"].__setitem__("label_owner", "coordinator"), "is not an agency"),
        (lambda d: d["release"]["attributes"].append({"column": "surname", "values": ["a"]}),
         "is an identifier column"),
        (lambda d: d["identifiers"]["fields"].append(dict(d["identifiers"]["fields"][0])), "appear twice"),
        (lambda d: d["budget"].__setitem__("delta", 0.0), "zcdp accounting needs delta > 0"),
        (lambda d: d["release"]["attributes"].append({"column": "x", "lower": 1.0, "upper": 0.0, "bins": 3}),
         "lower must be below upper"),
        (lambda d: d["parties"][0].__setitem__("public_key", "ed25519:AAAA"), "not 32 bytes"),
        (lambda d: d.__setitem__("surprise", 1), "Extra inputs are not permitted"),
        (lambda d: d.__setitem__("schema_version", 9), "schema_version"),
    ],
)
def test_validators_name_the_problem(setup: Setup, edit, message: str) -> None:  # type: ignore[no-untyped-def]
    data = _data(setup)
    edit(data)
    with pytest.raises(AgreementError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_agreement(data)


def test_unreadable_and_non_toml_files(tmp_path: Path) -> None:
    with pytest.raises(AgreementError, match="cannot read"):
        load_agreement(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("this is = = not toml")
    with pytest.raises(AgreementError, match="not valid TOML"):
        load_agreement(bad)


def test_agreement_is_frozen(setup: Setup) -> None:
    with pytest.raises(Exception, match="frozen"):
        setup.agreement.linkage.threshold = 0.5  # type: ignore[misc]

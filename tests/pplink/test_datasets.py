"""The independent linkage datasets: seeded, valid under the default agreement, with households as promised."""

from __future__ import annotations

import collections
from pathlib import Path

import pytest

from pplink.lab.datasets import write_dataset
from pplink.lab.datasets.febrl import FEBRL_COLUMNS, load_febrl
from pplink.lab.datasets.uk_style import generate_uk_style
from pplink.normalise import InvalidValue, normalise_date, normalise_name, normalise_postcode, normalise_sex

FORMATS = ("%Y-%m-%d", "%d/%m/%Y")


def test_same_seed_same_data_other_seed_other_data() -> None:
    """Determinism: equal arguments give equal datasets; another seed changes the records."""
    assert generate_uk_style(200, seed=5) == generate_uk_style(200, seed=5)
    assert generate_uk_style(200, seed=5).extracts != generate_uk_style(200, seed=6).extracts


def test_every_value_is_valid_under_the_default_normalisers() -> None:
    """The generator's errors stay linkable data: no value the default agreement would reject."""
    data = generate_uk_style(1500, households=True, seed=2)
    normalisers = (normalise_name, normalise_name, lambda v: normalise_date(v, FORMATS), normalise_sex,
                   normalise_postcode)
    for extract in data.extracts.values():
        for row in extract.rows:
            for value, normalise in zip(row, normalisers, strict=True):
                try:
                    normalise(value)
                except InvalidValue as err:  # pragma: no cover - the failure message names the field only
                    pytest.fail(f"generated value rejected: {err}")


def test_households_share_surname_and_hold_twins() -> None:
    """Households: ~3% of children are twins, siblings are tagged, duplicates exist within agencies."""
    data = generate_uk_style(3000, households=True, seed=3)
    tags = collections.Counter(t for s in data.tags.values() for t in s)
    siblings = tags["sibling"]
    assert siblings > 0.3 * len(data.tags)
    assert 0.015 < tags["twin"] / siblings < 0.06
    for extract in data.extracts.values():
        counts = collections.Counter(extract.persons)
        assert 0 < sum(c == 2 for c in counts.values()) < 0.03 * len(counts)
        assert len(set(extract.record_ids)) == len(extract.record_ids)


def test_people_alone_have_no_siblings() -> None:
    """The UK-style set holds people living alone: no sibling or twin tags."""
    data = generate_uk_style(500, seed=4)
    assert not any({"sibling", "twin"} & tags for tags in data.tags.values())


def test_write_dataset_writes_agency_files_and_truth(tmp_path: Path) -> None:
    """The written truth covers every record once, and agency files have the default columns."""
    data = generate_uk_style(100, seed=1)
    paths = write_dataset(data, tmp_path)
    assert [p.name for p in paths] == [f"{a}.csv" for a in data.agencies] + ["truth.csv"]
    header = paths[0].read_text(encoding="utf-8").splitlines()[0].split(",")
    assert header[:6] == ["record_id", "given_name", "surname", "date_of_birth", "sex", "postcode"]
    assert len(paths[-1].read_text(encoding="utf-8").splitlines()) == data.records + 1


@pytest.mark.parametrize(("number", "records", "agencies"), [(1, 1000, 2), (2, 5000, 6), (3, 5000, 6), (4, 10000, 2)])
def test_febrl_sets_split_into_agencies(number: int, records: int, agencies: int) -> None:
    """FEBRL: every record kept once, duplicates of one original in different agencies."""
    data = load_febrl(number)
    assert data.records == records and len(data.agencies) == agencies
    assert data.columns == FEBRL_COLUMNS
    for extract in data.extracts.values():
        assert len(set(extract.persons)) == len(extract.persons)

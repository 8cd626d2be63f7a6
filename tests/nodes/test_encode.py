"""Node encoding: every bad row is named, opt-outs never encoded, nothing dropped silently."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from nodes.encode import OutputFormat, encode_file, encode_records
from pplink.encfile import read_encodings
from pplink.entity_files import read_tokens
from pplink.errors import RecordValidationError
from tests.support import COLUMNS, Setup, write_records


def _encode(setup: Setup, records: Path, out: Path, **kw):  # type: ignore[no-untyped-def]
    return encode_file(setup.agreement, "school", setup.secret, setup.key("school"), records, out, **kw)


def test_encode_writes_signed_file_and_token_map(setup: Setup, people, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    rows = people(40)
    records = write_records(tmp_path / "school.csv", rows)
    summary = _encode(setup, records, tmp_path / "school.enc")
    f = read_encodings(tmp_path / "school.enc", setup.agreement, expected_party="school")
    tokens = read_tokens(summary.tokens)
    assert summary.encoded == f.header.n_records == 40
    assert f.token_hex() == list(tokens)
    assert sorted(tokens.values()) == sorted(r["record_id"] for r in rows)
    # The agency's own ids never enter the encodings file.
    raw = (tmp_path / "school.enc").read_bytes()
    assert not any(r["record_id"].encode() in raw for r in rows)
    assert (summary.tokens.stat().st_mode & 0o777) == 0o600


def test_opted_out_rows_are_absent_and_counted(setup: Setup, people, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    rows = people(30)
    for r in rows[:7]:
        r["opt_out"] = "Yes"
    rows[3]["date_of_birth"] = "not a date"  # opted out: never validated either
    records = write_records(tmp_path / "school.csv", rows)
    summary = _encode(setup, records, tmp_path / "school.enc")
    assert summary.opted_out == 7 and summary.encoded == 23
    assert set(read_tokens(summary.tokens).values()) == {r["record_id"] for r in rows[7:]}


def test_bad_rows_are_listed_by_file_row_and_field(setup: Setup, people, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    rows = people(10)
    rows[2]["date_of_birth"] = "31/02/2010"
    rows[5]["surname"] = ""
    rows[5]["postcode"] = "12345"
    rows[8]["area"] = "E99"
    sentinel = "Zebedee-Sentinel"
    rows[6]["given_name"] = sentinel
    rows[6]["sex"] = "Q"
    records = write_records(tmp_path / "school.csv", rows)
    with pytest.raises(RecordValidationError) as info:
        _encode(setup, records, tmp_path / "school.enc")
    msg = str(info.value)
    # Header is row 1, so the i-th person is on row i + 2.
    assert f"{records}: row 4, field date_of_birth: not a calendar date" in msg
    assert f"{records}: row 7, field surname: is required but empty" not in msg  # optional by default
    assert f"{records}: row 7, field postcode: not a UK postcode" in msg
    assert f"{records}: row 10, field area: not one of the agreement's declared values" in msg
    assert f"{records}: row 8, field sex" in msg
    assert "4 problem(s) in 4 row(s)" in msg
    assert sentinel.lower() not in msg.lower()
    assert not (tmp_path / "school.enc").exists()


def test_skip_invalid_writes_rejects_with_original_rows(setup: Setup, people, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    rows = people(10)
    rows[4]["postcode"] = "nowhere"
    rows[9]["record_id"] = rows[0]["record_id"]  # duplicate id
    records = write_records(tmp_path / "school.csv", rows)
    summary = _encode(setup, records, tmp_path / "school.enc", skip_invalid=True)
    assert summary.encoded == 8 and summary.rejected == 2
    with open(summary.rejects, newline="") as fh:
        rejects = list(csv.DictReader(fh))
    assert [r["row"] for r in rejects] == ["6", "11"]
    assert rejects[0]["postcode"] == "nowhere" and "postcode: not a UK postcode" in rejects[0]["problems"]
    assert "repeats the id of row 2" in rejects[1]["problems"]
    # Everything is accounted for: encoded + rejected + opted out == input rows.
    assert summary.encoded + summary.rejected + summary.opted_out == len(rows)


def test_repeated_ids_across_and_within_chunks(setup: Setup, people, tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    # The merge takes a fast path for chunks with no repeated id; a repeat within a chunk or of an
    # id from an earlier chunk must still reject the later row and keep the first's encoding.
    import nodes.encode as encode

    rows = people(300)
    rows[20]["record_id"] = rows[10]["record_id"]  # within the first chunk
    rows[290]["record_id"] = rows[5]["record_id"]  # in a later chunk
    records = write_records(tmp_path / "school.csv", rows)
    whole = encode_records(setup.agreement, "school", setup.secret, records, workers=1)
    monkeypatch.setattr(encode, "BLOCK_BYTES", 2_000)  # many chunks
    chunked = encode_records(setup.agreement, "school", setup.secret, records, workers=1)
    for result in (whole, chunked):
        assert result.rejected_rows == [22, 292]  # file rows: the header is row 1
        assert result.record_ids == [r["record_id"] for i, r in enumerate(rows) if i not in (20, 290)]
    assert np.array_equal(whole.clks, chunked.clks) and len(chunked.clks) == 298


def test_missing_column_is_named(setup: Setup, people, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    records = write_records(tmp_path / "s.csv", people(3), [c for c in COLUMNS if c != "surname"])
    with pytest.raises(RecordValidationError, match=r"row 1: missing column\(s\) surname"):
        _encode(setup, records, tmp_path / "s.enc")


def test_ragged_and_non_utf8_rows(setup: Setup, people, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    records = write_records(tmp_path / "s.csv", people(3))
    with open(records, "a") as fh:
        fh.write("X1,ann\n")
    with pytest.raises(RecordValidationError, match="row 5, field \\(row\\): has 2 fields, header has 10"):
        _encode(setup, records, tmp_path / "s.enc")
    latin = tmp_path / "latin.csv"
    latin.write_bytes(",".join(COLUMNS).encode() + b"\nR1,Jos\xe9,Smith,2010-01-01,M,SW1A 1AA,N,E06000001,1,5-10\n")
    with pytest.raises(RecordValidationError, match="row 2: not valid UTF-8"):
        _encode(setup, latin, tmp_path / "l.enc")


def test_two_workers_give_the_same_encodings(setup: Setup, people, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    # Parallel chunks must come back in input order with identical bits.
    rows = people(12_000)
    records = write_records(tmp_path / "s.csv", rows)
    one = encode_records(setup.agreement, "school", setup.secret, records, workers=1)
    two = encode_records(setup.agreement, "school", setup.secret, records, workers=2)
    assert one.record_ids == two.record_ids == [r["record_id"] for r in rows]
    assert np.array_equal(one.clks, two.clks)


def test_parquet_input_matches_csv(setup: Setup, people, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = people(20)
    csv_path = write_records(tmp_path / "s.csv", rows)
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "s.parquet")
    a = encode_records(setup.agreement, "school", setup.secret, csv_path, workers=1)
    b = encode_records(setup.agreement, "school", setup.secret, tmp_path / "s.parquet", workers=1)
    assert np.array_equal(a.clks, b.clks) and a.record_ids == b.record_ids


def test_anonlink_json_output(setup: Setup, people, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import base64
    import json

    records = write_records(tmp_path / "s.csv", people(5))
    _encode(setup, records, tmp_path / "s.json", output_format=OutputFormat.ANONLINK_JSON)
    clks = json.loads((tmp_path / "s.json").read_text())["clks"]
    assert len(clks) == 5 and all(len(base64.b64decode(c)) == 128 for c in clks)


def test_encode_refuses_non_agency(setup: Setup, people, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from pplink.errors import AgreementError

    records = write_records(tmp_path / "s.csv", people(2))
    with pytest.raises(AgreementError, match="not an agency"):
        encode_file(setup.agreement, "coordinator", setup.secret, setup.key("coordinator"), records, tmp_path / "x.enc")


def test_required_fields_and_minimum_identifier_count(tmp_path: Path, people) -> None:  # type: ignore[no-untyped-def]
    from tests.support import make_setup

    setup = make_setup(tmp_path / "a", edit=lambda t: t.replace(
        'column = "surname"\nkind = "name"\nbits_per_token = 15\nrequired = false',
        'column = "surname"\nkind = "name"\nbits_per_token = 15\nrequired = true'))
    rows = people(4)
    rows[1]["surname"] = ""
    for col in ("given_name", "date_of_birth", "postcode"):
        rows[2][col] = ""  # leaves surname and sex: 2 of 5, below min_fields = 3
    records = write_records(tmp_path / "s.csv", rows)
    with pytest.raises(RecordValidationError) as info:
        encode_file(setup.agreement, "school", setup.secret, setup.key("school"), records, tmp_path / "s.enc")
    msg = str(info.value)
    assert "row 3, field surname: is required but empty" in msg
    assert "row 4, field (identifiers): has fewer than 3 identifier values" in msg
    assert "2 problem(s) in 2 row(s)" in msg

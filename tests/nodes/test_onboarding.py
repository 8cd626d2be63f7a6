"""An agency's real export: opt-outs fail closed, dates are never guessed, odd input is named.

Every case here is one measured in issue #15; each test states the invariant it holds.
"""

from __future__ import annotations

import datetime as dt
import tomllib
from pathlib import Path

import numpy as np
import pytest

from nodes.encode import encode_file, encode_records
from nodes.export_settings import ExportSettings, load_export_settings
from pplink.agreement import parse_agreement
from pplink.errors import ConfigError, RecordValidationError
from tests.support import COLUMNS, Setup, write_records


def _encode(setup: Setup, records: Path, out: Path, **kw):  # type: ignore[no-untyped-def]
    return encode_file(setup.agreement, "school", setup.secret, setup.key("school"), records, out, **kw)


def _redate(rows: list[dict[str, str]], fmt: str) -> list[dict[str, str]]:
    return [r | {"date_of_birth": dt.date.fromisoformat(r["date_of_birth"]).strftime(fmt)} for r in rows]


# --- opt-outs -------------------------------------------------------------------------------------

def test_missing_opt_out_column_refuses_the_file(setup: Setup, people, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Invariant: a declared opt-out column that the file lacks (or renamed) refuses the whole file."""
    columns = [c if c != "opt_out" else "OptOut" for c in COLUMNS]
    rows = [r | {"OptOut": r["opt_out"]} for r in people(5)]
    records = write_records(tmp_path / "s.csv", rows, columns)
    with pytest.raises(RecordValidationError, match="missing column\\(s\\) opt_out") as info:
        _encode(setup, records, tmp_path / "s.enc", skip_invalid=True)
    assert not (tmp_path / "s.enc").exists()
    assert any("OptOut" in note for note in info.value.__notes__)


def test_unreadable_opt_out_value_refuses_the_row_and_is_counted(setup: Setup, people, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Invariant: a value in neither declared set is never taken as consent: the row is not encoded."""
    rows = people(12)
    rows[0]["opt_out"] = "Opted out"
    rows[1]["opt_out"] = "Opted out"
    rows[2]["opt_out"] = "Y"
    rows[3]["opt_out"] = ""
    records = write_records(tmp_path / "s.csv", rows)
    with pytest.raises(RecordValidationError, match="row 2, field opt_out: is neither an opt-out"):
        _encode(setup, records, tmp_path / "s.enc")
    summary = _encode(setup, records, tmp_path / "s.enc", skip_invalid=True)
    assert (summary.encoded, summary.opted_out, summary.rejected) == (9, 1, 2)
    assert dict(summary.reasons) == {"opt_out: " + _reason(): 2}


def _reason() -> str:
    from nodes.validation import OPT_OUT_UNREADABLE

    return OPT_OUT_UNREADABLE


def test_node_settings_map_the_exports_opt_out_words(setup: Setup, people, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Invariant: a mapped value means what the agreement's value it maps to means."""
    rows = people(10)
    for r in rows[:4]:
        r["opt_out"] = "Opted out"
    for r in rows[4:]:
        r["opt_out"] = "Consent given"
    records = write_records(tmp_path / "s.csv", rows)
    settings = ExportSettings(opt_out_values={"opted out": "y", "Consent given": "n"})
    summary = _encode(setup, records, tmp_path / "s.enc", settings=settings)
    assert (summary.encoded, summary.opted_out, summary.rejected) == (6, 4, 0)
    with pytest.raises(ConfigError, match="declares neither"):
        _encode(setup, records, tmp_path / "t.enc", settings=ExportSettings(opt_out_values={"x": "maybe"}))


def test_agreement_can_say_there_is_no_opt_out_column(tmp_path: Path, people) -> None:  # type: ignore[no-untyped-def]
    """Invariant: `opt_out_column = false` is explicit, and then no file needs the column."""
    from tests.support import make_setup

    setup = make_setup(tmp_path, edit=lambda t: t.replace('opt_out_column = "opt_out"', "opt_out_column = false"))
    assert setup.agreement.identifiers.opt_out_column is None
    records = write_records(tmp_path / "s.csv", people(6), [c for c in COLUMNS if c != "opt_out"])
    assert _encode(setup, records, tmp_path / "s.enc").encoded == 6
    with pytest.raises(Exception, match="share a value"):
        parse_agreement(tomllib.loads((tmp_path / "agreement.toml").read_text().replace(
            'opt_out_values = ["y", "yes", "true", "1"]', 'opt_out_values = ["y", "n"]')))


# --- dates ------------------------------------------------------------------------------------------

def test_mm_dd_export_is_refused_never_swapped(setup: Setup, people, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Invariant: an MM/DD/YYYY file is refused whole (even with --skip-invalid), naming the format."""
    rows = _redate(people(60), "%m/%d/%Y")
    records = write_records(tmp_path / "s.csv", rows)
    with pytest.raises(RecordValidationError, match="MM/DD/YYYY, a format the agreement does not list") as info:
        _encode(setup, records, tmp_path / "s.enc", skip_invalid=True)
    assert 'date_format = "%m/%d/%Y"' in str(info.value)
    assert str(info.value).count("\n") == 0  # one summary, not a line per row
    assert not (tmp_path / "s.enc").exists()


def test_dates_fitting_both_day_month_orders_are_refused(setup: Setup, people, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Invariant: when every date reads as DD/MM and as MM/DD with different results, nothing is guessed."""
    rows = people(20)
    for i, r in enumerate(rows):
        r["date_of_birth"] = f"{i % 12 + 1:02d}/{(i + 5) % 12 + 1:02d}/2012"
    records = write_records(tmp_path / "s.csv", rows)
    with pytest.raises(RecordValidationError, match="fit both DD/MM/YYYY and MM/DD/YYYY.*does not guess"):
        _encode(setup, records, tmp_path / "s.enc")
    stated = encode_records(setup.agreement, "school", setup.secret, records,
                            settings=ExportSettings(date_format="%m/%d/%Y"))
    assert len(stated.record_ids) == 20


def test_contradicting_dates_are_refused(setup: Setup, people, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Invariant: some rows only DD/MM and others only MM/DD: the file is refused, not split by majority."""
    rows = people(20)
    for i, r in enumerate(rows):
        r["date_of_birth"] = "25/12/2012" if i % 2 else "12/25/2012"
    records = write_records(tmp_path / "s.csv", rows)
    with pytest.raises(RecordValidationError, match="contradict each other"):
        _encode(setup, records, tmp_path / "s.enc", skip_invalid=True)


@pytest.mark.parametrize("fmt", ["%d.%m.%Y", "%d-%m-%Y", "%d/%m/%y", "%m/%d/%Y"])
def test_stated_format_encodes_exactly_as_iso(setup: Setup, people, tmp_path: Path, fmt: str) -> None:  # type: ignore[no-untyped-def]
    """Invariant: a stated format gives the encodings the ISO dates give, bit for bit."""
    rows = people(40)
    iso = encode_records(setup.agreement, "school", setup.secret, write_records(tmp_path / "iso.csv", rows))
    path = write_records(tmp_path / "other.csv", _redate(rows, fmt))
    if fmt != "%m/%d/%Y":  # (MM/DD is refused above; these are refused the same way, in one line)
        with pytest.raises(RecordValidationError, match=f'date_format = "{fmt}"'):
            encode_records(setup.agreement, "school", setup.secret, path)
    other = encode_records(setup.agreement, "school", setup.secret, path, settings=ExportSettings(date_format=fmt))
    assert np.array_equal(iso.clks, other.clks)
    assert other.dates[0].detected == ((fmt, 40),)


def test_a_value_that_fits_only_the_other_order_is_refused_not_swapped(setup: Setup, people, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Invariant: under a stated DD/MM format, an MM/DD-only value is a rejected row."""
    rows = _redate(people(10), "%d/%m/%Y")
    rows[4]["date_of_birth"] = "12/25/2012"
    records = write_records(tmp_path / "s.csv", rows)
    out = encode_records(setup.agreement, "school", setup.secret, records,
                         settings=ExportSettings(date_format="%d/%m/%Y"))
    assert out.rejected_rows == [6] and len(out.record_ids) == 9


def test_mixed_iso_and_dd_mm_still_encode(setup: Setup, people, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Invariant: ISO and DD/MM/YYYY never conflict, so a column mixing them (as the agreement allows) encodes."""
    rows = people(40)
    mixed = [_redate([r], "%d/%m/%Y")[0] if i % 3 == 0 else r for i, r in enumerate(rows)]
    a = encode_records(setup.agreement, "school", setup.secret, write_records(tmp_path / "a.csv", rows))
    b = encode_records(setup.agreement, "school", setup.secret, write_records(tmp_path / "b.csv", mixed))
    assert np.array_equal(a.clks, b.clks)


# --- release attributes, empty and odd input ------------------------------------------------------

def test_identifier_only_file_is_accepted(setup: Setup, people, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Invariant: release attributes are optional; a file without them encodes, every value missing."""
    columns = [c for c in COLUMNS if c not in {"area", "deprivation_quintile", "age_band"}]
    out = encode_records(setup.agreement, "school", setup.secret, write_records(tmp_path / "s.csv", people(8), columns))
    assert len(out.record_ids) == 8
    assert out.attributes == {a: [None] * 8 for a in ("area", "deprivation_quintile", "age_band")}


def test_empty_output_is_an_error(setup: Setup, people, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Invariant: zero records encoded never writes an encodings file; the reason is given."""
    header_only = write_records(tmp_path / "h.csv", [])
    with pytest.raises(RecordValidationError, match="header but no records"):
        _encode(setup, header_only, tmp_path / "h.enc")
    rows = people(3)
    for r in rows:
        r["sex"] = "Q"
    bad = write_records(tmp_path / "b.csv", rows)
    with pytest.raises(RecordValidationError, match="3 were rejected"):
        _encode(setup, bad, tmp_path / "b.enc", skip_invalid=True)
    assert not (tmp_path / "h.enc").exists() and not (tmp_path / "b.enc").exists()


def test_nul_bytes_are_reported(setup: Setup, people, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Invariant: a NUL byte refuses its row with a reason; it is never dropped silently."""
    rows = people(5)
    rows[2]["surname"] = "Sm\x00ith"
    records = write_records(tmp_path / "s.csv", rows)
    with pytest.raises(RecordValidationError, match="row 4, field \\(row\\): holds a NUL byte"):
        _encode(setup, records, tmp_path / "s.enc")


def test_stray_quote_is_reported_at_its_row(setup: Setup, people, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Invariant: a quote that never closes is reported at the row where it opens, not at the file's end."""
    records = write_records(tmp_path / "s.csv", people(3000))
    lines = records.read_text().splitlines(keepends=True)
    lines[1] = lines[1].replace(",", ',"', 1)
    records.write_text("".join(lines))
    with pytest.raises(RecordValidationError, match=r"s\.csv: row 2: malformed CSV \(a quote opens a field"):
        _encode(setup, records, tmp_path / "s.enc")


def test_settings_file_is_validated(tmp_path: Path) -> None:
    """Invariant: a misspelt or impossible setting is an error naming it, never ignored."""
    path = tmp_path / "node.toml"
    path.write_text('delimitor = ";"\nencoding = "utf-16"\n')
    with pytest.raises(ConfigError) as info:
        load_export_settings(path)
    assert "delimitor" in str(info.value) and "ASCII-compatible" in str(info.value)


def test_scoring_reads_records_with_the_encoders_reader(setup: Setup, tmp_path: Path) -> None:
    """Invariant: scoring reads the file encode reads (settings, delimiter, Parquet) into the same inputs."""
    from nodes.scoring.data import load_agency_data

    entity = "ab" * 16
    (tmp_path / "e.csv").write_text(f"record_id,entity_id\nS1,{entity}\n", encoding="utf-8")
    (tmp_path / "plain.csv").write_text("record_id,attendance_pct,exclusions\nS1,95.5,1\n", encoding="utf-8")
    (tmp_path / "theirs.csv").write_text("ID;Attendance;exclusions\nS1;95.5;1\n", encoding="utf-8")
    settings = ExportSettings(delimiter=";", columns={"ID": "record_id", "Attendance": "attendance_pct"})
    plain = load_agency_data(setup.agreement, "school", tmp_path / "plain.csv", tmp_path / "e.csv")
    theirs = load_agency_data(setup.agreement, "school", tmp_path / "theirs.csv", tmp_path / "e.csv", settings)
    assert plain.features.tolist() == theirs.features.tolist() == [[95.5, 1.0]]
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"record_id": ["S1"], "attendance_pct": [95.5], "exclusions": [1]}), tmp_path / "r.parquet")
    assert load_agency_data(setup.agreement, "school", tmp_path / "r.parquet", tmp_path / "e.csv").features.tolist() \
        == [[95.5, 1.0]]


def test_a_few_ambiguous_dates_among_iso_refuse_only_their_rows(setup: Setup, people, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Invariant: one DD/MM-or-MM/DD value among ISO dates is refused with the reason; the rest encode."""
    rows = people(20)
    rows[3]["date_of_birth"] = "03/04/2012"
    records = write_records(tmp_path / "s.csv", rows)
    with pytest.raises(RecordValidationError, match="row 5, field date_of_birth: fits both DD/MM/YYYY and MM/DD"):
        _encode(setup, records, tmp_path / "s.enc")
    summary = _encode(setup, records, tmp_path / "s.enc", skip_invalid=True)
    assert (summary.encoded, summary.rejected) == (19, 1)
    stated = encode_records(setup.agreement, "school", setup.secret, records,
                            settings=ExportSettings(date_formats={"date_of_birth": ("%Y-%m-%d", "%d/%m/%Y")}))
    assert stated.rejected_rows == [] and len(stated.record_ids) == 20


def test_a_flower_node_reads_its_export_settings(tmp_path: Path) -> None:
    """Invariant: `node join --settings` reaches the ClientApp's settings (so Flower rounds read the export alike)."""
    from nodes.flower.supernode import JoinSettings, node_config_toml
    from nodes.match_round import NodeSettings

    join = JoinSettings(tmp_path / "a.toml", "school", "127.0.0.1:9091", tmp_path / "s.csv", None,
                        tmp_path / "s.key", tmp_path / "out", settings_path=tmp_path / "node.toml")
    config = tomllib.loads(node_config_toml(join))
    assert NodeSettings.from_node_config(config).settings_path == (tmp_path / "node.toml").resolve()
    plain = tomllib.loads(node_config_toml(JoinSettings(tmp_path / "a.toml", "school", "127.0.0.1:9091",
                                                        tmp_path / "s.csv", None, tmp_path / "s.key", tmp_path)))
    assert NodeSettings.from_node_config(plain).settings_path is None

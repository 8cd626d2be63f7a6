"""The plain-language notice is reviewed against the agreement: nothing the families should know is left out."""

from __future__ import annotations

import html
import re
from pathlib import Path

from click.testing import CliRunner

from pplink.audit.notice import build_notice, party_label, render_html, render_markdown
from pplink.cli.main import cli
from tests.support import Setup, make_setup


def _retention_phrases(config) -> list[str]:  # type: ignore[no-untyped-def]
    r = config.retention
    return [f"{r.encodings_days} days", f"{r.linkage_days} days", f"{r.ledger_days} days"]


def test_every_party_purpose_and_retention_period_appears(setup: Setup) -> None:
    config = setup.agreement
    for text in (render_markdown(build_notice(config)), html.unescape(render_html(build_notice(config)))):
        for party in config.parties:
            assert party.id in text and party_label(party.id, party.name) in text
        for purpose in config.purposes:
            assert purpose in text
        for phrase in _retention_phrases(config):
            assert phrase in text
        assert config.contact in text
        assert f"epsilon = {config.budget.epsilon:g}" in text
        assert "opt_out" in text


def test_notice_follows_the_agreement_not_a_template(tmp_path: Path) -> None:
    # A different agreement (other parties, purposes, retention, budget) changes the notice accordingly.
    def edit(t: str) -> str:
        t = t.replace("encodings_days = 30", "encodings_days = 14").replace("epsilon = 4.0", "epsilon = 0.5")
        return t.replace('"Measure how well agency records link, and for whom linkage works less well",',
                         '"Plan youth services across the county",')

    config = make_setup(tmp_path, agencies=("housing", "school"), edit=edit).agreement
    text = render_markdown(build_notice(config))
    assert "Housing (housing)" in text and "Police" not in text
    assert "14 days" in text and "30 days" not in text
    assert "Plan youth services across the county" in text
    assert "epsilon = 0.5" in text and "strong protection" in text


def test_html_is_self_contained(setup: Setup) -> None:
    page = render_html(build_notice(setup.agreement))
    assert page.startswith("<!doctype html>")
    assert not re.search(r"(src|href)=", page) and "<script" not in page


def test_explain_cli_with_a_verified_ledger(tmp_path: Path) -> None:
    work = tmp_path / "demo"
    CliRunner().invoke(cli, ["demo", "--dir", str(work), "--people", "400"], catch_exceptions=False)
    out = tmp_path / "notice.md"
    r = CliRunner().invoke(cli, ["agreement", "explain", str(work / "agreement.toml"), "--ledger",
                                 str(work / "coordinator" / "ledger.jsonl"), "-o", str(out), "--html",
                                 str(tmp_path / "notice.html")], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    text = out.read_text()
    assert "average share linked" in text  # the demo releases link rates by deprivation quintile
    # A tampered ledger is refused, not published from.
    ledger = work / "coordinator" / "ledger.jsonl"
    ledger.write_text(ledger.read_text().replace('"value":', '"value": 1 ,"x":', 1))
    r = CliRunner().invoke(cli, ["agreement", "explain", str(work / "agreement.toml"), "--ledger", str(ledger)])
    assert r.exit_code != 0 and "fails the audit" in r.output


def _filled(text: str) -> str:
    """The default agreement with its placeholders replaced by real-looking wording."""
    import re as _re

    text = text.replace("Information governance lead, data.protection@example.org", "IG lead, ig@council.gov.uk")
    text = _re.sub(r'opt_out_how = "TO BE COMPLETED: whom to tell at (\w+), and how"',
                   r'opt_out_how = "tell the \1 office or write to optout@\1.gov.uk"', text)
    text = text.replace("TO BE COMPLETED: the organisations responsible for this linkage in law",
                        "The four agencies, as joint controllers")
    return text.replace("TO BE COMPLETED: the lawful basis, e.g. UK GDPR Article 6(1)(e) public task under <statute>",
                        "UK GDPR Article 6(1)(e), public task, under the Children Act 2004 section 10")


def test_notice_tells_the_truth_about_codes_scores_opt_outs_and_rights(tmp_path: Path) -> None:
    """Invariant: the notice promises no more than SECURITY.md measures, names each agency's score
    features, each agency's opt-out route and what happens to earlier links, and the agreement's
    lawful basis, rights and complaints route."""
    config = make_setup(tmp_path, edit=_filled).agreement
    text = render_markdown(build_notice(config))
    assert "cannot be turned back" not in text and "not impossible" in text and "SECURITY.md" in text
    assert config.scoring is not None
    for pid, columns in config.scoring.features.items():
        line = next(b for b in text.splitlines() if b.startswith(f"- {party_label(pid)}: "))
        assert all(c.replace("_", " ") in line for c in columns)
    for p in config.parties:
        if p.role == "agency":
            assert p.opt_out_how in text
    assert "tell every agency" in text and f"{config.retention.linkage_days} days" in text
    t = config.transparency
    for value in (t.controller, t.lawful_basis, t.complaints, *t.rights):
        assert value in text
    assert "Information Commissioner's Office" in text


def test_check_warns_on_placeholders_until_they_are_filled(tmp_path: Path) -> None:
    """Invariant: `agreement check` flags every placeholder the notice would publish, and none once filled."""
    import json

    raw = make_setup(tmp_path / "raw")
    r = CliRunner().invoke(cli, ["agreement", "check", str(raw.agreement_path), "--format", "json"])
    warnings = json.loads(r.output)["warnings"]
    assert r.exit_code == 0
    assert any(w.startswith("contact is a placeholder") for w in warnings)
    assert any("lawful_basis" in w for w in warnings) and any("parties.school.opt_out_how" in w for w in warnings)
    filled = make_setup(tmp_path / "filled", edit=_filled)
    r = CliRunner().invoke(cli, ["agreement", "check", str(filled.agreement_path), "--format", "json"])
    assert json.loads(r.output)["warnings"] == []
    r = CliRunner().invoke(cli, ["agreement", "check", str(raw.agreement_path)])
    assert "warning        contact is a placeholder" in r.output and "any other value refuses the row" in r.output


def test_notice_without_an_opt_out_column_says_so(tmp_path: Path) -> None:
    """Invariant: an agreement that declares no opt-out column does not tell families they can opt out there."""
    config = make_setup(tmp_path, edit=lambda t: t.replace('opt_out_column = "opt_out"', "opt_out_column = false"))
    text = render_markdown(build_notice(config.agreement))
    assert "no way to record an opt-out" in text

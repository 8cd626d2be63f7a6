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

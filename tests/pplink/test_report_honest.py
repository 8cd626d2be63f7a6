"""The report is honest: only DP releases, suppressed cells as suppressed, rates with ranges, clipping marked."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from pplink.accounting import Accounting, Mechanism, PrivacyLoss, QueryKind
from pplink.audit.notice import build_notice, render_markdown
from pplink.audit.release_views import derive_link_rates
from pplink.audit.report import render_report
from pplink.audit.verify import AuditVerdict
from pplink.cli.main import cli
from pplink.ledger import Cell, LedgerEntry, ReleaseQuery
from tests.support import Setup, make_setup


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Setup:
    return make_setup(tmp_path_factory.mktemp("report"), agencies=("social_care", "school"))


def _entry(seq: int, query: ReleaseQuery, cells: dict[tuple[str, ...], int | None], *, scale: float = 2.0,
           min_cell: int = 10) -> LedgerEntry:
    # Built without the engine so the noise is fixed: the test controls which cells are suppressed or clipped.
    loss = PrivacyLoss(epsilon=0.5, rho=None, delta=0.0)
    return LedgerEntry.model_construct(
        query=query, accounting=Accounting.PURE, mechanism=Mechanism.LAPLACE, sensitivity=1, scale=scale, loss=loss,
        min_cell_size=min_cell, cells=tuple(Cell(key=k, value=v) for k, v in cells.items()), library="test",
        seq=seq, time="2026-01-01T00:00:00.000000Z", agreement_id="0" * 64, cumulative=loss, prev_hash="0" * 64,
        signature="x")


def _verdict(setup: Setup) -> AuditVerdict:
    loss = PrivacyLoss(epsilon=1.0, rho=None, delta=0.0)
    return AuditVerdict(source="ledger", agreement_id=setup.agreement.agreement_id, accounting=Accounting.PURE,
                        budget_epsilon=4.0, delta=0.0, lines=2, rows=(), findings=(), spent=loss,
                        remaining_epsilon=3.0, head_hash="0" * 64, ledger_id="0" * 64, round_id=None,
                        receipts_checked=0)


def _link_rate_entry() -> LedgerEntry:
    parties = ("social_care", "school")
    cells: dict[tuple[str, ...], int | None] = {}
    # "north": an ordinary group; "(missing)": a tiny group whose noisy "both" count exceeds its "at" count.
    for group, at_a, at_b, both in (("north", 200, 150, 90), ("(missing)", 12, 11, 15)):
        cells[("at", "social_care", group)] = at_a
        cells[("at", "school", group)] = at_b
        cells[("both", "social_care", "school", group)] = both
    return _entry(1, ReleaseQuery(kind=QueryKind.LINK_RATE, attribute="area", parties=parties), cells)


def _confusion_entry() -> LedgerEntry:
    cells: dict[tuple[str, ...], int | None] = {
        ("a", "tp"): 40, ("a", "fp"): 12, ("a", "fn"): 20, ("a", "tn"): 300,
        ("b", "tp"): None, ("b", "fp"): 14, ("b", "fn"): 11, ("b", "tn"): None,  # suppressed below min_cell_size
    }
    return _entry(2, ReleaseQuery(kind=QueryKind.CONFUSION, attribute="area", subject="model v1"), cells)


def _page(setup: Setup) -> str:
    return render_report(setup.agreement, _verdict(setup), [_link_rate_entry(), _confusion_entry()])


def test_suppressed_cells_are_shown_as_suppressed_never_as_a_rate(setup: Setup) -> None:
    page = _page(setup)
    row_b = re.search(r"<tr><td>b</td>(.*?)</tr>", page)
    assert row_b is not None
    cells = re.findall(r"<td>(.*?)</td>", row_b.group(1))
    assert cells == ["suppressed", "14", "11", "suppressed", "suppressed", "suppressed"], cells
    assert "100%" not in row_b.group(1)
    chart = page[page.index("False positive and false negative rates"):]
    assert chart.count('class="suppressed"') == 2  # both of group b's bars


def test_every_rate_carries_its_range_and_clipping_is_marked(setup: Setup) -> None:
    page = _page(setup)
    rates = derive_link_rates(_link_rate_entry().cells, ("social_care", "school"), 10)
    clipped = [r for r in rates if r.clipped]
    assert {r.value for r in clipped} == {"(missing)"} and all(r.rate == 1.0 for r in clipped)
    assert re.search(r"<td>\(missing\)</td><td>100% \(\d+% to 100%\), clipped</td>", page)
    assert 'class="clipped"' in page
    north = re.search(r"<td>north</td><td>(\d+)% \((\d+)% to (\d+)%\)</td>", page)
    assert north is not None and int(north[2]) < int(north[1]) < int(north[3])
    for title in ("Share of each agency", "False positive and false negative rates"):
        start = page.index(title)
        svg = page[start:page.index("</svg>", start)]
        assert 'class="interval"' in svg, f"the {title} chart has no intervals"


def test_the_page_that_says_dp_holds_nothing_exact(setup: Setup, tmp_path: Path) -> None:
    """`pplink report --linkage` puts the exact similarity histogram on a separate, labelled page only."""
    linkage = tmp_path / "linkage" / "coordinator"
    linkage.mkdir(parents=True)
    (linkage / "match.json").write_text('{"histogram": {"counts": [5, 900, 40, 7]}, "stats": {}}')
    ledger = tmp_path / "ledger.jsonl"
    ledger.write_text("")
    out = tmp_path / "report.html"
    result = CliRunner(mix_stderr=False).invoke(cli, ["report", "--agreement", str(setup.agreement_path), "--ledger",
                                                      str(ledger), "--linkage", str(tmp_path / "linkage"), "-o",
                                                      str(out)])
    assert result.exit_code == 0, result.stdout + result.stderr
    page = out.read_text()
    assert "differential privacy" in page and "Similarity" not in page and "900" not in page
    exact = out.with_suffix(".exact.html").read_text()
    assert "Not differentially private" in exact and "Similarity distribution" in exact and "900" in exact
    assert out.with_suffix(".exact.html").stat().st_mode & 0o077 == 0


def test_the_public_notice_does_not_present_a_clipped_share_as_measured(setup: Setup) -> None:
    page = render_markdown(build_notice(setup.agreement, [_link_rate_entry()]))
    missing = next(line for line in page.splitlines() if "not recorded" in line)
    assert "100%" in missing and "too few people to measure" in missing
    north = next(line for line in page.splitlines() if "north" in line)
    assert "too few" not in north


def test_the_exact_page_shows_the_rounds_threshold_and_its_estimates(setup: Setup) -> None:
    """With threshold "auto" the agreement holds no number: the exact page marks the round's own threshold
    (from match.json) and prints the round's estimated precision and recall, never on the DP page."""
    from pplink.audit.report.exact import render_exact_page

    assert setup.agreement.linkage.threshold == "auto"
    calibration = {"method": "auto", "threshold": 0.63, "precision": 0.991, "recall": 0.972, "missed": 12.0}
    page = render_exact_page(setup.agreement, match_report={"histogram": {"counts": [5, 900, 40, 7]},
                                                            "stats": {"threshold": 0.63}, "calibration": calibration})
    assert page is not None
    assert "threshold 0.63" in page and "precision 0.991" in page and "recall 0.972" in page
    assert "counted from" not in page  # an older match.json: every pair counted
    floored = render_exact_page(setup.agreement, match_report={"histogram": {"counts": [0, 900, 40, 7], "floor": 0.55},
                                                               "stats": {"threshold": 0.63}})
    assert floored is not None and "counted from the round's floor 0.55 up" in floored


def test_the_dp_page_shows_the_rounds_link_scores_release_and_only_its_noisy_counts(setup: Setup) -> None:
    """Linkage quality reaches the DP page only as the round's link-scores release: its noisy counts, their
    range, suppressed bins named as such, and its privacy cost."""
    cells: dict[tuple[str, ...], int | None] = {("0.5500",): 412, ("0.5600",): None, ("0.9900",): 7731}
    entry = _entry(3, ReleaseQuery(kind=QueryKind.LINK_SCORES, subject="linked pairs by Dice: floor 0.55 bins 100",
                                   parties=("social_care", "school")), cells)
    page = render_report(setup.agreement, _verdict(setup), [entry])
    section = page[page.index("<h2>Linkage quality</h2>"):]
    section = section[: section.index("</section>")]
    assert "7731" in section and "412" in section and "suppressed: 1 of 3" in section
    assert "±" in section and "entry 3" in section and "epsilon 0.5" in section
    assert "Linkage quality" not in render_report(setup.agreement, _verdict(setup), [_link_rate_entry()])

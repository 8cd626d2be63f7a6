"""``pplink report``: one self-contained HTML file for the people who use and oversee a linkage.

Built only from the DP releases on the (verified) ledger and the auditor's verdict: nothing exact
appears on it. Every released number is shown with the epsilon it cost and its noise (a 95%
interval: ±1.96 standard deviations; Laplace sd = sqrt(2)·b, Gaussian sd = sigma); every rate
derived from noisy counts carries the range it lies in when each count is within its 95% interval,
a suppressed cell is shown as suppressed, and a ratio that noise pushed outside 0-100% is marked
clipped. Exact figures (the coordinator's similarity histogram, a label owner's own evaluation)
go on a separate page, :mod:`pplink.audit.report.exact`, that says so. Charts are static SVG: no
script, no external resource, nothing fetched when the file is opened.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from pplink.accounting import Mechanism, QueryKind
from pplink.agreement import AgreementConfig
from pplink.audit.release_views import derive_link_rates
from pplink.audit.report.svg import bar_chart, grouped_bars, step_chart, upset_chart
from pplink.audit.verify import AuditVerdict, describe_query, verify_ledger
from pplink.ledger import LedgerEntry, read_ledger

__all__ = ["build_report", "noise_sd", "render_report"]

_Z95 = 1.96


def noise_sd(entry: LedgerEntry) -> float:
    """Standard deviation of the noise on each released cell of an entry.

    >>> from types import SimpleNamespace as S
    >>> round(noise_sd(S(mechanism=Mechanism.LAPLACE, scale=2.0)), 4)
    2.8284
    """
    return entry.scale * math.sqrt(2) if entry.mechanism == Mechanism.LAPLACE else entry.scale


def _e(text: object) -> str:
    return html.escape(str(text))


def _latest(entries: Sequence[LedgerEntry], kind: QueryKind) -> LedgerEntry | None:
    matching = [e for e in entries if e.query.kind == kind]
    return matching[-1] if matching else None


def _cost(entry: LedgerEntry) -> str:
    rho = f", rho {entry.loss.rho:.3g}" if entry.loss.rho is not None else ""
    return (f"entry {entry.seq}, {entry.time[:16].replace('T', ' ')} UTC: epsilon {entry.loss.epsilon:.3g}{rho}, "
            f"{entry.mechanism.value} noise, scale {entry.scale:.3g}, 95% interval ±{_Z95 * noise_sd(entry):.1f}")


def _table(head: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    return ("<table><thead><tr>" + "".join(f"<th>{_e(h)}</th>" for h in head) + "</tr></thead><tbody>"
            + "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in r) + "</tr>" for r in rows) + "</tbody></table>")


def _verdict_section(verdict: AuditVerdict) -> str:
    if verdict.ok:
        return (f'<section class="ok"><h2>Auditor\'s verdict: PASS</h2><p>{verdict.lines} ledger entries: hash chain, '
                "every signature and every privacy loss re-derived from mechanism, sensitivity and scale; the total "
                f"is within the agreement's budget (epsilon {verdict.spent.epsilon:.3g} of {verdict.budget_epsilon:g} "
                f"spent, {verdict.remaining_epsilon:.3g} left). Head hash <code>{_e(verdict.head_hash[:16])}…</code>."
                "</p></section>")
    items = "".join(f"<li>line {_e(f.line)}: {_e(f.problem)}</li>" for f in verdict.findings)
    return (f'<section class="fail"><h2>Auditor\'s verdict: FAIL</h2><p>The ledger did not verify. Treat every number '
            f"below as unconfirmed.</p><ul>{items}</ul></section>")


def _budget_section(config: AgreementConfig, entries: Sequence[LedgerEntry]) -> str:
    if not entries:
        return "<section><h2>Privacy budget</h2><p>Nothing has been released yet.</p></section>"
    chart = step_chart([e.cumulative.epsilon for e in entries], limit=config.budget.epsilon,
                       title="Privacy budget spent over releases", x_labels=[str(e.seq) for e in entries])
    rows = [(e.seq, e.time[:19].replace("T", " "), describe_query(e.query), e.mechanism.value, e.sensitivity,
             f"{e.scale:.3g}", f"{e.loss.epsilon:.3g}", f"{e.cumulative.epsilon:.3g}") for e in entries]
    b = config.budget
    return ("<section><h2>Privacy budget</h2>"
            f"<p>Budget epsilon {b.epsilon:g} (delta {b.delta:g}, {b.accounting.value} accounting); spent "
            f"{entries[-1].cumulative.epsilon:.3g}. Under zCDP the per-release epsilons do not simply add: the rhos "
            "add and the total is converted once.</p>" + chart
            + _table(["entry", "time (UTC)", "query", "mechanism", "sensitivity", "scale", "epsilon", "cumulative"],
                     rows)
            + "</section>")


def _overlap_section(entry: LedgerEntry | None) -> str:
    if entry is None:
        return ""
    parties = list(entry.query.parties)
    err = _Z95 * noise_sd(entry)
    combos = []
    for cell in entry.cells:
        members = frozenset(cell.key[0].split("+"))
        combos.append((members, cell.value, err))
    combos.sort(key=lambda c: -(c[1] or 0))
    chart = upset_chart(parties, combos, title="People known to exactly these agencies")
    rows = [(" + ".join(sorted(m)), "< min cell" if v is None else v, f"±{e:.0f}") for m, v, e in combos]
    return ("<section><h2>Agency overlaps</h2><p>People (linked entities) known to exactly each combination of "
            f"agencies. {_e(_cost(entry))}.</p>" + chart + _table(["agencies", "people (noisy)", "95%"], rows)
            + "</section>")


def _ratio(num: float | None, den: float | None, err: float) -> tuple[float, float, float, bool] | None:
    """``num / den`` of two noisy counts: (rate clipped to [0, 1], low, high, clipped), None if not computable.

    ``low``/``high`` bound the ratio when each count is within ``±err`` (its 95% interval), so
    the range is at least a 95% interval for the ratio.

    >>> [round(x, 3) for x in _ratio(50, 100, 10)[:3]]
    [0.5, 0.364, 0.667]
    >>> _ratio(12, 10, 5)[0::3], _ratio(None, 10, 5), _ratio(3, 0, 5)
    ((1.0, True), None, None)
    """
    if num is None or den is None or den <= 0:
        return None
    raw = num / den
    rate = min(max(raw, 0.0), 1.0)
    low = min(max((num - err) / (den + err), 0.0), 1.0)
    high = 1.0 if den - err <= 0 else min(max((num + err) / (den - err), 0.0), 1.0)
    return rate, low, high, rate != raw


def _pct(r: tuple[float, float, float, bool] | None) -> str:
    if r is None:
        return "suppressed"
    text = f"{r[0]:.0%} ({r[1]:.0%} to {r[2]:.0%})"
    return text + ", clipped" if r[3] else text


def _link_rate_section(entry: LedgerEntry | None) -> str:
    if entry is None:
        return ""
    err = _Z95 * noise_sd(entry)
    rates = derive_link_rates(entry.cells, entry.query.parties, entry.min_cell_size)
    groups = sorted({r.value for r in rates})
    by_group: dict[str, list[tuple[float, float, float, bool]]] = {g: [] for g in groups}
    for r in rates:
        ratio = _ratio(r.numerator, r.denominator, err)
        if ratio is not None:
            by_group[r.value].append(ratio)
    averages = [sum(x[0] for x in v) / len(v) if v else None for v in by_group.values()]
    spans = [(sum(x[1] for x in v) / len(v), sum(x[2] for x in v) / len(v)) if v else None
             for v in by_group.values()]
    clipped = [any(x[3] for x in v) for v in by_group.values()]
    name = "average share linked"
    chart = grouped_bars(groups, {name: averages}, vmax=1.0, percent=True, intervals={name: spans},
                         clipped={name: clipped},
                         title="Share of each agency's people found at another agency, by group")
    rows = [(r.source, r.target, r.value, _pct(_ratio(r.numerator, r.denominator, err)),
             "suppressed" if r.numerator is None else r.numerator,
             "suppressed" if r.denominator is None else r.denominator)
            for r in rates]
    attribute = entry.query.attribute or "everyone"
    return ("<section><h2>Linkage by group</h2><p>How often a person known to one agency was found at another, by "
            f"{_e(attribute)}. Linkage errors fall hardest on minority and deprived groups: a lower share can mean "
            "records link less well for that group. Rates are ratios of noisy counts; each comes with the range it "
            "lies in when both counts are within their 95% intervals (the whiskers), and a ratio that noise pushed "
            f"above 100% or below 0% is marked clipped: it is a bound, not an estimate. {_e(_cost(entry))}.</p>"
            + chart + "<details><summary>Every agency pair</summary>"
            + _table(["from", "found at", attribute, "rate (range)", f"both (noisy, ±{err:.0f})",
                      f"at source (noisy, ±{err:.0f})"], rows)
            + "</details></section>")


def _link_scores_section(entry: LedgerEntry | None) -> str:
    # The round's linkage-quality estimates are post-processing of exactly these noisy counts
    # (coordinator.linkage.calibration_dp); the page shows the counts themselves, so what it says
    # about linkage quality is a DP release too and never the coordinator's exact histogram.
    if entry is None:
        return ""
    err = _Z95 * noise_sd(entry)
    labels = [cell.key[0] for cell in entry.cells]
    values = [cell.value for cell in entry.cells]
    suppressed = sum(v is None for v in values)
    chart = bar_chart(labels, values, errors=[err] * len(values),
                      title="Linked pairs by similarity (Dice, lower edge of each bin)")
    note = (f" Bins below the minimum cell size are suppressed: {suppressed} of {len(values)}." if suppressed else "")
    return ("<section><h2>Linkage quality</h2><p>Pairs of records the round's one-to-one solve linked at its "
            "calibration floor, by similarity. True links pile up near 1; false links (each record's best "
            "stranger) crowd the floor. The round's published estimates of precision, recall and missed links "
            f"are derived from these noisy counts alone. Each count is within ±{err:.0f} with 95% confidence."
            f"{note} {_e(_cost(entry))}.</p>{chart}</section>")


def _count_sections(entries: Sequence[LedgerEntry]) -> str:
    out = []
    for entry in entries:
        if entry.query.kind not in (QueryKind.COUNT_BY, QueryKind.HISTOGRAM):
            continue
        err = _Z95 * noise_sd(entry)
        labels = [" / ".join(cell.key) for cell in entry.cells]
        values = [cell.value for cell in entry.cells]
        chart = bar_chart(labels, values, errors=[err] * len(values), title=describe_query(entry.query))
        out.append(f"<section><h2>{_e(describe_query(entry.query))}</h2><p>{_e(_cost(entry))}.</p>{chart}</section>")
    return "".join(out)


def _score_histogram_part(entry: LedgerEntry) -> str:
    from pplink.scoring.evaluation import auc_from_histogram, fill_suppressed

    labels = list(dict.fromkeys(c.key[0] for c in entry.cells))
    cells = {tuple(c.key): c.value for c in entry.cells}
    pos = fill_suppressed([cells.get((b, "positive")) for b in labels])
    neg = fill_suppressed([cells.get((b, "negative")) for b in labels])
    auc = auc_from_histogram(pos, neg)
    err = _Z95 * noise_sd(entry)
    rows = []
    for b in labels:
        p, n = cells.get((b, "positive")), cells.get((b, "negative"))
        # a share needs both counts; their sum's noise is within ±2·err when each is within ±err
        share = None if p is None or n is None else _ratio(p, p + n, 2 * err)
        rows.append((b, "suppressed" if p is None else p, "suppressed" if n is None else n, _pct(share)))
    auc_text = "not computable (a class was suppressed)" if math.isnan(auc) else f"{auc:.3f}"
    return (f"<p>Held-out people by score band and outcome: AUC {auc_text}, derived from the noisy counts (a "
            f"suppressed cell counts as zero there). Each count is within ±{err:.0f} with 95% confidence; each "
            f"share comes with its range. {_e(_cost(entry))}.</p>"
            + _table(["score band (logit)", f"with the outcome (noisy, ±{err:.0f})", f"without (noisy, ±{err:.0f})",
                      "observed share with the outcome (range)"], rows))


def _model_section(entry: LedgerEntry | None, histogram: LedgerEntry | None = None) -> str:
    if entry is None and histogram is None:
        return ""
    parts = ["<section><h2>Model accuracy and errors by group</h2>",
             "<p>A score is a prompt for a person to take a second look, never a decision.</p>"]
    if histogram is not None:
        parts.append(_score_histogram_part(histogram))
    if entry is not None:
        err = _Z95 * noise_sd(entry)
        cells = {tuple(c.key): c.value for c in entry.cells}
        groups = sorted({c.key[0] for c in entry.cells})

        def share(g: str, a: str, b: str) -> tuple[float, float, float, bool] | None:
            # a / (a + b) needs both counts: a suppressed one leaves the rate unknown, never 0% or 100%.
            x, y = cells.get((g, a)), cells.get((g, b))
            return None if x is None or y is None else _ratio(x, x + y, 2 * err)

        rates = {"false positive rate": [share(g, "fp", "tn") for g in groups],
                 "false negative rate": [share(g, "fn", "tp") for g in groups]}
        parts.append(grouped_bars(
            groups, {k: [r and r[0] for r in v] for k, v in rates.items()}, percent=True, vmax=1.0,
            intervals={k: [r and (r[1], r[2]) for r in v] for k, v in rates.items()},
            clipped={k: [bool(r and r[3]) for r in v] for k, v in rates.items()},
            title="False positive and false negative rates by group"))
        rows = [(g, *("suppressed" if cells.get((g, o)) is None else cells[(g, o)] for o in ("tp", "fp", "fn", "tn")),
                 _pct(f), _pct(n))
                for g, f, n in zip(groups, rates["false positive rate"], rates["false negative rate"], strict=True)]
        parts.append(f"<p>{_e(describe_query(entry.query))}: {_e(_cost(entry))} (±{err:.0f} on each count). A count "
                     f"below the minimum cell size ({entry.min_cell_size}) is suppressed, and so is every rate that "
                     "needs it. Each rate comes with the range it lies in when its counts are within their 95% "
                     "intervals.</p>"
                     + _table([entry.query.attribute or "group", "TP", "FP", "FN", "TN", "FPR (range)", "FNR (range)"],
                              rows))
    parts.append("</section>")
    return "".join(parts)


def render_report(config: AgreementConfig, verdict: AuditVerdict, entries: Sequence[LedgerEntry]) -> str:
    """Render the HTML (pure: everything it shows is passed in, and all of it is a DP release)."""
    body = [
        f"<h1>{_e(config.name)}</h1>",
        f"<p class=\"meta\">Agreement <code>{_e(config.agreement_id[:16])}…</code> · agencies "
        f"{_e(', '.join(config.agency_ids))} · generated {datetime.now(UTC).isoformat(timespec='seconds')}</p>",
        "<p>Every number here was released with differential privacy and recorded on the signed ledger before "
        "anyone saw it; each shows the privacy it cost and its uncertainty.</p>",
        _verdict_section(verdict),
        _budget_section(config, entries),
        _overlap_section(_latest(entries, QueryKind.OVERLAP)),
        _link_rate_section(_latest(entries, QueryKind.LINK_RATE)),
        _link_scores_section(_latest(entries, QueryKind.LINK_SCORES)),
        _model_section(_latest([e for e in entries if e.cells and len(e.cells[0].key) == 2], QueryKind.CONFUSION),
                       _latest(entries, QueryKind.SCORE_HISTOGRAM)),
        _count_sections(entries),
    ]
    style = ("body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;color:#1a202c;"
             "line-height:1.45}section{margin:2rem 0}table{border-collapse:collapse;margin:.8rem 0;font-size:.9rem}"
             "td,th{border:1px solid #cbd5e0;padding:.25rem .5rem;text-align:left}.ok{border-left:6px solid #2f855a;"
             "padding-left:1rem}.fail{border-left:6px solid #c53030;padding-left:1rem;background:#fff5f5}"
             ".meta{color:#4a5568}svg{display:block;margin:.5rem 0;max-width:100%;height:auto}")
    return ("<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" "
            f"content=\"width=device-width\"><title>pplink report: {_e(config.name)}</title><style>{style}</style>"
            "</head><body>\n" + "\n".join(b for b in body if b) + "\n</body></html>\n")


def build_report(config: AgreementConfig, ledger_path: Path) -> tuple[str, AuditVerdict]:
    """Verify the ledger and render the report from its DP releases.

    Returns:
        ``(html, verdict)``: the report shows a failed verdict prominently rather than hiding it.
    """
    verdict = verify_ledger(config, ledger_path)
    entries = read_ledger(ledger_path, config) if verdict.ok else _readable_entries(ledger_path, config)
    return render_report(config, verdict, entries), verdict


def _readable_entries(ledger_path: Path, config: AgreementConfig) -> list[LedgerEntry]:
    # A ledger that fails the audit may still parse: show what it claims, under the FAIL banner.
    try:
        return read_ledger(ledger_path, config)
    except Exception:  # noqa: BLE001 - any parse failure means there is nothing trustworthy to chart
        return []

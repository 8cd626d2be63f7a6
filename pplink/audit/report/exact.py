"""The companion page of exact figures: never a DP release, and it says so at the top.

The coordinator's similarity histogram of its last match (pairs of encodings, exact counts) and a
label owner's own held-out evaluation are useful to the party that holds them, but they are not
differentially private. They never appear on the report (:mod:`pplink.audit.report`), which shows
only DP releases; ``pplink report --linkage/--model`` writes them here, to a separate file for
the holder's eyes only.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from pplink.agreement import AgreementConfig
from pplink.audit.report.svg import histogram_chart

__all__ = ["build_exact_page", "render_exact_page"]


def _e(text: object) -> str:
    return html.escape(str(text))


def _table(head: list[str], rows: list[list[object]]) -> str:
    return ("<table><thead><tr>" + "".join(f"<th>{_e(h)}</th>" for h in head) + "</tr></thead><tbody>"
            + "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in r) + "</tr>" for r in rows) + "</tbody></table>")


def render_exact_page(config: AgreementConfig, *, match_report: dict[str, Any] | None = None,
                      model: dict[str, Any] | None = None) -> str | None:
    """The HTML of the exact-figures page, or None when there is nothing to show."""
    parts = []
    if match_report and match_report.get("histogram"):
        # The round's own threshold (the agreement may say "auto"); older match.json files lack it.
        threshold = match_report.get("stats", {}).get("threshold")
        if threshold is None and config.linkage.fixed_threshold is not None:
            threshold = config.linkage.fixed_threshold
        chart = histogram_chart(match_report["histogram"]["counts"], marker=threshold,
                                title="Similarity of candidate pairs")
        calibration = match_report.get("calibration")
        estimate = ""
        if calibration:
            estimate = (f"<p>Threshold {calibration['threshold']:g} ({_e(calibration['method'])}), estimated from "
                        f"the pairs alone, with no truth: precision {calibration['precision']:.3f}, recall "
                        f"{calibration['recall']:.3f}, about {calibration['missed']:.0f} links missed.</p>")
        # A round counts the pairs it kept, from its floor up (older match.json files counted every pair).
        floor = match_report["histogram"].get("floor") or 0.0
        counted = f", counted from the round's floor {floor:g} up" if floor > 0 else ""
        parts.append("<section><h2>Similarity distribution (coordinator only)</h2><p>Dice similarity of the "
                     f"candidate pairs in the last match{counted}, with the round's threshold: exact counts of "
                     "pairs of encodings.</p>" + estimate + chart + "</section>")
    if model:
        metrics = [[k, f"{v:.3f}" if isinstance(v, float) else v] for k, v in model.get("metrics", {}).items()]
        if metrics:
            parts.append("<section><h2>Held-out evaluation (label owner only)</h2>"
                         + _table(["measure", "value"], metrics) + "</section>")
        calibration = model.get("calibration")
        if calibration:
            parts.append("<section><h2>Calibration (label owner only)</h2>"
                         + _table(list(calibration[0].keys()), [list(r.values()) for r in calibration])
                         + "</section>")
    if not parts:
        return None
    style = ("body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;color:#1a202c}"
             "table{border-collapse:collapse}td,th{border:1px solid #cbd5e0;padding:.25rem .5rem}"
             ".warn{border-left:6px solid #c05621;padding-left:1rem;background:#fffaf0}"
             "svg{display:block;max-width:100%;height:auto}")
    return ("<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>pplink exact figures: "
            f"{_e(config.name)}</title><style>{style}</style></head><body>\n<h1>{_e(config.name)}: exact figures</h1>"
            "<p class=\"warn\"><strong>Not differentially private.</strong> These figures are exact. They are for "
            "the party that holds them and must not be shared with the agencies, published, or put beside the DP "
            "report.</p>\n" + "\n".join(parts) + "\n</body></html>\n")


def build_exact_page(config: AgreementConfig, *, linkage_dir: Path | None = None,
                     model_dir: Path | None = None) -> str | None:
    """Read ``<linkage>/coordinator/match.json`` and ``<model>/evaluation.json`` (where given) into the page."""
    match_report = model = None
    if linkage_dir is not None:
        path = Path(linkage_dir) / "coordinator" / "match.json"
        if path.is_file():
            match_report = json.loads(path.read_text(encoding="utf-8"))
    if model_dir is not None:
        path = Path(model_dir) / "evaluation.json"
        if path.is_file():
            model = json.loads(path.read_text(encoding="utf-8"))
    return render_exact_page(config, match_report=match_report, model=model)

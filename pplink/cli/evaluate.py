"""``pplink eval …``: measure quality against known truth (synthetic data, where the truth is known)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from pplink.cli.options import FORMAT_OPTION, existing_file
from pplink.errors import UsageError

if TYPE_CHECKING:
    from pplink.lab.linkage_eval import LinkageReport, PairScores

__all__ = ["eval_group", "render_linkage_report"]


@click.group("eval")
def eval_group() -> None:
    """Measure linkage quality against a known truth (synthetic data only)."""


@eval_group.command("linkage")
@click.option("--truth", "truth_path", type=existing_file, required=True,
              help="truth.csv (agency,record_id,person) from `pplink synth`.")
@click.argument("predictions", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--manifest", "manifest_path", type=existing_file, default=None,
              help="The round's manifest.json: show its threshold and method, and the estimates the round "
                   "published (calibration.json beside it, from its DP link-scores release), next to the measured.")
@FORMAT_OPTION
def linkage_command(truth_path: Path, predictions: tuple[Path, ...], manifest_path: Path | None,
                    output_format: str) -> None:
    """Score PREDICTIONS (<agency>.entities.csv files, or folders of them) against the truth.

    Pairwise precision, recall and F1 over cross-agency record pairs, overall and per agency
    pair, and how many true entities were reconstructed exactly. Records the predictions lack
    (opted-out rows, for example) are counted, not scored. With --manifest, the round's threshold,
    how it was set, and the precision and recall it estimated without truth are shown too: the
    published ones (DP, from the round's link-scores ledger entry, in calibration.json beside the
    manifest), with their intervals.
    """
    from pplink.lab.linkage_eval import evaluate_linkage_by_agency, read_predictions, read_truth

    report = evaluate_linkage_by_agency(read_truth(truth_path), read_predictions(list(predictions)))
    round_info = _round_info(manifest_path) if manifest_path else None
    if output_format == "json":
        click.echo(json.dumps({**report.to_dict(), **({"round": round_info} if round_info else {})}))
        return
    click.echo(render_linkage_report(report))
    if round_info:
        click.echo(_render_round(round_info, report))


def _round_info(path: Path) -> dict[str, Any]:
    """The threshold and calibration a round's manifest states (read, not verified: an evaluation aid)."""
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UsageError(f"{path}: not a readable manifest ({type(exc).__name__})") from None
    if not isinstance(manifest, dict) or "threshold" not in manifest:
        raise UsageError(f"{path}: not a linkage manifest (no threshold)")
    info = {"threshold": manifest["threshold"], "calibration": manifest.get("calibration")}
    # The estimates the round published (DP); the manifest itself carries none since they were made DP.
    published = path.with_name("calibration.json")
    if published.is_file():
        try:
            estimates = json.loads(published.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise UsageError(f"{published}: not readable ({type(exc).__name__})") from None
        # An earlier round's file left in a re-used folder is not this round's.
        if isinstance(estimates, dict) and estimates.get("round_id") == manifest.get("round_id"):
            info["published"] = estimates
    return info


def _render_round(info: dict[str, Any], report: LinkageReport) -> str:
    calibration = info.get("calibration") or {}
    line = f"Round threshold {info['threshold']:g} ({calibration.get('method', 'not recorded')})"
    published = info.get("published")
    if published:
        calibration = published
        line += " ; published estimates (DP, link-scores ledger entry"
        line += f" {published.get('dp', {}).get('ledger_seq', '?')})"
    if "precision" in calibration:
        line += (f"; estimated without truth: precision {calibration['precision']:.4f}"
                 f"{_interval(calibration.get('precision_interval'))} "
                 f"(measured {_score(report.overall.precision)}), recall {calibration['recall']:.4f}"
                 f"{_interval(calibration.get('recall_interval'))} (measured {_score(report.overall.recall)})")
    return line


def _interval(bounds: Any) -> str:
    return f" [{bounds[0]:.4f}, {bounds[1]:.4f}]" if bounds else ""


def _score(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _share(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _by_agency(counts: dict[str, int]) -> str:
    return ", ".join(f"{agency} {count:,}" for agency, count in counts.items())


def render_linkage_report(report: LinkageReport) -> str:
    """A plain-text table of a linkage report, for people."""
    rows: list[tuple[str, PairScores]] = [("overall", report.overall)]
    rows += [(f"{a} ~ {b}", scores) for (a, b), scores in report.by_agency_pair.items()]
    width = max(len("agency pair"), *(len(label) for label, _ in rows))
    header = (f"{'agency pair':<{width}}  {'true':>10}  {'predicted':>10}  {'correct':>10}  "
              f"{'precision':>9}  {'recall':>7}  {'F1':>7}")
    lines = ["Linkage quality over cross-agency record pairs", header, "-" * len(header)]
    for label, s in rows:
        lines.append(f"{label:<{width}}  {s.true_pairs:>10,}  {s.predicted_pairs:>10,}  {s.correct_pairs:>10,}  "
                     f"{_score(s.precision):>9}  {_score(s.recall):>7}  {_score(s.f1):>7}")
    c = report.clusters
    lines += [
        "",
        f"Entities: {c.true_entities:,} true, {c.predicted_clusters:,} predicted clusters; "
        f"{c.exact_entities:,} reconstructed exactly ({_share(c.exact_share)})",
        f"  with two or more records: {c.linked_true_entities:,}, reconstructed exactly "
        f"{c.linked_exact_entities:,} ({_share(c.linked_exact_share)})",
    ]
    r = report.records
    lines += [
        f"Records: {r.in_truth:,} in truth, {r.in_prediction:,} predicted, {r.scored:,} scored",
        f"  in truth but missing from predictions: {r.missing_from_prediction:,}"
        + (f" ({_by_agency(dict(r.missing_by_agency))})" if r.missing_from_prediction else ""),
        f"  predicted but unknown to truth: {r.unknown_to_truth:,}"
        + (f" ({_by_agency(dict(r.unknown_by_agency))})" if r.unknown_to_truth else ""),
    ]
    return "\n".join(lines)

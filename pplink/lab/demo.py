"""``pplink demo``'s orchestration: the whole round on synthetic data, every party played in one folder.

It composes the same library calls each party runs (synth -> agreement -> encode at each node ->
match -> resolve -> evaluate -> vertical scoring -> DP release -> audit), reports each step through
``say`` as it goes and returns a :class:`DemoSummary`. The folder it writes shows what each party
holds. Imports of ``nodes`` and ``coordinator`` stay inside functions (the import-boundary rule for
``pplink/lab``).
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["AGENCIES", "DemoSummary", "prepare_demo_dir", "run_demo"]

AGENCIES = ("social_care", "school", "health", "police")
_MARKER = ".pplink-demo"


@dataclass(frozen=True)
class DemoSummary:
    """What ``pplink demo`` did (``--format json`` prints it).

    Attributes:
        work_dir: the demo folder.
        agreement_id: the demo agreement.
        people: synthetic people.
        seed: the synthetic data's seed.
        linkage: precision, recall and F1 against the synthetic truth.
        scoring: the vertical scoring run (:class:`pplink.lab.scoring_run.SuffStatsSummary`).
        auditor: the auditor's verdict: ok, releases, findings, epsilon left of the budget.
        report_path: the HTML report.
        seconds: wall time.
    """

    work_dir: Path
    agreement_id: str
    people: int
    seed: int
    linkage: dict[str, float]
    scoring: Any
    auditor: dict[str, Any]
    report_path: Path
    seconds: float


def prepare_demo_dir(path: Path) -> None:
    """Empty an earlier demo folder (or make a new one); refuse any other folder.

    Raises:
        UsageError: the folder exists, is not empty and was not written by ``pplink demo``.
    """
    if path.exists():
        if not (path / _MARKER).exists() and any(path.iterdir()):
            from pplink.errors import UsageError

            raise UsageError(f"{path}: exists and is not a pplink demo folder; choose another --dir")
        shutil.rmtree(path)
    path.mkdir(parents=True)
    (path / _MARKER).write_text("written by `pplink demo`; safe to delete\n", encoding="utf-8")


def run_demo(work_dir: Path, *, people: int = 20_000, seed: int = 727,
             say: Callable[[str], None] = lambda line: None) -> DemoSummary:
    """Run the whole round on synthetic data for four agencies; ``say`` each step.

    Raises:
        UsageError: ``work_dir`` is not a demo folder.
        PplinkError: as the steps raise.
    """
    from coordinator.linkage.match_round import run_match_round
    from nodes.encode import encode_file
    from nodes.resolve import resolve_files
    from pplink.agreement import load_agreement
    from pplink.agreement_template import default_agreement_toml
    from pplink.crypto import load_private_key, load_secret, new_secret, secret_check, write_secret
    from pplink.keystore import ensure_party_keys, private_key_path
    from pplink.lab.linkage_eval import evaluate_linkage_by_agency, read_predictions, read_truth
    from pplink.lab.synth import generate_synth, write_synth

    started = time.perf_counter()
    prepare_demo_dir(work_dir)
    keys_dir = work_dir / "keys"
    public_keys, _ = ensure_party_keys(keys_dir, [*AGENCIES, "coordinator", "auditor"])
    # The agencies' secret: held in a folder the coordinator never sees; only its check value
    # (which reveals nothing) goes into the agreement.
    secret_path = work_dir / "agencies-only" / "linkage.secret"
    secret_path.parent.mkdir()
    write_secret(new_secret(), secret_path)
    secret = load_secret(secret_path)
    agreement_path = work_dir / "agreement.toml"
    agreement_path.write_text(default_agreement_toml(list(AGENCIES), public_keys, secret_check=secret_check(secret)),
                              encoding="utf-8")
    config = load_agreement(agreement_path)
    say(f"1. agreement {config.agreement_id[:16]}… for {', '.join(AGENCIES)} -> {agreement_path}")

    data_dir = work_dir / "records"
    write_synth(generate_synth(people, AGENCIES, seed=seed), data_dir)
    truth_path = data_dir / "truth.csv"
    truth_final = work_dir / "evaluation-only" / "truth.csv"
    truth_final.parent.mkdir()
    truth_path.rename(truth_final)
    say(f"2. synthetic records of {people} people (seed {seed}) -> {data_dir}/<agency>.csv")

    enc_paths = []
    say("3. each agency validates, drops opt-outs and encodes behind its firewall:")
    for agency in AGENCIES:
        node_dir = work_dir / "nodes" / agency
        node_dir.mkdir(parents=True)
        summary = encode_file(config, agency, secret, load_private_key(private_key_path(keys_dir, agency)),
                              data_dir / f"{agency}.csv", node_dir / f"{agency}.enc", skip_invalid=True)
        enc_paths.append(summary.output)
        note = f", {summary.rejected} rejected (see {summary.rejects})" if summary.rejected else ""
        say(f"   {agency:<12} {summary.encoded:>6} encoded, {summary.opted_out} opted out{note}")

    linkage_dir = work_dir / "coordinator" / "linkage"
    match = run_match_round(config, load_private_key(private_key_path(keys_dir, "coordinator")), enc_paths,
                            linkage_dir)
    say(f"4. coordinator matched {sum(match.records.values())} encodings in {match.seconds:.1f} s: "
        f"{match.entities} entities, {match.linked_entities} known to two or more agencies")
    _link_round_ledger(config, linkage_dir, keys_dir, work_dir)

    for agency in AGENCIES:
        node_dir = work_dir / "nodes" / agency
        resolve_files(config, agency, node_dir / f"{agency}.tokens", match.maps[agency],
                      node_dir / f"{agency}.entities.csv")
    say("5. each agency resolved its pseudonym map to record_id,entity_id "
        "(nodes/<agency>/<agency>.entities.csv)")

    report = evaluate_linkage_by_agency(read_truth(truth_final),
                                        read_predictions([work_dir / "nodes" / a for a in AGENCIES]))
    o = report.overall
    say(f"6. linkage quality against the synthetic truth: precision {o.precision:.3f}, "
        f"recall {o.recall:.3f}, F1 {o.f1:.3f}")
    for (a, b), scores in report.by_agency_pair.items():
        say(f"   {a:>12} x {b:<12} F1 {scores.f1:.3f}")

    from pplink.lab.scoring_run import run_suffstats_demo

    say("7. vertical scoring over the linked people by noisy sufficient statistics (features stay at each "
        "agency; sums computed under the label owner's CKKS key; G and b released once with DP noise, charged "
        "to the ledger first; the label owner's own-feature model beside the federated one):")
    scoring = run_suffstats_demo(work_dir, config)
    for line in scoring.lines:
        say(f"   {line}")
    verdict = _release_and_audit(config, agreement_path, linkage_dir, keys_dir, work_dir, say)
    from pplink.audit.report import build_report

    page, _ = build_report(config, work_dir / "coordinator" / "ledger.jsonl")
    report_path = work_dir / "report.html"
    report_path.write_text(page, encoding="utf-8")
    say(f"10. report (open it in a browser; it fetches nothing): {report_path}")
    seconds = time.perf_counter() - started
    say(f"Done in {seconds:.1f} s. Everything is in {work_dir}/")
    return DemoSummary(
        work_dir=work_dir, agreement_id=config.agreement_id, people=people, seed=seed,
        linkage={"precision": o.precision, "recall": o.recall, "f1": o.f1}, scoring=scoring,
        auditor={"ok": verdict.ok, "releases": len(verdict.rows), "findings": len(verdict.findings),
                 "remaining_epsilon": verdict.remaining_epsilon, "budget_epsilon": verdict.budget_epsilon},
        report_path=report_path, seconds=seconds)


def _link_round_ledger(config: Any, linkage_dir: Path, keys_dir: Path, work_dir: Path) -> Path:
    """Make ``coordinator/ledger.jsonl`` a link to the round's one ledger, and return that link.

    The match round's calibration release started the round's ledger inside its folder (and pinned
    it there); scoring, releases, the audit and the report all use that same file through this
    link, so the round's whole spend is on one ledger, never split over two.
    """
    import os

    from coordinator.linkage.state import STATE_FILE, load_linkage_state
    from coordinator.release.binding import binding_for_linkage, ledger_for_round
    from pplink.crypto import load_private_key
    from pplink.keystore import private_key_path

    state = load_linkage_state(linkage_dir / STATE_FILE, config.agreement_id)
    key = load_private_key(private_key_path(keys_dir, "coordinator"))
    target = ledger_for_round(linkage_dir, binding_for_linkage(config, key, state, linkage_dir))
    link = work_dir / "coordinator" / "ledger.jsonl"
    link.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(os.path.relpath(target, link.parent), link)
    return link


def _release_and_audit(config: Any, agreement_path: Path, linkage_dir: Path, keys_dir: Path, work_dir: Path,
                       say: Callable[[str], None]) -> Any:
    from coordinator.linkage.state import STATE_FILE, load_linkage_state
    from coordinator.release.binding import binding_for_linkage
    from coordinator.release.engine import release_query
    from pplink.audit.verify import verify_ledger
    from pplink.crypto import load_private_key
    from pplink.keystore import private_key_path
    from pplink.ledger import QueryKind, ReleaseQuery

    state = load_linkage_state(linkage_dir / STATE_FILE, config.agreement_id)
    ledger = work_dir / "coordinator" / "ledger.jsonl"
    key = load_private_key(private_key_path(keys_dir, "coordinator"))
    # Bound to the round and its pin, as `coordinator release --linkage` is: no second ledger.
    binding = binding_for_linkage(config, key, state, linkage_dir)
    overlap = release_query(config, state, ledger, key, ReleaseQuery(kind=QueryKind.OVERLAP), epsilon=0.5,
                            binding=binding)
    say(f"8. DP release of overlap counts (epsilon 0.5, {overlap.entry.mechanism}, "
        f"scale {overlap.entry.scale:.2f}), on the ledger before anyone sees it;")
    say("   people known to exactly these agencies:")
    for cell in overlap.cells:
        say(f"   {' + '.join(cell.key):<40} {overlap.display(cell):>8}")
    rates = release_query(config, state, ledger, key,
                          ReleaseQuery(kind=QueryKind.LINK_RATE, attribute="deprivation_quintile"), epsilon=1.0,
                          binding=binding)
    say(f"   link rates by deprivation quintile released too (epsilon 1.0); "
        f"budget left: epsilon {rates.remaining_epsilon:.2f} of {rates.budget_epsilon}")
    verdict = verify_ledger(config, ledger)
    status = "PASS" if verdict.ok else f"FAIL ({len(verdict.findings)} findings)"
    say(f"9. auditor: {status}: {len(verdict.rows)} releases, chain and signatures checked, "
        f"epsilon re-derived; {verdict.remaining_epsilon:.2f} of {verdict.budget_epsilon} left "
        f"(pplink audit verify --agreement {agreement_path} --ledger {ledger})")
    return verdict

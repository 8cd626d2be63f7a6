"""``pplink demo``: the whole round on synthetic data, every party played in one folder.

It composes the same library calls each party runs (synth -> agreement -> encode at each node ->
match -> resolve -> evaluate -> DP release -> audit) and prints a short summary. The folder it
writes shows what each party holds.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import click

__all__ = ["demo"]

AGENCIES = ("social_care", "school", "health", "police")
_MARKER = ".pplink-demo"


def _prepare_dir(path: Path) -> None:
    if path.exists():
        if not (path / _MARKER).exists() and any(path.iterdir()):
            from pplink.errors import UsageError

            raise UsageError(f"{path}: exists and is not a pplink demo folder; choose another --dir")
        shutil.rmtree(path)
    path.mkdir(parents=True)
    (path / _MARKER).write_text("written by `pplink demo`; safe to delete\n", encoding="utf-8")


@click.command("demo")
@click.option("--dir", "work_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("pplink-demo"),
              show_default=True, help="Folder for everything the demo writes (replaced if it is an earlier demo).")
@click.option("--people", type=click.IntRange(min=50, max=1_000_000), default=20_000, show_default=True,
              help="Synthetic population size.")
@click.option("--seed", type=click.IntRange(min=0), default=727, show_default=True, help="Seed for the synthetic data.")
def demo(work_dir: Path, people: int, seed: int) -> None:
    """Run a whole round on synthetic data for four agencies and print what happened.

    Synthetic records -> agreement and keys -> each agency encodes -> the coordinator matches ->
    each agency resolves its pseudonyms -> linkage quality against the synthetic truth -> vertical
    federated scoring with DP -> DP releases on the signed ledger -> the auditor's verdict -> an
    HTML report.
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
    _prepare_dir(work_dir)
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
    click.echo(f"1. agreement {config.agreement_id[:16]}… for {', '.join(AGENCIES)} -> {agreement_path}")

    data_dir = work_dir / "records"
    write_synth(generate_synth(people, AGENCIES, seed=seed), data_dir)
    truth_path = data_dir / "truth.csv"
    truth_final = work_dir / "evaluation-only" / "truth.csv"
    truth_final.parent.mkdir()
    truth_path.rename(truth_final)
    click.echo(f"2. synthetic records of {people} people (seed {seed}) -> {data_dir}/<agency>.csv")

    enc_paths = []
    click.echo("3. each agency validates, drops opt-outs and encodes behind its firewall:")
    for agency in AGENCIES:
        node_dir = work_dir / "nodes" / agency
        node_dir.mkdir(parents=True)
        summary = encode_file(config, agency, secret, load_private_key(private_key_path(keys_dir, agency)),
                              data_dir / f"{agency}.csv", node_dir / f"{agency}.enc", skip_invalid=True)
        enc_paths.append(summary.output)
        note = f", {summary.rejected} rejected (see {summary.rejects})" if summary.rejected else ""
        click.echo(f"   {agency:<12} {summary.encoded:>6} encoded, {summary.opted_out} opted out{note}")

    linkage_dir = work_dir / "coordinator" / "linkage"
    match = run_match_round(config, load_private_key(private_key_path(keys_dir, "coordinator")), enc_paths,
                            linkage_dir)
    click.echo(f"4. coordinator matched {sum(match.records.values())} encodings in {match.seconds:.1f} s: "
               f"{match.entities} entities, {match.linked_entities} known to two or more agencies")

    for agency in AGENCIES:
        node_dir = work_dir / "nodes" / agency
        resolve_files(config, agency, node_dir / f"{agency}.tokens", match.maps[agency],
                      node_dir / f"{agency}.entities.csv")
    click.echo("5. each agency resolved its pseudonym map to record_id,entity_id "
               "(nodes/<agency>/<agency>.entities.csv)")

    report = evaluate_linkage_by_agency(read_truth(truth_final),
                                        read_predictions([work_dir / "nodes" / a for a in AGENCIES]))
    o = report.overall
    click.echo(f"6. linkage quality against the synthetic truth: precision {o.precision:.3f}, "
               f"recall {o.recall:.3f}, F1 {o.f1:.3f}")
    for (a, b), scores in report.by_agency_pair.items():
        click.echo(f"   {a:>12} x {b:<12} F1 {scores.f1:.3f}")

    from pplink.cli.score import run_demo_scoring

    click.echo("7. vertical logistic regression over the linked people (features stay at each agency; "
               "partial scores securely summed; residuals released with DP noise, charged to the ledger):")
    for line in run_demo_scoring(work_dir, config).lines:
        click.echo(f"   {line}")
    _release_and_audit(config, agreement_path, linkage_dir, keys_dir, work_dir)
    from pplink.audit.report import build_report

    page, _ = build_report(config, work_dir / "coordinator" / "ledger.jsonl")
    report_path = work_dir / "report.html"
    report_path.write_text(page, encoding="utf-8")
    click.echo(f"10. report (open it in a browser; it fetches nothing): {report_path}")
    click.echo(f"Done in {time.perf_counter() - started:.1f} s. Everything is in {work_dir}/")


def _release_and_audit(config, agreement_path: Path, linkage_dir: Path, keys_dir: Path, work_dir: Path) -> None:  # type: ignore[no-untyped-def]
    from coordinator.linkage.state import STATE_FILE, load_linkage_state
    from coordinator.release.engine import release_query
    from pplink.audit.verify import verify_ledger
    from pplink.crypto import load_private_key
    from pplink.keystore import private_key_path
    from pplink.ledger import QueryKind, ReleaseQuery

    state = load_linkage_state(linkage_dir / STATE_FILE, config.agreement_id)
    ledger = work_dir / "coordinator" / "ledger.jsonl"
    key = load_private_key(private_key_path(keys_dir, "coordinator"))
    overlap = release_query(config, state, ledger, key, ReleaseQuery(kind=QueryKind.OVERLAP), epsilon=0.5)
    click.echo(f"8. DP release of overlap counts (epsilon 0.5, {overlap.entry.mechanism}, "
               f"scale {overlap.entry.scale:.2f}), on the ledger before anyone sees it;")
    click.echo("   people known to exactly these agencies:")
    for cell in overlap.cells:
        click.echo(f"   {' + '.join(cell.key):<40} {overlap.display(cell):>8}")
    rates = release_query(config, state, ledger, key,
                          ReleaseQuery(kind=QueryKind.LINK_RATE, attribute="deprivation_quintile"), epsilon=1.0)
    click.echo(f"   link rates by deprivation quintile released too (epsilon 1.0); "
               f"budget left: epsilon {rates.remaining_epsilon:.2f} of {rates.budget_epsilon}")
    verdict = verify_ledger(config, ledger)
    status = "PASS" if verdict.ok else f"FAIL ({len(verdict.findings)} findings)"
    click.echo(f"9. auditor: {status}: {len(verdict.rows)} releases, chain and signatures checked, "
               f"epsilon re-derived; {verdict.remaining_epsilon:.2f} of {verdict.budget_epsilon} left "
               f"(pplink audit verify --agreement {agreement_path} --ledger {ledger})")

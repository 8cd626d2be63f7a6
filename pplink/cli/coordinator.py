"""``pplink coordinator …``: what the coordinator runs. It never holds identifiers or the secret."""

from __future__ import annotations

import json
from pathlib import Path

import click

from pplink.cli.options import FORMAT_OPTION, existing_file

__all__ = ["coordinator"]


@click.group()
def coordinator() -> None:
    """Coordinator side: match encodings, suggest a threshold, release DP aggregates."""


@coordinator.command("match")
@click.option("--agreement", "agreement_path", type=existing_file, required=True, help="The agreement TOML.")
@click.option("--key", "key_path", type=existing_file, required=True, help="The coordinator's private signing key.")
@click.argument("encodings", nargs=-1, type=existing_file)
@click.option("-o", "--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Folder for <party>.map.csv files, the signed manifest and the coordinator's state.")
@click.option("--workers", type=click.IntRange(min=1), default=2, show_default=True, help="Threads for comparison.")
@click.option("--progress/--no-progress", default=None, help="Show progress (default: when on a terminal).")
@click.option("--state", "state_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Incremental linkage: keep the linkage in this folder (encrypted) between rounds; ENCODINGS "
                   "may then be deltas (docs/incremental.md).")
@click.option("--clks", "clks", multiple=True, metavar="PARTY=PATH",
              help="An anonlink-client / clkhash {\"clks\": [...]} file from PARTY, which the agreement must mark "
                   "encodings = \"clkhash-json\" (unsigned: the marking is what admits it). Repeatable.")
@click.option("--threshold", type=click.FloatRange(min=0.0, max=1.0, min_open=True, max_open=True), default=None,
              help="This round's Dice threshold, within the agreement's threshold_bounds (no re-encoding). "
                   "Default: the agreement's (\"auto\": chosen from the round's own pairs).")
@FORMAT_OPTION
def match_command(agreement_path: Path, key_path: Path, encodings: tuple[Path, ...], out_dir: Path, workers: int,
                  progress: bool | None, state_dir: Path | None, clks: tuple[str, ...], threshold: float | None,
                  output_format: str) -> None:
    """Verify ENCODINGS (.enc files from 2..N agencies), link them, and write each agency's pseudonym map.

    With --state, ENCODINGS may also be deltas (`node encode --delta-from`), from any number of agencies.
    Every round estimates its own precision and recall from its pairs (no truth) and prints them.
    """
    from coordinator.linkage.match_round import run_match_round
    from pplink.agreement import load_agreement
    from pplink.cli.progress import stage_progress
    from pplink.crypto import load_private_key
    from pplink.errors import UsageError

    json_files: dict[str, Path] = {}
    for item in clks:
        party, sep, path = item.partition("=")
        if not sep or not party or not Path(path).is_file():
            raise UsageError(f"--clks {item}: give PARTY=PATH with an existing file")
        if party in json_files:
            raise UsageError(f"--clks: {party} is given twice")
        json_files[party] = Path(path)
    config = load_agreement(agreement_path)
    key = load_private_key(key_path)
    if state_dir is not None:
        if json_files:
            raise UsageError("--clks cannot be combined with --state yet")
        from pplink.cli.incremental import match_incremental_command

        match_incremental_command(config, key, encodings, out_dir, state_dir, workers, output_format)
        return
    with stage_progress(progress, "match") as bar:
        summary = run_match_round(config, key, encodings, out_dir, workers=workers, progress=bar, clks=json_files,
                                  threshold=threshold)
    stats = summary.result.stats
    calibration = summary.calibration
    if output_format == "json":
        click.echo(json.dumps({
            "out": str(summary.out_dir), "records": summary.records, "missing": list(summary.missing),
            "entities": summary.entities, "linked_entities": summary.linked_entities,
            "maps": {p: str(m) for p, m in summary.maps.items()}, "seconds": round(summary.seconds, 3),
            "comparisons": stats.comparisons, "candidate_pairs": stats.candidate_pairs,
            "threshold": stats.threshold, "calibration": calibration,
            "published_calibration": summary.published_calibration,
        }))
        return
    total = sum(summary.records.values())
    click.echo(f"matched {total} records from {len(summary.parties)} agencies in {summary.seconds:.1f} s "
               f"(threshold {stats.threshold:g}, {calibration['method'] if calibration else 'given'})")
    for party, n in summary.records.items():
        click.echo(f"  {party:<14} {n:>9} records -> {summary.maps[party]}")
    if summary.missing:
        click.echo(f"  missing (round continued without): {', '.join(summary.missing)}")
    click.echo(f"  entities: {summary.entities} ({summary.linked_entities} found at two or more agencies)")
    click.echo(f"  comparisons: {stats.comparisons:,} ({stats.comparisons_per_second / 1e6:.0f} M/s), "
               f"candidate pairs: {stats.candidate_pairs:,}")
    if calibration:
        click.echo(_estimate_line(calibration) + " [exact: the coordinator's only]")
    if summary.published_calibration:
        entry = summary.published_calibration["dp"]["ledger_seq"]
        click.echo(_estimate_line(summary.published_calibration).replace(
            "estimated (no truth)", f"published (DP, ledger entry {entry}, calibration.json)"))
    click.echo("Send each agency only its own map; they run `pplink node resolve`.")


def _estimate_line(estimate: dict) -> str:  # type: ignore[type-arg]
    def interval(name: str, digits: int) -> str:
        bounds = estimate.get(f"{name}_interval")
        return f" [{bounds[0]:.{digits}f}, {bounds[1]:.{digits}f}]" if bounds else ""

    return (f"  estimated (no truth): precision {estimate['precision']:.3f}{interval('precision', 3)}, "
            f"recall {estimate['recall']:.3f}{interval('recall', 3)}, "
            f"missed links {estimate['missed']:.0f}{interval('missed', 0)}")


def _default_keys_dir(agreement_path: Path) -> Path:
    # `pplink agreement init` puts keys in a `keys` folder next to the agreement by default.
    return agreement_path.parent / "keys"


@coordinator.command("certs")
@click.option("--dir", "certs_dir", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Folder for ca.crt, ca.key, server.pem and server.key (refuses to overwrite).")
@click.option("--ip", "ips", multiple=True, default=("127.0.0.1",), show_default=True,
              help="IP address the SuperLink is reached at (repeatable).")
@click.option("--dns", "dns_names", multiple=True, default=("localhost",), show_default=True,
              help="DNS name the SuperLink is reached at (repeatable).")
def certs_command(certs_dir: Path, ips: tuple[str, ...], dns_names: tuple[str, ...]) -> None:
    """Create a test CA and the SuperLink's TLS certificate (pilots and tests; use your own CA in production)."""
    from coordinator.flower.certs import create_test_certificates

    files = create_test_certificates(certs_dir, ip_addresses=ips, dns_names=dns_names)
    click.echo(f"CA certificate     {files.ca_cert}  (give it to every agency: --root-certificates)")
    click.echo(f"CA key             {files.ca_key}  (mode 0600; keep it offline)")
    click.echo(f"server certificate {files.server_cert}  for {', '.join([*ips, *dns_names])}")
    click.echo(f"server key         {files.server_key}  (mode 0600)")


@coordinator.command("serve")
@click.option("--agreement", "agreement_path", type=existing_file, required=True, help="The agreement TOML.")
@click.option("--dir", "state_dir", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="The coordinator's state folder (Flower's database, run records, round outputs).")
@click.option("--address", default="127.0.0.1:9091", show_default=True, help="HOST:PORT the SuperLink listens on.")
@click.option("--certs-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder with ca.crt, server.pem, server.key (default: STATE/certs).")
@click.option("--keys-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder with each agency's <party>.flwr.pub (default: 'keys' next to the agreement).")
@click.option("--warm-start/--no-warm-start", default=True, show_default=True,
              help="Start each run's ServerApp from a process forked off one that imported pplink and Flower "
                   "once, rather than a fresh interpreter (saves ~3 s per run).")
@click.option("--insecure", is_flag=True, help="No TLS and no node authentication. For tests only.")
def serve_command(agreement_path: Path, state_dir: Path, address: str, certs_dir: Path | None,
                  keys_dir: Path | None, warm_start: bool, insecure: bool) -> None:
    """Run the coordinator's Flower SuperLink (TLS, agencies' node keys registered) until stopped."""
    import signal
    import sys

    from coordinator.flower.superlink import ServeSettings, serve
    from pplink.agreement import load_agreement

    config = load_agreement(agreement_path)
    settings = ServeSettings(agreement=config, state_dir=state_dir, address=address, certs_dir=certs_dir,
                             keys_dir=keys_dir or _default_keys_dir(agreement_path), insecure=insecure,
                             warm_start=warm_start)

    def ready(info: dict[str, object]) -> None:
        mode = "INSECURE (no TLS, no node authentication; tests only)" if insecure else "TLS, node authentication"
        click.echo(f"SuperLink listening on {address}: {mode}")
        registered = info.get("registered") or []
        if registered:
            click.echo(f"  registered nodes: {', '.join(map(str, registered))}")
        if info.get("interrupted_runs"):
            click.echo(f"  runs interrupted by the last stop: {', '.join(map(str, info['interrupted_runs']))}")
        click.echo(f"  state: {state_dir}  (log: {info['log']})")
        click.echo(f"  start a round with: pplink coordinator run --agreement {agreement_path} --dir {state_dir}")
        click.echo("  (then a scoring run on it: the same with --task score)")
        click.echo("Press Ctrl-C to stop.")
        sys.stdout.flush()  # a service's output is often a log file, which Python buffers

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # unwinds through serve(), which stops the SuperLink
    try:
        status = serve(settings, on_ready=ready)
    except KeyboardInterrupt:
        click.echo("stopped")
        return
    if status:
        from pplink.errors import TransportError

        raise TransportError(f"the SuperLink exited with status {status}; see {state_dir / 'superlink.log'}")


def _render_run(record, output_format: str) -> None:  # type: ignore[no-untyped-def]
    if output_format == "json":
        click.echo(record.model_dump_json(indent=2))
        return
    click.echo(f"run {record.run_id}: {record.status.value} ({record.phase.value}), started {record.started}")
    for party, n in record.records.items():
        click.echo(f"  {party:<14} {n:>9} records")
    if record.entities is not None:
        # A scoring run records the entities it trained over; only a match round knows how many linked.
        linked = (f" ({record.linked_entities} found at two or more agencies)"
                  if record.linked_entities is not None else "")
        click.echo(f"  entities: {record.entities}{linked}")
    if record.missing:
        click.echo(f"  missing (round continued without): {', '.join(record.missing)}")
    for party, why in sorted(record.problems.items()):
        click.echo(f"  {party}: {why}")
    if record.output_dir:
        click.echo(f"  coordinator outputs: {record.output_dir}")
    if record.seconds:
        click.echo("  seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in record.seconds.items()))


def _scoring_summary(state_dir: Path, run_id: str) -> dict | None:  # type: ignore[type-arg]
    """The summary a finished scoring run left in ``<state>/scoring/<run_id>.json`` (None: none)."""
    path = Path(state_dir) / "scoring" / f"{run_id}.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))  # type: ignore[no-any-return]
    except (OSError, ValueError):
        return None


def _render_scoring(summary: dict) -> None:  # type: ignore[type-arg]
    click.echo(f"  scoring run {summary['scoring_run_id'][:12]} on match round {summary['match_round']}: "
               f"released holdout AUC {summary['released_auc']:.2f}, own features "
               f"{summary.get('released_own_auc', float('nan')):.2f} (linking {summary.get('verdict', '?')})")
    click.echo(f"  ledger entries: {', '.join(map(str, summary['ledger_entries']))}; "
               f"{summary['score_rows']} scores written at the label owner's node")
    click.echo(f"  messages: {summary['messages']} in {summary['exchanges']} exchanges")


@coordinator.command("run")
@click.option("--agreement", "agreement_path", type=existing_file, required=True, help="The agreement TOML.")
@click.option("--dir", "state_dir", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="The state folder of the running `pplink coordinator serve`.")
@click.option("--key", "key_path", type=existing_file, default=None,
              help="The coordinator's private signing key (default: keys/coordinator.key next to the agreement).")
@click.option("--wait-nodes", type=click.FloatRange(min=0, min_open=True), default=60.0, show_default=True,
              help="Seconds to wait for every agency's node to be online.")
@click.option("--reply-timeout", type=click.FloatRange(min=0, min_open=True), default=600.0, show_default=True,
              help="Seconds to wait for the agencies' replies to one step.")
@click.option("--workers", type=click.IntRange(min=1), default=2, show_default=True, help="Threads for comparison.")
@click.option("--task", type=click.Choice(["match", "score"]), default="match", show_default=True,
              help="match: a match round; score: a vertical scoring run on a finished match round.")
@click.option("--match-run", default=None, help="score: the finished match round to score on (default: the newest).")
@click.option("--training-epsilon", type=float, default=None,
              help="score: privacy loss of the two training releases, G and b (default 2).")
@click.option("--evaluation-epsilon", type=float, default=None,
              help="score: privacy loss of the evaluation releases (default 0.6).")
@click.option("--feature-scales", type=existing_file, default=None,
              help='score: a JSON file {"agency.column": [centre, scale]} of public constants (never this '
                   "run's data); a feature without one is mapped with asinh.")
@FORMAT_OPTION
def run_command(agreement_path: Path, state_dir: Path, key_path: Path | None, wait_nodes: float,
                reply_timeout: float, workers: int, task: str, match_run: str | None,
                training_epsilon: float | None, evaluation_epsilon: float | None, feature_scales: Path | None,
                output_format: str) -> None:
    """Run one match round (or, with --task score, one scoring run) over Flower and wait for it to finish.

    A scoring run trains on the people a finished match round linked (noisy sufficient statistics
    under the label owner's CKKS key): agencies keep their features, the two training releases and
    the evaluation releases are charged first on the match round's own ledger
    (STATE/rounds/RUN/coordinator/ledger.jsonl), and only the label owner's node writes scores and
    the model card (OUT_DIR/<party>.scores.csv).
    """
    from coordinator.flower.launcher import RunSettings, launch_round
    from coordinator.run_records import RunStatus
    from pplink.agreement import load_agreement
    from pplink.crypto import load_private_key, public_key_text
    from pplink.errors import KeyFileError, UsageError, error_for_code

    config = load_agreement(agreement_path)
    scoring = None
    asked = {"training_epsilon": training_epsilon, "evaluation_epsilon": evaluation_epsilon}
    if feature_scales is not None:
        try:
            asked["feature_scales"] = json.loads(Path(feature_scales).read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise UsageError(f"--feature-scales: not a readable JSON file ({type(err).__name__})") from None
    if task == "match" and (match_run is not None or any(v is not None for v in asked.values())):
        raise UsageError("--match-run, --training-epsilon, --evaluation-epsilon and --feature-scales need --task score")
    if task == "score":
        from pydantic import ValidationError

        from pplink.scoring.suffstats import SuffStatsSettings

        if config.scoring is None:
            raise UsageError(f"{agreement_path}: the agreement has no [scoring] section")
        if match_run is not None:
            import re

            from coordinator.linkage.state import STATE_FILE

            # A run id, never a path: it names a folder under STATE/rounds.
            if not re.fullmatch(r"[0-9a-f]{16,32}", match_run):
                raise UsageError("--match-run: a run id is 16 to 32 lower-case hex digits (see `coordinator runs`)")
            if not (Path(state_dir) / "rounds" / match_run / STATE_FILE).is_file():
                raise UsageError(f"{Path(state_dir) / 'rounds' / match_run}: no such finished match round")
        try:
            scoring = SuffStatsSettings(**{k: v for k, v in asked.items() if v is not None})
        except ValidationError as err:
            reasons = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors(include_input=False))
            raise UsageError(f"bad scoring settings: {reasons}") from None
    if key_path is None:
        key_path = _default_keys_dir(agreement_path) / "coordinator.key"
        if not key_path.is_file():
            raise UsageError(f"{key_path}: not found; give the coordinator's signing key with --key")
    # As coordinator.linkage.match_round.check_coordinator_key, without importing the match round
    # (seconds on a busy machine, before every round).
    if public_key_text(load_private_key(key_path)) != config.coordinator.public_key:
        raise KeyFileError("the signing key given is not the coordinator's key in the agreement")
    shown: list[tuple[str, tuple[str, ...]]] = []

    def progress(record) -> None:  # type: ignore[no-untyped-def]
        view = (record.phase.value, record.waiting_for)
        if output_format == "json" or (shown and shown[-1] == view):
            return
        shown.append(view)
        waiting = f" (waiting for {', '.join(record.waiting_for)})" if record.waiting_for else ""
        click.echo(f"[{record.phase.value}]{waiting}", err=True)

    record = launch_round(RunSettings(agreement=config, agreement_path=agreement_path, key_path=key_path,
                                      state_dir=state_dir, wait_nodes=wait_nodes, reply_timeout=reply_timeout,
                                      workers=workers, task=task, scoring=scoring, match_run=match_run),
                          on_update=progress)
    _render_run(record, output_format)
    summary = _scoring_summary(state_dir, record.run_id) if task == "score" else None
    if summary is not None and output_format != "json":
        _render_scoring(summary)
    if record.status is not RunStatus.FINISHED:
        raise error_for_code(record.error_code, f"run {record.run_id} failed: {record.error}")


@coordinator.command("runs")
@click.option("--dir", "state_dir", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="The coordinator's state folder.")
@click.option("--run", "run_id", default=None, help="Show one run in full.")
@FORMAT_OPTION
def runs_command(state_dir: Path, run_id: str | None, output_format: str) -> None:
    """List the match rounds and scoring runs run over Flower and how each ended (also after a restart)."""
    from coordinator.flower.launcher import run_task
    from coordinator.run_records import list_run_records, read_run_record

    def described(record) -> dict:  # type: ignore[no-untyped-def, type-arg]
        # The run record plus what only a scoring run has: its task and released summary.
        out = record.model_dump(mode="json")
        out["task"] = run_task(state_dir, record.run_id)
        if out["task"] == "score":
            out["scoring"] = _scoring_summary(state_dir, record.run_id)
        return out

    if run_id is not None:
        record = read_run_record(state_dir, run_id)
        if output_format == "json":
            click.echo(json.dumps(described(record), indent=2))
            return
        _render_run(record, output_format)
        summary = _scoring_summary(state_dir, run_id)
        if summary is not None:
            _render_scoring(summary)
        return
    records = list_run_records(state_dir)
    if output_format == "json":
        click.echo(json.dumps([described(r) for r in records], indent=2))
        return
    if not records:
        click.echo(f"no runs recorded in {state_dir}")
        return
    for r in records:
        task = run_task(state_dir, r.run_id)
        summary = _scoring_summary(state_dir, r.run_id) if task == "score" else None
        if r.error:
            outcome = r.error.splitlines()[0][:80]
        elif summary is not None:
            outcome = f"released AUC {summary['released_auc']:.2f}"
        else:
            outcome = f"{r.entities} entities" if r.entities else ""
        click.echo(f"{r.run_id}  {r.started}  {task:<5} {r.status.value:<11} {r.phase.value:<17} {outcome}")


@coordinator.command("suggest-threshold")
@click.option("--agreement", "agreement_path", type=existing_file, required=True, help="The agreement TOML.")
@click.argument("encodings", nargs=-1, required=True, type=existing_file)
@click.option("--bins", type=click.IntRange(min=10, max=1000), default=100, show_default=True,
              help="Histogram bins over [0, 1].")
@click.option("--workers", type=click.IntRange(min=1), default=2, show_default=True, help="Threads for comparison.")
@FORMAT_OPTION
def suggest_threshold_command(agreement_path: Path, encodings: tuple[Path, ...], bins: int, workers: int,
                              output_format: str) -> None:
    """Propose a Dice threshold: the one a round with threshold "auto" would choose, with its estimates.

    The same calibration every round runs (a mixture fitted to the linked pairs' similarities, no
    truth). The histogram is for the coordinator's eyes: it describes pairs of encodings, not people,
    and is not a DP release.
    """
    from coordinator.linkage.auto import auto_match
    from coordinator.linkage.match import similarity_histogram
    from coordinator.linkage.match_round import load_inputs, round_blocking
    from coordinator.linkage.second_pass import second_pass_budget
    from coordinator.linkage.threshold import render_histogram
    from pplink.agreement import load_agreement

    config = load_agreement(agreement_path)
    files = load_inputs(config, encodings)
    clks = [f.clks for f in files]
    blocking, choice = round_blocking(clks)
    histogram = similarity_histogram(clks, bins=bins, workers=workers, blocking=blocking)
    _, calibration, _ = auto_match(clks, precision_floor=config.linkage.precision_floor,
                                   bounds=config.linkage.bounds, blocking=blocking, workers=workers,
                                   second_budget=second_pass_budget(choice, None))
    estimate = {"method": calibration.method, **calibration.estimate.model_dump(mode="json")}
    if output_format == "json":
        click.echo(json.dumps({"suggestion": estimate, "counts": list(histogram.counts),
                               "agreement_threshold": config.linkage.threshold}))
        return
    click.echo(render_histogram(histogram, suggestion=calibration.threshold))
    click.echo(f"suggested threshold: {calibration.threshold:.3f} (best estimated F1"
               f"{'' if config.linkage.precision_floor is None else ' meeting the precision floor'})")
    click.echo(_estimate_line(estimate))
    click.echo(f"the agreement's threshold: {config.linkage.threshold}; `coordinator match --threshold` sets one "
               "for a round within the agreed bounds, without re-encoding.")

"""One match round over Flower's deployment engine vs the file-based path, same records.

Both paths encode every agency's records, match them and resolve each agency's pseudonym map:

* file-based: `encode_file` per agency, `run_match_round`, `resolve_files`, one after another in
  this process (what `pplink demo` does);
* Flower: a real SuperLink (`pplink coordinator serve`, TLS and node authentication) and one
  SuperNode per agency (`pplink node join`) on 127.0.0.1, already connected; timed is one
  `pplink coordinator run` from launch to its result, as an operator sees it.

The Flower overhead is the difference (target: under 30 s for 4 agencies x 10,000 records).
Startup of the SuperLink and SuperNodes is long-running service start and reported apart; it
counts until the machine is idle again (each SuperNode's SuperExec and each warm-start zygote
import Flower for seconds after the node connects), so the first round does not pay for it.
`--rounds 2` also times the rounds after the first; the overhead is the first round's.

    uv run python benchmarks/flower_round.py --agencies 4 --records 10000
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from coordinator.linkage.match_round import run_match_round  # noqa: E402
from nodes.encode import encode_file  # noqa: E402
from nodes.resolve import resolve_files  # noqa: E402
from pplink.lab.linkage_eval import evaluate_linkage_by_agency, read_predictions, read_truth  # noqa: E402
from pplink.lab.synth import DEFAULT_AGENCIES, generate_synth, write_synth  # noqa: E402
from tests.deployment import LocalDeployment  # noqa: E402

#: Share of the population each default agency holds is well under one; this many people per
#: wanted record leaves every agency at least that many records to keep.
_PEOPLE_PER_RECORD = 4.5


def _write_data(agencies: tuple[str, ...], records: int, seed: int):  # type: ignore[no-untyped-def]
    """A writer of synthetic data cut to exactly ``records`` rows per agency (truth cut to match)."""

    def write(folder: Path) -> None:
        write_synth(generate_synth(int(records * _PEOPLE_PER_RECORD), agencies, seed=seed), folder)
        kept: set[tuple[str, str]] = set()
        for agency in agencies:
            path = folder / f"{agency}.csv"
            with path.open(encoding="utf-8", newline="") as fh:
                rows = list(csv.reader(fh))
            if len(rows) - 1 < records:
                raise SystemExit(f"{agency}: only {len(rows) - 1} synthetic records; raise _PEOPLE_PER_RECORD")
            with path.open("w", encoding="utf-8", newline="") as fh:
                csv.writer(fh, lineterminator="\n").writerows(rows[: records + 1])
            kept.update((agency, row[0]) for row in rows[1 : records + 1])
        truth = folder / "truth.csv"
        with truth.open(encoding="utf-8", newline="") as fh:
            truth_rows = list(csv.reader(fh))
        with truth.open("w", encoding="utf-8", newline="") as fh:
            csv.writer(fh, lineterminator="\n").writerows(
                [truth_rows[0], *(r for r in truth_rows[1:] if (r[0], r[1]) in kept)])

    return write


def _file_based(d: LocalDeployment, work: Path, agencies: tuple[str, ...]) -> tuple[float, float]:
    assert d.setup is not None
    started = time.perf_counter()
    encodings = []
    for agency in agencies:
        summary = encode_file(d.setup.agreement, agency, d.setup.secret, d.setup.key(agency),
                              d.root / "data" / f"{agency}.csv", work / f"{agency}.enc", skip_invalid=True)
        encodings.append(summary.output)
    match = run_match_round(d.setup.agreement, d.setup.key("coordinator"), encodings, work / "linkage")
    for agency in agencies:
        resolve_files(d.setup.agreement, agency, work / f"{agency}.tokens", match.maps[agency],
                      work / f"{agency}.entities.csv")
    seconds = time.perf_counter() - started
    f1 = evaluate_linkage_by_agency(read_truth(d.root / "data" / "truth.csv"), read_predictions([work])).overall.f1
    return seconds, f1


def _cpu_busy_share(seconds: float = 1.0) -> float:
    """The share of all CPU time that was busy over the next ``seconds`` (from /proc/stat)."""
    def sample() -> tuple[int, int]:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        return sum(fields), fields[3] + fields[4]  # total, idle + iowait

    total0, idle0 = sample()
    time.sleep(seconds)
    total1, idle1 = sample()
    return 1 - (idle1 - idle0) / max(total1 - total0, 1)


def _wait_until_idle(limit: float = 120.0, busy: float = 0.25) -> None:
    """Wait (up to ``limit`` s) until the machine is mostly idle: the services have settled."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline and _cpu_busy_share() > busy:
        pass


def main() -> None:
    """Time one match round both ways on the same synthetic records and print one JSON line.

    Runs the file-based path, then starts a SuperLink and one SuperNode per agency, waits until the
    machine is idle and times ``--rounds`` Flower rounds; reports both times, the overhead, the
    service start-up time and each path's F1 against the synthetic truth.

    Raises:
        SystemExit: a Flower round exited with a non-zero status.
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agencies", type=int, default=4, help="number of agencies (max 4, the synth defaults)")
    parser.add_argument("--records", type=int, default=10_000, help="records per agency")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--keep", type=Path, default=None, help="keep everything in this folder")
    parser.add_argument("--rounds", type=int, default=1, help="match rounds to time one after another")
    args = parser.parse_args()
    agencies = tuple(DEFAULT_AGENCIES[: args.agencies])
    root = args.keep or Path(tempfile.mkdtemp(prefix="pplink-flower-bench-"))
    with LocalDeployment(root, agencies=agencies) as d:
        d.prepare(_write_data(agencies, args.records, args.seed))
        file_seconds, file_f1 = _file_based(d, root / "file-based", agencies)

        started = time.perf_counter()
        d.start_coordinator()
        for agency in agencies:
            d.start_node(agency)
        d.wait_connected(timeout=180)
        _wait_until_idle()
        startup = time.perf_counter() - started

        round_seconds = []
        for _ in range(max(args.rounds, 1)):
            started = time.perf_counter()
            done, record = d.run_round("--reply-timeout", "600", timeout=1200)
            round_seconds.append(round(time.perf_counter() - started, 2))
            if done.returncode != 0:
                raise SystemExit(f"the Flower round failed:\n{done.stderr}")
        flower_seconds = round_seconds[0]
        flower_f1 = evaluate_linkage_by_agency(read_truth(root / "data" / "truth.csv"),
                                               read_predictions([d.out_dir(a) for a in agencies])).overall.f1
    print(json.dumps({
        "benchmark": "flower_round", "agencies": len(agencies), "records_per_agency": args.records,
        "seed": args.seed, "cpus": os.cpu_count(), "python": platform.python_version(),
        "flwr": version("flwr"), "clkhash": version("clkhash"), "anonlink": version("anonlink"),
        "file_based_s": round(file_seconds, 2), "flower_round_s": round(flower_seconds, 2),
        "flower_overhead_s": round(flower_seconds - file_seconds, 2), "all_rounds_s": round_seconds,
        "flower_phases_s": record.get("seconds"), "service_startup_s": round(startup, 2),
        "f1_file_based": round(file_f1, 4), "f1_flower": round(flower_f1, 4),
        "load_average_1m": round(os.getloadavg()[0], 2),
    }))


if __name__ == "__main__":
    main()

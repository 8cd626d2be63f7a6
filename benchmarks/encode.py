"""Encoding throughput: pplink end to end vs plain clkhash, side by side in one run.

pplink's figure covers everything an agency runs: reading the CSV, validating every row,
dropping opt-outs, normalising, encoding, signing and writing the .enc and token files. Plain
clkhash reads a CSV of the already-normalised identifier columns and encodes it with the same
schema and key (`clkhash.clk.generate_clk_from_csv`, its own validation on).

Targets (issue 2): pplink >= 0.8x plain clkhash on one core; > 50,000 records/s on 2 cores.

    uv run python benchmarks/encode.py --records 100000
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import platform
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from clkhash import clk  # noqa: E402
from clkhash.schema import from_json_dict  # noqa: E402

from nodes.encode import encode_file, encode_records  # noqa: E402
from pplink.crypto import derive_linkage_key  # noqa: E402
from pplink.encoding import clkhash_schema_dict  # noqa: E402
from pplink.synth import generate_synth, write_synth  # noqa: E402
from tests.support import make_setup  # noqa: E402


def _prepare(root: Path, records: int, seed: int):  # type: ignore[no-untyped-def]
    setup = make_setup(root / "agreement")
    # Health holds ~85% of the population in the synthetic profiles: size the population to it.
    data = generate_synth(int(records / 0.8) + 100, ["social_care", "health"], seed=seed, corruption=1.0, opt_out_rate=0.0)
    table = data.tables["health"]
    rows = table.rows[:records]
    path = root / "health.csv"
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(table.columns)
        w.writerows(rows)
    # Plain clkhash gets the normalised identifiers (it cannot normalise) in schema order.
    normalised = encode_records(setup.agreement, "health", setup.secret, path, workers=1)
    if normalised.problems:
        print(f"note: {len(normalised.problems)} synthetic values fail validation; pplink skips them", file=sys.stderr)
    return setup, path, len(rows)


def _plain_csv(setup, path: Path, out: Path) -> int:  # type: ignore[no-untyped-def]
    from nodes.records import iter_record_chunks, parse_chunk, record_spec, validate_chunk

    spec = record_spec(setup.agreement, "health")
    columns, chunks = iter_record_chunks(path, spec)
    n = 0
    with open(out, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow([c for c, _, _ in spec.fields])
        for chunk in chunks:
            result = validate_chunk(spec, str(path), columns, parse_chunk(str(path), chunk))
            w.writerows(result.identifiers)
            n += len(result.identifiers)
    return n


def run(records: int, seed: int, workers: list[int]) -> list[dict[str, object]]:
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        setup, path, n_rows = _prepare(root, records, seed)
        plain_path = root / "plain.csv"
        n_plain = _plain_csv(setup, path, plain_path)
        schema = from_json_dict(clkhash_schema_dict(setup.agreement.identifiers))
        key = derive_linkage_key(setup.secret, setup.agreement.agreement_id)
        for w in workers:
            start = time.perf_counter()
            with open(plain_path, encoding="utf-8") as fh:
                clk.generate_clk_from_csv(fh, key, schema, validate=True, header=True, progress_bar=False,
                                          max_workers=w)
            plain_s = time.perf_counter() - start
            start = time.perf_counter()
            summary = encode_file(setup.agreement, "health", setup.secret, setup.key("health"), path,
                                  root / f"h{w}.enc", skip_invalid=True, workers=w)
            ours_s = time.perf_counter() - start
            results.append({
                "benchmark": "encode", "records": n_rows, "workers": w, "seed": seed,
                "pplink_s": round(ours_s, 3), "pplink_records_per_s": round(n_rows / ours_s),
                "pplink_encoded": summary.encoded,
                "clkhash_s": round(plain_s, 3), "clkhash_records_per_s": round(n_plain / plain_s),
                "ratio": round((n_rows / ours_s) / (n_plain / plain_s), 3),
                "versions": {"pplink": version("pplink"), "clkhash": version("clkhash"), "python": platform.python_version()},
            })
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=727)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args(argv)
    results = run(args.records, args.seed, args.workers)
    table = io.StringIO()
    table.write(f"{'workers':>7} {'pplink rec/s':>13} {'clkhash rec/s':>14} {'ratio':>6}\n")
    for r in results:
        print(json.dumps(r))
        table.write(f"{r['workers']:>7} {r['pplink_records_per_s']:>13,} {r['clkhash_records_per_s']:>14,} {r['ratio']:>6}\n")
    print(table.getvalue(), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""True-link blocking loss against blocking settings, on every quality dataset (issue #12).

For each dataset of ``benchmarks/quality.py`` (UK-style, households, FEBRL 1-4, ``pplink synth``)
the files are encoded with the default agreement and matched with the automatic threshold (once,
cached under ``--cache-dir``); then, for each blocking setting, every record's band keys are
computed on the full encodings and each true cross-agency pair is checked for a shared key. Printed:

* ``loss@thr``: true pairs scoring at least the round's automatic threshold that the setting never
  compares (issue #12's target: < 0.5%), and ``loss@.55``: the same at the calibration floor;
* ``cmp/rec``: the comparisons the setting makes (cross-agency pairs over all bands' shared
  buckets, counted from the keys) per record, the cost that grows with the round.

    uv run python benchmarks/blocking_policy.py                   # full sizes
    uv run python benchmarks/blocking_policy.py --size tiny --configs 21x96 16x128
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

#: Thresholds at which the loss is also printed (true pairs scoring at least each).
GRID = (0.55, 0.6, 0.65, 0.7, 0.75, 0.8)
def _ladder() -> tuple[str, ...]:
    from coordinator.linkage.blocking_budget import LADDER

    return tuple(f"{bits}x{bands}" for bits, bands in LADDER)


def _encode(dataset, cache: Path) -> dict:  # type: ignore[no-untyped-def]
    """Encodings, the automatic threshold and the true cross-agency pairs of one dataset (cached)."""
    from quality import _pplink_encodings
    from quality_blocking import true_pairs

    path = cache / f"{dataset.name}-{dataset.records}.npz"
    if path.exists():
        data = np.load(path)
        return {k: data[k] for k in data.files}
    with tempfile.TemporaryDirectory() as tmp:
        _, _, calibration, _, clks, ids = _pplink_encodings(dataset, Path(tmp))
    pairs = true_pairs(dataset, ids)
    pairs_arr = np.array(pairs, dtype=np.int64).reshape(-1, 4)
    out = {f"clks{d}": c for d, c in enumerate(clks)}
    out |= {"pairs": pairs_arr, "threshold": np.float64(calibration.threshold)}
    cache.mkdir(parents=True, exist_ok=True)
    np.savez(path, **out)
    return out


def _dice(clks: list[np.ndarray], pairs: np.ndarray) -> np.ndarray:
    sims = np.empty(len(pairs))
    for i, (da, ra, db, rb) in enumerate(pairs):
        a, b = clks[da][ra], clks[db][rb]
        total = int(np.bitwise_count(a).sum() + np.bitwise_count(b).sum())
        sims[i] = 2 * int(np.bitwise_count(a & b).sum()) / total if total else 0.0
    return sims


def _measure(clks: list[np.ndarray], pairs: np.ndarray, config) -> tuple[np.ndarray, int]:  # type: ignore[no-untyped-def]
    """Per true pair, whether it shares a band key; and the comparisons the setting makes."""
    from coordinator.linkage.blocking import _bucket_pairs, compute_band_keys

    band = compute_band_keys(clks, config, workers=2)
    shared = np.zeros(len(pairs), dtype=bool)
    for da in range(len(clks)):
        for db in range(da + 1, len(clks)):
            sel = np.flatnonzero((pairs[:, 0] == da) & (pairs[:, 2] == db))
            ka, kb = band.keys[da][pairs[sel, 1]], band.keys[db][pairs[sel, 3]]
            shared[sel] = np.any((ka == kb) & (ka != band.sentinel), axis=1)
    comparisons = 0
    for b in range(band.bands):
        columns = [k[:, b][k[:, b] != band.sentinel] for k in band.keys]
        comparisons += int(_bucket_pairs(columns)[1].sum())
    return shared, comparisons


def main(argv: list[str] | None = None) -> list[dict]:
    """Run the measurement; print JSON lines and a table; return the rows."""
    from quality import _datasets

    from coordinator.linkage.auto import CALIBRATION_FLOOR
    from coordinator.linkage.blocking import BlockingConfig

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=("tiny", "small", "full"), default="full")
    parser.add_argument("--only", nargs="*", help="dataset names to run (default: all)")
    parser.add_argument("--configs", nargs="*", default=list(_ladder()),
                        help="BITSxBANDS settings (default: the budget policy's ladder)")
    parser.add_argument("--cache-dir", type=Path, default=Path("/tmp/pplink-blocking-policy"))
    args = parser.parse_args(argv)
    rows = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        for dataset in _datasets(args.size, args.only):
            data = _encode(dataset, args.cache_dir)
            clks = [data[f"clks{d}"] for d in range(len(dataset.agencies))]
            pairs, threshold = data["pairs"], float(data["threshold"])
            sims = _dice(clks, pairs)
            for spec in args.configs:
                bits, bands = (int(x) for x in spec.split("x"))
                shared, comparisons = _measure(clks, pairs, BlockingConfig(bits_per_band=bits, bands=bands))
                row = {"dataset": dataset.name, "records": int(sum(len(c) for c in clks)), "threshold": threshold,
                       "config": spec}
                for name, t in (("thr", threshold), ("floor", CALIBRATION_FLOOR)):
                    eligible = sims >= t
                    row[f"pairs@{name}"] = int(eligible.sum())
                    row[f"loss@{name}"] = float(1 - shared[eligible].mean()) if eligible.any() else 0.0
                for t in GRID:  # a policy keyed by the lowest threshold a round may use reads these
                    eligible = sims >= t
                    row[f"loss@{t:.2f}"] = float(1 - shared[eligible].mean()) if eligible.any() else 0.0
                row["comparisons_per_record"] = comparisons / row["records"]
                print(json.dumps(row), flush=True)
                rows.append(row)
    print(f"{'dataset':<11} {'records':>7} {'thr':>6} {'config':>7} {'loss@thr':>8} {'loss@.55':>8} {'cmp/rec':>8}")
    for r in rows:
        print(f"{r['dataset']:<11} {r['records']:>7} {r['threshold']:>6.3f} {r['config']:>7} {r['loss@thr']:>8.2%} "
              f"{r['loss@floor']:>8.2%} {r['comparisons_per_record']:>8.1f}")
    return rows


if __name__ == "__main__":
    main()

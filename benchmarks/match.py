"""Benchmark the coordinator's matching: pplink (blocked) against plain anonlink all-pairs.

Synthetic people (clkhash's bundled name frequencies, random dates of birth and UK-style
postcodes) are spread over ``--agencies`` agencies of ``--records`` records each; each agency's
copy of a person gets its own typos, so true matches score Dice ~0.75-1.0. The people are encoded
once with clkhash (schema v3, bigrams, blakeHash, 1024 bits) and cached under ``--cache-dir``.

Each run prints one JSON line (parameters, versions, seconds, comparisons per second, peak memory,
precision/recall/F1 against the known truth, blocking recall loss), then a table. Each run
executes in a fresh child process so that its peak RSS is its own (``--no-isolate`` runs
in-process and reports the tracemalloc peak instead).

When all-pairs would exceed ``--all-pairs-max-comparisons`` (2 x 1M records is 1e12 pairs, nearly
two hours here), it runs on a subset of the people (every record of a random subset of
entities, so match density is kept) next to pplink on the same subset, and says so; its
full-size time is then an estimate from its measured rate.

Usage::

    uv run python benchmarks/match.py --agencies 4 --records 100000
    uv run python benchmarks/match.py --agencies 2 --records 1000000 --all-pairs-max-comparisons 2e10
    uv run python benchmarks/match.py --agencies 4 --records 100000 --ray-workers 1,2

The closing "targets" lines set the issue's targets (#17) beside what the run measured: candidate
pairs per core while comparing, the compiled kernel's own rate on one large bucket, anonlink's
all-pairs rate in the same run, time and peak memory, F1 against all pairs, and, with
``--ray-workers``, time against the number of Ray workers.
"""

from __future__ import annotations

import argparse
import csv
import json
import multiprocessing
import os
import platform
import resource
import sys
import time
import tracemalloc
from collections.abc import Sequence
from importlib import metadata, resources
from pathlib import Path
from typing import Any

# A default Python caches each imported module's bytecode on first import. Where
# PYTHONDONTWRITEBYTECODE is set (as on the machines these figures come from) every run would compile
# numpy, numba and scipy from source, ~1.4 s of a 4 x 100k round landing in whichever phase imported
# them first. This script writes bytecode as a default install does, before its heavy imports; the
# spawned child (started with ``-B`` from the parent's flags) runs this line too, as ``__mp_main__``.
sys.dont_write_bytecode = False

import numpy as np  # noqa: E402

#: Bump when the generator changes so that stale caches are not reused.
GENERATOR_VERSION = 1
SECRET = "pplink benchmark secret (synthetic data only)"

SCHEMA: dict[str, Any] = {
    "version": 3,
    "clkConfig": {
        "l": 1024,
        "kdf": {"type": "HKDF", "hash": "SHA256", "salt": "", "info": "", "keySize": 64},
    },
    "features": [
        {
            "identifier": "given_name",
            "format": {"type": "string", "encoding": "utf-8", "case": "lower"},
            "hashing": {
                "comparison": {"type": "ngram", "n": 2},
                "strategy": {"bitsPerToken": 15},
                "hash": {"type": "blakeHash"},
                "missingValue": {"sentinel": ""},
            },
        },
        {
            "identifier": "surname",
            "format": {"type": "string", "encoding": "utf-8", "case": "lower"},
            "hashing": {
                "comparison": {"type": "ngram", "n": 2},
                "strategy": {"bitsPerToken": 15},
                "hash": {"type": "blakeHash"},
                "missingValue": {"sentinel": ""},
            },
        },
        {
            "identifier": "dob",
            "format": {"type": "string", "encoding": "utf-8"},
            "hashing": {
                "comparison": {"type": "ngram", "n": 1, "positional": True},
                "strategy": {"bitsPerToken": 10},
                "hash": {"type": "blakeHash"},
            },
        },
        {
            "identifier": "sex",
            "format": {"type": "enum", "values": ["f", "m"]},
            "hashing": {
                "comparison": {"type": "ngram", "n": 1},
                "strategy": {"bitsPerToken": 20},
                "hash": {"type": "blakeHash"},
            },
        },
        {
            "identifier": "postcode",
            "format": {"type": "string", "encoding": "utf-8", "case": "upper"},
            "hashing": {
                "comparison": {"type": "ngram", "n": 2},
                "strategy": {"bitsPerToken": 10},
                "hash": {"type": "blakeHash"},
                "missingValue": {"sentinel": ""},
            },
        },
    ],
}

_LETTERS = "abcdefghijklmnopqrstuvwxyz"
_POSTCODE_LETTERS = np.array(list("ABCDEFGHJKLMNOPRSTUWY"))
_ENCODE_CHUNK = 100_000


# --- synthetic people -------------------------------------------------------------------------


def _name_table(filename: str) -> tuple[np.ndarray, np.ndarray]:
    """Names and their frequencies from clkhash's bundled (synthetic-use) name lists."""
    with (resources.files("clkhash") / "data" / filename).open() as f:
        reader = csv.reader(f)
        next(reader)
        rows = [(row[0].strip().lower(), int(row[1])) for row in reader if row and row[0].strip()]
    weights = np.array([count for _, count in rows], dtype=np.float64)
    return np.array([name for name, _ in rows]), weights / weights.sum()


class Population:
    """A seeded population of synthetic people, stored compactly as integer columns."""

    def __init__(self, size: int, rng: np.random.Generator) -> None:
        self.female, female_w = _name_table("female-first-names.csv")
        self.male, male_w = _name_table("male-first-names.csv")
        self.surnames, surname_w = _name_table("last-names.csv")
        self.is_female = rng.random(size) < 0.5
        self.given = np.where(
            self.is_female,
            rng.choice(len(self.female), size, p=female_w),
            rng.choice(len(self.male), size, p=male_w),
        )
        self.surname = rng.choice(len(self.surnames), size, p=surname_w)
        self.dob = (np.datetime64("1940-01-01") + rng.integers(0, 365 * 85, size).astype("timedelta64[D]")).astype(str)
        letters = rng.integers(0, len(_POSTCODE_LETTERS), (size, 4))
        self.postcode_letters = _POSTCODE_LETTERS[letters]
        self.postcode_digits = np.stack([rng.integers(1, 30, size), rng.integers(0, 10, size)], axis=1)

    def row(self, i: int) -> list[str]:
        """The person's identifier fields in schema order."""
        given = self.female[self.given[i]] if self.is_female[i] else self.male[self.given[i]]
        a, b, c, d = self.postcode_letters[i]
        district, sector = self.postcode_digits[i]
        postcode = f"{a}{b}{district} {sector}{c}{d}"
        return [str(given), str(self.surnames[self.surname[i]]), str(self.dob[i]), "f" if self.is_female[i] else "m",
                postcode]


def _typo(value: str, rng: np.random.Generator) -> str:
    if len(value) < 2:
        return value
    op, i = int(rng.integers(4)), int(rng.integers(len(value)))
    letter = _LETTERS[int(rng.integers(26))]
    if op == 0:
        return value[:i] + letter + value[i + 1 :]
    if op == 1:
        return value[:i] + value[i + 1 :]
    if op == 2:
        return value[:i] + letter + value[i:]
    i = min(i, len(value) - 2)
    return value[:i] + value[i + 1] + value[i] + value[i + 2 :]


def corrupt(row: list[str], rng: np.random.Generator) -> list[str]:
    """One agency's copy of a person: 0-3 typos in names, date digits or postcode, or a lost postcode."""
    row = list(row)
    for _ in range(int(rng.choice(4, p=[0.35, 0.4, 0.2, 0.05]))):
        field = int(rng.choice(4, p=[0.3, 0.3, 0.2, 0.2]))
        if field < 2:
            row[field] = _typo(row[field], rng)
        elif field == 2:
            i = int(rng.choice([2, 3, 5, 6, 8, 9]))
            row[2] = row[2][:i] + str(int(rng.integers(10))) + row[2][i + 1 :]
        elif rng.random() < 0.3:
            row[4] = ""
        else:
            row[4] = _typo(row[4], rng).upper()
    return row


def _encode(rows: list[list[str]]) -> np.ndarray:
    from clkhash import clk
    from clkhash.schema import from_json_dict

    clks = clk.generate_clks(rows, from_json_dict(SCHEMA), SECRET)
    return np.frombuffer(b"".join(c.tobytes() for c in clks), dtype=np.uint8).reshape(len(clks), -1)


def make_encodings(agencies: int, records: int, seed: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Encode ``agencies`` datasets of ``records`` synthetic records; return encodings and entity ids.

    The population has ``2 * records`` people, so any two agencies share about half their people.

    Args:
        agencies: number of datasets.
        records: records per dataset.
        seed: seeds people, sampling and typos.

    Returns:
        ``(encodings, entities)``: per agency a ``uint8 (records, 128)`` array and an int64
        array of the entity each row belongs to.
    """
    rng = np.random.default_rng(seed)
    population = Population(2 * records, rng)
    encodings, entities = [], []
    for _ in range(agencies):
        ids = rng.choice(2 * records, records, replace=False)
        parts = []
        for first in range(0, records, _ENCODE_CHUNK):
            rows = [corrupt(population.row(int(i)), rng) for i in ids[first : first + _ENCODE_CHUNK]]
            parts.append(_encode(rows))
        encodings.append(np.concatenate(parts) if parts else np.zeros((0, 128), dtype=np.uint8))
        entities.append(ids.astype(np.int64))
    return encodings, entities


def cached_encodings(cache_dir: Path, agencies: int, records: int, seed: int) -> Path:
    """Path of the cached encodings for these parameters, generating them first if needed."""
    path = cache_dir / f"encodings-v{GENERATOR_VERSION}-a{agencies}-n{records}-s{seed}.npz"
    if not path.exists():
        cache_dir.mkdir(parents=True, exist_ok=True)
        encodings, entities = make_encodings(agencies, records, seed)
        arrays = {f"enc{d}": e for d, e in enumerate(encodings)} | {f"ent{d}": e for d, e in enumerate(entities)}
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, **arrays)
        tmp.replace(path)
    return path


def load_encodings(path: Path) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Load cached encodings and entity ids."""
    from pplink.aligned import line_aligned

    with np.load(path) as data:
        agencies = sum(1 for name in data.files if name.startswith("enc"))
        # On a cache line, as pplink's own loader (pplink.encfile) gives them: the match copies nothing.
        return ([line_aligned(data[f"enc{d}"]) for d in range(agencies)],
                [data[f"ent{d}"] for d in range(agencies)])


def entity_subset(entities: Sequence[np.ndarray], fraction: float, seed: int) -> list[np.ndarray]:
    """Row indices, per agency, of every record of a random ``fraction`` of the entities."""
    if fraction >= 1.0:
        return [np.arange(len(e)) for e in entities]
    top = int(max((e.max() for e in entities if len(e)), default=0)) + 1
    chosen = np.random.default_rng(seed).random(top) < fraction
    return [np.flatnonzero(chosen[e]) for e in entities]


# --- quality ------------------------------------------------------------------------------------


def _pairs_within(groups: np.ndarray, agency: np.ndarray, n_agencies: int) -> np.ndarray:
    """Codes of every cross-agency pair of records that share a group label."""
    order = np.lexsort((agency, groups))
    groups, ids = groups[order], order
    codes = []
    for step in range(1, n_agencies):
        same = groups[step:] == groups[:-step]
        first, second = ids[:-step][same], ids[step:][same]
        lo, hi = np.minimum(first, second), np.maximum(first, second)
        codes.append(lo * len(groups) + hi)
    return np.unique(np.concatenate(codes)) if codes else np.zeros(0, dtype=np.int64)


def linkage_quality(labels: Sequence[np.ndarray], entities: Sequence[np.ndarray]) -> dict[str, float]:
    """Pairwise precision, recall and F1 of clusters against the true entities."""
    agency = np.concatenate([np.full(len(e), d) for d, e in enumerate(entities)])
    predicted = _pairs_within(np.concatenate(labels), agency, len(entities))
    truth = _pairs_within(np.concatenate(entities), agency, len(entities))
    true_positive = len(np.intersect1d(predicted, truth, assume_unique=True))
    precision = true_positive / len(predicted) if len(predicted) else 1.0
    recall = true_positive / len(truth) if len(truth) else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": round(precision, 6), "recall": round(recall, 6), "f1": round(f1, 6), "true_pairs": len(truth)}


# --- runs ---------------------------------------------------------------------------------------


def _measure(job: dict[str, Any]) -> dict[str, Any]:
    """Run one match (in whatever process calls it) and return its stats and labels."""
    from coordinator.linkage.blocking import BlockingConfig
    from coordinator.linkage.blocking_recall import measure_blocking_recall
    from coordinator.linkage.match import match_clks

    encodings, _ = load_encodings(Path(job["cache"]))
    if job.get("rows") is not None:
        encodings = [e[rows] for e, rows in zip(encodings, job["rows"], strict=True)]
    choosing, second_budget = 0.0, None
    if job["blocking"] == "policy":
        # The coordinator's own choice (coordinator.linkage.blocking_budget), made on the full
        # encodings (a subset would get a budget of its own), and timed as part of blocking.
        from coordinator.linkage.blocking_budget import choose_blocking

        started = time.perf_counter()
        full = load_encodings(Path(job["cache"]))[0] if job.get("rows") is not None else encodings
        choice = choose_blocking(full)
        blocking = choice.config() or BlockingConfig()
        choosing = time.perf_counter() - started
        # An automatic round blocked by budget may make a second pass (coordinator.linkage.second_pass).
        from coordinator.linkage.second_pass import second_pass_budget

        second_budget = second_pass_budget(choice, None)
    else:
        blocking = BlockingConfig(**job["blocking"]) if job["blocking"] is not None else None
    if job["kind"] == "recall":
        assert blocking is not None
        report = measure_blocking_recall(encodings, job["threshold"], blocking=blocking, workers=job["workers"])
        return {"recall": report.model_dump(mode="json")}
    if job["kind"] == "ray":
        return _measure_ray(job, encodings, blocking)
    if job["kind"] == "auto":
        return _measure_auto(job, encodings, blocking, choosing, second_budget)
    result = match_clks(
        encodings, job["threshold"], blocking=blocking, workers=job["workers"], histogram_bins=None
    )
    stats = result.stats.model_copy(update={"seconds_blocking": result.stats.seconds_blocking + choosing,
                                            "seconds_total": result.stats.seconds_total + choosing})
    out = {"stats": stats.model_dump(mode="json"), "labels": list(result.labels),
           "seconds_choosing_blocking": choosing}
    if blocking is not None:
        out |= _kernel_figures(encodings, blocking)
    return out


def _measure_auto(job: dict[str, Any], encodings: list[np.ndarray], blocking: Any, choosing: float,
                  second_budget: float | None = None) -> dict[str, Any]:
    """A round at the automatic threshold (``auto_match``, the default policy), with each phase's time.

    ``choosing``: the seconds the blocking choice took (counted in the floor's blocking and the total);
    ``second_budget``: what the round's second pass may spend, as ``coordinator match`` gives it.
    """
    from coordinator.linkage.auto import auto_match

    timings: dict[str, float] = {}
    started = time.perf_counter()
    given = job.get("prune_above")
    prune = {} if given is None else {"prune_above": None if given < 0 else given}
    result, calibration, _ = auto_match(encodings, blocking=blocking, workers=job["workers"], timings=timings,
                                        second_budget=second_budget, **prune)
    seconds = time.perf_counter() - started + choosing
    timings["floor_blocking"] = timings.get("floor_blocking", 0.0) + choosing
    stats = result.stats.model_dump(mode="json") | {"seconds_total": seconds,
                                                    "seconds_blocking": result.stats.seconds_blocking + choosing}
    estimate = calibration.estimate
    out = {"stats": stats, "labels": list(result.labels), "auto_phases": timings, "seconds_choosing_blocking": choosing,
           "estimated": {"precision": estimate.precision, "recall": estimate.recall, "f1": estimate.f1}}
    if blocking is not None:
        out |= _kernel_figures(encodings, blocking)
    return out


def _kernel_figures(encodings: Sequence[np.ndarray], blocking: Any) -> dict[str, Any]:
    """The pair kernel's rate and the per-record work of a blocked run, measured after it."""
    return {"kernel_pairs_per_s": kernel_rate(encodings[0], encodings[1]),
            "per_record": per_record_work(encodings, blocking)}


def per_record_work(encodings: Sequence[np.ndarray], blocking: Any, bands: int = 8) -> dict[str, float]:
    """What comparing spends per band on the records themselves, before any pair is scored, on one core.

    Over ``bands`` bands of the round's setting (its bits per band and seed; keys for that many
    bands only, to keep memory down), the same compiled steps comparing runs: each band's sort
    (``sorted_entries``) and the listing of its shared buckets with the copy of their records'
    encodings (``gather_band_runs``). Scaled to the round's bands, these seconds bound the rate of
    end-to-end comparing per core however fast the pair kernel is: ``comparisons / seconds``.
    """
    from coordinator.linkage.band_kernels import gather_band_runs
    from coordinator.linkage.band_sort import sorted_entries
    from coordinator.linkage.blocking import BlockingConfig
    from coordinator.linkage.compare import Scratch, one_type, prepare

    sample = BlockingConfig(**(blocking.model_dump() | {"bands": min(bands, blocking.bands)}))
    prepared = prepare(tuple(encodings), sample, workers=1)
    words, keys = one_type(prepared.words), one_type(prepared.band_keys.keys)
    offsets = np.concatenate([[0], np.cumsum([len(w) for w in words])]).astype(np.int64)
    buffers = Scratch()
    columns = buffers.columns(keys, 0, sample.bands)
    sorting = gathering = 0.0
    records = 0
    # Compiled (or loaded from numba's cache) before the clock runs.
    gather_band_runs(np.zeros(0, dtype=np.uint64), offsets, words, 0)
    for band in range(sample.bands):
        started = time.perf_counter()
        entries = sorted_entries(columns[band], prepared.band_keys.sentinel, buffers.entries(columns.shape[1]))
        sorted_at = time.perf_counter()
        copied, _, _ = gather_band_runs(entries, offsets, words, len(entries))
        gathering += time.perf_counter() - sorted_at
        sorting += sorted_at - started
        records += copied
    scale = blocking.bands / sample.bands
    return {"sorting_s": sorting * scale, "gathering_s": gathering * scale, "records_gathered": records * scale,
            "bands_sampled": sample.bands}


def kernel_rate(a: np.ndarray, b: np.ndarray, rows: int = 2000) -> float:
    """Rate of pplink's compiled Dice kernel on one core: pairs per second over one ``rows x rows`` bucket.

    The same loop that scores every blocked bucket, timed where per-bucket overheads vanish, so
    that it compares directly with anonlink's all-pairs rate in the same run.
    """
    from coordinator.linkage.kernels import bucket_pair_dice

    rows = min(rows, len(a), len(b))
    words = [np.ascontiguousarray(np.ascontiguousarray(d[:rows]).view(np.uint64)) for d in (a, b)]
    pops = [np.bitwise_count(w).sum(axis=1).astype(np.int64) for w in words]
    order, first, count = np.arange(rows, dtype=np.int64), np.zeros(1, np.int64), np.full(1, rows, np.int64)
    keys = np.zeros((rows, 1), dtype=np.uint32)
    out = [np.empty(rows * rows, np.int64), np.empty(rows * rows, np.int64), np.empty(rows * rows)]
    best = 0.0
    for _ in range(3):  # the best of three: the machine is shared
        started = time.perf_counter()
        bucket_pair_dice(words[0], words[1], pops[0], pops[1], order, order, first, count, first, count, 0,
                         keys, keys, 0, 2**32 - 1, 0.8, 0.8, np.zeros(0, np.int64), *out)
        best = max(best, rows * rows / (time.perf_counter() - started))
    return best


def _measure_ray(job: dict[str, Any], encodings: list[np.ndarray], blocking: Any) -> dict[str, Any]:
    """Match with bands compared on a fresh local Ray cluster of ``job["ray_workers"]`` CPUs."""
    import os

    from coordinator.linkage.distributed import import_ray, match_clks_on_ray

    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")  # the workers share this environment
    ray = import_ray()
    ray.init(num_cpus=job["ray_workers"], include_dashboard=False, _node_ip_address="127.0.0.1",
             log_to_driver=False, configure_logging=False)
    try:
        # Warm the workers (start, import, load the compiled kernels) so that the timing is the work.
        match_clks_on_ray([e[:2000] for e in encodings], job["threshold"], blocking=blocking, histogram_bins=None)
        result = match_clks_on_ray(encodings, job["threshold"], blocking=blocking, workers=job["workers"],
                                   bands_per_task=job.get("bands_per_task", 4), histogram_bins=None)
    finally:
        ray.shutdown()
    return {"stats": result.stats.model_dump(mode="json"), "labels": list(result.labels)}


def _child(job: dict[str, Any], conn: Any) -> None:
    try:
        out = _measure(job)
        out["peak_memory_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        conn.send(out)
    except BaseException as err:  # report, don't hang the parent
        conn.send({"error": f"{type(err).__name__}: {err}"})
    finally:
        conn.close()


def run_job(job: dict[str, Any], isolate: bool) -> dict[str, Any]:
    """Run a job in a fresh child (peak RSS) or in-process (tracemalloc peak)."""
    started = time.perf_counter()
    if isolate:
        ctx = multiprocessing.get_context("spawn")
        parent, child = ctx.Pipe(duplex=False)
        process = ctx.Process(target=_child, args=(job, child))
        process.start()
        child.close()
        out = parent.recv()
        process.join()
        if "error" in out:
            raise RuntimeError(f"benchmark child failed: {out['error']}")
        out["memory_method"] = "child ru_maxrss (includes the loaded encodings)"
    else:
        tracemalloc.start()
        try:
            out = _measure(job)
            out["peak_memory_mb"] = tracemalloc.get_traced_memory()[1] / 2**20
        finally:
            tracemalloc.stop()
        out["memory_method"] = "tracemalloc peak (in-process)"
    out["wall_s"] = time.perf_counter() - started
    return out


def _versions() -> dict[str, str]:
    names = ("anonlink", "clkhash", "numpy", "pplink")
    return {name: metadata.version(name) for name in names} | {"python": platform.python_version()}


def _row(run: str, args: argparse.Namespace, out: dict[str, Any], entities: Sequence[np.ndarray], note: str) -> dict:
    from coordinator.linkage.blocking_budget import all_pairs_count

    stats = out["stats"]
    sizes = stats["records"]
    all_pairs = all_pairs_count(sizes)
    quality = linkage_quality(out["labels"], entities)
    seconds = stats["seconds_total"]
    return {
        "run": run,
        "agencies": args.agencies,
        "records": list(stats["records"]),
        "seed": args.seed,
        "threshold": stats["threshold"],
        "threshold_policy": "auto" if args.threshold == "auto" else "fixed",
        "workers": args.workers,
        "seconds": round(seconds, 3),
        "seconds_comparing": round(stats["seconds_comparing"], 3),
        "comparisons": stats["comparisons"],
        "fraction_of_all_pairs_compared": round(stats["comparisons"] / all_pairs, 6) if all_pairs else None,
        "pairs_per_s": round(stats["comparisons"] / stats["seconds_comparing"]) if stats["seconds_comparing"] else None,
        "pairs_per_s_per_core": (round(stats["comparisons"] / stats["seconds_comparing"] / stats["workers"])
                                 if stats["seconds_comparing"] else None),
        "kernel_pairs_per_s_per_core": round(out["kernel_pairs_per_s"]) if out.get("kernel_pairs_per_s") else None,
        **({"per_record_work": {k: round(v, 3) for k, v in out["per_record"].items()}} if "per_record" in out else {}),
        "seconds_blocking": round(stats["seconds_blocking"], 3),
        "seconds_solving": round(stats["seconds_solving"], 3),
        "peak_memory_mb": round(out["peak_memory_mb"], 1),
        "memory_method": out["memory_method"],
        "candidate_pairs": stats["candidate_pairs"],
        "clusters": stats["clusters"],
        **quality,
        "blocking": stats["blocking"],
        "seconds_choosing_blocking": round(out.get("seconds_choosing_blocking", 0.0), 3),
        **({"auto_phases": {k: round(v, 3) for k, v in out["auto_phases"].items()},
            "estimated": {k: round(v, 6) for k, v in out["estimated"].items()}} if "auto_phases" in out else {}),
        "note": note,
        "versions": _versions(),
    }


def _print_table(rows: list[dict[str, Any]]) -> None:
    head = f"{'run':<28} {'records':>18} {'seconds':>9} {'pairs/s':>10} {'peak MB':>8} {'F1':>8} {'recall loss':>11}"
    print(head)
    print("-" * len(head))
    for r in rows:
        records = ("x".join(str(n) for n in r["records"]) if len(set(r["records"])) > 1
                   else f"{len(r['records'])}x{r['records'][0]}")
        pps = f"{r['pairs_per_s']:.2e}" if r.get("pairs_per_s") else "-"
        loss = f"{r['blocking_recall_loss']:.4%}" if r.get("blocking_recall_loss") is not None else "-"
        f1 = f"{r['f1']:.4f}" if r.get("f1") is not None else "-"
        print(f"{r['run']:<28} {records:>18} {r['seconds']:>9.2f} {pps:>10} {r['peak_memory_mb']:>8.0f} "
              f"{f1:>8} {loss:>11}")
    for r in rows:
        if r.get("note"):
            print(f"note ({r['run']}): {r['note']}")


def _threshold(text: str) -> float | str:
    """``--threshold``: ``auto`` or a number in (0, 1]."""
    if text == "auto":
        return text
    value = float(text)
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"threshold must be 'auto' or in (0, 1], got {text}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; print one JSON line per run, then a table.

    Args:
        argv: command-line arguments (``sys.argv[1:]`` when ``None``).

    Returns:
        The process exit status.
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--agencies", type=int, default=2)
    parser.add_argument("--records", type=int, default=10_000, help="records per agency")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threshold", type=_threshold, default=0.8,
                        help="a Dice threshold, or 'auto': pplink's automatic round (auto_match, the default "
                             "policy: calibrate at the floor, choose, match); all-pairs and the blocking recall "
                             "then run at the threshold it chose")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--all-pairs", action=argparse.BooleanOptionalAction, default=True,
                        help="also run plain anonlink all-pairs on the same encodings")
    parser.add_argument("--all-pairs-max-comparisons", type=float, default=1e11,
                        help="above this, all-pairs runs on an entity subset of this many comparisons")
    parser.add_argument("--recall-max-comparisons", type=float, default=4e9,
                        help="all-pairs comparisons allowed for measuring blocking recall loss (entity subset)")
    parser.add_argument("--bands", type=int, default=None,
                        help="fix BlockingConfig.bands (default: the coordinator's budget policy chooses the setting)")
    parser.add_argument("--bits-per-band", type=int, default=None,
                        help="fix BlockingConfig.bits_per_band (default: the coordinator's budget policy)")
    parser.add_argument("--cache-dir", type=Path, default=Path("/tmp/pplink-bench-cache"))
    parser.add_argument("--ray-workers", default="",
                        help="comma-separated Ray worker counts (e.g. 1,2): also compare bands on a local Ray "
                             "cluster of each size (needs pplink[ray])")
    parser.add_argument("--prune-above", type=int, default=None,
                        help="--threshold auto: pairs below 0.7 kept in full before the floor rises, and the most "
                             "pairs a risen floor keeps (default: auto_match's PRUNE_ABOVE; -1 never rises)")
    parser.add_argument("--isolate", action=argparse.BooleanOptionalAction, default=True,
                        help="run each match in a fresh child process to measure its peak RSS")
    args = parser.parse_args(argv)
    load_at_start = os.getloadavg()

    from coordinator.linkage.blocking import BlockingConfig
    from coordinator.linkage.blocking_budget import all_pairs_count

    overrides = {k: v for k, v in (("bands", args.bands), ("bits_per_band", args.bits_per_band)) if v is not None}
    # An explicit setting wins; otherwise every blocked run uses the coordinator's budget choice.
    blocking: Any = BlockingConfig(**overrides).model_dump() if overrides else "policy"
    generated = time.perf_counter()
    cache = cached_encodings(args.cache_dir, args.agencies, args.records, args.seed)
    print(f"# encodings ready in {time.perf_counter() - generated:.1f}s: {cache}", file=sys.stderr)
    _, entities = load_encodings(cache)
    sizes = [len(e) for e in entities]
    full_comparisons = all_pairs_count(sizes)
    base = {"cache": str(cache), "threshold": args.threshold, "workers": args.workers}
    rows = []

    # Blocking recall loss against all-pairs, on an entity subset small enough to compare all pairs.
    fraction = min(1.0, (args.recall_max_comparisons / full_comparisons) ** 0.5) if full_comparisons else 1.0
    subset = entity_subset(entities, fraction, args.seed)

    if args.threshold == "auto":
        # The automatic round first: its chosen threshold is the one the peers are measured at.
        out = run_job(base | {"kind": "auto", "blocking": blocking, "prune_above": args.prune_above}, args.isolate)
        base["threshold"] = out["stats"]["threshold"]
    recall = run_job(base | {"kind": "recall", "blocking": blocking, "rows": subset if fraction < 1 else None},
                     args.isolate)["recall"]
    recall_note = ("measured on all records" if fraction >= 1
                   else f"measured on the records of {fraction:.1%} of entities")
    if args.threshold != "auto":
        out = run_job(base | {"kind": "match", "blocking": blocking}, args.isolate)
    row = _row("pplink-auto" if args.threshold == "auto" else "pplink-blocked", args, out, entities, "")
    row["blocking_recall_loss"] = recall["recall_loss"]
    row["blocking_recall"] = recall | {"note": recall_note}
    rows.append(row)

    if args.all_pairs:
        if full_comparisons <= args.all_pairs_max_comparisons:
            out = run_job(base | {"kind": "match", "blocking": None}, args.isolate)
            rows.append(_row("anonlink-all-pairs", args, out, entities,
                             "anonlink dice_coefficient_accelerated, all pairs"))
        else:
            fraction = (args.all_pairs_max_comparisons / full_comparisons) ** 0.5
            subset = entity_subset(entities, fraction, args.seed + 1)
            sub_entities = [e[rows_] for e, rows_ in zip(entities, subset, strict=True)]
            note = (
                f"all-pairs infeasible at full size ({full_comparisons:.2e} comparisons): both runs on the records "
                f"of {fraction:.1%} of entities"
            )
            out = run_job(base | {"kind": "match", "blocking": blocking, "rows": subset}, args.isolate)
            rows.append(_row("pplink-blocked-subset", args, out, sub_entities, note))
            out = run_job(base | {"kind": "match", "blocking": None, "rows": subset}, args.isolate)
            row = _row("anonlink-all-pairs-subset", args, out, sub_entities, note)
            if row["pairs_per_s"]:
                row["estimated_full_seconds"] = round(full_comparisons / row["pairs_per_s"])
                row["note"] += f"; full-size all-pairs estimated at {row['estimated_full_seconds']} s from its rate"
            rows.append(row)
    for workers in [int(w) for w in args.ray_workers.split(",") if w.strip()]:
        out = run_job(base | {"kind": "ray", "blocking": blocking, "ray_workers": workers}, args.isolate)
        rows.append(_row(f"pplink-ray-{workers}-workers", args, out, entities,
                         f"bands compared on a local Ray cluster of {workers} CPUs (blocking on the driver)"))
    load = os.getloadavg()
    for r in rows:
        r["loadavg_1min_at_end"] = round(load[0], 2)
        print(json.dumps(r, sort_keys=True))
    _print_table(rows)
    _print_targets(rows, load_at_start, load)
    return 0


def _print_targets(rows: list[dict[str, Any]], load_at_start: tuple[float, ...], load: tuple[float, ...]) -> None:
    """The issue's targets next to what this run measured, pplink against anonlink in the same run."""
    by_run = {r["run"]: r for r in rows}
    ours = by_run.get("pplink-blocked") or by_run.get("pplink-auto")
    peer = by_run.get("anonlink-all-pairs") or by_run.get("anonlink-all-pairs-subset")
    cores = os.cpu_count()
    print(f"\ntargets (machine load {load_at_start[0]:.1f} at start, {load[0]:.1f} at end, on {cores} cores: "
          "shared with other work, so ratios measured in this run count)")
    if ours is None:
        return
    peer_rate = peer["pairs_per_s_per_core"] if peer else None
    ratio = f", {ours['pairs_per_s_per_core'] / peer_rate:.2f}x anonlink all-pairs" if peer_rate else ""
    print(f"  candidate pairs per core (end to end comparing): {ours['pairs_per_s_per_core']:.3g}/s{ratio} "
          "(target >= 1e8)")
    if ours.get("kernel_pairs_per_s_per_core"):
        kernel = ours["kernel_pairs_per_s_per_core"]
        ratio = f", {kernel / peer_rate:.2f}x anonlink all-pairs" if peer_rate else ""
        print(f"  compiled kernel per core: {kernel:.3g}/s{ratio}")
    if ours.get("per_record_work"):
        work = ours["per_record_work"]
        seconds = work["sorting_s"] + work["gathering_s"]
        print(f"  per-record work per core, no pair scored ({work['bands_sampled']} bands timed, scaled to all): "
              f"sorting {work['sorting_s']:.2f} s, listing and copying {work['records_gathered']:.3g} records "
              f"{work['gathering_s']:.2f} s: comparing reaches at most {ours['comparisons'] / seconds:.3g} pairs/s per "
              "core at this size, however fast the kernel")
    if peer_rate:
        print(f"  anonlink all-pairs per core in this run: {peer_rate:.3g}/s")
    if ours.get("blocking"):
        print(f"  blocking: {ours['blocking']['bits_per_band']} bits x {ours['blocking']['bands']} bands, "
              f"{ours['comparisons']:.3g} comparisons ({ours['seconds_choosing_blocking']:.2f} s choosing it, "
              "counted in blocking)")
    size = f"{len(ours['records'])} x {ours['records'][0]}"
    limit = {"4 x 100000": "< 5 s", "4 x 1000000": "< 180 s and < 4096 MB"}.get(size, "")
    floor = "at the floor: " if "auto_phases" in ours else ""
    print(f"  {size}: {ours['seconds']:.1f} s end to end ({floor}blocking {ours['seconds_blocking']:.1f}, comparing "
          f"{ours['seconds_comparing']:.1f}, solving {ours['seconds_solving']:.1f}), "
          f"peak {ours['peak_memory_mb']:.0f} MB" + (f" (target {limit})" if limit else ""))
    if "auto_phases" in ours:
        phases = ours["auto_phases"]
        print(f"  automatic threshold: chose {ours['threshold']:.3f} from {phases['floor_candidate_pairs']:,} "
              f"candidate pairs at the floor; estimated precision {ours['estimated']['precision']:.4f}, recall "
              f"{ours['estimated']['recall']:.4f} (true {ours['precision']:.4f}, {ours['recall']:.4f})")
        print("  auto phases (s): " + ", ".join(f"{k} {v:.2f}" for k, v in phases.items()
                                               if k != "floor_candidate_pairs"))
    if "pplink-blocked-subset" in by_run and peer:
        print(f"  F1 on the subset: pplink {by_run['pplink-blocked-subset']['f1']:.4f}, all pairs {peer['f1']:.4f}")
    elif peer:
        print(f"  F1: pplink {ours['f1']:.4f}, all pairs {peer['f1']:.4f}")
    ray_rows = [r for r in rows if r["run"].startswith("pplink-ray-")]
    for r in ray_rows:
        same = r["clusters"] == ours["clusters"] and r["f1"] == ours["f1"]
        print(f"  Ray, {r['run'].split('-')[2]} workers: comparing {r['seconds_comparing']:.1f} s, total "
              f"{r['seconds']:.1f} s, same clusters as local: {same}")


if __name__ == "__main__":
    sys.exit(main())

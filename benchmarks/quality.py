"""Linkage quality with no truth given, on data pplink was not tuned on, against a truth-tuned oracle.

For each dataset (UK-style people, households with siblings and twins, FEBRL 1-4, ``pplink synth``):
every agency file goes through ``pplink node encode``'s code with the default agreement (FEBRL with
its own identifier fields), the coordinator matches with the automatic threshold (no truth), and the
truth then scores it. Printed side by side:

* ``f1``, ``precision``, ``recall``: measured at the automatic threshold;
* ``est_precision``, ``est_recall``: what the round's calibration estimated, with no truth (exact:
  this stays on the coordinator);
* ``dp_precision``, ``dp_recall``: what leaves the coordinator: the same estimates derived from the
  round's ``link-scores`` DP release at the template's ``calibration_epsilon`` (zCDP, its delta);
* ``blocking``: how the round chose its blocking (``coordinator.linkage.blocking_budget``: all
  pairs up to ``ALL_PAIRS_LIMIT``, else the densest setting a comparison budget allows);
* ``second_pass``: the setting of the round's second pass among the records its first pass left
  partnerless (``coordinator.linkage.second_pass``; automatic rounds blocked by budget only), or ``null``;
* ``round_blocking_loss``: the share of the true cross-agency pairs scoring at least the round's
  threshold that the round never compares (no shared band key in the first pass and not found by
  the second; 0 for an all-pairs round): the blocking recall loss of issue #12's target (< 0.5%);
  ``round_first_pass_loss``: the same for the first pass alone;
* ``round_linkage_blocking_loss``: recall of the same round over all pairs (same threshold) minus
  the round's recall (a pair not compared may still join its cluster through a third agency);
  ``null`` where all pairs would cost more than 1e9 comparisons;
* ``hypothetical_21x96_*``: the same true-link and linkage losses, and the share of all pairs (strangers included)
  at the floor 0.55 and at the threshold on a sample of 3,000 rows per agency, for the fixed 96 x 21
  blocking that blocked rounds used before the budget rule, whether or not this round blocks;
* ``oracle_f1`` at ``oracle_threshold``: plain clkhash (same fields and weights, no folding, minimal
  normalisation: trimmed, lower case, dates to ISO where they parse) and anonlink's greedy solver over
  all pairs, at the best threshold chosen *with* the truth (``null`` beyond 1e9 pairs).

One JSON line per dataset, then a table.

    uv run python benchmarks/quality.py                  # the target sizes
    uv run python benchmarks/quality.py --size tiny      # seconds; the test suite runs this
    uv run python benchmarks/quality.py --cap-ladder 21x96 --only households_large uk_style
                                                         # the blocked path forced: 21 x 96 plus the second pass
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
import warnings
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


SIZES = {
    # name: (uk_style people, households, synth people, FEBRL sets, larger households (None: not run))
    "tiny": (300, 120, 300, (1,), None),
    "small": (1200, 600, 1500, (1, 4), None),
    # The larger household set (~3x, ~83,000 records) is one a default round blocks at a sparser
    # setting than the full one: the budget rule at a size past ALL_PAIRS_LIMIT's.
    "full": (3200, 3000, 4000, (1, 2, 3, 4), 9000),
}


def _datasets(size: str, only: Sequence[str] | None = None):  # type: ignore[no-untyped-def]
    """The datasets at ``size``, by name; with ``only``, just those named (the others are never generated)."""
    from pplink.lab.datasets import AgencyRecords, LinkageDataset
    from pplink.lab.datasets.febrl import load_febrl
    from pplink.lab.datasets.uk_style import COLUMNS, generate_uk_style
    from pplink.lab.synth import generate_synth

    def synth():  # type: ignore[no-untyped-def]
        data = generate_synth(synth_people, ["social_care", "school", "health", "police"], seed=12, opt_out_rate=0.0)
        truth = data.truth()
        extracts = {}
        for agency, table in data.tables.items():
            at = [table.columns.index(c) for c in ("record_id", *COLUMNS)]
            rows = [tuple(r[i] for i in at) for r in table.rows]
            extracts[agency] = AgencyRecords(tuple(r[0] for r in rows), tuple(r[1:] for r in rows),
                                             tuple(truth[(agency, r[0])] for r in rows))
        return LinkageDataset("synth", COLUMNS, tuple(data.tables), extracts)

    people, households, synth_people, febrl, large_households = SIZES[size]
    # Names first, generation on demand: a dataset left out by ``only`` costs nothing.
    makers = [("uk_style", lambda: generate_uk_style(people, seed=12)),
              ("households", lambda: generate_uk_style(households, households=True, seed=12))]
    if large_households:
        makers.append(("households_large", lambda: replace(
            generate_uk_style(large_households, households=True, seed=13), name="households_large")))
    makers += [(f"febrl{number}", lambda number=number: load_febrl(number)) for number in febrl]
    makers.append(("synth", synth))
    for name, make in makers:
        if not only or name in only:
            yield make()


def _agreement_edit(dataset):  # type: ignore[no-untyped-def]
    from pplink.lab.datasets.febrl import febrl_fields_toml

    if not dataset.name.startswith("febrl"):
        return None

    def edit(text: str) -> str:
        start = text.index("[[identifiers.fields]]")
        end = text.index("# ---- linkage ----")
        text = text[:start] + febrl_fields_toml() + "\n" + text[end:]
        return re.sub(r"(?m)^min_fields = \d+$", "min_fields = 0", text, count=1)

    return edit


def _pplink(dataset, root: Path):  # type: ignore[no-untyped-def]
    """Encode with pplink's node code and the default agreement; match with the automatic threshold."""
    setup, predicted, calibration, seconds, _, _ = _pplink_encodings(dataset, root)
    return setup, predicted, calibration, seconds


def _pplink_encodings(dataset, root: Path, choice: list | None = None,  # type: ignore[no-untyped-def]
                      cap: tuple[int, int] | None = None):
    """:func:`_pplink`, also returning the encodings (the blocking-loss measurement reads them).

    ``choice``, if given, receives the round's blocking, how it was chosen and its second pass's
    budget. ``cap`` forces the budget path with the ladder cut at that ``(bits, bands)`` setting
    (as a round past a few hundred thousand records falls back to 21 x 96).
    """
    from coordinator.linkage.auto import auto_match
    from coordinator.linkage.blocking_budget import LADDER, choose_blocking, comparison_budget
    from coordinator.linkage.match_round import round_blocking
    from coordinator.linkage.second_pass import second_pass_budget
    from nodes.encode import encode_records
    from pplink.lab.datasets import write_dataset
    from tests.support import make_setup

    write_dataset(dataset, root)
    setup = make_setup(root / "agreement", agencies=dataset.agencies, edit=_agreement_edit(dataset))
    ids, clks = [], []
    for agency in dataset.agencies:
        encoded = encode_records(setup.agreement, agency, setup.secret, root / f"{agency}.csv", workers=1)
        ids.append(encoded.record_ids)
        clks.append(encoded.clks)
    started = time.perf_counter()
    if cap is None:
        blocking, how = round_blocking(clks)  # the coordinator's own choice, as `coordinator match` makes it
    else:
        how = choose_blocking(clks, budget=comparison_budget([len(c) for c in clks]),
                              ladder=LADDER[: LADDER.index(cap) + 1])
        blocking = how.config()
    second = second_pass_budget(how, None)
    result, calibration, _ = auto_match(clks, blocking=blocking, workers=2, second_budget=second)
    seconds = time.perf_counter() - started
    if choice is not None:
        choice.extend([blocking, how, second])
    predicted = {a: dict(zip(i, lab.tolist(), strict=True)) for a, i, lab in zip(dataset.agencies, ids, result.labels,
                                                                                   strict=True)}
    return setup, predicted, calibration, seconds, clks, ids


def _minimal(value: str, column: str) -> str:
    from pplink.normalise import InvalidValue, normalise_date

    value = value.strip().lower()
    if column == "date_of_birth":
        try:
            return normalise_date(value, ("%Y-%m-%d", "%d/%m/%Y")).replace("-", "") or value
        except InvalidValue:
            return value
    if column == "postcode":
        return value.replace(" ", "")
    return value


#: The oracle compares all pairs with anonlink: skipped (``None``) beyond this many.
ORACLE_ALL_PAIRS_MAX = 1_000_000_000


def _oracle(dataset, setup) -> tuple[float | None, float | None]:  # type: ignore[no-untyped-def]
    """Plain clkhash + anonlink greedy over all pairs, at the best threshold chosen with the truth."""
    from anonlink.candidate_generation import find_candidate_pairs
    from anonlink.similarities import dice_coefficient_accelerated
    from anonlink.solving import greedy_solve
    from clkhash import clk
    from clkhash.schema import from_json_dict

    from coordinator.linkage.blocking_budget import all_pairs_count
    from pplink.agreement import Hardening
    from pplink.encoding import clkhash_schema_dict
    from pplink.lab.linkage_eval import evaluate_linkage_by_agency

    sizes = [len(dataset.extracts[a].rows) for a in dataset.agencies]
    if all_pairs_count(sizes) > ORACLE_ALL_PAIRS_MAX:
        return None, None
    identifiers = setup.agreement.identifiers.model_copy(update={"hardening": Hardening()})
    schema = from_json_dict(clkhash_schema_dict(identifiers))
    encoded = []
    for agency in dataset.agencies:
        rows = [[_minimal(v, c) for v, c in zip(row, dataset.columns, strict=True)]
                for row in dataset.extracts[agency].rows]
        encoded.append(clk.generate_clks(rows, schema, "oracle-secret", validate=False))
    floor = 0.6
    candidates = find_candidate_pairs(encoded, dice_coefficient_accelerated, floor)
    sims = np.frombuffer(candidates[0], dtype=np.float64) if not isinstance(candidates[0], np.ndarray) \
        else candidates[0]
    truth = dataset.truth()
    best = (0.0, floor)
    for threshold in np.arange(floor, 0.951, 0.025):
        keep = np.flatnonzero(sims >= threshold - 1e-12)
        chosen = (candidates[0][: len(keep)], tuple(x[: len(keep)] for x in candidates[1]),
                  tuple(x[: len(keep)] for x in candidates[2]))
        groups = greedy_solve(chosen)
        predicted: dict[str, dict[str, int]] = {a: {} for a in dataset.agencies}
        for g, group in enumerate(groups):
            for d, r in group:
                agency = dataset.agencies[d]
                predicted[agency][dataset.extracts[agency].record_ids[r]] = g
        for agency in dataset.agencies:  # unlinked records are singletons
            for r in dataset.extracts[agency].record_ids:
                predicted[agency].setdefault(r, f"{agency}:{r}")
        f1 = evaluate_linkage_by_agency(truth, predicted).overall.f1 or 0.0
        if f1 > best[0]:
            best = (f1, float(round(threshold, 3)))
    return best


def _dp(dataset, setup, calibration, root: Path):  # type: ignore[no-untyped-def]
    """The published estimates: post-processing of the round's link-scores release (template epsilon)."""
    from coordinator.linkage.calibration_dp import dp_estimate
    from coordinator.release.calibration import release_link_scores
    from pplink.agreement_template import DEFAULT_CALIBRATION_EPSILON

    epsilon = setup.agreement.linkage.calibration_epsilon or DEFAULT_CALIBRATION_EPSILON
    release = release_link_scores(setup.agreement, root / "ledger.jsonl", setup.key("coordinator"),
                                  calibration.histogram, dataset.agencies, epsilon=epsilon)
    return epsilon, release.entry.scale, dp_estimate(release.entry, calibration.threshold)


def measure(dataset, cap: tuple[int, int] | None = None) -> dict:  # type: ignore[no-untyped-def]
    """Every figure for one dataset (``cap``: the blocked path forced, ladder cut there)."""
    from quality_blocking import round_recall, round_true_link_loss, sampled_loss, true_link_loss

    from coordinator.linkage.auto import CALIBRATION_FLOOR
    from coordinator.linkage.blocking import BlockingConfig
    from pplink.lab.linkage_eval import evaluate_linkage_by_agency

    choice: list = []
    with tempfile.TemporaryDirectory() as tmp:
        setup, predicted, calibration, seconds, clks, ids = _pplink_encodings(dataset, Path(tmp), choice, cap)
        dp_epsilon, dp_scale, dp = _dp(dataset, setup, calibration, Path(tmp))
    blocking, how, second_budget = choice
    fixed = BlockingConfig()  # today's fixed 96 x 21, whether or not the round blocks: hypothetical
    scores = evaluate_linkage_by_agency(dataset.truth(), predicted)
    threshold, recall = calibration.threshold, scores.overall.recall or 0.0
    round_loss, true_link_pairs, second_pass = round_true_link_loss(dataset, clks, ids, threshold, blocking,
                                                                   second_budget)
    first_pass_loss, _ = true_link_loss(dataset, clks, ids, threshold, blocking)
    fixed_loss, _ = true_link_loss(dataset, clks, ids, threshold, fixed)
    all_pairs_recall = recall if blocking is None else round_recall(dataset, clks, ids, threshold, None)
    fixed_recall = round_recall(dataset, clks, ids, threshold, fixed)
    oracle_f1, oracle_threshold = _oracle(dataset, setup)
    est = calibration.estimate
    return {
        "dataset": dataset.name,
        "records": dataset.records,
        "agencies": len(dataset.agencies),
        "threshold": calibration.threshold,
        "f1": scores.overall.f1,
        "precision": scores.overall.precision,
        "recall": scores.overall.recall,
        "est_precision": est.precision,
        "est_precision_interval": est.precision_interval,
        "est_recall": est.recall,
        "est_recall_interval": est.recall_interval,
        "est_missed": est.missed,
        "dp_epsilon": dp_epsilon,
        "dp_noise_scale": dp_scale,
        "dp_precision": dp.precision,
        "dp_precision_interval": dp.precision_interval,
        "dp_recall": dp.recall,
        "dp_recall_interval": dp.recall_interval,
        "blocking": how.model_dump(mode="json"),
        "second_pass": second_pass,
        "round_blocking_loss": round_loss,
        "round_first_pass_loss": first_pass_loss,
        "round_linkage_blocking_loss": None if all_pairs_recall is None else all_pairs_recall - recall,
        "true_link_pairs_at_threshold": true_link_pairs,
        "hypothetical_21x96_true_link_loss": fixed_loss,
        "hypothetical_21x96_linkage_loss": None if all_pairs_recall is None else all_pairs_recall - fixed_recall,
        "hypothetical_21x96_loss_all_pairs_floor": sampled_loss(clks, CALIBRATION_FLOOR, fixed),
        "hypothetical_21x96_loss_all_pairs_threshold": sampled_loss(clks, calibration.threshold, fixed),
        "true_missed": scores.overall.false_negatives,
        "oracle_f1": oracle_f1,
        "oracle_threshold": oracle_threshold,
        "match_seconds": round(seconds, 2),
    }


def _table(rows: list[dict]) -> str:
    head = (f"{'dataset':<16} {'records':>7} {'thr':>6} {'F1':>6} {'P':>6} {'estP':>6} {'dpP':>6} {'R':>6} "
            f"{'estR':>6} {'dpR':>6} {'|dP|':>6} {'|dR|':>6} {'blocking':>9} {'2nd':>6} {'1stblk':>6} {'roundblk':>8} "
            f"{'linkblk':>8} "
            f"{'21x96':>6} {'21x96lk':>7} {'oracleF1':>8} {'@thr':>5}")
    lines = [head, "-" * len(head)]
    for r in rows:
        how = r["blocking"]
        setting = "all pairs" if how["bands"] is None else f"{how['bits_per_band']}x{how['bands']}"
        link, fixed = ("-" if r[key] is None else f"{r[key]:.2%}"
                       for key in ("round_linkage_blocking_loss", "hypothetical_21x96_linkage_loss"))
        lines.append(f"{r['dataset']:<16} {r['records']:>7} {r['threshold']:>6.3f} {r['f1']:>6.4f} "
                     f"{r['precision']:>6.4f} {r['est_precision']:>6.4f} {r['dp_precision']:>6.4f} "
                     f"{r['recall']:>6.4f} {r['est_recall']:>6.4f} {r['dp_recall']:>6.4f} "
                     f"{abs(r['est_precision'] - r['precision']):>6.4f} {abs(r['est_recall'] - r['recall']):>6.4f} "
                     f"{setting:>9} {r['second_pass'] or '-':>6} {r['round_first_pass_loss']:>6.2%} "
                     f"{r['round_blocking_loss']:>8.2%} {link:>8} "
                     f"{r['hypothetical_21x96_true_link_loss']:>6.2%} {fixed:>7} "
                     + (f"{r['oracle_f1']:>8.4f} {r['oracle_threshold']:>5.3f}" if r["oracle_f1"] is not None
                        else f"{'-':>8} {'-':>5}"))
    lines.append("|dP|, |dR|: exact estimate against the truth (target <= 0.02); dpP, dpR: the published (DP) "
                 "estimates;\nblocking: the setting the round used (bits x bands); 2nd: its second pass's, among "
                 "the records the first left partnerless;\n1stblk: true links scoring at least the threshold that "
                 "the first pass never compares; roundblk: that neither pass compares (target < 0.5%);\n"
                 "linkblk: recall over all pairs minus the round's; 21x96, 21x96lk: roundblk and linkblk for the "
                 "fixed 96 x 21 blocking with no second pass "
                 "(hypothetical where the round compares all pairs)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    """Run the benchmark; print JSON lines and a table; return the rows."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="full")
    parser.add_argument("--only", nargs="*", help="dataset names to run (default: all)")
    parser.add_argument("--cap-ladder", metavar="BITSxBANDS", default=None,
                        help="force the blocked path (budget rule, ladder cut at this setting, e.g. 21x96: what a "
                             "round of a few hundred thousand records falls back to), so the second pass runs")
    args = parser.parse_args(argv)
    cap = None if args.cap_ladder is None else tuple(int(x) for x in args.cap_ladder.split("x"))
    rows = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        for dataset in _datasets(args.size, args.only):
            row = measure(dataset, cap)
            print(json.dumps(row), flush=True)
            rows.append(row)
    print(_table(rows))
    return rows


if __name__ == "__main__":
    main()

"""Benchmark vertical scoring in process: wall time and messages per step, and AUC against the budget.

Synthetic people from ``pplink.lab.synth`` are joined by the synthetic truth (no linkage errors), so
the figures isolate scoring. Every agency is a real :class:`nodes.scoring.vertical.ScoringNode` (X25519
key agreement, ChaCha20 masks, OpenDP noise at the label owner, every step on a signed ledger);
the transport is a plain method call, so the times are compute only.

``--transport flower`` runs a noisy-sufficient-statistics scoring run (the protocol ``coordinator
run --task score`` runs) over a real Flower deployment instead (:class:`tests.deployment.LocalDeployment`:
``pplink coordinator serve`` with TLS and node authentication and one ``pplink node join`` per
agency, on 127.0.0.1): a match round links the synthetic agencies, then ``pplink coordinator run
--task score`` trains and evaluates on that linkage. It prints the scoring run's wall time as the
operator sees it, seconds per phase, messages, exchanges and bytes, the service start-up and the
match round apart, and the machine's load average.

Each run prints one JSON line: parameters, versions, setup/training/evaluation seconds, seconds
per step, messages and bytes per step, the label owner's exact holdout AUC, the released (DP)
AUC and, with scikit-learn installed, the AUC of a centralised logistic regression on the pooled
data (same people, features and holdout).

``--budget-table`` runs every training epsilon in ``--epsilons`` ``--repeats`` times and prints a
Markdown table of mean AUC (the one in ``docs/scoring.md``).

``--compare`` (noisy sufficient statistics, the default protocol of issue #13) prints exact holdout
AUC of centralised scikit-learn, the label owner's own-data model and the federated model at
training epsilon 0.5, 1, 2 and 4, per seed and as a mean (``benchmarks/scoring_suffstats.py``);
``--time-suffstats`` times one real run.

Usage::

    uv run python benchmarks/scoring.py --people 20000 --compare --seeds 1,2,3,4,5
    uv run python benchmarks/scoring.py --people 20000 --time-suffstats

    uv run python benchmarks/scoring.py --people 20000 --agencies 4
    uv run python benchmarks/scoring.py --people 20000 --budget-table --epsilons 1,2,5,10,20,60 --repeats 3
    uv run python benchmarks/scoring.py --transport flower --people 20000 --agencies 4 \
        --training-epsilon 2 --evaluation-epsilon 0.6
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

AGENCIES = ("social_care", "school", "health", "police", "housing", "education", "probation", "youth")


def _agreement(root: Path, agencies: tuple[str, ...], budget_epsilon: float):  # type: ignore[no-untyped-def]
    import tomllib

    from pplink.agreement import parse_agreement
    from pplink.agreement_template import default_agreement_toml
    from pplink.crypto import load_private_key
    from pplink.keystore import ensure_party_keys, private_key_path

    keys_dir = root / "keys"
    public, _ = ensure_party_keys(keys_dir, [*agencies, "coordinator", "auditor"])
    text = default_agreement_toml(list(agencies), public).replace("epsilon = 4.0", f"epsilon = {budget_epsilon}")
    agreement = parse_agreement(tomllib.loads(text))
    keys = {p: load_private_key(private_key_path(keys_dir, p)) for p in [*agencies, "coordinator"]}
    return agreement, keys


def _central_auc(nodes: dict[str, Any], parties: tuple[str, ...]) -> float | None:
    try:
        from sklearn.linear_model import LogisticRegression
        from sklearn.metrics import roc_auc_score
    except ImportError:
        return None
    owner = (nodes[parties[0]] if nodes[parties[0]].is_label_owner
             else next(n for n in nodes.values() if n.is_label_owner))
    x = np.hstack([nodes[a]._x for a in parties])
    y, train, holdout = owner._labels, owner._train, owner._holdout
    model = LogisticRegression(max_iter=2000).fit(x[train], y[train])
    return float(roc_auc_score(y[holdout], model.decision_function(x[holdout])))


def run_once(people: int, agencies: int, *, seed: int = 3, steps: int = 10, learning_rate: float = 4.0,
             training_epsilon: float = 2.0, evaluation_epsilon: float = 1.0, central: bool = True) -> dict[str, Any]:
    """One training and evaluation run; returns the JSON record."""
    from coordinator.scoring.vertical import evaluate_vertical, train_vertical
    from pplink.cli.score import build_scoring_nodes, truth_joined_inputs
    from pplink.lab.synth import generate_synth
    from pplink.scoring.protocol import VerticalSettings

    names = AGENCIES[:agencies]
    with tempfile.TemporaryDirectory(prefix="pplink-bench-scoring-") as tmp:
        root = Path(tmp)
        agreement, keys = _agreement(root, names, 100.0)
        t0 = time.perf_counter()
        data = generate_synth(people, names, seed=seed)
        state, inputs = truth_joined_inputs(agreement, data, seed=seed)
        # The holdout follows the seed, so runs with one seed share people, features and holdout.
        nodes = build_scoring_nodes(agreement, inputs, keys, holdout_seed=seed)
        t_setup = time.perf_counter() - t0
        settings = VerticalSettings(steps=steps, learning_rate=learning_rate, training_epsilon=training_epsilon,
                                    evaluation_epsilon=evaluation_epsilon)
        ledger = root / "ledger.jsonl"
        run = train_vertical(agreement, state, ledger, keys["coordinator"], nodes, settings)
        t1 = time.perf_counter()
        evaluation = evaluate_vertical(agreement, state, ledger, keys["coordinator"], nodes, run)
        t_eval = time.perf_counter() - t1
        owner = nodes[run.plan.label_owner]
        view = owner.own_view(settings.top_share)
        n, k = run.plan.n_entities, len(run.plan.parties)
        record = {
            "benchmark": "scoring-vertical",
            "people": people, "agencies": k, "entities": n, "linked_people": state.n_clusters, "seed": seed,
            "steps": steps,
            "learning_rate": learning_rate, "training_epsilon": training_epsilon,
            "evaluation_epsilon": evaluation_epsilon, "noise_sd": run.plan.noise_sd,
            "python": platform.python_version(), "numpy": np.__version__,
            "cryptography": metadata.version("cryptography"), "opendp": metadata.version("opendp"),
            "setup_seconds": round(t_setup, 3), "train_seconds": round(run.seconds, 3),
            "seconds_per_step": round(statistics.fmean(run.step_seconds), 4) if run.step_seconds else None,
            "evaluation_seconds": round(t_eval, 3),
            "messages_per_step": run.messages_per_step, "messages_total": run.messages,
            # Per step: K shares up and the noisy residuals down to each of K nodes (uint64/int64 per
            # entity), plus the blinded sum to the label owner and its reply.
            "bytes_per_step": 8 * n * (2 * k + 2),
            "holdout": view.holdout, "training_people": view.training,
            "auc_label_owner_exact": round(view.auc, 4), "auc_released_dp": round(evaluation.auc, 4),
            "auc_central_sklearn": None,
        }
        if central:
            auc = _central_auc(nodes, run.plan.parties)
            record["auc_central_sklearn"] = None if auc is None else round(auc, 4)
        return record


def run_flower(people: int, agencies: int, *, seed: int = 3, training_epsilon: float = 2.0,
               evaluation_epsilon: float = 0.6, keep: Path | None = None) -> dict[str, Any]:
    """One match round, then one scoring run (noisy sufficient statistics), over a real Flower deployment.

    The agreement is the default one (budget epsilon 4), so the run must fit it. The run has no
    steps: one run is the whole training (two DP releases), which a 10-step residual run stood for.
    """
    import os

    from pplink.lab.synth import DEFAULT_AGENCIES
    from tests.deployment import LocalDeployment

    names = tuple(DEFAULT_AGENCIES[:agencies])
    with tempfile.TemporaryDirectory(prefix="pplink-bench-flower-scoring-") as tmp:
        root = keep or Path(tmp)
        with LocalDeployment(root, agencies=names, people=people, seed=seed) as d:
            d.prepare()
            t0 = time.perf_counter()
            d.start_coordinator()
            for agency in names:
                d.start_node(agency)
            d.wait_connected(timeout=180)
            startup = time.perf_counter() - t0
            t0 = time.perf_counter()
            done, matched = d.run_round("--reply-timeout", "600", timeout=1800)
            match_seconds = time.perf_counter() - t0
            if done.returncode != 0:
                raise SystemExit(f"the match round failed:\n{done.stderr}")
            t0 = time.perf_counter()
            load_before = os.getloadavg()[0]
            done, record = d.run_round("--task", "score", "--match-run", matched["run_id"],
                                       "--training-epsilon", str(training_epsilon),
                                       "--evaluation-epsilon", str(evaluation_epsilon),
                                       "--reply-timeout", "600", timeout=3600)
            score_seconds = time.perf_counter() - t0
            if done.returncode != 0:
                raise SystemExit(f"the scoring run failed:\n{done.stderr}")
            summary = json.loads((d.state / "scoring" / f"{record['run_id']}.json").read_text(encoding="utf-8"))
    return {
        "benchmark": "scoring-suffstats-flower", "people": people, "agencies": len(names),
        "linked_entities": matched.get("entities"), "plan_entities": summary["entities"], "seed": seed,
        "training_epsilon": training_epsilon, "evaluation_epsilon": evaluation_epsilon, "cpus": os.cpu_count(),
        "python": platform.python_version(), "flwr": metadata.version("flwr"),
        "service_startup_seconds": round(startup, 2), "match_round_seconds": round(match_seconds, 2),
        "scoring_run_seconds": round(score_seconds, 2), "serverapp_seconds": summary["seconds"],
        "phase_seconds": summary["phase_seconds"], "bytes_by_message": summary["bytes_by_message"],
        "messages_total": summary["messages"], "exchanges_total": summary["exchanges"],
        "seconds_per_exchange": round(summary["seconds"] / summary["exchanges"], 2),
        "score_rows": summary["score_rows"], "auc_released_dp": summary["released_auc"],
        "own_auc_released_dp": summary["released_own_auc"], "verdict": summary["verdict"],
        "load_average_1m_before": round(load_before, 2), "load_average_1m_after": round(os.getloadavg()[0], 2),
    }


def budget_table(people: int, agencies: int, epsilons: list[float], repeats: int) -> str:
    """AUC against the training budget, as a Markdown table (means over seeds 1..repeats).

    Every run with one seed has the same people, features and holdout, so "gap" (federated minus
    centralised AUC on the same holdout) compares like with like.
    """
    configs = (("10 steps, lr 4", 10, 4.0), ("40 steps, lr 8", 40, 8.0))
    rows = []
    for eps in epsilons:
        exact: dict[str, list[float]] = {c[0]: [] for c in configs}
        gaps: dict[str, list[float]] = {c[0]: [] for c in configs}
        released: list[float] = []
        central: list[float] = []
        for label, steps, lr in configs:
            for rep in range(repeats):
                rec = run_once(people, agencies, seed=rep + 1, steps=steps, learning_rate=lr, training_epsilon=eps,
                               evaluation_epsilon=1.0)
                print(json.dumps(rec), file=sys.stderr, flush=True)
                exact[label].append(rec["auc_label_owner_exact"])
                if rec["auc_central_sklearn"] is not None:
                    gaps[label].append(rec["auc_label_owner_exact"] - rec["auc_central_sklearn"])
                    if label == configs[0][0]:
                        central.append(rec["auc_central_sklearn"])
                if label == configs[0][0]:
                    released.append(rec["auc_released_dp"])

        def cell(values: list[float]) -> str:
            if not values:
                return "-"
            sd = statistics.pstdev(values) if len(values) > 1 else 0.0
            return f"{statistics.fmean(values):.3f} ± {sd:.3f}"

        parts = [f"{eps:g}"]
        for label, _, _ in configs:
            parts += [cell(exact[label]), f"{statistics.fmean(gaps[label]):+.3f}" if gaps[label] else "-"]
        parts += [cell(released), cell(central)]
        rows.append("| " + " | ".join(parts) + " |")
    header = ["training epsilon"]
    for label, _, _ in configs:
        header += [f"exact AUC, {label}", "gap"]
    header += ["released AUC (10 steps; DP, evaluation epsilon 1)", "centralised AUC"]
    return "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *rows])


def main(argv: list[str] | None = None) -> int:
    """Run the scoring benchmark from the command line and print its JSON lines and a summary.

    ``--transport flower`` times ``--repeats`` scoring runs over a real deployment; otherwise
    ``--budget-table`` prints the Markdown AUC table, or ``--repeats`` in-process runs are timed.

    Args:
        argv: command-line arguments; ``None`` reads ``sys.argv``.

    Returns:
        The process exit status, 0 (argparse exits 2 on a usage error).
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--people", type=int, default=20_000)
    parser.add_argument("--agencies", type=int, default=4, choices=range(2, len(AGENCIES) + 1))
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--learning-rate", type=float, default=4.0)
    parser.add_argument("--training-epsilon", type=float, default=2.0)
    parser.add_argument("--evaluation-epsilon", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--budget-table", action="store_true")
    parser.add_argument("--epsilons", default="1,2,5,10,20,60,90")
    parser.add_argument("--transport", choices=("inprocess", "flower"), default="inprocess",
                        help="inprocess: method calls (compute only); flower: a real deployment on 127.0.0.1")
    parser.add_argument("--keep", type=Path, default=None, help="flower: keep the deployment's files in this folder")
    parser.add_argument("--compare", action="store_true",
                        help="noisy sufficient statistics: centralised, own-data and federated AUC over --seeds")
    parser.add_argument("--seeds", default="1,2,3,4,5")
    parser.add_argument("--engine", choices=("plain", "he"), default="plain",
                        help="--compare: plain numpy statistics (same noise) or the real CKKS protocol")
    parser.add_argument("--time-suffstats", action="store_true",
                        help="time one real noisy-sufficient-statistics run (CKKS, every party, the ledger)")
    args = parser.parse_args(argv)
    if args.compare or args.time_suffstats:
        from benchmarks.scoring_suffstats import comparison_table, time_run

        if args.time_suffstats:
            print(json.dumps(time_run(args.people, args.seed, args.training_epsilon)), flush=True)
        if args.compare:
            epsilons = [float(e) for e in args.epsilons.split(",")] if args.epsilons != "1,2,5,10,20,60,90" else [
                0.5, 1.0, 2.0, 4.0]
            print(comparison_table(args.people, [int(s) for s in args.seeds.split(",")], epsilons, args.engine))
        return 0
    if args.transport == "flower":
        if args.budget_table:
            parser.error("--budget-table runs in process only")
        for rep in range(args.repeats):
            rec = run_flower(args.people, min(args.agencies, 4), seed=args.seed + rep,
                             training_epsilon=args.training_epsilon,
                             evaluation_epsilon=args.evaluation_epsilon, keep=args.keep)
            print(json.dumps(rec), flush=True)
        print(f"Flower, {rec['agencies']} agencies x {rec['people']} people ({rec['plan_entities']} entities): "
              f"scoring run {rec['scoring_run_seconds']} s wall ({rec['serverapp_seconds']} s in the ServerApp), "
              f"{rec['messages_total']} messages in {rec['exchanges_total']} exchanges; load average "
              f"{rec['load_average_1m_before']} -> {rec['load_average_1m_after']}")
        return 0
    if args.budget_table:
        print(budget_table(args.people, args.agencies, [float(e) for e in args.epsilons.split(",")], args.repeats))
        return 0
    for rep in range(args.repeats):
        rec = run_once(args.people, args.agencies, seed=args.seed + rep, steps=args.steps,
                       learning_rate=args.learning_rate, training_epsilon=args.training_epsilon,
                       evaluation_epsilon=args.evaluation_epsilon)
        print(json.dumps(rec), flush=True)
    print(f"{rec['agencies']} agencies x {rec['people']} people ({rec['entities']} entities): "
          f"{rec['seconds_per_step']} s and {rec['messages_per_step']} messages per step "
          f"({rec['bytes_per_step'] / 1e6:.2f} MB), training {rec['train_seconds']} s for {rec['steps']} steps")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

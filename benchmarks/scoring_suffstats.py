"""Benchmark vertical scoring by noisy sufficient statistics: AUC against centralised and own-data, and timings.

``comparison_table`` prints, per seed and as a mean over seeds, the exact holdout AUC of:

* centralised scikit-learn logistic regression on every agency's pooled (exactly standardised)
  features and "known to" indicators: what one database of everything would give;
* the label owner's own-feature model (its two features, logistic regression, no linkage);
* the federated model at each training epsilon.

Every model of one seed uses the same people and the same holdout (the label owner's keyed hash).
``--engine he`` runs the real protocol (CKKS, every party, the ledger) for every cell; ``--engine
plain`` computes the same released statistics in numpy, with the same discrete Gaussian noise at
the same scales, without encryption: CKKS changes a released value by less than
``CKKS_ERROR_BOUND`` (tests/coordinator/test_suffstats.py checks the two agree), so the AUCs are the
same up to noise draws, at a fraction of the time. ``time_run`` times one real run.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

AGENCIES = ("social_care", "school", "health", "police")


def _world(people: int, seed: int, budget: float = 100.0):  # type: ignore[no-untyped-def]
    import tomllib

    from pplink.agreement import parse_agreement
    from pplink.agreement_template import default_agreement_toml
    from pplink.crypto import load_private_key
    from pplink.keystore import ensure_party_keys, private_key_path
    from pplink.lab.scoring_run import truth_joined_inputs
    from pplink.lab.synth import generate_synth

    root = Path(tempfile.mkdtemp(prefix="pplink-bench-suffstats-"))
    public, _ = ensure_party_keys(root / "keys", [*AGENCIES, "coordinator", "auditor"])
    text = default_agreement_toml(list(AGENCIES), public).replace("epsilon = 4.0", f"epsilon = {budget}")
    agreement = parse_agreement(tomllib.loads(text))
    keys = {p: load_private_key(private_key_path(root / "keys", p)) for p in [*AGENCIES, "coordinator"]}
    state, inputs = truth_joined_inputs(agreement, generate_synth(people, AGENCIES, seed=seed), seed=seed)
    return root, agreement, keys, state, inputs


def _standardised(features: np.ndarray) -> np.ndarray:
    mean, sd = np.nanmean(features, axis=0), np.nanstd(features, axis=0)
    return np.clip(np.nan_to_num((features - mean) / np.where(sd > 0, sd, 1.0)), -5, 5)


def plain_aucs(agreement: Any, inputs: dict[str, Any], epsilons: list[float], *, holdout_key: bytes,
               settings_kw: dict[str, Any] | None = None) -> dict[str, float]:
    """Exact holdout AUCs: centralised, own-data, and federated (plain engine) at each epsilon."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    from nodes.scoring.suffstats import draw_noise
    from nodes.scoring.suffstats_owner import own_feature_model
    from pplink.lab.scoring_run import SYNTH_FEATURE_SCALES
    from pplink.scoring.suffstats import SuffStatsSettings, encode_block, in_holdout, noise_plan, solve_model

    owner = agreement.scoring.label_owner
    order = (owner, *sorted(a for a in inputs if a != owner))
    entities = sorted(set().union(*(set(inputs[a].entity_ids) for a in order)))
    index = {e: i for i, e in enumerate(entities)}
    n = len(entities)
    blocks, pooled = [], []
    base = SuffStatsSettings(feature_scales=SYNTH_FEATURE_SCALES, **(settings_kw or {}))
    for agency in order:
        data = inputs[agency]
        rows = np.array([index[e] for e in data.entity_ids])
        block = np.zeros((n, len(data.feature_columns) + 1), dtype=np.int64)
        block[rows] = encode_block(agency, data.feature_columns, data.features, base)
        exact = np.zeros((n, len(data.feature_columns) + 1))
        exact[rows, :-1] = _standardised(data.features)
        exact[rows, -1] = 1.0
        if agency == owner:
            block[:, -1] = base.grid
            labels = np.full(n, -1)
            labels[rows] = data.labels
            held_out = np.zeros(n, dtype=bool)
            held_out[rows] = [in_holdout(holdout_key, e, agreement.scoring.holdout_share) for e in data.entity_ids]
            own = exact[:, :-1]
        blocks.append(block)
        pooled.append(exact)
    x, xc = np.hstack(blocks), np.hstack(pooled)
    train, hold = (labels >= 0) & ~held_out, (labels >= 0) & held_out
    y = labels
    out: dict[str, float] = {}
    model = LogisticRegression(max_iter=3000).fit(xc[train], y[train])
    out["centralised"] = float(roc_auc_score(y[hold], model.decision_function(xc[hold])))
    w_own = own_feature_model(own[train], y[train].astype(np.float64))
    out["own"] = float(roc_auc_score(y[hold], np.hstack([own, np.ones((n, 1))])[hold] @ w_own))
    xt = x[train]
    d = x.shape[1]
    gram = xt.T @ xt
    b = xt.T @ (2 * y[train] - 1)
    for eps in epsilons:
        settings = base.model_copy(update={"training_epsilon": eps})
        plan = noise_plan(settings, len(order), agreement.budget.delta, d)
        iu = np.triu_indices(d)
        noisy = np.zeros((d, d), dtype=np.int64)
        noisy[iu] = gram[iu] + draw_noise(plan.gram_scale, len(iu[0]))
        noisy = noisy + np.triu(noisy, 1).T
        w = solve_model(noisy, b + draw_noise(plan.b_scale, d), plan, settings)
        out[f"federated {eps:g}"] = float(roc_auc_score(y[hold], (x[hold] / settings.grid) @ w))
    return out


def comparison_table(people: int, seeds: list[int], epsilons: list[float], engine: str = "plain") -> str:
    """The Markdown table: one row per seed and a mean row."""
    rows: list[dict[str, float]] = []
    for seed in seeds:
        _, agreement, keys, state, inputs = _world(people, seed)
        key = seed.to_bytes(32, "big")
        if engine == "plain":
            rows.append(plain_aucs(agreement, inputs, epsilons, holdout_key=key))
        else:
            aucs = plain_aucs(agreement, inputs, [], holdout_key=key)
            for eps in epsilons:
                aucs[f"federated {eps:g}"] = time_run(people, seed, eps, world=(agreement, keys, state, inputs),
                                                      holdout_key=key)["auc_federated_exact"]
            rows.append(aucs)
        print(f"seed {seed}: " + ", ".join(f"{k} {v:.4f}" for k, v in rows[-1].items()), flush=True)
    columns = list(rows[0])
    lines = ["| seed | " + " | ".join(columns) + " |", "|" + "---|" * (len(columns) + 1)]
    for seed, row in zip(seeds, rows, strict=True):
        lines.append(f"| {seed} | " + " | ".join(f"{row[c]:.3f}" for c in columns) + " |")
    lines.append("| mean | " + " | ".join(f"{statistics.fmean(r[c] for r in rows):.3f}" for c in columns) + " |")
    return "\n".join(lines)


def time_run(people: int, seed: int, training_epsilon: float = 2.0, *, world: Any = None,
             holdout_key: bytes | None = None) -> dict[str, Any]:
    """One real run (CKKS, every party, the ledger) in process; its timings, message sizes and AUCs."""
    from coordinator.scoring.suffstats import evaluate_suffstats, train_suffstats
    from pplink.lab.scoring_run import SYNTH_FEATURE_SCALES, build_suffstats_nodes
    from pplink.scoring.suffstats import SuffStatsSettings

    root = Path(tempfile.mkdtemp(prefix="pplink-bench-suffstats-"))
    if world is None:
        root, *parts = _world(people, seed)
        world = tuple(parts)
    agreement, keys, state, inputs = world
    nodes = build_suffstats_nodes(agreement, inputs, keys, holdout_key=holdout_key or seed.to_bytes(32, "big"))
    settings = SuffStatsSettings(feature_scales=SYNTH_FEATURE_SCALES, training_epsilon=training_epsilon)
    ledger = root / f"ledger-{time.monotonic_ns()}.jsonl"
    t0 = time.perf_counter()
    run = train_suffstats(agreement, state, ledger, keys["coordinator"], nodes, settings)
    train = time.perf_counter() - t0
    t0 = time.perf_counter()
    evaluation = evaluate_suffstats(agreement, ledger, keys["coordinator"], nodes[run.plan.label_owner], run, nodes)
    fed, own = nodes[run.plan.label_owner].exact_auc()
    return {
        "benchmark": "scoring-suffstats", "people": people, "seed": seed, "entities": run.plan.n_entities,
        "agencies": len(run.plan.parties), "dimension": run.plan.dimension, "training_epsilon": training_epsilon,
        "train_seconds": round(train, 2), "evaluation_seconds": round(time.perf_counter() - t0, 2),
        "phase_seconds": {k: round(v, 2) for k, v in run.seconds.items()},
        "megabytes_by_message": {k: round(v / 1e6, 2) for k, v in run.bytes_by_message.items()},
        "messages": run.messages, "auc_federated_exact": round(fed, 4), "auc_own_exact": round(own, 4),
        "auc_federated_released": round(evaluation.auc, 4), "auc_own_released": round(evaluation.own_auc, 4),
    }

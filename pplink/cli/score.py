"""``pplink score …``: federated scoring on linked people, every party played in one process.

Thin commands over :mod:`pplink.lab.scoring_run` (vertical scoring by noisy sufficient statistics,
docs/scoring.md) and :mod:`pplink.lab.horizontal_demo` (horizontal DP FedAvg).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path
from typing import Any

import click

from pplink.cli.options import FORMAT_OPTION

__all__ = ["score_group", "summary_json"]


def _finite(value: Any) -> Any:
    """JSON has no NaN: suppressed or undefined figures become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def summary_json(summary: Any) -> dict[str, Any]:
    """A vertical scoring run's released figures as JSON-ready data (no NaN; nothing unreleased but paths)."""
    ev, run = summary.evaluation, summary.run
    return _finite({
        "run_id": run.plan.run_id, "protocol": "sufficient-statistics",
        "training_epsilon": run.plan.settings.training_epsilon,
        "evaluation_epsilon": run.plan.settings.evaluation_epsilon,
        "released": {"auc": ev.auc, "own_auc": ev.own_auc, "auc_noise_sd": list(ev.auc_sd), "verdict": ev.verdict,
                     "threshold_logit": ev.threshold,
                     "by_subgroup": {g: asdict(r) for g, r in ev.rates.items()},
                     "by_agency": {f"{a}:{w}": asdict(r) for (a, w), r in ev.presence_rates.items()}},
        "ledger_entries": [run.ledger_seen - 1, run.ledger_seen],
        "scores_path": str(summary.scores_path) if summary.scores_path else None,
    })


@click.group("score")
def score_group() -> None:
    """Federated scoring on linked people (noisy sufficient statistics under CKKS; horizontal DP FedAvg)."""


@score_group.command("demo")
@click.option("--dir", "work_dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
              default=Path("pplink-demo"), show_default=True, help="A folder written by `pplink demo`.")
@click.option("--training-epsilon", type=click.FloatRange(min=0.0, min_open=True, max=100.0), default=2.0,
              show_default=True, help="Privacy loss of the two training releases (G and b) together.")
@click.option("--evaluation-epsilon", type=click.FloatRange(min=0.0, min_open=True, max=100.0), default=0.6,
              show_default=True, help="Privacy loss of the evaluation releases together.")
@FORMAT_OPTION
def demo_command(work_dir: Path, training_epsilon: float, evaluation_epsilon: float, output_format: str) -> None:
    """Train and evaluate a model over a `pplink demo` folder; every release goes on its ledger.

    Agencies keep their features; the label owner alone holds the key that opens anything, and
    decrypts only sums the agencies noised after the ledger charged them. The label owner's
    own-feature model is shown beside the federated one, with a plain verdict on whether linking
    helped. Scores and the model card go to the label owner alone.
    """
    from pplink.agreement import load_agreement
    from pplink.lab.scoring_run import demo_settings, run_suffstats_demo

    config = load_agreement(work_dir / "agreement.toml")
    settings = demo_settings(config, training_epsilon=training_epsilon, evaluation_epsilon=evaluation_epsilon)
    summary = run_suffstats_demo(work_dir, config, settings=settings)
    if output_format == "json":
        click.echo(json.dumps(summary_json(summary)))
        return
    for line in summary.lines:
        click.echo(line)


@score_group.command("horizontal-demo")
@click.option("--dir", "work_dir", type=click.Path(file_okay=False, path_type=Path),
              default=Path("pplink-horizontal-demo"), show_default=True, help="An empty folder to write into.")
@click.option("--people", type=click.IntRange(30, 1_000_000), default=3000, show_default=True,
              help="Synthetic people over the three areas.")
@click.option("--rounds", type=click.IntRange(1, 10_000), default=20, show_default=True, help="FedAvg rounds.")
@click.option("--noise-multiplier", type=click.FloatRange(min=0.0, min_open=True), default=2.0, show_default=True,
              help="z: noise on the sum of clipped updates is z times the clipping norm.")
@click.option("--clip", "clipping_norm", type=click.FloatRange(min=0.0, min_open=True), default=1.0,
              show_default=True, help="C: L2 bound on each agency's update per round.")
@click.option("--budget-epsilon", type=click.FloatRange(min=0.0, min_open=True, max=100.0), default=50.0,
              show_default=True, help="The demo agreement's total epsilon (zcdp, delta 1e-6).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seeds the data and the noise.")
@FORMAT_OPTION
def horizontal_demo_command(work_dir: Path, people: int, rounds: int, noise_multiplier: float, clipping_norm: float,
                            budget_epsilon: float, seed: int, output_format: str) -> None:
    """Horizontal DP FedAvg in one process: three areas of one service train a logistic regression.

    Flower's server-side fixed clipping adds Gaussian noise to each round's average; each round is
    a ledger entry. The privacy unit is one agency's update per round, not one person.
    """
    from pplink.lab.horizontal_demo import run_horizontal_demo

    summary = run_horizontal_demo(work_dir, people=people, rounds=rounds, noise_multiplier=noise_multiplier,
                                  clipping_norm=clipping_norm, budget_epsilon=budget_epsilon, seed=seed)
    if output_format == "json":
        data = asdict(summary)
        data.pop("lines")
        click.echo(json.dumps(_finite(data)))
        return
    for line in summary.lines:
        click.echo(line)


# `score suffstats-demo` is kept as another name of `score demo` (earlier docs name it).
from pplink.cli.score_suffstats import suffstats_demo_command  # noqa: E402

score_group.add_command(suffstats_demo_command)

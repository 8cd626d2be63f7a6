"""`pplink score demo` and `run_demo_scoring`: scoring after the demo's linkage, fairness figures shown."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from pplink.agreement import load_agreement
from pplink.audit.verify import verify_ledger
from pplink.cli.main import cli
from pplink.cli.score import run_demo_scoring
from pplink.errors import BudgetExceededError
from pplink.scoring.protocol import VerticalSettings


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("score-cli") / "demo"
    result = CliRunner().invoke(cli, ["demo", "--dir", str(work), "--people", "1500", "--seed", "5"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return work


def test_run_demo_scoring_after_linkage_prints_fairness_figures(demo_dir: Path) -> None:
    """The function the demo calls trains over the linkage output and reports error rates by group, side by side."""
    config = load_agreement(demo_dir / "agreement.toml")
    settings = VerticalSettings(steps=3, training_epsilon=1.0, evaluation_epsilon=0.5, score_edges=(-2.0, -1.0))
    summary = run_demo_scoring(demo_dir, config, settings=settings, holdout_seed=1)
    text = "\n".join(summary.lines)
    assert "error rates at the top 10% threshold by deprivation_quintile" in text
    assert "FPR" in text and "FNR" in text and "known FPR" in text
    assert "never a decision" in text and "never released" in text
    assert summary.run.steps_done == 3
    assert summary.scores_path is not None and summary.scores_path.exists()
    assert summary.scores_path.parent == demo_dir / "nodes" / "social_care"
    # Scores stay at the label owner: nothing under the coordinator's folder mentions them.
    assert not list((demo_dir / "coordinator").rglob("*scores*"))
    verdict = verify_ledger(config, demo_dir / "coordinator" / "ledger.jsonl")
    assert verdict.ok, verdict.findings


def test_score_demo_command_json_and_budget_refusal(demo_dir: Path) -> None:
    """The command renders JSON without NaN, and exits with the budget error's code when a run cannot fit."""
    runner = CliRunner()
    ok = runner.invoke(cli, ["score", "demo", "--dir", str(demo_dir), "--steps", "2", "--training-epsilon", "0.3",
                             "--evaluation-epsilon", "0.2", "--format", "json"])
    assert ok.exit_code == 0, ok.output
    payload = json.loads(ok.output)
    assert payload["steps_done"] == 2 and len(payload["ledger_entries"]) == 2
    assert "NaN" not in ok.output
    refused = runner.invoke(cli, ["score", "demo", "--dir", str(demo_dir), "--training-epsilon", "50"])
    assert refused.exit_code == BudgetExceededError("x").exit_code
    assert "PPL402" in refused.output and "refused before any release" in refused.output


@pytest.mark.slow
def test_suffstats_demo_writes_scores_and_a_model_card_and_audits(demo_dir: Path) -> None:
    """`pplink score suffstats-demo`: two training releases on the ledger, the own-feature model beside the
    federated one with a plain verdict, the model card and the scores at the label owner only."""
    result = CliRunner().invoke(cli, ["score", "suffstats-demo", "--dir", str(demo_dir), "--training-epsilon", "0.4",
                                      "--evaluation-epsilon", "0.2"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "own features" in result.output and ("Linking helped" in result.output
                                                 or "LINKING DID NOT MEASURABLY HELP" in result.output)
    owner = demo_dir / "nodes" / "social_care"
    card = (owner / "social_care.model-card.md").read_text(encoding="utf-8")
    assert "proxies for poverty" in card and "| group | false positive rate" in card
    assert (owner / "social_care.scores.csv").exists()
    assert not list((demo_dir / "coordinator").rglob("*model-card*"))
    config = load_agreement(demo_dir / "agreement.toml")
    assert verify_ledger(config, demo_dir / "coordinator" / "ledger.jsonl").ok

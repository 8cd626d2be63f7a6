"""`pplink score demo` and `run_suffstats_demo`: scoring after the demo's linkage, the own-feature model beside it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from pplink.agreement import load_agreement
from pplink.audit.verify import verify_ledger
from pplink.cli.main import cli
from pplink.errors import BudgetExceededError
from pplink.lab.scoring_run import demo_settings, run_suffstats_demo


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("score-cli") / "demo"
    result = CliRunner().invoke(cli, ["demo", "--dir", str(work), "--people", "1500", "--seed", "5"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return work


def test_run_suffstats_demo_after_linkage_shows_the_own_model_and_fairness_figures(demo_dir: Path) -> None:
    """The function the demo calls trains over the linkage output, shows the own-feature model beside the
    federated one, writes the scores and the model card (errors by group) at the label owner only."""
    config = load_agreement(demo_dir / "agreement.toml")
    summary = run_suffstats_demo(demo_dir, config, settings=demo_settings(config, training_epsilon=0.3,
                                                                          evaluation_epsilon=0.2))
    text = "\n".join(summary.lines)
    assert "own features" in text and "never released" in text
    assert "| group | false positive rate" in summary.card
    assert summary.scores_path is not None and summary.scores_path.exists()
    assert summary.scores_path.parent == demo_dir / "nodes" / "social_care"
    note = summary.scores_path.with_name("social_care.scores-evaluation.txt").read_text(encoding="utf-8")
    assert "never a decision" in note and "proxies for poverty" in note
    # Scores stay at the label owner: nothing under the coordinator's folder mentions them.
    assert not list((demo_dir / "coordinator").rglob("*scores*"))
    verdict = verify_ledger(config, demo_dir / "coordinator" / "ledger.jsonl")
    assert verdict.ok, verdict.findings


def test_score_demo_command_json_and_budget_refusal(demo_dir: Path) -> None:
    """The command renders JSON without NaN (two training charges, the verdict), and exits with the budget
    error's code when a run cannot fit."""
    runner = CliRunner()
    ok = runner.invoke(cli, ["score", "demo", "--dir", str(demo_dir), "--training-epsilon", "0.3",
                             "--evaluation-epsilon", "0.2", "--format", "json"])
    assert ok.exit_code == 0, ok.output
    payload = json.loads(ok.output)
    assert len(payload["ledger_entries"]) == 2 and payload["released"]["verdict"] in ("helped", "did not help")
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

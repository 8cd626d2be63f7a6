"""Launching a scoring run over Flower: the run config it submits and `coordinator runs` (no processes started)."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner
from flwr.common.config import flatten_dict, fuse_dicts

from coordinator.flower.launcher import APP_PYPROJECT, RunSettings, _run_config, run_task
from coordinator.run_records import RunPhase, RunRecord, RunStatus, runs_dir, timestamp, write_run_record
from pplink.cli.main import cli
from pplink.errors import UsageError
from pplink.scoring.suffstats import SuffStatsSettings
from tests.support import Setup


def _run(*args: str):  # type: ignore[no-untyped-def]
    return CliRunner(mix_stderr=False).invoke(cli, list(args))


def _declared() -> dict[str, object]:
    return flatten_dict(tomllib.loads(APP_PYPROJECT)["tool"]["flwr"]["app"]["config"])


def test_a_scoring_run_config_passes_the_superlinks_key_check(setup: Setup, tmp_path: Path) -> None:
    """Invariant: the SuperLink refuses run-config keys the app does not declare (flwr's own
    `fuse_dicts(check_keys=True)`); a score run's config passes it and carries the settings intact."""
    vertical = SuffStatsSettings(training_epsilon=1.0, evaluation_epsilon=0.5)
    settings = RunSettings(agreement=setup.agreement, agreement_path=setup.agreement_path, key_path=tmp_path / "c.key",
                           state_dir=tmp_path, task="score", scoring=vertical, match_run="ab" * 8)
    config = tomllib.loads(_run_config(settings, "0" * 16))
    fused = fuse_dicts(_declared(), config, check_keys=True)
    assert fused["task"] == "score" and fused["match-run"] == "ab" * 8
    assert SuffStatsSettings.model_validate_json(str(fused["scoring"])) == vertical
    with pytest.raises(ValueError, match="not present"):  # what an undeclared key would meet
        fuse_dicts(_declared(), {**config, "undeclared": 1}, check_keys=True)
    match = tomllib.loads(_run_config(RunSettings(agreement=setup.agreement, agreement_path=setup.agreement_path,
                                                  key_path=tmp_path / "c.key", state_dir=tmp_path), "0" * 16))
    assert (match["task"], match["scoring"], match["match-run"]) == ("match", "", "")


def test_scoring_settings_belong_to_a_score_run_only(setup: Setup, tmp_path: Path) -> None:
    """Invariant: scoring options on a match round, an unknown match round or bad settings are
    refused before anything is launched, with the usage exit code."""
    base = ("coordinator", "run", "--agreement", str(setup.agreement_path), "--dir", str(tmp_path))
    scales = tmp_path / "scales.json"
    scales.write_text("not json", encoding="utf-8")
    for extra in (("--training-epsilon", "1"), ("--match-run", "ab" * 8), ("--feature-scales", str(scales)),
                  ("--task", "score", "--feature-scales", str(scales)), ("--task", "score", "--match-run", "ab" * 8),
                  ("--task", "score", "--match-run", "../../etc"),
                  ("--task", "score", "--training-epsilon", "-1")):
        result = _run(*base, *extra)
        assert result.exit_code == UsageError("x").exit_code, (extra, result.stderr)
    with pytest.raises(UsageError):
        RunSettings(agreement=setup.agreement, agreement_path=setup.agreement_path, key_path=tmp_path / "c.key",
                    state_dir=tmp_path, scoring=SuffStatsSettings())


def test_runs_shows_scoring_runs_with_their_summary(tmp_path: Path) -> None:
    """Invariant: `coordinator runs` tells a scoring run from a match round (by the run config it
    was launched with) and shows the scoring summary, as text and JSON; a run without a kept
    config counts as a match round."""
    now = timestamp()
    for run_id, task in (("a" * 16, "match"), ("b" * 16, "score"), ("c" * 16, None)):
        write_run_record(tmp_path, RunRecord(run_id=run_id, agreement_id="f" * 64, status=RunStatus.FINISHED,
                                             phase=RunPhase.DONE, started=now, updated=now, entities=7))
        if task is not None:
            (runs_dir(tmp_path) / f"{run_id}.config.toml").write_text(f'task = "{task}"\n', encoding="utf-8")
    summary = {"scoring_run_id": "b" * 32, "match_round": "a" * 16, "protocol": "sufficient-statistics",
               "ledger_entries": [1, 2], "released_auc": 0.61, "released_own_auc": 0.58, "verdict": "did not help",
               "score_rows": 40, "messages": 24, "exchanges": 11}
    (tmp_path / "scoring").mkdir()
    (tmp_path / "scoring" / f"{'b' * 16}.json").write_text(json.dumps(summary), encoding="utf-8")
    assert [run_task(tmp_path, r) for r in ("a" * 16, "b" * 16, "c" * 16)] == ["match", "score", "match"]

    text = _run("coordinator", "runs", "--dir", str(tmp_path)).stdout
    line = next(row for row in text.splitlines() if row.startswith("b" * 16))
    assert " score " in line and "released AUC 0.61" in line
    listed = {r["run_id"]: r for r in json.loads(_run("coordinator", "runs", "--dir", str(tmp_path),
                                                          "--format", "json").stdout)}
    assert listed["b" * 16]["task"] == "score" and listed["b" * 16]["scoring"] == summary
    assert listed["a" * 16]["task"] == "match" and "scoring" not in listed["a" * 16]
    one = _run("coordinator", "runs", "--dir", str(tmp_path), "--run", "b" * 16)
    assert one.exit_code == 0 and "24 in 11 exchanges" in one.stdout

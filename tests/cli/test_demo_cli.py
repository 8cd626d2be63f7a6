"""`pplink demo` (the README's main job) runs end to end and reports what it did."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from pplink.cli.main import cli


def test_demo_runs_the_whole_round(tmp_path: Path) -> None:
    """Invariant: the demo links the synthetic agencies well, scores with the own-feature model beside
    the federated one and a verdict, and the auditor passes its ledger (read from --format json)."""
    work = tmp_path / "demo"
    result = CliRunner(mix_stderr=False).invoke(cli, ["demo", "--dir", str(work), "--people", "600",
                                                      "--format", "json"], catch_exceptions=False)
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["linkage"]["f1"] > 0.9
    assert summary["auditor"]["ok"] and summary["auditor"]["findings"] == 0
    released = summary["scoring"]["released"]
    assert released["verdict"] in ("helped", "did not help") and "own_auc" in released
    for agency in ("social_care", "school", "health", "police"):
        assert (work / "nodes" / agency / f"{agency}.entities.csv").exists()
    # The coordinator's folder holds no identifiers and no token maps.
    coordinator_files = [p.name for p in (work / "coordinator").rglob("*") if p.is_file()]
    assert not any(name.endswith((".tokens", ".secret", ".csv")) and "map" not in name for name in coordinator_files)


def test_demo_refuses_a_foreign_folder(tmp_path: Path) -> None:
    (tmp_path / "precious.txt").write_text("keep me")
    result = CliRunner().invoke(cli, ["demo", "--dir", str(tmp_path)])
    assert result.exit_code != 0 and "not a pplink demo folder" in result.output
    assert (tmp_path / "precious.txt").read_text() == "keep me"


def test_demo_text_says_whether_linking_helped(tmp_path: Path) -> None:
    """Invariant: the printed demo shows the own-feature model beside the federated one and says plainly
    whether linking helped."""
    result = CliRunner().invoke(cli, ["demo", "--dir", str(tmp_path / "demo"), "--people", "300"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    line = next(x for x in result.output.splitlines() if "released holdout AUC" in x)
    assert "own features" in line and ("Linking helped." in line or "LINKING DID NOT MEASURABLY HELP" in line)
    assert "auditor: PASS" in result.output

"""`pplink synth` and `pplink eval linkage` through click's CliRunner, as a user runs them."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from click.testing import CliRunner

from pplink.cli.main import cli
from pplink.errors import ConfigError, RecordValidationError, UsageError

AGENCIES = ("social_care", "school", "health", "police")


def _runner() -> CliRunner:
    return CliRunner(mix_stderr=False)


def _synth(out: Path, *extra: str) -> dict:  # type: ignore[type-arg]
    result = _runner().invoke(
        cli, ["synth", "--out", str(out), "--people", "400", "--seed", "3", "--format", "json", *extra]
    )
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


def _entities_from_truth(truth: Path, out: Path, split_agency: str | None = None) -> None:
    """Write <agency>.entities.csv predicting the truth (optionally every record of one agency alone)."""
    out.mkdir(exist_ok=True)
    by_agency: dict[str, list[tuple[str, str]]] = {}
    with truth.open(encoding="utf-8", newline="") as handle:
        for row in csv.DictReader(handle):
            entity = f"solo-{row['record_id']}" if row["agency"] == split_agency else f"E-{row['person']}"
            by_agency.setdefault(row["agency"], []).append((row["record_id"], entity))
    for agency, rows in by_agency.items():
        with (out / f"{agency}.entities.csv").open("w", encoding="utf-8", newline="") as handle:
            writer = csv.writer(handle, lineterminator="\n")
            writer.writerow(["record_id", "entity_id"])
            writer.writerows(rows)


def test_synth_writes_every_file_and_reports_them(tmp_path: Path) -> None:
    """Invariant: exit 0, one CSV per agency plus truth.csv, and the JSON summary matches the files."""
    summary = _synth(tmp_path / "data")
    assert set(summary["files"]) == set(AGENCIES)
    for agency, info in summary["files"].items():
        path = Path(info["path"])
        assert path == tmp_path / "data" / f"{agency}.csv"
        assert len(path.read_text(encoding="utf-8").splitlines()) == info["rows"] + 1
    assert Path(summary["truth"]).is_file()

    text = _runner().invoke(cli, ["synth", "--out", str(tmp_path / "text"), "--people", "50"])
    assert text.exit_code == 0 and "truth" in text.stdout and "holds the outcome" in text.stdout


def test_synth_refuses_a_repeated_agency_with_the_config_exit_code(tmp_path: Path) -> None:
    """Invariant: library refusals reach the user as one stderr line and the error's exit status."""
    result = _runner().invoke(cli, ["synth", "--out", str(tmp_path), "--agencies", "health,health"])
    assert result.exit_code == ConfigError("x").exit_code
    assert "PPL100" in result.stderr and "twice" in result.stderr
    assert not list(tmp_path.iterdir()), "nothing is written when the arguments are refused"


def test_eval_linkage_scores_a_perfect_prediction_as_one(tmp_path: Path) -> None:
    """Invariant: entities equal to the truth give F1 = 1 in JSON; the text table shows every pair."""
    summary = _synth(tmp_path / "data")
    _entities_from_truth(Path(summary["truth"]), tmp_path / "pred")
    result = _runner().invoke(
        cli, ["eval", "linkage", "--truth", summary["truth"], str(tmp_path / "pred"), "--format", "json"]
    )
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["overall"]["f1"] == 1.0
    assert report["clusters"]["exact_share"] == 1.0
    assert len(report["by_agency_pair"]) == 6
    assert report["records"]["missing_from_prediction"] == 0

    text = _runner().invoke(cli, ["eval", "linkage", "--truth", summary["truth"], str(tmp_path / "pred")])
    assert text.exit_code == 0
    assert "overall" in text.stdout and "health ~ police" in text.stdout and "reconstructed exactly" in text.stdout


def test_eval_linkage_takes_files_and_reports_missing_ones(tmp_path: Path) -> None:
    """Invariant: named files are scored; agencies not given are counted as missing, not scored."""
    summary = _synth(tmp_path / "data")
    _entities_from_truth(Path(summary["truth"]), tmp_path / "pred", split_agency="school")
    files = [str(tmp_path / "pred" / f"{a}.entities.csv") for a in ("social_care", "school", "health")]
    result = _runner().invoke(cli, ["eval", "linkage", "--truth", summary["truth"], *files, "--format", "json"])
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["records"]["missing_by_agency"] == {"police": summary["files"]["police"]["rows"]}
    assert report["overall"]["precision"] == 1.0
    assert report["overall"]["recall"] < 1.0  # school was split off


def test_eval_linkage_names_file_and_row_of_a_bad_csv(tmp_path: Path) -> None:
    """Invariant: a malformed entities file fails with the validation exit code, naming file and row."""
    summary = _synth(tmp_path / "data")
    bad = tmp_path / "health.entities.csv"
    bad.write_text("record_id,entity_id\nHL1,E1\n,E2\n", encoding="utf-8")
    result = _runner().invoke(cli, ["eval", "linkage", "--truth", summary["truth"], str(bad)])
    assert result.exit_code == RecordValidationError("x").exit_code
    assert str(bad) in result.stderr and "row 3" in result.stderr and "record_id" in result.stderr


def test_eval_linkage_shows_the_rounds_threshold_and_estimates_next_to_the_measured(tmp_path: Path) -> None:
    """Invariant: with --manifest, the round's threshold, method and estimates are reported beside
    the measured figures (JSON under "round"); a file without a threshold is refused as a usage error."""
    summary = _synth(tmp_path / "data")
    _entities_from_truth(Path(summary["truth"]), tmp_path / "pred")
    manifest = tmp_path / "manifest.json"
    calibration = {"method": "auto", "threshold": 0.63, "precision": 0.991, "recall": 0.972, "missed": 12.0}
    manifest.write_text(json.dumps({"threshold": 0.63, "calibration": calibration}), encoding="utf-8")
    args = ["eval", "linkage", "--truth", summary["truth"], str(tmp_path / "pred"), "--manifest", str(manifest)]
    result = _runner().invoke(cli, [*args, "--format", "json"])
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["round"] == {"threshold": 0.63, "calibration": calibration}
    text = _runner().invoke(cli, args)
    assert "Round threshold 0.63 (auto)" in text.stdout and "precision 0.9910 (measured 1.0000)" in text.stdout
    manifest.write_text("{}", encoding="utf-8")
    refused = _runner().invoke(cli, args)
    assert refused.exit_code == UsageError("x").exit_code and "no threshold" in refused.stderr


def test_eval_linkage_shows_the_published_dp_estimates_beside_the_manifest(tmp_path: Path) -> None:
    """Invariant: the estimates shown for a round are the published (DP) ones from calibration.json beside
    its manifest, with their intervals, and the manifest's own calibration carries no estimate."""
    summary = _synth(tmp_path / "data")
    _entities_from_truth(Path(summary["truth"]), tmp_path / "pred")
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({"threshold": 0.63, "round_id": "r1",
                                    "calibration": {"method": "auto", "threshold": 0.63}}), encoding="utf-8")
    published = {"round_id": "r1", "method": "auto", "threshold": 0.63, "dp": {"query": "link-scores", "ledger_seq": 1},
                 "precision": 0.987, "precision_interval": [0.975, 0.995], "recall": 0.964,
                 "recall_interval": [0.95, 0.98], "missed": 40.0}
    (tmp_path / "calibration.json").write_text(json.dumps(published), encoding="utf-8")
    args = ["eval", "linkage", "--truth", summary["truth"], str(tmp_path / "pred"), "--manifest", str(manifest)]
    result = _runner().invoke(cli, [*args, "--format", "json"])
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["round"]["published"] == published
    text = _runner().invoke(cli, args).stdout
    assert "published estimates (DP, link-scores ledger entry 1)" in text
    assert "precision 0.9870 [0.9750, 0.9950] (measured 1.0000)" in text
    (tmp_path / "calibration.json").write_text(json.dumps({**published, "round_id": "r0"}), encoding="utf-8")
    stale = _runner().invoke(cli, [*args, "--format", "json"])
    assert "published" not in json.loads(stale.stdout)["round"]  # an earlier round's file is not shown

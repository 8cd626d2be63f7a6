"""`pplink demo` (the README's main job) runs end to end and reports what it did."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from pplink.cli.main import cli


def test_demo_runs_the_whole_round(tmp_path: Path) -> None:
    work = tmp_path / "demo"
    result = CliRunner().invoke(cli, ["demo", "--dir", str(work), "--people", "600"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    out = result.output
    assert "linkage quality against the synthetic truth" in out
    f1 = float(out.split("F1 ")[1].split()[0])
    assert f1 > 0.9
    assert "auditor: PASS" in out
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

"""Every command in the role guides runs, in order, as written: the guides cannot rot.

Each ```sh block line of each guide in docs/guides/ is run with bash in a fresh folder, with this
environment's `pplink` first on PATH. (```text blocks are prose, such as the install line, which
the README's own commands cover.)
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

GUIDES = sorted((Path(__file__).resolve().parents[2] / "docs" / "guides").glob("*.md"))


def _commands(path: Path) -> list[str]:
    blocks = re.findall(r"```sh\n(.*?)```", path.read_text(encoding="utf-8"), flags=re.S)
    return [line for block in blocks for line in block.splitlines() if line.strip() and not line.startswith("#")]


def test_every_guide_has_commands() -> None:
    assert {g.stem for g in GUIDES} == {"agency", "coordinator", "auditor", "information-governance"}
    assert all(_commands(g) for g in GUIDES)


@pytest.mark.parametrize("guide", GUIDES, ids=lambda p: p.stem)
def test_guide_commands_run(guide: Path, tmp_path: Path) -> None:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    for command in _commands(guide):
        assert command.startswith("pplink "), f"{guide.name}: a guide command that is not pplink: {command}"
        done = subprocess.run(["bash", "-c", command], cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 0, f"{guide.name}: `{command}` failed:\n{done.stdout}\n{done.stderr}"


def test_example_script_runs(tmp_path: Path) -> None:
    """examples/file_based_round.sh runs end to end (set -e: any failing step fails it)."""
    script = Path(__file__).resolve().parents[2] / "examples" / "file_based_round.sh"
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    done = subprocess.run(["bash", str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "PASS" in done.stdout and (tmp_path / "report.html").is_file()
    assert all((tmp_path / "nodes" / a / f"{a}.entities.csv").is_file() for a in ("social_care", "school", "health"))

"""The code base passes ruff with the project's rules (``[tool.ruff]`` in pyproject.toml)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ("pplink", "nodes", "coordinator", "benchmarks", "tests", "examples")


def test_ruff_check_passes() -> None:
    """Invariant: the code base passes the project's ruff rules, including Google-style docstrings.

    pycodestyle, pyflakes, import order, bugbear and pyupgrade hold everywhere; pydocstyle (Google
    convention) holds for the packages and benchmarks, as shared/STYLE.md section 8 asks (tests are
    exempt from it in pyproject.toml).
    """
    done = subprocess.run([sys.executable, "-m", "ruff", "check", *FOLDERS], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"ruff check found problems:\n{done.stdout}{done.stderr}"

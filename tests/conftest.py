"""Shared fixtures (helpers live in tests/support.py so test modules can import them)."""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support import Setup, make_setup, person


@pytest.fixture
def setup(tmp_path: Path) -> Setup:
    """A fresh agreement with keys for four agencies, a coordinator and an auditor, and a secret."""
    return make_setup(tmp_path)


@pytest.fixture
def people() -> Callable[..., list[dict[str, str]]]:
    """Factory: ``people(n, seed)`` gives n seeded synthetic rows of the default columns."""

    def make(n: int, seed: int = 727) -> list[dict[str, str]]:
        rng = random.Random(seed)
        return [person(rng, i) for i in range(n)]

    return make

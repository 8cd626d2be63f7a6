"""Issue #14, part 3: one charge path. Only the release engine appends to the ledger.

Releases, scoring steps and horizontal FedAvg rounds all spend budget through
``coordinator.release.engine.charge``: the key checked once, the entry checked against the query
table, the budget checked under the ledger's lock, the entry appended, and only then shown. This
is checked on the source (any other module opening the ledger for writing would be a second path)
and on behaviour (each kind of spend reaches ``charge``).
"""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest

import coordinator.release.engine as engine
from coordinator.flower import horizontal
from coordinator.release.queries import QueryVector
from coordinator.scoring import budget, suffstats
from pplink.accounting import Mechanism, QueryKind, Sensitivity
from pplink.ledger import ReleaseQuery
from tests.coordinator.test_audit_forgeries import make_agreement, make_state

ROOT = Path(__file__).resolve().parents[2]
#: The writer itself and its one caller.
ALLOWED = {"pplink/ledger_writer.py", "coordinator/release/engine.py"}


def test_only_the_engine_opens_the_ledger_for_appending() -> None:
    """No module but the engine imports the ledger writer (tests and the writer itself aside)."""
    offenders = []
    for package in ("pplink", "coordinator", "nodes"):
        for path in sorted((ROOT / package).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            if rel in ALLOWED:
                continue
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.ImportFrom) and node.module == "pplink.ledger_writer":
                    offenders.append(f"{rel}:{node.lineno}")
                elif isinstance(node, ast.ImportFrom) and any(a.name in {"open_ledger", "LedgerWriter"}
                                                              for a in node.names):
                    offenders.append(f"{rel}:{node.lineno}")
    assert offenders == []


def test_scoring_steps_and_fedavg_rounds_are_charged_by_the_engine() -> None:
    """Scoring's release charges and horizontal's round recorder use the engine's own ``charge``."""
    assert suffstats.charge is engine.charge and horizontal.charge is engine.charge
    assert budget.spent_so_far is engine.spent_so_far and horizontal.spent_so_far is engine.spent_so_far


def test_every_release_goes_through_charge(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A linkage release, an evaluation release and a residuals charge each call ``charge`` exactly once."""
    calls: list[QueryKind] = []
    real = engine.charge

    def counting(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(args[3].kind)
        return real(*args, **kwargs)

    monkeypatch.setattr(engine, "charge", counting)
    agreement, key = make_agreement()
    state = make_state(agreement)
    ledger = tmp_path / "l.jsonl"
    engine.release_query(agreement, state, ledger, key, ReleaseQuery(kind="overlap"), epsilon=0.5)
    engine.release_vector(agreement, ledger, key, ReleaseQuery(kind=QueryKind.SCORE_HISTOGRAM),
                          QueryVector((("b", "positive"), ("b", "negative")), np.array([5, 5]),
                                      Sensitivity(l1=1, l2=1)), epsilon=0.5)
    subject = "residuals: run 0123456789ab, step 1 of 1, 300 entities, unit 1/1024"
    engine.charge(agreement, ledger, key, ReleaseQuery(kind=QueryKind.RESIDUALS, subject=subject),
                  mechanism=Mechanism.LAPLACE, sensitivity=1024, scale=4096.0)
    assert calls == [QueryKind.OVERLAP, QueryKind.SCORE_HISTOGRAM, QueryKind.RESIDUALS]

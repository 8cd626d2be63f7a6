"""The coordinator side of vertical scoring: ledger charges, budget stops, released evaluation, accuracy."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from coordinator.release.engine import release_vector
from coordinator.release.queries import MISSING, QueryVector
from coordinator.scoring.vertical import (
    ENTITY_LIST_QUANTUM,
    charge_step,
    check_run_budget,
    entity_layout,
    evaluate_vertical,
    plan_vertical_run,
    step_loss,
    train_vertical,
)
from nodes.scoring.vertical import LabelOwnerNode
from pplink.accounting import Mechanism, QueryKind, Sensitivity, entry_loss, rho_for_epsilon
from pplink.audit.verify import verify_ledger
from pplink.cli.score import build_scoring_nodes, truth_joined_inputs
from pplink.errors import BudgetExceededError, TransportError
from pplink.lab.synth import generate_synth
from pplink.ledger import ReleaseQuery, read_ledger
from pplink.scoring.protocol import MISSING_GROUP, OUTCOME_KEYS, PresenceRequest, ThresholdRequest, VerticalSettings
from tests.support import Setup, make_setup

RUN_ID = "0f" * 16


def _setup(root: Path, epsilon: float = 4.0, accounting: str = "zcdp") -> Setup:
    return make_setup(root, edit=lambda text: text.replace("epsilon = 4.0", f"epsilon = {epsilon}").replace(
        'accounting = "zcdp"', f'accounting = "{accounting}"'))


def _joined(setup: Setup, people: int = 800, seed: int = 11):  # type: ignore[no-untyped-def]
    state, inputs = truth_joined_inputs(setup.agreement, generate_synth(people, seed=seed), seed=1)
    nodes = build_scoring_nodes(setup.agreement, inputs, {a: setup.key(a) for a in inputs}, holdout_seed=2)
    return state, nodes


def test_every_step_is_charged_on_the_ledger_before_the_label_owner_draws_noise(tmp_path: Path) -> None:
    """One entry per step: sensitivity = residual unit, the plan's scale, OpenDP's loss; receipts match;
    audit passes."""
    setup = _setup(tmp_path)
    state, nodes = _joined(setup)
    ledger = tmp_path / "ledger.jsonl"
    settings = VerticalSettings(steps=3, training_epsilon=1.0, evaluation_epsilon=0.5)
    run = train_vertical(setup.agreement, state, ledger, setup.key("coordinator"), nodes, settings, run_id=RUN_ID)
    entries = read_ledger(ledger, setup.agreement)
    assert run.steps_done == 3 and len(entries) == 3 and run.stop_reason == "completed 3 steps"
    loss = step_loss(run.plan, setup.agreement.budget.delta)
    for step, entry in enumerate(entries):
        assert entry.query.subject.startswith("residuals: ") and f"step {step + 1} of 3" in entry.query.subject
        assert entry.cells == ()
        assert (entry.mechanism, entry.sensitivity, entry.scale) == (Mechanism.GAUSSIAN, 1024, run.plan.residual_scale)
        assert entry.loss == loss == entry_loss(Mechanism.GAUSSIAN, 1024, run.plan.residual_scale, 1e-6)
    # The three steps together spend exactly the training allotment.
    assert entries[-1].cumulative.epsilon == pytest.approx(1.0, rel=1e-9)
    owner = nodes["social_care"]
    assert isinstance(owner, LabelOwnerNode)
    assert owner.receipts == [c.entry_hash for c in run.charges]
    assert run.messages_per_step == len(state.parties) + 1
    assert verify_ledger(setup.agreement, ledger).ok


def test_training_stops_when_the_budget_would_be_exceeded_before_any_noise(tmp_path: Path) -> None:
    """A step the budget cannot pay for is refused before noise; training stops, nothing else is appended."""
    setup = _setup(tmp_path, epsilon=4.0)
    state, nodes = _joined(setup)
    ledger = tmp_path / "ledger.jsonl"
    settings = VerticalSettings(steps=5, training_epsilon=2.0, evaluation_epsilon=0.5)
    key = setup.key("coordinator")

    step_rho = rho_for_epsilon(2.0, 1e-6) / 5
    # After step 2, another release leaves room for half a step (rhos add under zCDP).
    other_rho = rho_for_epsilon(4.0, 1e-6) - 2.5 * step_rho

    def spend_elsewhere(step: int, seconds: float) -> None:
        if step == 1:
            release_vector(setup.agreement, ledger, key, ReleaseQuery(kind=QueryKind.OVERLAP),
                           QueryVector((("x",),), np.array([100]), Sensitivity(l1=1, l2=1)), rho=other_rho)

    run = train_vertical(setup.agreement, state, ledger, key, nodes, settings, run_id=RUN_ID, on_step=spend_elsewhere)
    assert run.steps_done == 2 and run.stop_reason.startswith("stopped before step 3 of 5")
    entries = read_ledger(ledger, setup.agreement)
    assert len(entries) == 3  # two steps and the other release; the refused step left no entry
    assert len(nodes["social_care"].receipts) == 2  # type: ignore[attr-defined]
    assert verify_ledger(setup.agreement, ledger).ok


def test_a_run_that_cannot_fit_is_refused_up_front(tmp_path: Path) -> None:
    """Training plus evaluation allotments past the budget left: refused before any release."""
    setup = _setup(tmp_path, epsilon=1.0)
    state, nodes = _joined(setup)
    ledger = tmp_path / "ledger.jsonl"
    with pytest.raises(BudgetExceededError, match="refused before any release"):
        train_vertical(setup.agreement, state, ledger, setup.key("coordinator"), nodes,
                       VerticalSettings(training_epsilon=0.9, evaluation_epsilon=0.5))
    assert not ledger.exists() or read_ledger(ledger, setup.agreement) == []
    assert check_run_budget(setup.agreement, ledger, VerticalSettings(training_epsilon=0.5, evaluation_epsilon=0.3))


def test_charge_step_refuses_past_the_runs_training_allotment(tmp_path: Path) -> None:
    """The run's own allotment caps its steps even when the agreement's budget has room."""
    setup = _setup(tmp_path, epsilon=10.0)
    state, _ = _joined(setup, people=200)
    plan = plan_vertical_run(setup.agreement, state, VerticalSettings(steps=2, training_epsilon=1.0))
    ledger = tmp_path / "ledger.jsonl"
    key = setup.key("coordinator")
    loss = step_loss(plan, 1e-6)
    charge_step(setup.agreement, ledger, key, plan, 0)
    charge_step(setup.agreement, ledger, key, plan, 1, spent_in_run=(loss,))
    with pytest.raises(BudgetExceededError, match="training allotment"):
        charge_step(setup.agreement, ledger, key, plan, 2, spent_in_run=(loss, loss))
    assert len(read_ledger(ledger, setup.agreement)) == 2


def test_the_entity_list_hides_linkage_order_and_exact_size(tmp_path: Path) -> None:
    """The plan's list is sorted random pseudonyms padded with dummies: no cluster order, no exact count."""
    setup = _setup(tmp_path)
    state, _ = _joined(setup, people=300)
    plan = plan_vertical_run(setup.agreement, state, VerticalSettings())
    assert plan.n_entities % ENTITY_LIST_QUANTUM == 0 and plan.n_entities >= state.n_clusters
    assert list(plan.entity_ids) == sorted(plan.entity_ids) and len(set(plan.entity_ids)) == plan.n_entities
    layout = entity_layout(plan, state)
    hexes = state.entity_hex()
    assert sorted(layout[layout >= 0].tolist()) == list(range(state.n_clusters))
    assert all(plan.entity_ids[p] == hexes[c] for p, c in enumerate(layout.tolist()) if c >= 0)


def test_pure_accounting_uses_laplace_noise_and_verifies(tmp_path: Path) -> None:
    """Under pure accounting each step is a Laplace release whose epsilons add to the allotment."""
    setup = _setup(tmp_path, epsilon=5.0, accounting="pure")
    state, nodes = _joined(setup, people=300)
    ledger = tmp_path / "ledger.jsonl"
    run = train_vertical(setup.agreement, state, ledger, setup.key("coordinator"), nodes,
                         VerticalSettings(steps=2, training_epsilon=2.0, evaluation_epsilon=1.0))
    assert run.plan.mechanism is Mechanism.LAPLACE and run.plan.residual_scale == pytest.approx(1024)
    assert run.loss.epsilon == pytest.approx(2.0)
    assert verify_ledger(setup.agreement, ledger).ok


def test_evaluation_releases_auc_and_error_rates_by_subgroup_and_by_agency(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three ledgered releases; masked per-agency sums equal the true counts; fairness figures by group."""
    import coordinator.scoring.vertical as scoring

    captured: dict[str, object] = {}
    real = scoring.presence_counts

    def capture(plan, state, reply, answers):  # type: ignore[no-untyped-def]
        captured.update(plan=plan, state=state, reply=reply, answers=answers)
        captured["vector"] = vector = real(plan, state, reply, answers)
        return vector

    monkeypatch.setattr(scoring, "presence_counts", capture)
    setup = _setup(tmp_path, epsilon=20.0)
    state, nodes = _joined(setup, people=3000)
    ledger = tmp_path / "ledger.jsonl"
    key = setup.key("coordinator")
    # Coarse public bins, so that a 3,000-person pilot's holdout fills them above the minimum cell size.
    settings = VerticalSettings(steps=4, training_epsilon=8.0, evaluation_epsilon=4.0, score_edges=(-2.5, -1.5, -0.5))
    run = train_vertical(setup.agreement, state, ledger, key, nodes, settings, run_id=RUN_ID)
    evaluation = evaluate_vertical(setup.agreement, state, ledger, key, nodes, run)
    entries = read_ledger(ledger, setup.agreement)
    subjects = [e.query.subject for e in entries[run.steps_done:]]
    assert len(subjects) == 3
    assert subjects[0].startswith("score bin x outcome") and subjects[2].startswith("errors by agency presence")
    assert entries[-1].sensitivity == 2  # 3 other agencies: L2 sqrt(3), rounded up
    assert set(evaluation.subgroup_rates) == {"1", "2", "3", "4", "5", MISSING}
    assert set(evaluation.presence_rates) == {(a, w) for a in ("school", "health", "police")
                                              for w in ("known", "not known")}
    assert 0.0 <= evaluation.auc <= 1.0 and evaluation.threshold in settings.score_edges
    assert verify_ledger(setup.agreement, ledger).ok

    # The masked two-party sums gave exactly the counts one would get with everything in one place.
    owner = nodes["social_care"]
    assert isinstance(owner, LabelOwnerNode)
    codes = owner._outcomes(evaluation.threshold)
    expected = []
    for agency in ("school", "health", "police"):
        held = nodes[agency]._held  # which entities of the run's list the agency holds
        for rows in (held, ~held):
            expected += np.bincount(codes[rows & (codes >= 0)], minlength=4).tolist()
    vector = captured["vector"]
    assert isinstance(vector, QueryVector)
    assert vector.counts.tolist() == expected
    assert vector.keys[:4] == tuple(("school", "known", o) for o in OUTCOME_KEYS)
    # One altered mask sum and the sums no longer cancel: refused, not released.
    answers = dict(captured["answers"])  # type: ignore[call-overload]
    police = answers["police"]
    answers["police"] = type(police)(run_id=RUN_ID, agency_id="police", held=police.held + np.uint64(1 << 40),
                                     not_held=police.not_held)
    with pytest.raises(TransportError, match="do not cancel"):
        real(run.plan, state, captured["reply"], answers)  # type: ignore[arg-type]
    # The label owner answers the threshold once: a second answer would reuse its masks.
    with pytest.raises(TransportError, match="already answered"):
        owner.threshold(ThresholdRequest(run_id=RUN_ID, threshold=0.0, presence_agencies=("school",)))
    assert nodes["school"].presence(PresenceRequest(run_id=RUN_ID)).agency_id == "school"


def test_missing_group_matches_the_release_engine() -> None:
    """The label owner's key for people without a subgroup value is the release engine's public key."""
    assert MISSING_GROUP == MISSING


@pytest.mark.slow
def test_auc_is_within_two_points_of_centralised_logistic_regression(tmp_path: Path) -> None:
    """With a loose budget the federated model's holdout AUC is within 0.02 of scikit-learn's on the pooled data.

    Same people, same features (standardised per agency, "known to" indicators, intercept), same
    holdout; the pooled fit is what a single database of everything would give.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    setup = _setup(tmp_path, epsilon=100.0)
    state, nodes = _joined(setup, people=20_000, seed=3)
    ledger = tmp_path / "ledger.jsonl"
    settings = VerticalSettings(steps=40, learning_rate=8.0, training_epsilon=90.0, evaluation_epsilon=5.0)
    run = train_vertical(setup.agreement, state, ledger, setup.key("coordinator"), nodes, settings)
    evaluate_vertical(setup.agreement, state, ledger, setup.key("coordinator"), nodes, run)
    owner = nodes["social_care"]
    assert isinstance(owner, LabelOwnerNode)
    federated = owner.own_view(0.1).auc
    x = np.hstack([nodes[a]._x for a in run.plan.parties])
    y, train, holdout = owner._labels, owner._train, owner._holdout
    pooled = LogisticRegression(max_iter=2000).fit(x[train], y[train])
    central = roc_auc_score(y[holdout], pooled.decision_function(x[holdout]))
    assert federated > central - 0.02, (federated, central)


def test_benchmark_runs_at_tiny_size() -> None:
    """benchmarks/scoring.py's run reports time and messages per step (K shares + 1 residual request)."""
    import importlib.util

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "scoring.py"
    spec = importlib.util.spec_from_file_location("pplink_benchmark_scoring", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    record = module.run_once(400, 3, steps=2, central=False)
    assert record["messages_per_step"] == 4 and record["agencies"] == 3
    assert record["seconds_per_step"] > 0 and record["entities"] % ENTITY_LIST_QUANTUM == 0

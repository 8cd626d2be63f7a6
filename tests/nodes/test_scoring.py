"""The agency side of vertical scoring: inputs, masked shares, charged residual noise, refusals."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest

from nodes.scoring.data import build_agency_data, load_agency_data
from nodes.scoring.vertical import LabelOwnerNode, ScoringNode, standardise, write_scores
from pplink.accounting import Mechanism
from pplink.cli.score import build_scoring_nodes, truth_joined_inputs
from pplink.errors import LinkageMapError, RecordValidationError, ReleaseError, SignatureError, TransportError
from pplink.lab.synth import generate_synth
from pplink.scoring.protocol import (
    MISSING_GROUP,
    ResidualRequest,
    RunPlan,
    ShareRequest,
    StepCharge,
    VerticalSettings,
)
from pplink.scoring.secure_sum import decode_fixed, sum_shares, unblind
from tests.support import Setup, make_setup

RUN_ID = "00112233445566778899aabbccddeeff"
HEADER = ("record_id", "opt_out", "deprivation_quintile", "referrals", "prior_assessments", "outcome")
SENTINEL = "Zebedee-sentinel"


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Setup:
    return make_setup(tmp_path_factory.mktemp("scoring-nodes"))


def _entity(i: int) -> str:
    return f"{i:032x}"


def test_inputs_aggregate_rows_per_entity_and_count_what_was_left_out(setup: Setup) -> None:
    """Several rows of one entity: mean features, highest label, first subgroup; unlinked rows counted."""
    rows = [
        ("R1", "N", "2", "4", "1", "0"),
        ("R2", "N", "", "2", "", "1"),   # same entity as R1; an empty feature is counted, not dropped silently
        ("R3", "Y", "5", "9", "9", "1"),   # opted out: no entity id
        ("R4", "N", "", "1", "0", ""),   # no label
    ]
    entity_of = {"R1": _entity(1), "R2": _entity(1), "R4": _entity(4)}
    data = build_agency_data(setup.agreement, "social_care", HEADER, rows, entity_of)
    assert data.entity_ids == (_entity(1), _entity(4))
    assert data.features.tolist() == [[3.0, 1.0], [1.0, 0.0]]
    assert data.labels is not None and data.labels.tolist() == [1, -1]
    assert data.subgroups == ("2", MISSING_GROUP)
    assert data.record_ids == (("R1", "R2"), ("R4",))
    assert (data.rows_used, data.rows_without_entity, data.missing_values) == (3, 1, 1)


def test_bad_inputs_name_row_and_field_never_the_value(setup: Setup) -> None:
    """Every bad cell is listed by file, row (header = row 1) and field; the value is never echoed."""
    rows = [("R1", "N", "2", SENTINEL, "0", "0"), ("R2", "N", "9", "1", "0", "2")]
    entity_of = {"R1": _entity(1), "R2": _entity(2)}
    with pytest.raises(RecordValidationError) as err:
        build_agency_data(setup.agreement, "social_care", HEADER, rows, entity_of, source="sc.csv")
    message = str(err.value)
    assert "sc.csv: row 2, field referrals" in message
    assert "row 3, field outcome" in message and "row 3, field deprivation_quintile" in message
    assert SENTINEL not in message
    with pytest.raises(RecordValidationError, match="missing column"):
        build_agency_data(setup.agreement, "social_care", HEADER[:-1], [r[:-1] for r in rows], entity_of)
    with pytest.raises(LinkageMapError, match="1 record id"):
        build_agency_data(setup.agreement, "social_care", HEADER, [("R1", "N", "2", "1", "0", "0")],
                          {"R1": _entity(1), "R9": _entity(9)})


def test_load_agency_data_reads_the_node_files(setup: Setup, tmp_path: Path) -> None:
    """The records CSV and the resolve output join on record id; a malformed entities file is refused."""
    records = tmp_path / "school.csv"
    with open(records, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(("record_id", "attendance_pct", "exclusions"))
        writer.writerows([("S1", "95.5", "0"), ("S2", "80.0", "2")])
    entities = tmp_path / "school.entities.csv"
    entities.write_text(f"record_id,entity_id\nS1,{_entity(7)}\nS2,{_entity(3)}\n", encoding="utf-8")
    data = load_agency_data(setup.agreement, "school", records, entities)
    assert data.entity_ids == (_entity(3), _entity(7))
    assert data.features.tolist() == [[80.0, 2.0], [95.5, 0.0]]
    assert data.labels is None
    entities.write_text("record,entity\n", encoding="utf-8")
    with pytest.raises(LinkageMapError, match="row 1"):
        load_agency_data(setup.agreement, "school", records, entities)


def test_standardise_centres_scales_clips_and_imputes() -> None:
    """Columns get mean 0 and sd 1 over the agency's entities; missing cells 0; extremes clipped."""
    x = np.array([[1.0, 5.0], [3.0, 5.0], [np.nan, 5.0], [2.0, 5.0]])
    z, imputed = standardise(x, clip=1.0)
    assert imputed == 1
    assert z[:, 0].tolist() == [-1.0, 1.0, 0.0, 0.0]
    assert z[:, 1].tolist() == [0.0] * 4  # no spread: no information, all zero


@pytest.fixture(scope="module")
def joined(setup: Setup):  # type: ignore[no-untyped-def]
    data = generate_synth(600, seed=11)
    state, inputs = truth_joined_inputs(setup.agreement, data, seed=1)
    return state, inputs


def _joined_nodes(setup: Setup, joined, settings: VerticalSettings | None = None):  # type: ignore[no-untyped-def]
    state, inputs = joined
    keys = {a: setup.key(a) for a in inputs}
    nodes = build_scoring_nodes(setup.agreement, inputs, keys, holdout_seed=3)
    plan = RunPlan(run_id=RUN_ID, agreement_id=setup.agreement.agreement_id, label_owner="social_care",
                   parties=tuple(inputs), entity_ids=tuple(state.entity_hex()), settings=settings or VerticalSettings(),
                   mechanism=Mechanism.GAUSSIAN, residual_scale=4096.0)
    announcements = tuple(nodes[a].announce(plan) for a in plan.parties)
    for a in plan.parties:
        nodes[a].join(plan, announcements)
    return plan, nodes


def test_residuals_carry_the_charged_noise_scale_for_every_entity(setup: Setup, joined) -> None:  # type: ignore[no-untyped-def]
    """Noise has the charged scale; non-training entities get pure noise, so nobody learns the training set."""
    plan, nodes = _joined_nodes(setup, joined)
    owner = nodes["social_care"]
    assert isinstance(owner, LabelOwnerNode)
    total = sum_shares([nodes[a].share(ShareRequest(run_id=RUN_ID, step=0)).share for a in plan.parties])
    charge = StepCharge(step=0, seq=1, entry_hash="0" * 64, mechanism=Mechanism.GAUSSIAN, sensitivity=1024,
                        scale=4096.0)
    noisy = np.concatenate([
        owner.residuals(ResidualRequest(run_id=RUN_ID, step=0, blinded_sum=total, charge=charge)).noisy_residuals
        for _ in range(8)
    ])
    assert noisy.shape == (8 * plan.n_entities,) and noisy.dtype == np.int64
    not_training = np.tile(~owner._train, 8)
    pure = noisy[not_training]
    # sd of a discrete Gaussian with scale 4096 is 4096 to many digits; 5% covers sampling error here.
    assert abs(pure.std() / 4096.0 - 1.0) < 0.05
    assert abs(pure.mean()) < 5 * 4096.0 / math.sqrt(pure.size)
    # On training entities the noise is centred on the clipped residual (all weights 0: sigmoid(0) - y).
    y = np.tile(owner._labels, 8)[~not_training]
    centred = noisy[~not_training] - np.rint((0.5 - y) * 1024)
    assert abs(centred.mean()) < 5 * 4096.0 / math.sqrt(centred.size)
    assert owner.receipts == ["0" * 64] * 8


def test_label_owner_refuses_a_receipt_that_does_not_match_the_plan(setup: Setup, joined) -> None:  # type: ignore[no-untyped-def]
    """Less noise than the plan (or another mechanism or step) than the ledger recorded is refused."""
    plan, nodes = _joined_nodes(setup, joined)
    owner = nodes["social_care"]
    total = sum_shares([nodes[a].share(ShareRequest(run_id=RUN_ID, step=0)).share for a in plan.parties])
    for charge in (
        StepCharge(step=0, seq=1, entry_hash="0" * 64, mechanism=Mechanism.GAUSSIAN, sensitivity=1024, scale=40.0),
        StepCharge(step=0, seq=1, entry_hash="0" * 64, mechanism=Mechanism.LAPLACE, sensitivity=1024, scale=4096.0),
        StepCharge(step=1, seq=1, entry_hash="0" * 64, mechanism=Mechanism.GAUSSIAN, sensitivity=1024, scale=4096.0),
    ):
        with pytest.raises(ReleaseError):
            owner.residuals(ResidualRequest(run_id=RUN_ID, step=0, blinded_sum=total, charge=charge))  # type: ignore[attr-defined]


def test_shares_sum_to_the_model_logits_only_for_the_label_owner(setup: Setup, joined) -> None:  # type: ignore[no-untyped-def]
    """Without the blind the total is noise; the label owner's unblinding gives the sum of partial logits."""
    settings = VerticalSettings(steps=2)
    plan, nodes = _joined_nodes(setup, joined, settings)
    owner = nodes["social_care"]
    residuals = np.random.default_rng(5).integers(-2000, 2000, plan.n_entities)
    replies = [nodes[a].share(ShareRequest(run_id=RUN_ID, step=1, residual_step=0, residuals=residuals))
               for a in plan.parties]
    partial = sum(nodes[a]._x @ nodes[a]._weights for a in plan.parties)
    logits = decode_fixed(unblind(sum_shares([r.share for r in replies]), owner._blind, step=1, purpose="logits"))
    assert np.allclose(logits, partial, atol=1e-8)
    assert np.any(partial != 0)  # the residuals moved the weights
    # Each agency's weights: its features, "known to", and the intercept at the label owner.
    assert nodes["school"].weight_names == ("attendance_pct", "exclusions", "known_to_school")
    assert owner.weight_names[-1] == "intercept"


def test_nodes_refuse_out_of_protocol_messages(setup: Setup, joined) -> None:  # type: ignore[no-untyped-def]
    """Residuals out of order, another run, a repeated step, or a key the coordinator swapped in are refused."""
    plan, nodes = _joined_nodes(setup, joined)
    school = nodes["school"]
    with pytest.raises(TransportError, match="out of order"):
        school.share(ShareRequest(run_id=RUN_ID, step=3, residual_step=2, residuals=np.zeros(plan.n_entities)))
    with pytest.raises(TransportError, match="another run"):
        school.share(ShareRequest(run_id="f" * 32, step=0))
    # A step is answered once: the same masks must never cover two different vectors.
    school.share(ShareRequest(run_id=RUN_ID, step=0))
    with pytest.raises(TransportError, match="already answered"):
        school.share(ShareRequest(run_id=RUN_ID, step=0))
    # Re-run setup, with the coordinator relaying health's key in place of police's.
    announcements = [nodes[a].announce(plan) for a in plan.parties]
    health = next(a for a in announcements if a.agency_id == "health")
    tampered = [a.model_copy(update={"public_key": health.public_key}) if a.agency_id == "police" else a
                for a in announcements]
    with pytest.raises(SignatureError):
        nodes["school"].join(plan, tuple(tampered))
    with pytest.raises(TransportError, match="exactly the run's parties"):
        nodes["school"].join(plan, tuple(announcements[:-1]))


def test_a_node_needs_its_own_agreement_key(setup: Setup, joined) -> None:  # type: ignore[no-untyped-def]
    """A node built with another party's key is refused before it can announce anything."""
    _, inputs = joined
    with pytest.raises(SignatureError):
        ScoringNode(setup.agreement, inputs["school"], setup.key("police"))


def test_score_file_is_private_and_says_what_a_score_is_for(tmp_path: Path, setup: Setup, joined) -> None:  # type: ignore[no-untyped-def]
    """The label owner's scores are written owner-only, with the evaluation and the second-look note beside them."""
    from nodes.scoring.vertical import ScoreRow

    path = tmp_path / "social_care.scores.csv"
    note = write_scores(path, [ScoreRow("R1", _entity(1), 0.25, 50.0, True, False)],
                        evaluation_lines=["   released evaluation: holdout AUC 0.70"], owner="social_care")
    assert path.stat().st_mode & 0o077 == 0 and note.stat().st_mode & 0o077 == 0
    assert path.read_text().splitlines() == ["record_id,entity_id,score,percentile,in_holdout,second_look",
                                             f"R1,{_entity(1)},0.2500,50.0,yes,no"]
    text = note.read_text()
    assert "never a decision" in text and "holdout AUC 0.70" in text

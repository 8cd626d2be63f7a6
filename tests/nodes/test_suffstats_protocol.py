"""Nodes enforce the scoring protocol against a deviating coordinator, and the label owner learns nothing extra.

A harness plays the coordinator step by step; each test makes it deviate once (replay, re-join,
re-ask, forged or reordered ledger lines, a shifted plan, a substituted ciphertext) and checks a
node refuses it before drawing noise or decrypting anything.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from coordinator.scoring.suffstats import charge_release, plan_suffstats_run
from pplink.errors import LedgerError, ReleaseError, SignatureError, TransportError
from pplink.lab.scoring_run import SYNTH_FEATURE_SCALES, build_suffstats_nodes, truth_joined_inputs
from pplink.lab.synth import generate_synth
from pplink.ledger import read_ledger_lines
from pplink.scoring import he
from pplink.scoring.suffstats import RELEASE_B, RELEASE_GRAM, SuffStatsSettings
from pplink.scoring.suffstats_protocol import BlockRequest, DecryptRequest, PresenceAsk, ScoreRequest
from tests.support import make_setup

pytestmark = pytest.mark.slow


class Harness:
    """The coordinator's side, one message at a time, over 300 synthetic people and four agencies."""

    def __init__(self, root: Path) -> None:
        self.setup = make_setup(root)
        self.agreement = self.setup.agreement
        self.ledger = root / "ledger.jsonl"
        self.key = self.setup.key("coordinator")
        self.state, inputs = truth_joined_inputs(self.agreement, generate_synth(300, seed=4), seed=4)
        self.nodes = build_suffstats_nodes(self.agreement, inputs, {a: self.setup.key(a) for a in inputs},
                                           holdout_key=bytes(32))
        self.plan = plan_suffstats_run(self.agreement, self.state, SuffStatsSettings(
            feature_scales=SYNTH_FEATURE_SCALES))
        self.owner = self.nodes[self.plan.label_owner]
        self.others = self.plan.parties[1:]

    def join(self) -> None:
        self.announcements = tuple(self.nodes[a].announce(self.plan) for a in self.plan.parties)
        for a in self.plan.parties:
            self.nodes[a].join(self.plan, self.announcements, read_ledger_lines(self.ledger))
        self.setup_bundle = self.owner.owner_setup(self.plan.run_id)
        self.forwards = {a: self.nodes[a].forward(self.plan.run_id, self.setup_bundle) for a in self.others[:-1]}

    def charge(self) -> tuple[bytes, ...]:
        seen = len(read_ledger_lines(self.ledger))
        for release in (RELEASE_GRAM, RELEASE_B):
            charge_release(self.agreement, self.ledger, self.key, self.plan, release)
        return tuple(read_ledger_lines(self.ledger)[seen:])

    def block_request(self, agency: str, lines: tuple[bytes, ...]) -> BlockRequest:
        i = self.others.index(agency)
        return BlockRequest(self.plan.run_id, self.setup_bundle, tuple(self.forwards[a] for a in self.others[:i]),
                            lines)

    def blocks(self, lines: tuple[bytes, ...]) -> tuple[he.SignedBundle, ...]:
        return tuple(self.nodes[a].block(self.block_request(a, lines)) for a in self.others)


@pytest.fixture
def harness(tmp_path: Path) -> Harness:
    h = Harness(tmp_path)
    h.join()
    return h


def test_an_honest_run_releases_g_and_b_and_the_owner_sees_only_its_own_people(harness: Harness) -> None:
    """Honest path works; the label owner's decrypted score totals are ~0 for every entity it does not hold,
    and no agency's context can decrypt."""
    lines = harness.charge()
    released = harness.owner.decrypt(DecryptRequest(harness.plan.run_id, harness.blocks(lines), lines))
    d = harness.plan.dimension
    assert released.gram.shape == (d, d) and (released.gram == released.gram.T).all()
    shares = tuple(harness.nodes[a].score_share(ScoreRequest(harness.plan.run_id, released, harness.setup_bundle))
                   for a in harness.others)
    # What the curious label owner can see of other agencies' contributions: decrypt every share's total.
    secret = harness.owner._secret
    total = None
    for share in shares:
        cts = he.load(secret.context, share.item("scores"), harness.plan.n_entities)
        total = cts if total is None else [a + c for a, c in zip(total, cts, strict=True)]
        single = secret.decrypt_vector([c.serialize() for c in cts], harness.plan.n_entities)
        # One agency's share is dominated by its pairwise masks: it says nothing about that agency.
        assert np.abs(single[harness.owner._held]).mean() > 1000.0
    seen = secret.decrypt_vector([c.serialize() for c in total], harness.plan.n_entities)
    not_held = ~harness.owner._held
    assert np.abs(seen[not_held]).max() < 0.05  # flood noise only: nothing about who others hold
    assert np.abs(seen[harness.owner._held]).max() < 10.0
    assert not he.public_context(harness.setup_bundle.item("context")[0]).is_private()
    harness.owner.owner_scores(harness.plan.run_id, shares)
    assert harness.owner.scores is not None


def test_a_replayed_block_request_is_refused(harness: Harness) -> None:
    """The same charged release asked twice: the agency answers once (no second noise draw to average)."""
    lines = harness.charge()
    agency = harness.others[0]
    harness.nodes[agency].block(harness.block_request(agency, lines))
    with pytest.raises(TransportError, match="already answered"):
        harness.nodes[agency].block(harness.block_request(agency, lines))


def test_a_repeated_join_is_refused(harness: Harness) -> None:
    """Re-announcing or re-joining the same run is refused, so no state (mask keys, answers) is reset."""
    agency = harness.others[1]
    with pytest.raises(TransportError):
        harness.nodes[agency].announce(harness.plan)
    with pytest.raises(TransportError):
        harness.nodes[agency].join(harness.plan, harness.announcements, read_ledger_lines(harness.ledger))


def test_holdout_and_threshold_cannot_be_asked_twice(harness: Harness) -> None:
    """The holdout histogram and the error counts are each answered once per run."""
    lines = harness.charge()
    released = harness.owner.decrypt(DecryptRequest(harness.plan.run_id, harness.blocks(lines), lines))
    shares = tuple(harness.nodes[a].score_share(ScoreRequest(harness.plan.run_id, released, harness.setup_bundle))
                   for a in harness.others)
    harness.owner.owner_scores(harness.plan.run_id, shares)
    harness.owner.holdout(harness.plan.run_id)
    with pytest.raises(TransportError, match="already answered"):
        harness.owner.holdout(harness.plan.run_id)
    harness.owner.threshold(harness.plan.run_id, 0.0)
    with pytest.raises(TransportError, match="already answered"):
        harness.owner.threshold(harness.plan.run_id, -1.0)
    outcomes = harness.owner.presence_setup(harness.plan.run_id)
    with pytest.raises(TransportError, match="already answered"):
        harness.owner.presence_setup(harness.plan.run_id)
    agency = harness.others[0]
    # Without the presence charge on the chain no agency draws noise for it.
    with pytest.raises(ReleaseError, match="no ledger charge"):
        harness.nodes[agency].presence(PresenceAsk(harness.plan.run_id, outcomes, ()))
    with pytest.raises(TransportError, match="already answered"):
        harness.owner.owner_scores(harness.plan.run_id, shares)


def test_no_noise_is_drawn_without_the_charges_on_the_chain(harness: Harness) -> None:
    """A block asked for before the ledger charges (or with them withheld) is refused."""
    agency = harness.others[0]
    with pytest.raises(ReleaseError, match="no ledger charge"):
        harness.nodes[agency].block(harness.block_request(agency, ()))


def test_forged_and_reordered_ledger_lines_are_refused(harness: Harness) -> None:
    """Lines out of order, altered, or signed by another key do not extend the chain a node has seen."""
    lines = harness.charge()
    agency = harness.others[0]
    with pytest.raises(LedgerError):
        harness.nodes[agency].block(harness.block_request(agency, lines[::-1]))
    other = harness.others[1]
    *genesis, gram, b = lines  # the ledger's genesis line first, then the two charges
    forged = gram.replace(b'"sensitivity":', b'"sensitivity":1')  # breaks canonical form / signature
    with pytest.raises(LedgerError):
        harness.nodes[other].block(harness.block_request(other, (*genesis, forged, b)))


def test_a_charge_at_another_scale_or_a_shifted_plan_is_refused(harness: Harness, tmp_path: Path) -> None:
    """A plan whose noise is smaller than its settings give is refused at announce; a charge for another
    run's subject does not unlock this run's noise."""
    fresh = Harness(tmp_path / "second")
    shifted = dataclasses.replace(fresh.plan, noise=dataclasses.replace(fresh.plan.noise,
                                                                        gram_scale=fresh.plan.noise.gram_scale / 10))
    with pytest.raises(TransportError, match="noise"):
        fresh.nodes[fresh.others[0]].announce(shifted)
    other_run = dataclasses.replace(harness.plan, run_id="ab" * 16)
    seen = len(read_ledger_lines(harness.ledger))
    for release in (RELEASE_GRAM, RELEASE_B):
        charge_release(harness.agreement, harness.ledger, harness.key, other_run, release)
    lines = tuple(read_ledger_lines(harness.ledger)[seen:])
    agency = harness.others[0]
    with pytest.raises(ReleaseError, match="no ledger charge"):
        harness.nodes[agency].block(harness.block_request(agency, lines))


def test_substituted_ciphertexts_are_refused(harness: Harness) -> None:
    """The coordinator cannot make an agency compute on its own ciphertexts, nor make the label owner
    decrypt a per-entity ciphertext (a forward bundle passed off as a block)."""
    lines = harness.charge()
    first, second = harness.others[0], harness.others[1]
    ctx = he.public_context(harness.setup_bundle.item("context")[0])
    fake_items = dict(harness.setup_bundle.items)
    fake_items["label"] = tuple(he.encrypt(ctx, np.full(harness.plan.n_entities, 1e6)))
    fake = he.SignedBundle(harness.plan.run_id, harness.plan.label_owner, "owner-setup", fake_items,
                           harness.setup_bundle.signature)
    with pytest.raises(SignatureError):
        harness.nodes[first].block(BlockRequest(harness.plan.run_id, fake, (), lines))
    honest = [harness.nodes[a].block(harness.block_request(a, lines)) for a in (second, *harness.others[2:])]
    forward = harness.forwards[first]
    disguised = he.SignedBundle(forward.run_id, forward.maker, "block", forward.items, forward.signature)
    with pytest.raises(SignatureError):
        harness.owner.decrypt(DecryptRequest(harness.plan.run_id, (disguised, *honest), lines))


def test_altered_released_statistics_and_a_plan_changed_after_announce_are_refused(harness: Harness,
                                                                                  tmp_path: Path) -> None:
    """Agencies score only with statistics the label owner signed (chosen weights would make the owner's
    totals read out one agency's feature); a join whose plan differs from the announced one is refused."""
    lines = harness.charge()
    released = harness.owner.decrypt(DecryptRequest(harness.plan.run_id, harness.blocks(lines), lines))
    chosen = dataclasses.replace(released, b=released.b * 0 + np.eye(len(released.b), dtype=np.int64)[4] * 10**6)
    with pytest.raises(SignatureError):
        harness.nodes[harness.others[0]].score_share(ScoreRequest(harness.plan.run_id, chosen, harness.setup_bundle))
    fresh = Harness(tmp_path / "second")
    agency = fresh.others[0]
    fresh.nodes[agency].announce(fresh.plan)
    changed = dataclasses.replace(fresh.plan, entity_ids=fresh.plan.entity_ids[:-1])
    with pytest.raises(TransportError, match="differs from the one announced"):
        fresh.nodes[agency].join(changed, (), read_ledger_lines(fresh.ledger))

"""The label owner in noisy-sufficient-statistics scoring: the only key holder, its own block, its own scores.

What it sends: its public encryption context and ``Enc(t * x_c)``, ``Enc(t * (y - 1/2))`` and
``Enc(h)`` (signed); the released statistics (DP); exact holdout counts to the release engine.
What it ever decrypts: one-value sums that an agency signed and noised (refusing anything else),
and the total score of each of **its own** people (the sum of pairwise-masked partial scores,
zero for everyone it does not hold). It never sees a per-entity value for anyone it does not hold.

It also fits its own-feature model from its own block of the same release, so that every run shows
whether linking helped, on the same holdout, through the same DP release path.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Sequence

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from nodes.scoring.data import AgencyScoringData
from nodes.scoring.scores import ScoreRow
from nodes.scoring.suffstats import SuffStatsNode, draw_noise
from pplink.agreement import AgreementConfig
from pplink.crypto import sign
from pplink.errors import ConfigError, TransportError
from pplink.scoring import he
from pplink.scoring.evaluation import auc, bin_scores, sigmoid
from pplink.scoring.protocol import MISSING_GROUP, OUTCOME_KEYS
from pplink.scoring.suffstats import in_holdout, presence_noise, score_logits, solve_model, upper_pairs
from pplink.scoring.suffstats_protocol import DecryptRequest, Released, SuffStatsPlan, presence_subject

__all__ = ["SuffStatsOwner", "own_feature_model"]


def own_feature_model(features: np.ndarray, labels: np.ndarray, *, iterations: int = 25) -> np.ndarray:
    """Logistic regression by Newton's method on the label owner's own (standardised) features.

    The non-private baseline of the benchmark (the label owner may fit anything on its own data;
    a run's released comparison uses the DP own-block model instead, see :meth:`SuffStatsOwner.owner_scores`).

    Returns:
        Weights for ``[features..., 1]``.
    """
    x = np.hstack([features, np.ones((len(features), 1))])
    w = np.zeros(x.shape[1])
    for _ in range(iterations):
        p = sigmoid(x @ w)
        hessian = (x * (p * (1 - p))[:, None]).T @ x + 1e-6 * np.eye(x.shape[1])
        w = w - np.linalg.solve(hessian, x.T @ (p - labels))
    return w


class SuffStatsOwner(SuffStatsNode):
    """The agency holding the outcome.

    Args:
        agreement: the agreement.
        data: its scoring inputs, with labels (and subgroups).
        signing_key: its Ed25519 key.
        holdout_key: keys the holdout hash (tests and reproducible reports); None draws it from the
            OS, so nobody else can tell who is held out.
    """

    def __init__(self, agreement: AgreementConfig, data: AgencyScoringData, signing_key: Ed25519PrivateKey, *,
                 holdout_key: bytes | None = None) -> None:
        super().__init__(agreement, data, signing_key)
        assert agreement.scoring is not None
        if data.agency_id != agreement.scoring.label_owner or data.labels is None:
            raise ConfigError(f"{data.agency_id} is not the label owner, or its data has no labels")
        self._holdout_key = holdout_key if holdout_key is not None else secrets.token_bytes(32)
        self._secret: he.HeSecret | None = None
        self.scores: np.ndarray | None = None
        self.own_scores: np.ndarray | None = None

    def _layout(self, plan: SuffStatsPlan) -> None:
        super()._layout(plan)
        assert self._agreement.scoring is not None and self._data.labels is not None
        n = plan.n_entities
        self._x[:, -1] = plan.settings.grid  # the intercept, for every entity
        labels = np.full(n, -1, dtype=np.int8)
        labels[self._rows] = self._data.labels
        share = self._agreement.scoring.holdout_share
        holdout = np.zeros(n, dtype=bool)
        holdout[self._rows] = [in_holdout(self._holdout_key, e, share) for e in self._data.entity_ids]
        self._holdout = holdout & (labels >= 0)
        self._train = (labels >= 0) & ~holdout
        self._labels = labels
        groups = np.full(n, MISSING_GROUP, dtype=object)
        if self._data.subgroups is not None:
            groups[self._rows] = np.asarray(self._data.subgroups, dtype=object)
        self._groups = groups
        self._threshold: float | None = None

    @property
    def training_size(self) -> int:
        """Labelled people trained on (never released)."""
        return int(self._train.sum())

    @property
    def holdout_size(self) -> int:
        """Labelled people held out (never released)."""
        return int(self._holdout.sum())

    def owner_setup(self, run_id: str) -> he.SignedBundle:
        """A fresh key pair; the public context and the encrypted training vectors, signed (once)."""
        plan = self._once(run_id, "owner-setup")
        self._secret = he.HeSecret()
        ctx = self._secret.context
        t = self._train.astype(np.float64)
        items: dict[str, tuple[bytes, ...]] = {"context": (self._secret.public_bytes(),)}
        for j in range(self._x.shape[1]):
            items[f"x:{j}"] = tuple(he.encrypt(ctx, t * self._x[:, j] / plan.settings.grid))
        items["label"] = tuple(he.encrypt(ctx, t * (self._labels - 0.5)))
        items["held"] = tuple(he.encrypt(ctx, self._held.astype(np.float64)))
        self._setup = he.sign_bundle(self._key, plan.agreement_id,
                                     he.SignedBundle(plan.run_id, self.agency_id, "owner-setup", items))
        return self._setup

    def decrypt(self, request: DecryptRequest) -> Released:
        """Decrypt every agency's noisy sums, add its own noisy block, return the released ``G`` and ``b``.

        Raises:
            LedgerError, ReleaseError: no valid charge on the chain (no noise is drawn, nothing decrypted).
            SignatureError: a bundle not signed by its agency for this run as a block.
            TransportError: asked twice, a block missing or repeated, an entry filled twice or never.
        """
        plan = self._once(request.run_id, "decrypt")
        self._charges(plan, request.ledger_lines)
        assert self._secret is not None
        d, noise = plan.dimension, plan.noise
        gram = np.zeros((d, d), dtype=np.int64)
        b = np.zeros(d, dtype=np.int64)
        filled = np.zeros((d, d), dtype=bool)
        b_filled = np.zeros(d, dtype=bool)
        makers = [blk.maker for blk in request.blocks]
        if sorted(makers) != sorted(plan.parties[1:]):
            raise TransportError(f"{self.agency_id}: expected one block from every other agency, once")
        for block in request.blocks:
            he.verify_bundle(self._agreement, block, run_id=plan.run_id, maker=block.maker, purpose="block")
            for name, chunks in block.items.items():
                kind, *idx = name.split(":")
                if len(chunks) != 1:
                    raise TransportError(f"{self.agency_id}: a block entry is not a single sum")
                value = self._secret.decrypt_scalar(chunks[0])
                if kind == "g" and len(idx) == 2:
                    i, j = int(idx[0]), int(idx[1])
                    if not (0 <= i <= j < d) or filled[i, j]:
                        raise TransportError(f"{self.agency_id}: a G entry is out of range or filled twice")
                    gram[i, j], filled[i, j] = he.round_units(value, noise.gram_unit), True
                elif kind == "b" and len(idx) == 1 and 0 <= int(idx[0]) < d and not b_filled[int(idx[0])]:
                    b[int(idx[0])], b_filled[int(idx[0])] = he.round_units(value, noise.b_unit), True
                else:
                    raise TransportError(f"{self.agency_id}: an unexpected block entry")
        x = self._x[self._train]
        width = x.shape[1]
        own = [(i, j) for i, j in upper_pairs(width)]
        exact = np.array([int(x[:, i] @ x[:, j]) for i, j in own], dtype=np.int64)
        exact_b = x.T @ (2 * self._labels[self._train].astype(np.int64) - 1)
        noisy = exact + draw_noise(noise.gram_scale, len(own))
        noisy_b = exact_b + draw_noise(noise.b_scale, width)
        for (i, j), v in zip(own, noisy, strict=True):
            if filled[i, j]:
                raise TransportError(f"{self.agency_id}: an agency sent an entry of the label owner's block")
            gram[i, j], filled[i, j] = v, True
        b[:width], b_filled[:width] = noisy_b, True
        if not (filled[np.triu_indices(d)].all() and b_filled.all()):
            raise TransportError(f"{self.agency_id}: some entries of G or b were never sent")
        gram = np.triu(gram) + np.triu(gram, 1).T
        unsigned = Released(run_id=plan.run_id, gram=gram, b=b)
        self._released = Released(plan.run_id, gram, b, sign(self._key, unsigned.payload(plan.agreement_id)))
        return self._released

    def owner_scores(self, run_id: str, shares: tuple[he.SignedBundle, ...]) -> None:
        """Sum the agencies' masked partial scores under encryption, decrypt the total, add its own part.

        Only the total over agencies is decrypted, and it is zero for everyone the label owner does
        not hold. Also scores with the own-feature model (its block of the release).
        """
        plan = self._once(run_id, "owner-scores")
        assert self._secret is not None
        if sorted(s.maker for s in shares) != sorted(plan.parties[1:]):
            raise TransportError(f"{self.agency_id}: expected one score share from every other agency, once")
        ctx = self._secret.context
        total = None
        for share in shares:
            he.verify_bundle(self._agreement, share, run_id=plan.run_id, maker=share.maker, purpose="scores")
            cts = he.load(ctx, share.item("scores"), plan.n_entities)
            total = cts if total is None else [a + c for a, c in zip(total, cts, strict=True)]
        others = (self._secret.decrypt_vector([c.serialize() for c in total], plan.n_entities)
                  if total is not None else np.zeros(plan.n_entities))
        w = self.weights(plan, self._released.gram, self._released.b)
        centred = np.where(self._held, (self._x / plan.settings.grid) @ w + others, 0.0)
        self.scores = score_logits(centred)
        # The own-feature model is solved from the label owner's block of the same release, so its
        # scores, like the federated ones, depend only on a DP release and the person's own row: each
        # holdout histogram then moves by one count per person (a model fitted on the exact data
        # would move everyone's score when one training person is removed).
        width = plan.width(plan.label_owner)
        w_own = solve_model(self._released.gram[:width, :width], self._released.b[:width], plan.noise,
                            plan.settings)
        self.own_scores = np.where(self._held, score_logits((self._x / plan.settings.grid) @ w_own), -np.inf)

    # --- evaluation (each answered once) ----------------------------------------------------------

    def holdout(self, run_id: str) -> dict[str, tuple[tuple[int, ...], tuple[int, ...]]]:
        """Exact holdout counts per (score bin, outcome) for the federated and the own-feature model."""
        plan = self._once(run_id, "holdout")
        if self.scores is None or self.own_scores is None:
            raise TransportError(f"{self.agency_id}: no scores yet")
        y = self._labels[self._holdout] == 1
        size = len(plan.settings.score_edges) + 1
        out = {}
        for name, scores in (("federated", self.scores), ("own", self.own_scores)):
            bins = bin_scores(scores[self._holdout], plan.settings.score_edges)
            out[name] = (tuple(int(v) for v in np.bincount(bins[y], minlength=size)),
                         tuple(int(v) for v in np.bincount(bins[~y], minlength=size)))
        return out

    def threshold(self, run_id: str, threshold: float) -> dict[str, dict[str, int]]:
        """Exact tp/fp/fn/tn by subgroup at a public threshold (to the release engine), once."""
        self._once(run_id, "threshold")
        if self.scores is None:
            raise TransportError(f"{self.agency_id}: no scores yet")
        self._threshold = float(threshold)
        flagged = self.scores >= threshold
        y = self._labels == 1
        code = np.where(flagged, np.where(y, 0, 1), np.where(y, 2, 3))
        out: dict[str, dict[str, int]] = {}
        for group in sorted(set(self._groups[self._holdout].tolist())):
            counts = np.bincount(code[(self._groups == group) & self._holdout], minlength=4)
            out[group] = {k: int(counts[i]) for i, k in enumerate(OUTCOME_KEYS)}
        return out

    def _codes(self) -> np.ndarray:
        assert self.scores is not None and self._threshold is not None
        flagged = self.scores >= self._threshold
        y = self._labels == 1
        return np.where(self._holdout, np.where(flagged, np.where(y, 0, 1), np.where(y, 2, 3)), -1)

    def presence_setup(self, run_id: str) -> he.SignedBundle:
        """``Enc(holdout person with outcome k)`` for each outcome at the released threshold (signed, once)."""
        plan = self._once(run_id, "presence-setup")
        if self._threshold is None or self._secret is None:
            raise TransportError(f"{self.agency_id}: presence asked before the threshold")
        codes = self._codes()
        items = {f"o:{k}": tuple(he.encrypt(self._secret.context, (codes == i).astype(np.float64)))
                 for i, k in enumerate(OUTCOME_KEYS)}
        return he.sign_bundle(self._key, plan.agreement_id,
                              he.SignedBundle(plan.run_id, self.agency_id, "presence-setup", items))

    def presence_counts(self, run_id: str, sums: tuple[he.SignedBundle, ...],
                        ledger_lines: Sequence[bytes]) -> dict[tuple[str, str, str], int]:
        """The released errors by agency presence: noisy known counts per agency, noisy totals, once.

        "not known" is the noisy total minus the noisy known count (post-processing).
        """
        plan = self._once(run_id, "presence-counts")
        assert self._secret is not None
        sensitivity, scale = presence_noise(plan.settings, len(plan.parties), self._agreement.budget.delta)
        self._ledger.extend(ledger_lines)
        self._ledger.consume(presence_subject(plan.run_id), sensitivity=sensitivity, scale=scale)
        if sorted(b.maker for b in sums) != sorted(plan.parties[1:]):
            raise TransportError(f"{self.agency_id}: expected one presence reply from every other agency, once")
        codes = self._codes()
        totals = np.array([int((codes == i).sum()) for i in range(len(OUTCOME_KEYS))]) + draw_noise(
            scale, len(OUTCOME_KEYS))
        out: dict[tuple[str, str, str], int] = {}
        for bundle in sums:
            he.verify_bundle(self._agreement, bundle, run_id=plan.run_id, maker=bundle.maker, purpose="presence-sums")
            for i, k in enumerate(OUTCOME_KEYS):
                known = he.round_units(self._secret.decrypt_scalar(bundle.item(f"o:{k}")[0]), 1)
                out[(bundle.maker, "known", k)] = known
                out[(bundle.maker, "not known", k)] = int(totals[i]) - known
        return out

    def score_rows(self) -> list[ScoreRow]:
        """A score for each of the label owner's own records, for a person's second look (never a decision)."""
        if self.scores is None:
            raise TransportError(f"{self.agency_id}: no final scores yet")
        own = self.scores[self._rows]
        ranks = np.argsort(np.argsort(own, kind="mergesort"), kind="mergesort")
        percentile = 100.0 * (ranks + 1) / max(1, own.size)
        threshold = self._threshold if self._threshold is not None else math.inf
        probabilities = sigmoid(own)
        return [ScoreRow(record_id, entity, float(probabilities[i]), float(percentile[i]),
                         bool(self._holdout[self._rows[i]]), bool(own[i] >= threshold))
                for i, entity in enumerate(self._data.entity_ids) for record_id in self._data.record_ids[i]]

    def exact_auc(self) -> tuple[float, float]:
        """The label owner's own view (never released): exact holdout AUC, federated and own-feature."""
        if self.scores is None or self.own_scores is None:
            return math.nan, math.nan
        y = self._labels[self._holdout] == 1
        return auc(self.scores[self._holdout], y), auc(self.own_scores[self._holdout], y)

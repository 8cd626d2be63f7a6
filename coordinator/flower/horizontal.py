"""Horizontal FedAvg with Flower's server-side fixed-clipping DP, every round on the privacy ledger.

:func:`run_horizontal` drives Flower's ``FedAvg`` wrapped in
``DifferentialPrivacyServerSideFixedClipping(noise_multiplier=z, clipping_norm=C,
num_sampled_clients=n)`` with Flower's ``RdpAccountant`` (no sampling amplification: every online
node trains every round) over any :class:`flwr.serverapp.Grid`:

1. refuse pure accounting (the noise is Gaussian; it has no pure-DP bound) with
   :class:`~pplink.errors.ReleaseError`;
2. before round 1, lock the ledger and check the **whole run's** cost, ``rounds / (2 z**2)`` rho,
   against what is left; refuse with :class:`~pplink.errors.BudgetExceededError` before any
   message is sent (nothing appended);
3. each round, Flower clips every agency's update to C, averages the n updates and adds
   ``N(0, (z C / n)**2)`` per coordinate. Before the noised model leaves the coordinator (it goes
   to the nodes in the next round's train message, or back to the caller after the last round),
   the round is appended to the ledger: Gaussian, sensitivity 1, scale z (units of C on the sum),
   rho ``1 / (2 z**2)``; the budget is re-checked under the ledger lock first, in case another
   release spent some since step 2. The RDP accountant's running epsilon (at the agreement's
   delta) goes into the entry's subject and the run summary.

The privacy unit is **one agency's whole update in one round**, not one person: see
``docs/scoring.md``, "Horizontal mode".

:data:`app` is the ServerApp adapter: it reads ``horizontal`` (the settings as JSON),
``agreement``, ``ledger`` and ``key`` from the run config.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import DifferentialPrivacyServerSideFixedClipping, FedAvg, Strategy
from flwr.supercore.privacy_accounting import NeighboringRelation, PrivacyConfig, SamplingMethod
from flwr.supercore.privacy_accounting.rdp_accountant import RdpAccountant
from pydantic import ValidationError

from coordinator.release.engine import charge, spent_so_far
from pplink.accounting import Mechanism, PrivacyLoss, QueryKind, check_budget, compose, release_loss
from pplink.agreement import Accounting, AgreementConfig, load_agreement
from pplink.crypto import load_private_key, public_key_text
from pplink.errors import AgreementMismatchError, BudgetExceededError, ConfigError, ReleaseError, SignatureError
from pplink.ledger import LedgerEntry, ReleaseQuery, read_ledger
from pplink.scoring.horizontal import WEIGHT_METRIC, WEIGHTS_KEY, HorizontalSettings, initial_weights

__all__ = ["FLOWER_LIBRARY", "HorizontalRun", "app", "round_loss", "run_horizontal"]

log = logging.getLogger(__name__)

#: The library whose mechanism draws the noise (stamped on each entry's ``library``).
FLOWER_LIBRARY = f"flwr=={version('flwr')} DifferentialPrivacyServerSideFixedClipping"

app = ServerApp()


@dataclass
class HorizontalRun:
    """What a horizontal run produced.

    Attributes:
        weights: the final (noised) global model, intercept last.
        entries: the ledger entries of this run, one per round.
        rdp_epsilons: Flower's RDP accountant's cumulative epsilon after each round, at ``delta``.
        delta: the agreement's delta.
        parties: the node names that trained, in node order.
    """

    weights: np.ndarray
    entries: list[LedgerEntry] = field(default_factory=list)
    rdp_epsilons: list[float] = field(default_factory=list)
    delta: float = 0.0
    parties: tuple[str, ...] = ()

    @property
    def ledger_epsilon(self) -> float:
        """The ledger's running total epsilon after this run's last entry (zCDP, converted at delta)."""
        return self.entries[-1].cumulative.epsilon if self.entries else 0.0


def round_loss(agreement: AgreementConfig, settings: HorizontalSettings) -> PrivacyLoss:
    """The ledger loss of one round: OpenDP's Gaussian map at sensitivity 1, scale z (rho = 1/(2 z**2)).

    Raises:
        ReleaseError: the agreement uses pure accounting, or z is outside the per-release range.
    """
    if agreement.budget.accounting is Accounting.PURE:
        raise ReleaseError(
            "horizontal training releases Gaussian-noised models, which have no pure-DP bound; "
            "it needs an agreement with zcdp accounting (this one uses pure)"
        )
    # release_loss refuses a z so small that OpenDP's conversion would overflow (a ReleaseError, not a traceback).
    return release_loss(agreement.budget, Mechanism.GAUSSIAN, 1, settings.noise_multiplier)


class _LedgeredStrategy(Strategy):
    """Delegates to the DP strategy; records each aggregated (noised) model before it is returned."""

    def __init__(self, inner: DifferentialPrivacyServerSideFixedClipping,
                 on_release: Callable[[int], None]) -> None:
        super().__init__()
        self.inner = inner
        self.on_release = on_release

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        return self.inner.configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        arrays, metrics = self.inner.aggregate_train(server_round, replies)
        if arrays is not None:
            # Noise has been drawn but nobody has seen the result: record it first (raises on refusal).
            self.on_release(server_round)
        return arrays, metrics

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        return self.inner.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        return self.inner.aggregate_evaluate(server_round, replies)

    def summary(self) -> None:
        self.inner.summary()


def run_horizontal(grid: Grid, settings: HorizontalSettings, *, agreement: AgreementConfig, ledger_path: Path,
                   coordinator_key: Ed25519PrivateKey, timeout: float = 3600.0) -> HorizontalRun:
    """Train a logistic regression by DP FedAvg over the grid's online nodes, one ledger entry per round.

    Args:
        grid: Flower grid (a SuperLink's, or :class:`pplink.transport.inprocess.InProcessGrid`).
        settings: rounds, z, C and the local training settings.
        agreement: the agreement (zcdp budget, delta, coordinator key, min_cell_size).
        ledger_path: the privacy ledger (created on first use).
        coordinator_key: the coordinator's signing key.
        timeout: seconds to wait for node replies per round.

    Returns:
        The final model, this run's ledger entries and the RDP accountant's epsilons.

    Raises:
        ReleaseError: pure accounting, or fewer than two nodes online.
        AgreementMismatchError: a node is not one of the agreement's agencies.
        BudgetExceededError: the whole run would pass the budget (checked before round 1; nothing
            sent, nothing appended), or a later round would (another release spent budget meanwhile).
        SignatureError: the key is not the agreement's coordinator key.
        LedgerError: the ledger does not verify or an append failed.
    """
    loss = round_loss(agreement, settings)
    if public_key_text(coordinator_key) != agreement.coordinator.public_key:
        raise SignatureError(f"the signing key is not coordinator {agreement.coordinator.id}'s key in the agreement")
    budget = agreement.budget
    nodes = sorted(grid.get_nodes(), key=lambda n: n.node_id)
    n = len(nodes)
    if n < 2:
        raise ReleaseError(f"horizontal training needs at least two agencies online; {n} are")
    parties = tuple(node.name or str(node.node_id) for node in nodes)
    strangers = sorted(set(parties) - set(agreement.agency_ids))
    if strangers:
        raise AgreementMismatchError(f"horizontal training: node(s) {', '.join(strangers)} are not agencies in the "
                                     "agreement; only its agencies may train")

    whole_run = compose([loss] * settings.rounds, budget.accounting, budget.delta)
    existing = read_ledger(Path(ledger_path), agreement) if Path(ledger_path).exists() else []
    if any(e.query.kind is not QueryKind.FEDAVG for e in existing):
        # Its unit is one agency's round, not one person: adding it into a per-person total would
        # make that total mean nothing (and a per-person release would be charged agency losses).
        raise ConfigError(f"{ledger_path}: holds per-person releases; horizontal rounds go on a ledger of "
                          "their own (e.g. ledger-agency-unit.jsonl), never into the per-person total")
    try:
        check_budget(spent_so_far(agreement, Path(ledger_path)), whole_run, budget)
    except BudgetExceededError as err:
        log.warning("horizontal run of %d rounds refused before round 1: %s", settings.rounds, err)
        raise BudgetExceededError(f"horizontal run of {settings.rounds} rounds refused before round 1: "
                                  f"{err}") from None

    accountant = RdpAccountant(PrivacyConfig(
        target_delta=budget.delta, population_size=n, neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE,
        sampling_method=SamplingMethod.NO_AMPLIFICATION))
    fedavg = FedAvg(fraction_train=1.0, fraction_evaluate=0.0, min_train_nodes=n, min_available_nodes=n,
                    weighted_by_key=WEIGHT_METRIC)
    dp = DifferentialPrivacyServerSideFixedClipping(fedavg, noise_multiplier=settings.noise_multiplier,
                                                    clipping_norm=settings.clipping_norm, num_sampled_clients=n,
                                                    accountant=accountant)
    run = HorizontalRun(weights=initial_weights(), delta=budget.delta, parties=parties)

    def record(server_round: int) -> None:
        rdp_epsilon = accountant.get_epsilon(budget.delta)
        subject = (f"round {server_round}/{settings.rounds}, {n} agencies, clip {settings.clipping_norm:g}, "
                   f"z {settings.noise_multiplier:g}; flower rdp epsilon {rdp_epsilon:.6g}")
        # The noise is drawn already (by Flower's strategy), but nobody has seen the model: the
        # engine's one charge path records it before it is returned, or refuses.
        done = charge(agreement, Path(ledger_path), coordinator_key,
                      ReleaseQuery(kind=QueryKind.FEDAVG, parties=parties, subject=subject),
                      mechanism=Mechanism.GAUSSIAN, sensitivity=1, scale=settings.noise_multiplier,
                      library=FLOWER_LIBRARY)
        run.entries.append(done.entry)
        run.rdp_epsilons.append(rdp_epsilon)
        log.info("horizontal round %d recorded as ledger entry %d (rho %.6g; ledger epsilon %.6g; rdp epsilon %.6g)",
                 server_round, run.entries[-1].seq, loss.rho or 0.0, run.ledger_epsilon, rdp_epsilon)

    train_config = ConfigRecord({"local-epochs": settings.local_epochs, "learning-rate": settings.learning_rate,
                                 "l2-penalty": settings.l2_penalty})
    result = _LedgeredStrategy(dp, record).start(
        grid, ArrayRecord({WEIGHTS_KEY: Array(initial_weights())}), num_rounds=settings.rounds, timeout=timeout,
        train_config=train_config)
    if len(run.entries) != settings.rounds:
        raise ReleaseError(f"horizontal run: only {len(run.entries)} of {settings.rounds} rounds aggregated "
                           "(a node dropped out or replied with an error); the recorded rounds stay on the ledger")
    run.weights = result.arrays.to_numpy_ndarrays()[0]
    return run


@app.main()
def main(grid: Grid, context: Context) -> None:
    """ServerApp: run config ``horizontal`` (settings JSON), ``agreement``, ``ledger``, ``key``.

    Leaves the run summary in ``context.state["horizontal"]``: ``weights``, ``entries`` (ledger
    sequence numbers), ``ledger-epsilon`` and ``rdp-epsilons`` (one per round).
    """
    config = context.run_config
    try:
        settings = HorizontalSettings.model_validate_json(str(config["horizontal"]))
        agreement = load_agreement(Path(str(config["agreement"])))
        ledger = Path(str(config["ledger"]))
        key = load_private_key(Path(str(config["key"])))
    except KeyError as exc:
        raise ConfigError(f"run config: missing {exc.args[0]!r} (horizontal, agreement, ledger, key)") from None
    except ValidationError as err:
        fields = sorted({".".join(str(p) for p in e["loc"]) for e in err.errors(include_input=False)})
        raise ConfigError(f"run config: 'horizontal' settings are invalid (fields: {', '.join(fields)})") from None
    run = run_horizontal(grid, settings, agreement=agreement, ledger_path=ledger, coordinator_key=key)
    context.state["horizontal"] = ConfigRecord({
        "weights": [float(w) for w in run.weights], "entries": [e.seq for e in run.entries],
        "ledger-epsilon": run.ledger_epsilon, "rdp-epsilons": list(run.rdp_epsilons),
        "parties": list(run.parties)})

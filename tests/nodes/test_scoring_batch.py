"""A batch of scoring requests (one Flower message) holds only requests a node may answer together.

Batching saves a round trip per request; it must not open a way around a node's rules: the message
that creates the run state (announce), the one that removes it (finish) and nested batches are never
batched, every request in a batch is for the signed request's run, and each one still goes through
the node's own answered-once checks (:func:`nodes.scoring.round.handle_scoring` calls the same method
per request as for a lone message).
"""

from __future__ import annotations

import pytest

from nodes.scoring.round import _batch_calls
from pplink.errors import TransportError
from pplink.messages import ScoringCall
from pplink.scoring.wire import Batch, BatchReply, RunAsk, ThresholdAsk, decode_payload, encode_payload

RUN = "ab" * 16


def test_a_batch_of_independent_requests_is_read_in_order() -> None:
    batch = Batch(RUN, ("threshold", "presence-setup"), (ThresholdAsk(RUN, 0.5), RunAsk(RUN)))
    back = decode_payload(encode_payload(batch))
    assert _batch_calls(back, RUN) == [(ScoringCall.THRESHOLD, ThresholdAsk(RUN, 0.5)),
                                       (ScoringCall.PRESENCE_SETUP, RunAsk(RUN))]
    reply = decode_payload(encode_payload(BatchReply(RUN, (None, {"a": 1}))))
    assert reply.answers == (None, {"a": 1})


@pytest.mark.parametrize("call", ["announce", "finish", "batch", "no-such-call"])
def test_state_making_removing_nested_or_unknown_calls_are_never_batched(call: str) -> None:
    """Invariant: announce (makes the run state), finish (removes it) and batch itself are refused in a batch."""
    with pytest.raises(TransportError, match="may not be batched"):
        _batch_calls(Batch(RUN, ("holdout", call), (RunAsk(RUN), RunAsk(RUN))), RUN)


def test_a_request_for_another_run_in_a_batch_is_refused() -> None:
    """Invariant: every request in a batch is for the run the coordinator signed."""
    with pytest.raises(TransportError, match="another run"):
        _batch_calls(Batch(RUN, ("holdout", "presence-setup"), (RunAsk(RUN), RunAsk("cd" * 16))), RUN)


@pytest.mark.parametrize("batch", [
    Batch(RUN, ("holdout",), ()),  # calls and payloads differ in length
    Batch(RUN, (), ()),  # empty
    Batch(RUN, ("holdout",) * 5, (RunAsk(RUN),) * 5),  # longer than any batch the coordinator sends
    RunAsk(RUN),  # not a batch at all
])
def test_malformed_batches_are_refused(batch: object) -> None:
    with pytest.raises(TransportError, match="malformed"):
        _batch_calls(batch, RUN)

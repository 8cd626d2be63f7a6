"""The SuperNode's shorter idle poll: only Flower's three-second idle sleep changes."""

from __future__ import annotations

import inspect
import re
import time

import pytest
from flwr.supernode import start_client_internal

from nodes.flower.supernode_poll import (
    BUSY_POLL,
    FLOWER_IDLE_SLEEP,
    FLOWER_REPLY_WAIT,
    REPLY_WAIT,
    install,
    main,
)


@pytest.fixture
def restore_time(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(start_client_internal, "time", time)


def test_flower_still_sleeps_where_the_shorter_poll_expects() -> None:
    """Invariant: flwr's SuperNode loop has exactly one idle ``time.sleep(3)``, through the module
    global ``time``; if an upgrade moves it, this fails instead of the poll silently going back to 3 s."""
    source = inspect.getsource(start_client_internal)
    assert re.search(r"^import time$", source, re.MULTILINE)
    assert source.count(f"time.sleep({FLOWER_IDLE_SLEEP})") == 1
    loop = source[source.index("while True:\n            run_id = _pull_and_store_message("):]
    assert loop.index(f"time.sleep({FLOWER_IDLE_SLEEP})") < loop.index("_push_messages(")
    # The half-second sleeps are only the waits for a reply in the node's own store (in _push_messages).
    push = source[source.index("def _push_messages("):]
    push = push[:push.index("\ndef ")]
    assert source.count(f"time.sleep({FLOWER_REPLY_WAIT})") == push.count(f"time.sleep({FLOWER_REPLY_WAIT})") == 2


def test_only_the_idle_sleep_is_shortened(restore_time: None) -> None:
    install(0.05)
    clock = start_client_internal.time
    started = time.perf_counter()
    clock.sleep(FLOWER_IDLE_SLEEP)
    assert time.perf_counter() - started < 1.0
    started = time.perf_counter()
    clock.sleep(0.2)  # other sleeps are untouched
    assert time.perf_counter() - started >= 0.2
    assert clock.monotonic is time.monotonic and clock.time is time.time
    install(0.1)  # a second install adjusts, never wraps twice
    assert start_client_internal.time is clock and clock.poll_interval == 0.1


@pytest.mark.parametrize("interval", ["0", "-1", "3.5"])
def test_out_of_range_intervals_are_refused(interval: str) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--poll-interval", interval, "--", "--insecure"])
    assert exc.value.code == 2


def test_a_node_that_just_answered_polls_fast_then_slows_down(restore_time: None, monkeypatch: pytest.MonkeyPatch
                                                              ) -> None:
    """Invariant: after a reply wait (the node took a message) the idle poll is BUSY_POLL; without one
    it is the configured interval; reply waits last REPLY_WAIT, not Flower's half second."""
    install(0.5)
    clock = start_client_internal.time
    slept: list[float] = []
    monkeypatch.setattr(time, "sleep", slept.append)
    clock.sleep(FLOWER_IDLE_SLEEP)
    clock.sleep(FLOWER_REPLY_WAIT)
    clock.sleep(FLOWER_IDLE_SLEEP)
    assert slept == [0.5, REPLY_WAIT, BUSY_POLL]
    clock.last_busy -= 3600  # an hour idle: back to the configured poll
    clock.sleep(FLOWER_IDLE_SLEEP)
    assert slept[-1] == 0.5

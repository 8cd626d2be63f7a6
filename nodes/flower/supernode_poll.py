"""Flower's SuperNode with a shorter idle poll: ``python -m nodes.flower.supernode_poll --poll-interval S -- ARGS``.

A SuperNode asks the SuperLink for work and, when there is none, sleeps a fixed three seconds
(``time.sleep(3)`` in ``flwr.supernode.start_client_internal``; Flower 1.41 has no setting for it).
Every exchange of a round waits for that sleep: 1.5 s on average, 3 s at worst, and a scoring run
has a dozen exchanges. This entry point gives that module a view of :mod:`time` whose three-second
sleep lasts ``--poll-interval`` seconds instead, or only :data:`BUSY_POLL` seconds for
:data:`BUSY_WINDOW` seconds after the node last answered a message (a round's next message
follows within seconds; an idle node goes back to the slower poll). Its half-second sleeps, which
wait for the ClientApp's reply in the node's own memory (no request to anyone), last
:data:`REPLY_WAIT` seconds. Every other sleep, and everything else, is the real module's. Then it
runs Flower's own ``flower-supernode`` entry point with ``ARGS``.

It is written against flwr 1.41.0, which pplink pins; a test reads Flower's source and fails if
the sleeps are not where this expects them, so an upgrade cannot silently lose the shorter poll.
A shorter poll costs one small request to the SuperLink per interval per agency.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
import types
from collections.abc import Sequence

__all__ = ["BUSY_POLL", "BUSY_WINDOW", "FLOWER_IDLE_SLEEP", "FLOWER_REPLY_WAIT", "REPLY_WAIT", "install", "main"]

#: The seconds Flower 1.41's SuperNode sleeps after a poll that found no message.
FLOWER_IDLE_SLEEP = 3
#: The seconds it sleeps between looks for the ClientApp's reply (and its content) in its own store.
FLOWER_REPLY_WAIT = 0.5
#: The idle poll while a round is under way (within :data:`BUSY_WINDOW` s of the last answer).
BUSY_POLL = 0.2
#: Seconds after an answer during which the node polls every :data:`BUSY_POLL` s.
BUSY_WINDOW = 30.0
#: What a reply wait lasts instead of :data:`FLOWER_REPLY_WAIT` (a look into the node's own memory).
REPLY_WAIT = 0.02


class _PollClock(types.ModuleType):
    """:mod:`time` for one module, with its idle poll and reply waits shortened."""

    def __init__(self, poll_interval: float) -> None:
        super().__init__("time")
        self.poll_interval = poll_interval
        self.last_busy = -math.inf

    def __getattr__(self, name: str) -> object:
        return getattr(time, name)

    def sleep(self, seconds: float) -> None:
        if seconds == FLOWER_IDLE_SLEEP:
            busy = time.monotonic() - self.last_busy < BUSY_WINDOW
            time.sleep(min(BUSY_POLL, self.poll_interval) if busy else self.poll_interval)
        elif seconds == FLOWER_REPLY_WAIT:
            self.last_busy = time.monotonic()  # only a node that took a message waits for a reply
            time.sleep(REPLY_WAIT)
        else:
            time.sleep(seconds)


def install(poll_interval: float) -> None:
    """Shorten the SuperNode's idle poll in this process.

    Raises:
        RuntimeError: Flower's SuperNode module no longer uses :mod:`time` the way this expects.
    """
    from flwr.supernode import start_client_internal

    current = getattr(start_client_internal, "time", None)
    if isinstance(current, _PollClock):
        current.poll_interval = poll_interval
        return
    if current is not time:
        raise RuntimeError("flwr.supernode.start_client_internal does not use the time module as flwr 1.41 does")
    start_client_internal.time = _PollClock(poll_interval)  # type: ignore[attr-defined]


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``--poll-interval``, then run ``flower-supernode`` with the arguments after ``--``."""
    parser = argparse.ArgumentParser(prog="python -m nodes.flower.supernode_poll", description=__doc__.splitlines()[0])
    parser.add_argument("--poll-interval", type=float, required=True)
    parser.add_argument("flower_args", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    if not 0 < args.poll_interval <= FLOWER_IDLE_SLEEP:
        parser.error(f"--poll-interval must be in (0, {FLOWER_IDLE_SLEEP}]")
    rest = list(args.flower_args)
    if rest[:1] == ["--"]:
        rest = rest[1:]
    install(args.poll_interval)
    from flwr.supernode.cli import flower_supernode

    sys.argv = ["flower-supernode", *rest]
    flower_supernode()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

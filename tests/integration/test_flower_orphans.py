"""A SIGKILLed ``pplink node join`` or ``coordinator serve`` leaves no Flower process and no held port.

Before, the SuperNode (with its SuperExec) and the SuperLink ran on in sessions of their own, and
the next ``node join`` on that port never came online. The invariant: within a few seconds of the
SIGKILL every process the command started is gone and its port can be bound again.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import pytest

from pplink.transport.flower_env import split_address
from pplink.transport.lifeline import GRACE_SECONDS, check_port_free
from tests.deployment import HOST, LocalDeployment, _children

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")]


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            return ") Z " not in fh.read()
    except OSError:
        return False


def _sigkill_and_wait(pid: int, what: str) -> None:
    tree = _children(pid)
    assert tree, f"{what} started no process"
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + GRACE_SECONDS + 5
    while any(_alive(p) for p in tree):
        assert time.monotonic() < deadline, f"{what}'s processes outlived it: {[p for p in tree if _alive(p)]}"
        time.sleep(0.1)


def test_sigkilled_join_and_serve_leave_nothing_running(tmp_path: Path) -> None:
    with LocalDeployment(tmp_path, agencies=("social_care", "school"), people=20, insecure=True) as d:
        d.prepare()
        d.start_coordinator()
        node = d.start_node("school")
        d.wait_connected(["school"])
        _sigkill_and_wait(node.pid, "node join")
        node.wait(timeout=5)
        d.nodes.pop("school")
        check_port_free(HOST, d.ports["school"], "school's SuperNode")  # the next join may use the port

        assert d.coordinator is not None
        _sigkill_and_wait(d.coordinator.pid, "coordinator serve")
        d.coordinator.wait(timeout=5)
        d.coordinator = None
        check_port_free(*split_address(d.address), "the SuperLink")

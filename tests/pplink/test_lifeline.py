"""Children die with their parent: a SIGKILLed parent leaves no process and no held port behind."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from pplink.errors import TransportError
from pplink.transport.flower_env import free_port
from pplink.transport.lifeline import GRACE_SECONDS, check_port_free, lifeline_command


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            return ") Z " not in fh.read()
    except OSError:
        return False


def _wait_gone(pids: list[int], within: float) -> float:
    started = time.monotonic()
    while any(_alive(p) for p in pids):
        assert time.monotonic() - started < within, f"still running: {[p for p in pids if _alive(p)]}"
        time.sleep(0.05)
    return time.monotonic() - started


#: A service that listens on PORT and starts a helper in its process group; IGNORE makes it
#: ignore SIGTERM (a stuck service), so only the SIGKILL after the grace period ends it.
SERVICE = textwrap.dedent("""
    import signal, socket, subprocess, sys, time
    if sys.argv[2] == "ignore":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    listener = socket.socket()
    listener.bind(("127.0.0.1", int(sys.argv[1])))
    listener.listen()
    helper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    print(helper.pid, flush=True)
    time.sleep(120)
""")

#: The parent (pplink's role): starts the wrapped service in a session of its own, reports the
#: pids, then waits to be killed.
PARENT = textwrap.dedent("""
    import subprocess, sys
    from pplink.transport.lifeline import lifeline_command
    service = subprocess.Popen(lifeline_command([sys.executable, "-c", sys.argv[1], sys.argv[2], sys.argv[3]]),
                               stdout=subprocess.PIPE, text=True, start_new_session=True)
    helper = service.stdout.readline().strip()
    print(service.pid, helper, flush=True)
    service.wait()
""")


def _children_of(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", encoding="ascii") as fh:
                    if int(fh.read().rsplit(")", 1)[1].split()[1]) == pid:
                        out.append(int(entry))
            except OSError:
                continue
    return out


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("mode", ["polite", "ignore"])
def test_sigkilled_parent_takes_the_service_and_its_port_along(mode: str) -> None:
    port = free_port()
    with subprocess.Popen([sys.executable, "-c", PARENT, SERVICE, str(port), mode], stdout=subprocess.PIPE,
                          text=True) as parent:
        assert parent.stdout is not None
        wrapper, helper = (int(x) for x in parent.stdout.readline().split())
        service = _children_of(wrapper)
        assert len(service) == 1 and _alive(helper)
        with pytest.raises(TransportError, match=f"port {port} on 127.0.0.1 is already in use"):
            check_port_free("127.0.0.1", port, "the test service")
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        took = _wait_gone([wrapper, *service, helper], within=GRACE_SECONDS + 5)
    check_port_free("127.0.0.1", port, "the test service")  # free again: a new start would work
    if mode == "polite":
        assert took < 3, "a service that stops on SIGTERM should not wait for the SIGKILL"


def test_wrapper_ends_as_its_command_ends() -> None:
    """A caller sees the command's own status, or its signal, through the wrapper."""
    assert subprocess.run(lifeline_command([sys.executable, "-c", "raise SystemExit(3)"]), check=False).returncode == 3
    with subprocess.Popen(lifeline_command([sys.executable, "-c", "import time; print(1, flush=True); time.sleep(60)"]),
                          stdout=subprocess.PIPE, text=True, start_new_session=True) as process:
        assert process.stdout is not None and process.stdout.readline().strip() == "1"
        process.terminate()  # passed on to the command, which dies of it; so does the wrapper
        assert process.wait(timeout=10) == -signal.SIGTERM


def test_a_free_port_passes_and_a_taken_one_is_named() -> None:
    port = free_port()
    check_port_free("127.0.0.1", port, "x")
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)  # as gRPC servers listen
        listener.bind(("127.0.0.1", port))
        listener.listen()
        with pytest.raises(TransportError, match="an earlier x still runs"):
            check_port_free("127.0.0.1", port, "x")

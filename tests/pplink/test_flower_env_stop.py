"""stop_process: whatever pplink started ends, politely first, and takes its group's leftovers along."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from pplink.transport.flower_env import stop_process


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
        return ") Z " not in fh.read()


def test_a_process_ignoring_sigterm_is_killed_after_the_timeout() -> None:
    script = ("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True);"
              " time.sleep(60)")
    with subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True) as process:
        assert process.stdout is not None and process.stdout.readline().strip() == "ready"
        started = time.monotonic()
        stop_process(process, 0.5)
        assert process.returncode == -9 and time.monotonic() - started < 10


def test_group_leftovers_are_terminated_too() -> None:
    # The leader starts a child in its own session (group) and exits on SIGTERM; the child would
    # outlive it without the group signal.
    script = ("import subprocess, sys, time;"
              " c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']);"
              " print(c.pid, flush=True); time.sleep(60)")
    with subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                          start_new_session=True) as process:
        assert process.stdout is not None
        child = int(process.stdout.readline())
        stop_process(process, 5, group=True)
        deadline = time.monotonic() + 10
        while _alive(child):
            assert time.monotonic() < deadline, "the group's leftover outlived stop_process"
            time.sleep(0.05)


def test_an_ended_process_is_left_alone() -> None:
    with subprocess.Popen([sys.executable, "-c", "pass"]) as process:
        process.wait()
        stop_process(process, 1, group=True)
        assert process.returncode == 0

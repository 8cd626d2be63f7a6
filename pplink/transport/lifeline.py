"""Flower processes that die with the pplink process that started them, however it dies.

pplink starts Flower's SuperNode and SuperLink in sessions of their own (so a Ctrl-C at the
terminal reaches pplink, which stops them in order). A session of their own also means that a
SIGKILL of pplink (or the OOM killer, or a second signal during shutdown) used to leave them
running, holding their ports. :func:`lifeline_command` wraps such a command in this file, run as a
script (standard library only, so it starts in milliseconds)::

    python -I lifeline.py --parent PID -- COMMAND ...

The wrapper leads the new process group and runs COMMAND in it. It asks the kernel for SIGTERM
when its parent dies (Linux ``prctl(PR_SET_PDEATHSIG)``) and also checks its parent id every
0.2 s (any POSIX system). When the parent is gone, it sends SIGTERM to the whole group (COMMAND
and whatever COMMAND started in it, such as Flower's SuperExec and apps), and SIGKILL after a few
seconds. A SIGTERM, SIGINT or SIGHUP from the parent is passed on to COMMAND, and the wrapper ends
as COMMAND ends, with its status (or by its signal), so callers see COMMAND's exit.

:func:`check_port_free` refuses to start on a port something else still holds, such as an
orphan of a pplink killed before this existed.
"""

from __future__ import annotations

import argparse
import errno
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence

__all__ = ["GRACE_SECONDS", "check_port_free", "die_with_parent", "lifeline_command", "main"]

#: Seconds the group gets to stop after SIGTERM before SIGKILL, once the parent is gone.
GRACE_SECONDS = 5.0
_CHECK_EVERY = 0.2
_PR_SET_PDEATHSIG = 1


def lifeline_command(command: Sequence[str], parent: int | None = None) -> list[str]:
    """``command`` wrapped so that it and its group end when ``parent`` (default: this process) ends.

    Start the result with ``start_new_session=True``: the wrapper then leads a group of its own.

    >>> cmd = lifeline_command(["flower-superlink", "--insecure"], parent=42)
    >>> cmd[3:]
    ['--parent', '42', '--', 'flower-superlink', '--insecure']
    """
    # -I: the wrapper imports only the standard library, never a module beside this file.
    return [sys.executable, "-I", os.path.abspath(__file__), "--parent", str(parent or os.getpid()), "--", *command]


def check_port_free(host: str, port: int, what: str) -> None:
    """Refuse to start when ``host:port`` is taken (typically by an orphan of an earlier start).

    gRPC servers, Flower's included, listen with ``SO_REUSEPORT``, so a second one starts
    without error on a port an orphan still holds and then never receives its traffic; binding a
    plain socket first turns that into a clear refusal.

    Raises:
        TransportError: something listens on the port already.
    """
    from pplink.errors import TransportError

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        # SO_REUSEADDR: a port whose last connections linger in TIME_WAIT is free; a listener is not.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                return  # not an address of this host, say: the program itself will report it
            raise TransportError(
                f"port {port} on {host} is already in use, so {what} cannot start: most likely an earlier "
                f"{what} still runs (left behind when its pplink process was killed); stop it (for example "
                f"`fuser -k {port}/tcp`) or choose another port") from None


def die_with_parent() -> None:
    """Ask Linux for SIGTERM when the parent ends (best effort: a no-op elsewhere)."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def _stop_group(child: subprocess.Popen[bytes]) -> None:
    """SIGTERM the group, wait up to :data:`GRACE_SECONDS` for COMMAND, then SIGKILL the group (us too)."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        os.killpg(0, signal.SIGTERM)
    except OSError:
        pass
    try:
        child.wait(timeout=GRACE_SECONDS)
    except subprocess.TimeoutExpired:
        pass
    time.sleep(0.2)  # what COMMAND started gets a moment after COMMAND itself
    os.killpg(0, signal.SIGKILL)


def main(argv: Sequence[str] | None = None) -> int:
    """Run COMMAND until it ends or the parent does; see the module docstring."""
    parser = argparse.ArgumentParser(prog="lifeline.py", description=__doc__.splitlines()[0])
    parser.add_argument("--parent", type=int, required=True, help="the process whose end ends COMMAND")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no COMMAND given")
    die_with_parent()
    orphaned = [os.getppid() != args.parent]
    child = None if orphaned[0] else subprocess.Popen(command)

    def on_signal(signum: int, _frame: object) -> None:
        if os.getppid() != args.parent:
            orphaned[0] = True  # the kernel's parent-death signal, or the parent's last act
        elif child is not None and child.poll() is None:
            child.send_signal(signum)

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, on_signal)
    if child is None:
        return 1
    while child.poll() is None:
        if orphaned[0] or os.getppid() != args.parent:
            _stop_group(child)
        time.sleep(_CHECK_EVERY)
    code = child.returncode
    if code < 0:  # end the way COMMAND ended, so the caller sees the same status
        signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    return code


if __name__ == "__main__":
    sys.exit(main())

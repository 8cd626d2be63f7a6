"""How pplink starts Flower's programs: air-gapped, and from this environment's own executables.

Every Flower process pplink starts (SuperLink, SuperNode, ``flwr``) gets an environment with
telemetry and the update check switched off, ``FLWR_HOME`` pointing into pplink's own state
folder, and this Python environment's ``bin`` folder first on ``PATH`` (the SuperLink starts
``flower-superexec`` by name). Runtime installation of app dependencies stays disabled, so
nothing is fetched from the network.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

from pplink.errors import DependencyMissingError, UsageError

__all__ = ["flower_env", "flower_executable", "free_port", "split_address", "stop_process"]

_AIR_GAPPED = {"FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1"}
#: Flower's SuperExec polls for work every second by default; each round step waits for it, so a
#: shorter interval takes ~0.4 s off every step at the cost of a few idle requests on localhost.
_SUPEREXEC_POLL = {"FLWR_SUPEREXEC_TASK_POLL_INTERVAL": "0.2"}


def flower_env(flwr_home: Path | None = None, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for a Flower subprocess.

    Args:
        flwr_home: Flower's home folder for this process (config, installed apps).
        base: the environment to start from (default: this process's).

    >>> env = flower_env(Path("/tmp/x"), base={"PATH": "/usr/bin"})
    >>> env["FLWR_TELEMETRY_ENABLED"], env["FLWR_DISABLE_UPDATE_CHECK"], env["FLWR_HOME"]
    ('0', '1', '/tmp/x')
    """
    env = dict(os.environ if base is None else base)
    env.update(_AIR_GAPPED)
    for name, value in _SUPEREXEC_POLL.items():
        env.setdefault(name, value)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    if flwr_home is not None:
        env["FLWR_HOME"] = str(Path(flwr_home).resolve())
    return env


def flower_executable(name: str) -> str:
    """The path of a Flower program, preferring the one installed beside this Python.

    Raises:
        DependencyMissingError: the program is not installed.
    """
    beside = Path(sys.executable).parent / name
    if beside.is_file():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        raise DependencyMissingError(f"{name} not found; install pplink with its Flower dependency (flwr==1.41)")
    return found


def split_address(address: str) -> tuple[str, int]:
    """Split ``HOST:PORT`` (IPv6 in brackets).

    >>> split_address("127.0.0.1:9091"), split_address("[::1]:9091")
    (('127.0.0.1', 9091), ('::1', 9091))

    Raises:
        UsageError: not HOST:PORT with a port in 1..65535.
    """
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"{address!r}: expected HOST:PORT")
    return host.strip("[]"), int(port)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that was free a moment ago (for tests and local pilots)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def stop_process(process: subprocess.Popen[bytes] | subprocess.Popen[str], timeout: float, *,
                 group: bool = False) -> None:
    """Stop a process pplink started: SIGTERM, then SIGKILL if it has not ended within ``timeout`` s.

    Args:
        process: the process (already ended is fine).
        timeout: seconds it gets to end after SIGTERM.
        group: also SIGTERM its process group, for a process started with ``start_new_session``:
            what it started (Flower's SuperExec and apps) can outlive it by seconds.
    """
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    if group:
        try:
            os.killpg(process.pid, signal.SIGTERM)  # the group it leads: only its leftovers
        except (ProcessLookupError, PermissionError):
            pass

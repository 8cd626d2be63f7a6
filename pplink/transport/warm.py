"""Warm starts for the process Flower starts per message: a preloaded zygote and a launcher.

Flower 1.41's SuperExec starts a new ``flwr-clientapp`` (at an agency, for every message) or
``flwr-serverapp`` (at the coordinator, for every run) by name from ``PATH``. Each of those
processes spends about three seconds of CPU importing Flower, NumPy, clkhash and pplink before it
does any work, and four agencies on a small machine pay that four times per exchange.

Here the imports are paid once. A *zygote* process (``python -m pplink.transport.warm``, started by
``pplink node join`` and ``pplink coordinator serve``) imports Flower's entry point and pplink's
app, then waits on a Unix socket in a private folder. pplink puts a small *launcher* of the same
name first on the ``PATH`` it gives Flower; the launcher hands its arguments, environment,
working folder and standard streams to the zygote, which forks a child that runs Flower's own
entry point (``flwr.supernode.cli:flwr_clientapp`` or ``flwr.superlink.cli:flwr_serverapp``) with
them. The launcher forwards termination signals to that child and exits with its status, so to
Flower it is the process it started. Nothing about what runs changes, only when it was imported:
a launcher that finds no zygote (not started yet, or gone) replaces itself with the real program.

The socket and launcher live in a folder only the owner can open (0700): whoever can connect can
run Flower's app entry point as the owner, which is what the launcher's caller can do anyway.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import signal
import socket
import stat
import struct
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from pplink.transport.flower_env import stop_process
from pplink.transport.lifeline import die_with_parent

__all__ = ["ENTRY_POINTS", "WarmStart", "launcher_script", "start_warm", "warm_path", "zygote_main"]

#: The Flower programs pplink warms, with the entry point each one's console script calls.
ENTRY_POINTS = {
    "flwr-clientapp": "flwr.supernode.cli:flwr_clientapp",
    "flwr-serverapp": "flwr.superlink.cli:flwr_serverapp",
    "flwr": "flwr.cli.app:app",  # `flwr run`, which `pplink coordinator run` starts once per round
}
_HEADER = struct.Struct("!I")
_STATUS = struct.Struct("!i")
#: The longest Unix socket path used in place (Linux allows 107 bytes and a terminating NUL).
_MAX_SOCKET_PATH = 100
#: How often an idle zygote checks that the process that started it is still there.
_OWNER_CHECK_SECONDS = 1.0

_LAUNCHER = '''\
#!{python} -IS
# Written by pplink (pplink/transport/warm.py): hands this {program} start to the warm zygote;
# without one, runs the real program. Safe to delete: pplink writes it again.
import json, os, signal, socket, struct, sys

SOCKET = {socket!r}
REAL = {real!r}


def real():
    os.execv(REAL, [REAL, *sys.argv[1:]])


try:
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.connect(SOCKET)
except OSError:
    real()
payload = json.dumps({{"argv": [REAL, *sys.argv[1:]], "env": dict(os.environ), "cwd": os.getcwd()}}).encode()
data = struct.pack("!I", len(payload)) + payload
try:
    sent = socket.send_fds(conn, [data], [0, 1, 2])
    conn.sendall(data[sent:])
except OSError:
    real()


def read(n):
    got = b""
    while len(got) < n:
        part = conn.recv(n - len(got))
        if not part:
            return None
        got += part
    return got


pid = read(4)
if pid is None:
    real()  # the zygote went away before it started anything
child = struct.unpack("!i", pid)[0]


def forward(signum, frame):
    try:
        os.kill(child, signum)
    except ProcessLookupError:
        pass


for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT):
    signal.signal(sig, forward)
status = read(4)
sys.exit(struct.unpack("!i", status)[0] if status is not None else 1)
'''


def launcher_script(program: str, socket_path: Path, real: Path, python: str = sys.executable) -> str:
    """The launcher installed as ``program`` (a Python script using only the standard library).

    >>> text = launcher_script("flwr-clientapp", Path("/s/zygote.sock"), Path("/v/bin/flwr-clientapp"), "/v/bin/python")
    >>> text.splitlines()[0]
    '#!/v/bin/python -IS'
    >>> "SOCKET = '/s/zygote.sock'" in text and "REAL = '/v/bin/flwr-clientapp'" in text
    True
    """
    return _LAUNCHER.format(python=python, program=program, socket=str(socket_path), real=str(real))


def _entry_point(ref: str) -> Callable[[], object]:
    module, _, attribute = ref.partition(":")
    return getattr(importlib.import_module(module), attribute)  # type: ignore[no-any-return]


def _read_exact(conn: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        part = conn.recv(n - len(data))
        if not part:
            raise ConnectionError("launcher closed the connection")
        data += part
    return data


def _receive(conn: socket.socket) -> tuple[dict[str, object], list[int]]:
    first, fds, _, _ = socket.recv_fds(conn, 1 << 16, 3)
    if len(first) < _HEADER.size:
        first += _read_exact(conn, _HEADER.size - len(first))
    (length,) = _HEADER.unpack_from(first)
    body = first[_HEADER.size :]
    if len(body) < length:
        body += _read_exact(conn, length - len(body))
    return json.loads(body[:length]), fds


def _run_child(conn: socket.socket, request: dict[str, object], fds: Sequence[int],
               entry: Callable[[], object]) -> None:
    """In the forked child: become the launcher's process, run the entry point, report, exit."""
    code = 1
    try:
        die_with_parent()  # a zygote that stops (its owner died) takes the messages it is serving with it
        for target, fd in zip((0, 1, 2), fds, strict=False):
            os.dup2(fd, target)
        for fd in fds:
            if fd > 2:
                os.close(fd)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        os.chdir(str(request["cwd"]))
        os.environ.clear()
        os.environ.update({str(k): str(v) for k, v in dict(request["env"]).items()})  # type: ignore[call-overload]
        sys.argv = [str(a) for a in request["argv"]]  # type: ignore[attr-defined]
        conn.sendall(_STATUS.pack(os.getpid()))
        try:
            entry()
            code = 0
        except SystemExit as done:
            code = done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
    except BaseException:  # noqa: BLE001 - the child must report and exit whatever happened
        traceback.print_exc()
        code = 1
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
            conn.sendall(_STATUS.pack(code))
        except BaseException:  # noqa: BLE001, S110 - the launcher may be gone; exit regardless
            pass
        os._exit(code)


def zygote_main(argv: Sequence[str] | None = None) -> int:
    """``python -m pplink.transport.warm --entry MODULE:FUNCTION --socket S [--preload MODULE ...]``.

    Serves until the process that started it ends (or a signal stops it).
    """
    parser = argparse.ArgumentParser(prog="python -m pplink.transport.warm", description=__doc__.splitlines()[0])
    parser.add_argument("--entry", required=True, help="the program's entry point, MODULE:FUNCTION")
    parser.add_argument("--socket", required=True, type=Path)
    parser.add_argument("--preload", action="append", default=[], help="module to import before serving")
    parser.add_argument("--owner", type=int, default=None, help="serve while this process is our parent")
    args = parser.parse_args(argv)
    owner = args.owner if args.owner is not None else os.getppid()
    entry = _entry_point(args.entry)
    for module in args.preload:
        importlib.import_module(module)
    # Children are reaped by the kernel; their exit status goes to the launcher instead.
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    path = Path(args.socket)
    path.unlink(missing_ok=True)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    os.chmod(path, stat.S_IRUSR | stat.S_IWUSR)
    server.listen(16)
    server.settimeout(_OWNER_CHECK_SECONDS)
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        while os.getppid() == owner:
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            fds: list[int] = []
            try:
                conn.settimeout(10.0)
                request, fds = _receive(conn)
                conn.settimeout(None)
            except (OSError, ValueError, ConnectionError):
                conn.close()
                for fd in fds:
                    os.close(fd)
                continue
            pid = os.fork()
            if pid == 0:
                server.close()
                _run_child(conn, request, fds, entry)
            # One line per start, so an operator (and the integration tests) can see warm starts happen.
            print(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} started {args.entry} as pid {pid}", flush=True)
            conn.close()
            for fd in fds:
                os.close(fd)
    finally:
        server.close()
        path.unlink(missing_ok=True)
    return 0


def _can_warm_start() -> bool:
    """Fork, descriptor passing, and an interpreter path a ``#!`` line can hold (no whitespace)."""
    return hasattr(os, "fork") and hasattr(socket, "send_fds") and not any(c.isspace() for c in sys.executable)


@dataclass
class WarmStart:
    """A running zygote and the ``PATH`` folder holding its launcher."""

    bin_dir: Path
    socket_path: Path
    process: subprocess.Popen[bytes]

    def wait_ready(self, timeout: float = 120.0) -> bool:
        """Wait until the zygote serves (its imports done, so the first message is warm too).

        Returns:
            False if the zygote exited or did not serve within ``timeout`` (launchers then run
            the real program: slower, never different).
        """
        deadline = time.monotonic() + timeout
        while not self.socket_path.exists():
            if self.process.poll() is not None or time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    def stop(self) -> None:
        """Stop the zygote (children already started finish on their own)."""
        stop_process(self.process, 10)
        self.socket_path.unlink(missing_ok=True)
        if self.socket_path.parent.name.startswith("pplink-warm-"):
            try:
                self.socket_path.parent.rmdir()
            except OSError:
                pass


def start_warm(program: str, folder: Path, env: dict[str, str], preload: Sequence[str],
               log: Path | None = None, *, entry: str | None = None, real: Path | None = None) -> WarmStart | None:
    """Start a zygote for ``program`` and write its launcher into ``folder/bin``.

    Put ``folder/bin`` first on the ``PATH`` of the Flower process that starts ``program``. The
    zygote stops by itself when the calling process ends.

    Args:
        program: the program name Flower starts (a key of :data:`ENTRY_POINTS`, or any name
            given ``entry`` and ``real``).
        folder: a folder for the socket and launcher (made private, 0700).
        env: the zygote's environment (each child takes its launcher's).
        preload: modules to import once, before serving.
        log: where the zygote's own output goes (default: discarded).
        entry: the entry point ``MODULE:FUNCTION`` (default: Flower's, from :data:`ENTRY_POINTS`).
        real: the program the launcher runs when no zygote answers (default: the one installed
            beside this Python).

    Returns:
        The zygote, or ``None`` where the real program is not installed (Flower then fails or
        finds it on its own, as without pplink).
    """
    real = Path(real) if real is not None else Path(sys.executable).parent / program
    if not real.is_file() or not _can_warm_start():
        return None
    entry = entry or ENTRY_POINTS[program]
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(folder, 0o700)
    bin_dir = folder / "bin"
    bin_dir.mkdir(exist_ok=True, mode=0o700)
    socket_path = folder / "zygote.sock"
    if len(os.fsencode(socket_path)) > _MAX_SOCKET_PATH:
        # Unix socket paths are limited (108 bytes on Linux): a deep folder gets a private temporary one.
        socket_path = Path(tempfile.mkdtemp(prefix="pplink-warm-")) / "zygote.sock"
    socket_path.unlink(missing_ok=True)  # a stale one would look ready (see WarmStart.wait_ready)
    launcher = bin_dir / program
    launcher.write_text(launcher_script(program, socket_path, real), encoding="utf-8")
    os.chmod(launcher, 0o700)
    cmd = [sys.executable, "-m", "pplink.transport.warm", "--entry", entry, "--socket", str(socket_path),
           "--owner", str(os.getpid())]
    for module in preload:
        cmd += ["--preload", module]
    out = open(log, "ab") if log is not None else subprocess.DEVNULL  # noqa: SIM115 - handed to the child
    try:
        process = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    finally:
        if log is not None:
            out.close()  # type: ignore[union-attr]
    return WarmStart(bin_dir, socket_path, process)


def warm_path(program: str, folder: Path, env: dict[str, str], preload: Sequence[str]) -> WarmStart | None:
    """Start a zygote for ``program``, wait until it serves, and put its launcher first on ``env``'s PATH.

    Waiting matters: a service that looks ready answers its first message warm too. The zygote's
    own output (a line per start) goes to ``<folder>.log``.

    Returns:
        The zygote to stop when the service stops, or ``None`` (``env`` untouched) where warm
        starts are unavailable; Flower then starts the real program for each message.
    """
    folder = Path(folder)
    warm = start_warm(program, folder, env, preload, log=folder.with_suffix(".log"))
    if warm is None:
        return None
    if not warm.wait_ready():
        warm.stop()
        return None
    env["PATH"] = os.pathsep.join([str(warm.bin_dir), env.get("PATH", "")])
    return warm


if __name__ == "__main__":
    raise SystemExit(zygote_main())

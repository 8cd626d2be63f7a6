"""``pplink node join``: run this agency's Flower SuperNode, dialling out to the coordinator.

The SuperNode connects to the coordinator's SuperLink over TLS (trusting only the given CA
certificate), authenticates with the agency's Flower node key (``<party>.flwr``, registered by the
coordinator) and runs pplink's ClientApp for each request, with the settings below passed as its
node config. Everything is checked locally before anything connects, so a wrong path or key fails
here rather than in the middle of a round.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from nodes.export_settings import load_export_settings
from nodes.match_round import NODE_CONFIG_KEYS
from pplink.agreement import load_agreement
from pplink.crypto import load_private_key, load_secret, public_key_text
from pplink.errors import KeyFileError, TransportError, UsageError
from pplink.transport.flower_env import flower_env, flower_executable, split_address, stop_process
from pplink.transport.lifeline import check_port_free, lifeline_command
from pplink.transport.warm import warm_path

__all__ = ["DEFAULT_POLL_INTERVAL", "JoinSettings", "check_join", "join", "node_config_toml", "supernode_command"]

#: Flower's exit status for a SuperNode the SuperLink refused (unregistered key).
_REFUSED = 305
#: Seconds between an idle SuperNode's asks for work: a message waits half this on average.
DEFAULT_POLL_INTERVAL = 0.5
_RETRY_EVERY = 5.0


@dataclass(frozen=True)
class JoinSettings:
    """One agency's SuperNode.

    Attributes:
        agreement_path: the agreement file.
        party: this agency's id.
        superlink: the coordinator's SuperLink, ``HOST:PORT``.
        data_path: the records (CSV or Parquet).
        secret_path: the linkage secret (None: ``$PPLINK_SECRET``).
        key_path: the agency's Ed25519 signing key.
        flower_key_path: the agency's Flower node key (default: ``<key>`` with suffix ``.flwr``).
        out_dir: where ``<party>.entities.csv`` and the node's working files go.
        root_certificates: the CA certificate that signed the SuperLink's (needed unless insecure).
        port: the SuperNode's local runtime port (each SuperNode on one host needs its own).
        insecure: no TLS and no node key (tests only).
        skip_invalid: encode valid rows and list invalid ones in a local rejects file.
        workers: encoding processes (None: automatic).
        warm_start: serve Flower's per-message ClientApp processes from a preloaded zygote
            (:mod:`pplink.transport.warm`) rather than a fresh interpreter each time.
        poll_interval: seconds the idle SuperNode waits between asks for work (Flower's own is 3;
            see :mod:`nodes.flower.supernode_poll`).
        settings_path: the agency's export settings TOML (:mod:`nodes.export_settings`), if any.
    """

    agreement_path: Path
    party: str
    superlink: str
    data_path: Path
    secret_path: Path | None
    key_path: Path
    out_dir: Path
    flower_key_path: Path | None = None
    root_certificates: Path | None = None
    port: int = 9094
    insecure: bool = False
    skip_invalid: bool = False
    workers: int | None = None
    warm_start: bool = True
    poll_interval: float = DEFAULT_POLL_INTERVAL
    settings_path: Path | None = None

    @property
    def flower_key(self) -> Path:
        """The Flower node key in use."""
        return Path(self.flower_key_path) if self.flower_key_path else Path(self.key_path).with_suffix(".flwr")


def check_join(settings: JoinSettings) -> None:
    """Check everything the node will need before it connects.

    Raises:
        AgreementError, SecretError, KeyFileError, UsageError: as the check that failed.
    """
    agreement = load_agreement(settings.agreement_path)
    agreement.agency(settings.party)
    split_address(settings.superlink)
    load_secret(settings.secret_path)
    key = load_private_key(settings.key_path)
    if public_key_text(key) != agreement.agency(settings.party).public_key:
        raise KeyFileError(f"{settings.key_path}: not {settings.party}'s signing key in the agreement")
    if not Path(settings.data_path).is_file():
        raise UsageError(f"{settings.data_path}: records file not found")
    load_export_settings(settings.settings_path)  # a bad settings file stops the node before it joins
    if not settings.insecure:
        if settings.root_certificates is None or not Path(settings.root_certificates).is_file():
            raise UsageError(f"{settings.root_certificates}: the coordinator's CA certificate is needed "
                             "(--root-certificates), or --insecure for tests")
        if not settings.flower_key.is_file():
            raise KeyFileError(f"{settings.flower_key}: this agency's Flower node key is missing; create it with "
                               f"`pplink keys new --party {settings.party} --flower-node-key` and give the "
                               "coordinator the .flwr.pub")


def node_config_toml(settings: JoinSettings) -> str:
    """The ClientApp's settings as a TOML document (keys as in ``--node-config``).

    >>> s = JoinSettings(Path("/a/agreement.toml"), "school", "127.0.0.1:9091", Path("/a/school.csv"),
    ...                  Path("/a/secret"), Path("/a/school.key"), Path("/a/out"))
    >>> print(node_config_toml(s))  # doctest: +NORMALIZE_WHITESPACE
    agreement = "/a/agreement.toml"
    party = "school"
    data-path = "/a/school.csv"
    secret = "/a/secret"
    key = "/a/school.key"
    out-dir = "/a/out"
    skip-invalid = false
    """
    values: dict[str, object] = {
        "agreement": str(Path(settings.agreement_path).resolve()),
        "party": settings.party,
        "data-path": str(Path(settings.data_path).resolve()),
        "secret": str(Path(settings.secret_path).resolve()) if settings.secret_path else None,
        "key": str(Path(settings.key_path).resolve()),
        "out-dir": str(Path(settings.out_dir).resolve()),
        "skip-invalid": settings.skip_invalid,
        "workers": settings.workers,
        "settings": str(Path(settings.settings_path).resolve()) if settings.settings_path else None,
    }
    assert set(values) <= set(NODE_CONFIG_KEYS)
    # JSON strings and booleans are valid TOML values.
    return "".join(f"{k} = {json.dumps(v)}\n" for k, v in values.items() if v is not None)


def supernode_command(settings: JoinSettings, node_config_file: Path) -> list[str]:
    """The command line running Flower's SuperNode (through :mod:`nodes.flower.supernode_poll`)."""
    flower_executable("flower-supernode")  # installed, or a clear error now
    cmd = [sys.executable, "-m", "nodes.flower.supernode_poll", "--poll-interval", f"{settings.poll_interval:g}", "--",
           "--superlink", settings.superlink, "--port", str(settings.port), "--node-config", str(node_config_file)]
    if settings.insecure:
        return [*cmd, "--insecure"]
    assert settings.root_certificates is not None
    return [*cmd, "--root-certificates", str(Path(settings.root_certificates).resolve()),
            "--auth-supernode-private-key", str(settings.flower_key.resolve())]


def _echo(line: str) -> None:
    sys.stdout.write(line)
    sys.stdout.flush()


def _run_supernode(cmd: list[str], env: dict[str, str], cwd: Path, write: Callable[[str], None]) -> tuple[int, bool]:
    """Run one SuperNode process to its end; return its status and whether the SuperLink refused it.

    The SuperNode runs in a process group of its own so that what it started (Flower's SuperExec,
    which can outlive it by seconds and keeps its output pipe open) is stopped with it; the group
    is stopped by :mod:`pplink.transport.lifeline` if this process dies first.
    """
    refused = threading.Event()
    # Wrapped so that it, and all it started, end when this process ends, even by SIGKILL.
    process = subprocess.Popen(lifeline_command(cmd), env=env, cwd=cwd, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, errors="replace", bufsize=1, start_new_session=True)

    def pump() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            if f"Exit Code: {_REFUSED}" in line:  # logged even when the process exits with status 1
                refused.set()
            write(line)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        status = process.wait()
        reader.join(timeout=2)
        return status, refused.is_set()
    finally:
        stop_process(process, 15, group=True)


def join(settings: JoinSettings, *, on_start: Callable[[list[str]], None] | None = None,
         on_output: Callable[[str], None] | None = None, retry_for: float = 120.0) -> int:
    """Check the settings, then run the SuperNode in the foreground until it stops.

    The SuperLink refuses a node whose key is not registered yet, and also a node that crashed
    until Flower notices its previous session ended (up to 60 s, two missed heartbeats); either
    way the SuperNode is started again every few seconds for up to ``retry_for`` seconds.
    Output lines go to ``on_output`` (default: this process's stdout); Flower's own state
    (installed app bundles) goes to ``<out-dir>/flwr-home``.

    Returns:
        The SuperNode's exit status (0 when stopped by a signal handled by the caller).

    Raises:
        TransportError: the SuperLink still refused this node after ``retry_for`` seconds.
    """
    check_join(settings)
    check_port_free("127.0.0.1", settings.port, f"{settings.party}'s SuperNode")
    out = Path(settings.out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True, mode=0o700)
    config_file = out / "node-config.toml"
    config_file.write_text(node_config_toml(settings), encoding="utf-8")
    cmd = supernode_command(settings, config_file)
    if on_start is not None:
        on_start(cmd)
    write = on_output or _echo
    deadline = time.monotonic() + retry_for
    env = flower_env(out / "flwr-home")
    warm = warm_path("flwr-clientapp", out / "warm", env, ["nodes.flower.client_app"]) if settings.warm_start else None
    if settings.warm_start and warm is None:
        write(f"pplink: warm start unavailable (see {out / 'warm.log'}); each message starts a fresh process\n")
    try:
        while True:
            status, refused = _run_supernode(cmd, env, out, write)
            if not (refused or status == _REFUSED):
                return status
            if time.monotonic() >= deadline:
                raise TransportError(
                    f"the SuperLink at {settings.superlink} refused {settings.party}'s node for {retry_for:g} s: "
                    f"its Flower node key {settings.flower_key} is not registered there, or an earlier session "
                    "of this node is still open")
            write(f"pplink: the SuperLink refused {settings.party}'s node (key not registered yet, or an earlier "
                  f"session still open); trying again in {_RETRY_EVERY:g} s\n")
            time.sleep(_RETRY_EVERY)
    finally:
        if warm is not None:
            warm.stop()

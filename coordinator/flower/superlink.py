"""``pplink coordinator serve``: the coordinator's Flower SuperLink, with TLS and node authentication.

The SuperLink listens on one address (Flower 1.41 serves its Fleet, Control and Runtime APIs over
one HTTPS port). Agencies' SuperNodes dial out to it; nothing dials in to an agency. With TLS
(the default) the SuperLink runs with ``--enable-supernode-auth`` and pplink registers exactly
the agreement's agencies, each under its agency id, with the Flower node key the agency gave the
coordinator (``<keys-dir>/<party>.flwr.pub``). A SuperNode with any other key is refused by the
SuperLink (it exits with Flower's code 305) before it can receive a message.

Everything lives in the coordinator's state folder::

    flwr.db            Flower's own state (runs, registered nodes), kept across restarts
    flwr-home/         FLWR_HOME for the flwr CLI: config.toml naming this SuperLink
    nodes.json         the agencies' registered node keys (read by the ServerApp)
    serve.json         address and TLS settings while the SuperLink runs (read by `coordinator run`)
    superlink.log      the SuperLink's output
    runs/, rounds/     pplink's run records and each kept round's outputs

``--insecure`` (tests only) runs without TLS; Flower then allows no node authentication, so any
SuperNode that can reach the port may connect, and nodes are known only by what they sign.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from coordinator.flower.certs import tls_files
from coordinator.run_records import mark_interrupted, timestamp
from pplink.agreement import AgreementConfig
from pplink.atomic import atomic_write
from pplink.errors import KeyFileError, TransportError, UsageError
from pplink.keystore import flower_public_key_path, load_flower_public_key
from pplink.transport.flower_env import flower_env, flower_executable, split_address, stop_process
from pplink.transport.lifeline import check_port_free, lifeline_command
from pplink.transport.warm import warm_path

__all__ = [
    "CONNECTION_NAME",
    "SERVE_FILE",
    "ServeSettings",
    "flwr_home",
    "read_serve_info",
    "register_nodes",
    "serve",
    "superlink_command",
    "wait_until_listening",
    "write_flower_config",
]

#: The name of the SuperLink connection in ``flwr-home/config.toml``.
CONNECTION_NAME = "pplink"
SERVE_FILE = "serve.json"
_REGISTER_TIMEOUT = 60


@dataclass(frozen=True)
class ServeSettings:
    """How to run the coordinator's SuperLink.

    Attributes:
        agreement: the validated agreement (its agencies are registered).
        state_dir: the coordinator's state folder.
        address: ``HOST:PORT`` the SuperLink listens on.
        certs_dir: folder with ``ca.crt``, ``server.pem``, ``server.key`` (``pplink coordinator certs``).
        keys_dir: folder with each agency's ``<party>.flwr.pub``.
        insecure: no TLS and no node authentication (tests only).
        warm_start: serve Flower's per-run ServerApp processes from a preloaded zygote
            (:mod:`pplink.transport.warm`) rather than a fresh interpreter each time.
    """

    agreement: AgreementConfig
    state_dir: Path
    address: str = "127.0.0.1:9091"
    certs_dir: Path | None = None
    keys_dir: Path | None = None
    insecure: bool = False
    warm_start: bool = True

    @property
    def certs(self) -> Path:
        """The certificates folder (default ``<state>/certs``)."""
        return Path(self.certs_dir) if self.certs_dir else Path(self.state_dir) / "certs"


def flwr_home(state_dir: Path) -> Path:
    """The FLWR_HOME pplink uses for the coordinator's ``flwr`` CLI calls."""
    return Path(state_dir).resolve() / "flwr-home"


def write_flower_config(state_dir: Path, address: str, *, insecure: bool, ca_cert: Path | None) -> Path:
    """Write ``flwr-home/config.toml`` naming this SuperLink as connection ``pplink``; return FLWR_HOME."""
    home = flwr_home(state_dir)
    home.mkdir(parents=True, exist_ok=True)
    lines = ["[superlink]", f'default = "{CONNECTION_NAME}"', "", f"[superlink.{CONNECTION_NAME}]",
             f"address = {json.dumps(address)}"]
    if insecure:
        lines.append("insecure = true")
    else:
        assert ca_cert is not None
        lines.append(f"root-certificates = {json.dumps(str(Path(ca_cert).resolve()))}")
    (home / "config.toml").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return home


def superlink_command(settings: ServeSettings) -> list[str]:
    """The ``flower-superlink`` command line for these settings."""
    host, port = split_address(settings.address)
    cmd = [flower_executable("flower-superlink"), "--host", host, "--port", str(port),
           "--database", str(Path(settings.state_dir).resolve() / "flwr.db"),
           "--disable-runtime-dependency-installation"]
    if settings.insecure:
        return [*cmd, "--insecure"]
    files = tls_files(settings.certs)
    return [*cmd, "--ssl-ca-certfile", str(files.ca_cert.resolve()), "--ssl-certfile", str(files.server_cert.resolve()),
            "--ssl-keyfile", str(files.server_key.resolve()), "--enable-supernode-auth"]


def wait_until_listening(address: str, process: subprocess.Popen[bytes] | None, timeout: float,
                         log_path: Path | None = None) -> None:
    """Wait until something accepts TCP connections on ``address``.

    Raises:
        TransportError: the process exited first, or nothing listened within ``timeout``.
    """
    host, port = split_address(address)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            where = f"; see {log_path}" if log_path else ""
            raise TransportError(f"the Flower process exited with status {process.returncode} while starting{where}")
        try:
            with socket.create_connection((host, port), timeout=1):
                return
        except OSError:
            time.sleep(0.3)
    raise TransportError(f"nothing listens on {address} after {timeout:g} s")


def _check_certs(settings: ServeSettings) -> None:
    files = tls_files(settings.certs)
    missing = [p for p in (files.ca_cert, files.server_cert, files.server_key) if not p.is_file()]
    if missing:
        raise UsageError(f"{missing[0]}: not found; create test certificates with "
                         f"`pplink coordinator certs --dir {settings.certs}` or pass --certs-dir")


def _agency_keys(settings: ServeSettings) -> dict[str, tuple[Path, bytes]]:
    """Every agency's Flower node key, checked before anything starts."""
    keys_dir = settings.keys_dir
    if keys_dir is None:
        raise UsageError("--keys-dir is needed to register the agencies' Flower node keys")
    out = {}
    for party in settings.agreement.agency_ids:
        path = flower_public_key_path(keys_dir, party)
        if not path.is_file():
            raise KeyFileError(f"{path}: {party}'s Flower node key is missing; the agency creates it with "
                               f"`pplink keys new --party {party} --flower-node-key` and sends the .flwr.pub")
        out[party] = (path, load_flower_public_key(path))
    return out


def register_nodes(settings: ServeSettings, env: dict[str, str],
                   keys: dict[str, tuple[Path, bytes]] | None = None) -> dict[str, dict[str, object]]:
    """Register every agency's node key with the running SuperLink, under the agency's id.

    Keys registered by an earlier ``serve`` on the same state folder are kept; a party that left
    the agreement, or whose key changed, is unregistered first. Writes ``<state>/nodes.json``.

    Returns:
        ``{party: {"node_id", "public_key_file", "public_key_pem"}}``.

    Raises:
        TransportError: the SuperLink refused a registration.
    """
    keys = keys if keys is not None else _agency_keys(settings)
    from coordinator.flower.node_directory import NODES_FILE  # here: it imports Flower's ServerApp, seconds

    path = Path(settings.state_dir) / NODES_FILE
    previous = json.loads(path.read_text(encoding="utf-8"))["nodes"] if path.is_file() else {}
    flwr = flower_executable("flwr")

    def register(party: str) -> dict[str, object]:
        key_path, pem = keys[party]
        done = subprocess.run([flwr, "supernode", "register", str(key_path.resolve()), CONNECTION_NAME,
                               "--name", party, "--format", "json"], env=env, capture_output=True, text=True,
                              timeout=_REGISTER_TIMEOUT, check=False)
        try:
            answer = json.loads(done.stdout[done.stdout.index("{"):])
        except ValueError:
            answer = {"success": False, "error-message": (done.stderr or done.stdout).strip()[-300:]}
        if answer.get("success"):
            node_id: object = answer.get("node-id")
        elif "already in use" in str(answer.get("error-message", "")):
            node_id = previous.get(party, {}).get("node_id")  # registered by an earlier serve
        else:
            raise TransportError(f"registering {party}'s node key {key_path} failed: "
                                 f"{str(answer.get('error-message', 'no answer')).strip()}")
        return {"node_id": node_id, "public_key_file": str(key_path.resolve()), "public_key_pem": pem.decode("ascii")}

    def unregister(party: str) -> None:
        # A party no longer in the agreement (or whose key changed) must not keep a way in.
        node_id = previous[party].get("node_id")
        if node_id is not None:
            subprocess.run([flwr, "supernode", "unregister", str(node_id), CONNECTION_NAME, "--format", "json"],
                           env=env, capture_output=True, text=True, timeout=_REGISTER_TIMEOUT, check=False)

    stale = [p for p, info in previous.items()
             if p not in keys or info.get("public_key_pem") != keys[p][1].decode("ascii")]
    # One `flwr` process per agency, side by side: each spends ~2 s starting Python.
    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(unregister, stale))
        nodes = dict(zip(keys, pool.map(register, keys), strict=True))
    atomic_write(path, json.dumps({"agreement_id": settings.agreement.agreement_id, "auth": True, "nodes": nodes},
                                  indent=2))
    return nodes


def read_serve_info(state_dir: Path) -> dict[str, object]:
    """What the running ``coordinator serve`` recorded (address, TLS, FLWR_HOME).

    Raises:
        UsageError: no SuperLink is running for this state folder.
    """
    path = Path(state_dir) / SERVE_FILE
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise UsageError(f"{state_dir}: no SuperLink is running for this state folder; "
                         "start `pplink coordinator serve` first") from None
    pid = info.get("pid")
    if isinstance(pid, int):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            raise UsageError(f"{state_dir}: the SuperLink recorded in {SERVE_FILE} (pid {pid}) is not running; "
                             "start `pplink coordinator serve` again") from None
        except PermissionError:
            pass
    return dict(info)


def serve(settings: ServeSettings, *, on_ready: Callable[[dict[str, object]], None] | None = None,
          start_timeout: float = 60.0) -> int:
    """Start the SuperLink, register the agencies' nodes, and run until the SuperLink stops.

    The caller stops it with SIGINT/SIGTERM (turned into an exception by the CLI); the SuperLink
    is then terminated and ``serve.json`` removed. Runs recorded as running are marked
    interrupted at start (a restarted coordinator cannot resume them; run them again).

    Returns:
        The SuperLink's exit status.

    Raises:
        UsageError: certificates or keys are missing, or a SuperLink already serves the folder.
        TransportError: the SuperLink did not start or refused a registration.
    """
    state = Path(settings.state_dir).resolve()
    state.mkdir(parents=True, exist_ok=True)
    try:
        running = read_serve_info(state)
    except UsageError:
        running = None
    if running is not None:
        raise UsageError(f"{state}: a SuperLink already serves this state folder (pid {running.get('pid')}, "
                         f"{running.get('address')}); stop it first")
    check_port_free(*split_address(settings.address), "the SuperLink")
    keys = None
    if not settings.insecure:
        _check_certs(settings)
        keys = _agency_keys(settings)
    interrupted = mark_interrupted(state)
    ca = None if settings.insecure else tls_files(settings.certs).ca_cert.resolve()
    home = write_flower_config(state, settings.address, insecure=settings.insecure, ca_cert=ca)
    env = flower_env(home)
    warm = (
        warm_path("flwr-serverapp", state / "warm", env, ["coordinator.flower.server_app"])
        if settings.warm_start
        else None
    )
    # `flwr run` (started by `coordinator run` for every round) imports for seconds on a busy machine;
    # its launcher, recorded in serve.json, hands the start to a zygote that has imported it already.
    cli_env = dict(env)
    warm_cli = warm_path("flwr", state / "warm-cli", cli_env, ["flwr.cli.app"]) if settings.warm_start else None
    log_path = state / "superlink.log"
    serve_file = state / SERVE_FILE
    try:
        with open(log_path, "ab") as log:
            # Wrapped so that the SuperLink, and all it started, end when this process ends, even by SIGKILL.
            process = subprocess.Popen(lifeline_command(superlink_command(settings)), env=env, stdout=log,
                                       stderr=subprocess.STDOUT, cwd=state, start_new_session=True)
    except BaseException:
        for zygote in (warm, warm_cli):
            if zygote is not None:
                zygote.stop()
        raise
    try:
        wait_until_listening(settings.address, process, start_timeout, log_path)
        if settings.insecure:
            from coordinator.flower.node_directory import NODES_FILE

            (state / NODES_FILE).unlink(missing_ok=True)
            nodes: dict[str, dict[str, object]] = {}
        else:
            nodes = register_nodes(settings, env, keys)
        info: dict[str, object] = {
            "address": settings.address, "insecure": settings.insecure, "pid": process.pid,
            "ca_cert": str(ca) if ca else None, "flwr_home": str(home), "started": timestamp(),
            "agreement_id": settings.agreement.agreement_id, "registered": sorted(nodes),
            "interrupted_runs": interrupted, "log": str(log_path),
            "flwr": str(warm_cli.bin_dir / "flwr") if warm_cli is not None else None,
        }
        serve_file.write_text(json.dumps(info, indent=2), encoding="utf-8")
        if on_ready is not None:
            on_ready(info)
        return process.wait()
    finally:
        serve_file.unlink(missing_ok=True)
        stop_process(process, 15, group=True)  # with the SuperLink's group: Flower's SuperExec and apps
        for zygote in (warm, warm_cli):
            if zygote is not None:
                zygote.stop()

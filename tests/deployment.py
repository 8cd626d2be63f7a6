"""A real Flower deployment on 127.0.0.1 for integration tests and benchmarks.

:class:`LocalDeployment` plays every party in one folder, as separate processes started through
pplink's own CLI: ``pplink coordinator serve`` (SuperLink with TLS and node authentication) and one
``pplink node join`` (SuperNode) per agency, on free ports chosen at run time. It stops every
process it started (the whole process tree, by pid) when closed, and never listens anywhere but
127.0.0.1. Only synthetic people.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from coordinator.flower.certs import create_test_certificates
from pplink.keystore import ensure_flower_node_keys
from pplink.lab.synth import generate_synth, write_synth
from pplink.transport.flower_env import free_port
from tests.support import Setup, make_setup

#: The `pplink` console script of this environment (as an operator would run it).
PPLINK = [str(Path(sys.executable).parent / "pplink")]
HOST = "127.0.0.1"


def _env() -> dict[str, str]:
    # As an operator's shell would have it: a relative PYTHONPATH (say ".") would let the
    # deployment's own `coordinator/` state folder shadow the `coordinator` package.
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    return env


def _children(pid: int) -> list[int]:
    """Every descendant of ``pid`` (read from /proc), deepest last."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        parents.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _kill(pids: Sequence[int], sig: signal.Signals) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def _killpg(pgids: Sequence[int]) -> None:
    # Process groups are created by us (each started process leads its own session) and by the
    # SuperNode/SuperLink pplink starts; Flower's SuperExec may outlive its parent in them.
    for pgid in pgids:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def kill_tree(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL a process we started and every process it started (a crash, not a clean stop)."""
    tree = [process.pid, *_children(process.pid)]
    _kill(tree, signal.SIGKILL)
    _killpg(tree)


def stop_tree(process: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    """SIGTERM the process and wait; then SIGKILL whatever of its tree is left."""
    tree = [process.pid, *_children(process.pid)]
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass
    tree += _children(process.pid)
    _kill(tree, signal.SIGKILL)
    _killpg(tree)
    if process.poll() is None:
        process.wait(timeout=5)


@dataclass
class LocalDeployment:
    """One coordinator and N agencies on this machine, with TLS and node authentication.

    Attributes:
        root: the folder everything goes in.
        agencies: agency ids.
        people: synthetic population size.
        seed: synthetic data seed.
        insecure: run without TLS and node keys (exercises the identify step).
    """

    root: Path
    agencies: Sequence[str] = ("social_care", "school", "health")
    people: int = 300
    seed: int = 11
    insecure: bool = False
    address: str = ""
    setup: Setup | None = None
    coordinator: subprocess.Popen[bytes] | None = None
    nodes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)
    _log_start: dict[str, int] = field(default_factory=dict)
    _logs: list[IO[bytes]] = field(default_factory=list)

    @property
    def state(self) -> Path:
        """The coordinator's state folder."""
        return self.root / "coordinator"

    def out_dir(self, party: str) -> Path:
        """Where an agency's node writes its result."""
        return self.root / "nodes" / party

    def log(self, name: str) -> Path:
        """The output file of one started process."""
        return self.root / "logs" / f"{name}.log"

    def prepare(self, write_data: Callable[[Path], None] | None = None) -> None:
        """Agreement, keys (signing and Flower node keys), secret, records, test certificates.

        Args:
            write_data: writes ``<agency>.csv`` and ``truth.csv`` into the folder it is given
                (default: ``pplink synth`` data of ``people`` people).
        """
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "logs").mkdir(exist_ok=True)
        self.setup = make_setup(self.root, tuple(self.agencies))
        ensure_flower_node_keys(self.setup.keys_dir, self.agencies)
        if write_data is None:
            write_synth(generate_synth(self.people, tuple(self.agencies), seed=self.seed), self.root / "data")
        else:
            write_data(self.root / "data")
        create_test_certificates(self.state / "certs")
        self.address = f"{HOST}:{free_port(HOST)}"

    def _start(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        handle = open(self.log(name), "ab")  # noqa: SIM115 - closed in close()
        self._logs.append(handle)
        return subprocess.Popen([*PPLINK, *args], stdout=handle, stderr=subprocess.STDOUT, cwd=self.root,
                                env=_env(), start_new_session=True)

    def start_coordinator(self, timeout: float = 90.0) -> None:
        """Start ``pplink coordinator serve`` and wait until it has registered every agency."""
        assert self.setup is not None
        serve_file = self.state / "serve.json"
        serve_file.unlink(missing_ok=True)
        args = ["coordinator", "serve", "--agreement", str(self.setup.agreement_path), "--dir", str(self.state),
                "--address", self.address, "--keys-dir", str(self.setup.keys_dir)]
        self.coordinator = self._start("coordinator", [*args, "--insecure"] if self.insecure else args)
        deadline = time.monotonic() + timeout
        while not serve_file.is_file():
            if self.coordinator.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"coordinator did not start; see {self.log('coordinator')}")
            time.sleep(0.3)

    def stop_coordinator(self) -> None:
        """Stop the coordinator's SuperLink as an operator would (SIGTERM)."""
        if self.coordinator is not None:
            stop_tree(self.coordinator)
            self.coordinator = None

    def start_node(self, party: str, *extra: str, name: str | None = None) -> subprocess.Popen[bytes]:
        """Start ``pplink node join`` for one agency (same local port on a restart)."""
        assert self.setup is not None
        name = name or party
        port = self.ports.setdefault(name, free_port(HOST))
        args = ["node", "join", "--agreement", str(self.setup.agreement_path), "--party", party,
                "--superlink", self.address, "--data", str(self.root / "data" / f"{party}.csv"),
                "--secret", str(self.setup.secret_path), "--key", str(self.setup.key_path(party)),
                "--out-dir", str(self.out_dir(name)), "--port", str(port), "--skip-invalid", "--workers", "1",
                *extra]
        if self.insecure:
            args.append("--insecure")
        else:
            args += ["--root-certificates", str(self.state / "certs" / "ca.crt")]
        log = self.log(f"node-{name}")
        self._log_start[name] = log.stat().st_size if log.exists() else 0
        self.nodes[name] = self._start(f"node-{name}", args)
        return self.nodes[name]

    def node_log(self, name: str) -> str:
        """What a node logged since it was last started."""
        with open(self.log(f"node-{name}"), "rb") as fh:
            fh.seek(self._log_start.get(name, 0))
            return fh.read().decode(errors="replace")

    def wait_connected(self, parties: Sequence[str] | None = None, timeout: float = 60.0) -> None:
        """Wait until each node's log shows it connected (Flower logs its SuperNode ID)."""
        deadline = time.monotonic() + timeout
        for party in parties or self.agencies:
            while "SuperNode ID" not in self.node_log(party):
                if self.nodes[party].poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{party}'s node did not connect; see {self.log(f'node-{party}')}")
                time.sleep(0.3)

    def kill_node(self, party: str) -> None:
        """SIGKILL an agency's node and everything it started (a crash, not a clean stop)."""
        process = self.nodes.pop(party)
        kill_tree(process)
        process.wait(timeout=10)

    def run_round(self, *extra: str, timeout: float = 180.0) -> tuple[subprocess.CompletedProcess[str], dict]:  # type: ignore[type-arg]
        """Run ``pplink coordinator run --format json``; return the process and its JSON record."""
        assert self.setup is not None
        args = ["coordinator", "run", "--agreement", str(self.setup.agreement_path), "--dir", str(self.state),
                "--key", str(self.setup.key_path("coordinator")), "--format", "json", *extra]
        done = subprocess.run([*PPLINK, *args], capture_output=True, text=True, timeout=timeout, cwd=self.root,
                              check=False, env=_env())
        record = json.loads(done.stdout) if done.stdout.strip().startswith("{") else {}
        return done, record

    def close(self) -> None:
        """Stop every process this deployment started and close its logs."""
        for party in list(self.nodes):
            stop_tree(self.nodes.pop(party), timeout=10)
        self.stop_coordinator()
        for handle in self._logs:
            handle.close()
        self._logs.clear()

    def __enter__(self) -> LocalDeployment:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextmanager
def connected_deployment(root: Path, agencies: Sequence[str], *, people: int, seed: int) -> Iterator[LocalDeployment]:
    """A coordinator and one SuperNode per agency, connected; every process stopped on exit."""
    d = LocalDeployment(root, agencies=tuple(agencies), people=people, seed=seed)
    try:
        d.prepare()
        d.start_coordinator()
        for party in agencies:
            d.start_node(party)
        d.wait_connected(timeout=120)
        yield d
    finally:
        d.close()

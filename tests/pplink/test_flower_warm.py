"""Warm starts: a launcher run through the zygote behaves as the program it stands for.

The invariants: the child gets the launcher's arguments, environment, working folder and
standard streams; its exit status is the launcher's; a signal to the launcher reaches the child;
the child runs code imported before the fork; and with no zygote the real program runs instead.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pplink.transport.warm import WarmStart, start_warm

ROOT = Path(__file__).resolve().parents[2]
ENTRY = "tests.warm_entry:main"


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.update(extra)
    return env


def _real_program(tmp_path: Path) -> Path:
    real = tmp_path / "real-program"
    real.write_text("#!/bin/sh\necho \"real $*\"\nexit 7\n", encoding="utf-8")
    real.chmod(0o700)
    return real


@pytest.fixture
def warm(tmp_path: Path):  # type: ignore[no-untyped-def]
    folder = tmp_path / "warm"
    started = start_warm("demo-program", folder, _env(), ["tests.warm_entry"], log=tmp_path / "zygote.log",
                         entry=ENTRY, real=_real_program(tmp_path))
    assert started is not None
    assert started.wait_ready(60), "the zygote did not start serving"
    yield started
    started.stop()


def test_child_gets_arguments_environment_folder_streams_and_status(warm: WarmStart, tmp_path: Path) -> None:
    workdir = tmp_path / "work"
    workdir.mkdir()
    done = subprocess.run([str(warm.bin_dir / "demo-program"), "--token", "a b"], cwd=workdir,
                          env=_env(WARM_TEST="from the launcher", WARM_EXIT="3"),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 3
    seen = json.loads(done.stdout.splitlines()[0])
    assert seen["argv"] == ["--token", "a b"]
    assert seen["env"] == "from the launcher"
    assert Path(seen["cwd"]) == workdir
    assert "to stderr" in done.stderr
    # Imported once in the zygote, before the fork: the whole point.
    assert seen["imported_in"] == warm.process.pid != seen["pid"]
    assert f"started {ENTRY} as pid {seen['pid']}" in (tmp_path / "zygote.log").read_text()


def test_no_warm_start_where_a_launcher_could_not_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A `#!` line cannot hold an interpreter path with a space: Flower then starts the real program.
    monkeypatch.setattr(sys, "executable", "/opt/my python/bin/python")
    assert start_warm("demo-program", tmp_path / "warm", _env(), [], entry=ENTRY, real=_real_program(tmp_path)) is None


def test_a_signal_to_the_launcher_reaches_the_child(warm: WarmStart) -> None:
    with subprocess.Popen([str(warm.bin_dir / "demo-program")], env=_env(WARM_SLEEP="60"),
                          stdout=subprocess.PIPE, text=True) as launcher:
        assert launcher.stdout is not None
        child = json.loads(launcher.stdout.readline())["pid"]
        launcher.send_signal(signal.SIGTERM)
        assert launcher.wait(timeout=30) != 0
    deadline = time.monotonic() + 10
    while _alive(child):
        assert time.monotonic() < deadline, "the child outlived the launcher's SIGTERM"
        time.sleep(0.05)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").is_file() and ") Z " not in Path(f"/proc/{pid}/stat").read_text()


def test_without_a_zygote_the_launcher_runs_the_real_program(warm: WarmStart) -> None:
    warm.stop()
    done = subprocess.run([str(warm.bin_dir / "demo-program"), "x"], env=_env(), capture_output=True, text=True,
                          timeout=60)
    assert (done.returncode, done.stdout.strip()) == (7, "real x")


def test_the_zygote_ends_with_the_process_that_started_it(tmp_path: Path) -> None:
    script = (
        "import sys, time; from pathlib import Path; from pplink.transport.warm import start_warm\n"
        f"w = start_warm('demo-program', Path({str(tmp_path / 'warm')!r}), dict(__import__('os').environ), [], "
        f"entry={ENTRY!r}, real=Path({str(_real_program(tmp_path))!r}))\n"
        "print(w.process.pid, flush=True)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], env=_env(), capture_output=True, text=True, timeout=60,
                          check=True)
    zygote = int(done.stdout.strip())
    deadline = time.monotonic() + 30
    while _alive(zygote):
        assert time.monotonic() < deadline, "the zygote outlived its owner"
        time.sleep(0.1)


def test_a_deep_folder_still_warms(tmp_path: Path) -> None:
    # Unix socket paths are short (108 bytes): a deep state folder gets a private temporary socket.
    deep = tmp_path / ("d" * 60) / ("e" * 60) / "warm"
    started = start_warm("demo-program", deep, _env(), [], entry=ENTRY, real=_real_program(tmp_path))
    assert started is not None
    try:
        assert started.wait_ready(60)
        assert not started.socket_path.is_relative_to(tmp_path)
        assert started.socket_path.parent.stat().st_mode & 0o077 == 0
        done = subprocess.run([str(started.bin_dir / "demo-program"), "deep"], env=_env(), capture_output=True,
                              text=True, timeout=60)
        assert done.returncode == 0 and json.loads(done.stdout.splitlines()[0])["argv"] == ["deep"]
    finally:
        started.stop()
    assert not started.socket_path.parent.exists()


def test_launcher_and_socket_are_private(warm: WarmStart) -> None:
    folder = warm.bin_dir.parent
    assert folder.stat().st_mode & 0o077 == 0
    assert (folder / "zygote.sock").stat().st_mode & 0o077 == 0
    assert (warm.bin_dir / "demo-program").stat().st_mode & 0o077 == 0


def test_preloading_pplinks_apps_starts_no_thread() -> None:
    """Invariant: importing what the zygotes preload starts no Python thread, so forking the zygote
    cannot copy a lock another thread holds (Flower's and pplink's apps, both sides)."""
    script = (
        "import importlib, threading\n"
        "for m in ('flwr.supernode.cli', 'nodes.flower.client_app', 'flwr.superlink.cli',\n"
        "          'coordinator.flower.server_app'):\n"
        "    importlib.import_module(m)\n"
        "print(threading.active_count())\n"
    )
    done = subprocess.run([sys.executable, "-c", script], env=_env(), capture_output=True, text=True, timeout=120,
                          check=True)
    assert done.stdout.strip() == "1"

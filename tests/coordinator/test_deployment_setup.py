"""How the coordinator starts Flower: TLS and node authentication unless told otherwise, the Flower
app written by hand, run config that survives any path, run records that outlive a restart."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest

from coordinator.flower.certs import create_test_certificates
from coordinator.flower.launcher import APP_PYPROJECT, RunSettings, _run_config, write_flower_app
from coordinator.flower.match_round import settings_from_run_config
from coordinator.flower.node_directory import load_registered_keys
from coordinator.flower.superlink import ServeSettings, read_serve_info, superlink_command, write_flower_config
from coordinator.run_records import (
    RunPhase,
    RunRecord,
    RunStatus,
    list_run_records,
    mark_interrupted,
    read_run_record,
    timestamp,
    write_run_record,
)
from pplink.errors import AgreementMismatchError, ConfigError, TransportError, UsageError
from tests.support import Setup


def test_superlink_runs_with_tls_and_node_auth_and_no_downloads(setup: Setup, tmp_path: Path) -> None:
    """Invariant: by default the SuperLink gets the CA, certificate, key, node authentication, its
    database in the state folder and no runtime dependency installation; --insecure drops TLS."""
    create_test_certificates(tmp_path / "certs")
    settings = ServeSettings(agreement=setup.agreement, state_dir=tmp_path / "state", address="127.0.0.1:9191",
                             certs_dir=tmp_path / "certs", keys_dir=setup.keys_dir)
    cmd = superlink_command(settings)
    for flag in ("--ssl-ca-certfile", "--ssl-certfile", "--ssl-keyfile", "--enable-supernode-auth",
                 "--disable-runtime-dependency-installation"):
        assert flag in cmd
    assert cmd[cmd.index("--database") + 1] == str((tmp_path / "state").resolve() / "flwr.db")
    assert cmd[cmd.index("--port") + 1] == "9191" and "--insecure" not in cmd
    insecure = superlink_command(ServeSettings(agreement=setup.agreement, state_dir=tmp_path, insecure=True))
    assert "--insecure" in insecure and "--enable-supernode-auth" not in insecure


def test_flower_config_names_the_superlink_and_trusts_the_ca(tmp_path: Path) -> None:
    """Invariant: flwr's config.toml points at this SuperLink, with the CA (or insecure only when asked)."""
    home = write_flower_config(tmp_path, "127.0.0.1:9191", insecure=False, ca_cert=tmp_path / "ca.crt")
    config = tomllib.loads((home / "config.toml").read_text())
    conn = config["superlink"]["pplink"]
    assert config["superlink"]["default"] == "pplink" and conn["address"] == "127.0.0.1:9191"
    assert conn["root-certificates"] == str((tmp_path / "ca.crt").resolve()) and "insecure" not in conn
    home = write_flower_config(tmp_path, "127.0.0.1:9191", insecure=True, ca_cert=None)
    assert tomllib.loads((home / "config.toml").read_text())["superlink"]["pplink"]["insecure"] is True


def test_the_flower_app_names_pplinks_apps_and_declares_every_run_setting(tmp_path: Path, setup: Setup) -> None:
    """Invariant: the hand-written app points at pplink's ServerApp and ClientApp, and every key the
    run config sets is declared (Flower refuses undeclared overrides); odd paths survive TOML."""
    app = write_flower_app(tmp_path)
    project = tomllib.loads((app / "pyproject.toml").read_text())
    assert project["tool"]["flwr"]["app"]["publisher"] == "pplink"
    assert project["tool"]["flwr"]["app"]["components"] == {"serverapp": "coordinator.flower.server_app:app",
                                                             "clientapp": "nodes.flower.client_app:app"}
    odd = tmp_path / 'a "quoted" dir with spaces'
    config = tomllib.loads(_run_config(RunSettings(agreement=setup.agreement, agreement_path=odd / "agreement.toml",
                                                   key_path=odd / "c.key", state_dir=odd), "0" * 16))
    assert set(config) == set(project["tool"]["flwr"]["app"]["config"])
    assert config["agreement"] == str((odd / "agreement.toml").resolve())
    assert write_flower_app(tmp_path) == app and (app / "pyproject.toml").read_text() == APP_PYPROJECT


def test_run_config_is_checked_before_a_round_starts(setup: Setup, tmp_path: Path) -> None:
    """Invariant: a missing key, a bad run id or an agreement changed since launch stops the ServerApp."""
    good = {"agreement": str(setup.agreement_path), "agreement-id": setup.agreement.agreement_id,
            "state-dir": str(tmp_path), "key": str(setup.key_path("coordinator")), "run-id": "0" * 16}
    assert settings_from_run_config(good).run_id == "0" * 16
    with pytest.raises(ConfigError, match="'key'"):
        settings_from_run_config({k: v for k, v in good.items() if k != "key"})
    with pytest.raises(ConfigError, match="run-id"):
        settings_from_run_config({**good, "run-id": "../../etc"})
    with pytest.raises(AgreementMismatchError):
        settings_from_run_config({**good, "agreement-id": "f" * 64})
    with pytest.raises(ConfigError, match="reply-timeout"):
        settings_from_run_config({**good, "reply-timeout": -1})


def test_registered_keys_are_read_for_the_serverapp(tmp_path: Path) -> None:
    """Invariant: no nodes.json (insecure) means no key check; otherwise each agency's PEM key."""
    assert load_registered_keys(tmp_path) is None
    (tmp_path / "nodes.json").write_text(json.dumps({"auth": True, "nodes": {"school": {"public_key_pem": "PEM"}}}))
    assert load_registered_keys(tmp_path) == {"school": b"PEM"}


def test_run_records_are_listed_in_order_and_interrupted_runs_are_marked(tmp_path: Path) -> None:
    """Invariant: records persist as files; runs still 'running' when a SuperLink (re)starts are
    marked interrupted, finished ones are left alone."""
    for run_id, status in (("a" * 16, RunStatus.FINISHED), ("b" * 16, RunStatus.RUNNING)):
        now = timestamp()
        write_run_record(tmp_path, RunRecord(run_id=run_id, agreement_id="c" * 64, status=status,
                                             phase=RunPhase.ENCODE, started=now, updated=now))
    assert mark_interrupted(tmp_path) == ["b" * 16]
    assert [r.status for r in list_run_records(tmp_path)] == [RunStatus.FINISHED, RunStatus.INTERRUPTED]
    assert read_run_record(tmp_path, "b" * 16).error
    with pytest.raises(TransportError, match="no record"):
        read_run_record(tmp_path, "d" * 16)


def test_run_needs_a_running_superlink(tmp_path: Path) -> None:
    """Invariant: `coordinator run` without `coordinator serve` says so, instead of hanging."""
    with pytest.raises(UsageError, match="coordinator serve"):
        read_serve_info(tmp_path)
    (tmp_path / "serve.json").write_text(json.dumps({"pid": 2**22 + 12345}))
    with pytest.raises(UsageError, match="not running"):
        read_serve_info(tmp_path)

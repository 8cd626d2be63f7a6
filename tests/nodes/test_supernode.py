"""`pplink node join`: everything is checked locally before a SuperNode dials out."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from nodes.flower.supernode import JoinSettings, check_join, node_config_toml, supernode_command
from nodes.match_round import NodeSettings
from pplink.errors import KeyFileError, UsageError
from pplink.keystore import new_flower_node_key
from tests.support import Setup, write_records


def _settings(setup: Setup, tmp_path: Path, people, **changes) -> JoinSettings:  # type: ignore[no-untyped-def]
    data = write_records(tmp_path / "school.csv", people(3))
    new_flower_node_key(setup.keys_dir, "school")
    (tmp_path / "ca.crt").write_text("CA")
    base = JoinSettings(agreement_path=setup.agreement_path, party="school", superlink="127.0.0.1:9091",
                        data_path=data, secret_path=setup.secret_path, key_path=setup.key_path("school"),
                        out_dir=tmp_path / "out", root_certificates=tmp_path / "ca.crt", port=9300)
    return JoinSettings(**{**base.__dict__, **changes})


def test_supernode_dials_out_with_tls_and_its_node_key(setup: Setup, tmp_path: Path, people) -> None:  # type: ignore[no-untyped-def]
    """Invariant: the SuperNode trusts the given CA, authenticates with <party>.flwr next to the
    signing key, and gets the ClientApp's settings as a node-config file the ClientApp accepts."""
    settings = _settings(setup, tmp_path, people)
    check_join(settings)
    cmd = supernode_command(settings, tmp_path / "node-config.toml")
    assert cmd[cmd.index("--auth-supernode-private-key") + 1] == str((setup.keys_dir / "school.flwr").resolve())
    assert cmd[cmd.index("--root-certificates") + 1] == str((tmp_path / "ca.crt").resolve())
    assert "--insecure" not in cmd and cmd[cmd.index("--port") + 1] == "9300"
    assert cmd[cmd.index("--poll-interval") + 1] == "0.5"
    config = tomllib.loads(node_config_toml(settings))
    node = NodeSettings.from_node_config(config)
    assert node.party == "school" and node.data_path == settings.data_path.resolve()


@pytest.mark.parametrize("change", ["wrong key", "no CA", "no node key", "not an agency", "bad address"])
def test_problems_are_found_before_connecting(setup: Setup, tmp_path: Path, people, change: str) -> None:  # type: ignore[no-untyped-def]
    """Invariant: a key of another party, a missing CA or node key, a non-agency or a bad address
    fail at once with a pplink error."""
    settings = _settings(setup, tmp_path, people)
    bad = {
        "wrong key": {"key_path": setup.key_path("health")},
        "no CA": {"root_certificates": None},
        "no node key": {"flower_key_path": tmp_path / "missing.flwr"},
        "not an agency": {"party": "coordinator"},
        "bad address": {"superlink": "127.0.0.1"},
    }[change]
    with pytest.raises((KeyFileError, UsageError, ValueError)):
        check_join(JoinSettings(**{**settings.__dict__, **bad}))

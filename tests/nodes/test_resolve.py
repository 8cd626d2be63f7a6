"""Resolving pseudonyms: only a map the round's signed manifest names, covering exactly the node's rows."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from nodes.resolve import resolve_entities, resolve_files
from pplink.entity_files import read_entity_map, write_entity_map, write_tokens
from pplink.errors import EncodingFileError, LinkageMapError, RoundIntegrityError
from pplink.round_manifest import MANIFEST_FILE, SIGNATURE_FILE, new_stage, publish_round
from tests.support import Setup, make_setup

T = [f"{i:032x}" for i in range(4)]
E = [f"{i + 100:032x}" for i in range(4)]


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Setup:
    return make_setup(tmp_path_factory.mktemp("resolve"), agencies=("school", "health"))


def _round(setup: Setup, out: Path, rows: list[tuple[str, str]], *, signer: str = "coordinator",
           missing: tuple[str, ...] = ()) -> Path:
    """Publish a one-map round for school into ``out``; return the map's path."""
    stage = new_stage(out)
    write_entity_map(stage / "school.map.csv", rows)
    publish_round(out, stage, {"agreement_id": setup.agreement.agreement_id, "missing": list(missing)},
                  setup.key(signer))
    return out / "school.map.csv"


def _resolve(setup: Setup, tmp_path: Path, map_path: Path) -> Path:
    out = tmp_path / "s.entities.csv"
    resolve_files(setup.agreement, "school", tmp_path / "s.tokens", map_path, out)
    return out


def test_resolve_joins_record_ids_to_entities(setup: Setup, tmp_path: Path) -> None:
    write_tokens(tmp_path / "s.tokens", T, ["a", "b", "c", "d"])
    map_path = _round(setup, tmp_path / "round", [(T[i], E[i % 2]) for i in range(4)])
    summary = resolve_files(setup.agreement, "school", tmp_path / "s.tokens", map_path, tmp_path / "s.entities.csv")
    lines = (tmp_path / "s.entities.csv").read_text().splitlines()
    assert lines[0] == "record_id,entity_id"
    assert lines[1:] == [f"a,{E[0]}", f"b,{E[1]}", f"c,{E[0]}", f"d,{E[1]}"]
    assert summary.rows == 4 and summary.entities == 2
    assert (tmp_path / "s.entities.csv").stat().st_mode & 0o077 == 0


def test_hand_edited_map_is_refused(setup: Setup, tmp_path: Path) -> None:
    """Two people merged by hand (one row's entity id set to another's): the manifest hash catches it."""
    write_tokens(tmp_path / "s.tokens", T, ["a", "b", "c", "d"])
    map_path = _round(setup, tmp_path / "round", [(T[i], E[i]) for i in range(4)])
    text = map_path.read_text().replace(f"{T[1]},{E[1]}", f"{T[1]},{E[0]}")
    map_path.write_text(text)
    with pytest.raises(RoundIntegrityError, match="SHA-256"):
        _resolve(setup, tmp_path, map_path)
    assert not (tmp_path / "s.entities.csv").exists()


def test_map_of_another_round_is_refused(setup: Setup, tmp_path: Path) -> None:
    """A mixed round: one round's map beside another round's manifest."""
    write_tokens(tmp_path / "s.tokens", T, ["a", "b", "c", "d"])
    old = _round(setup, tmp_path / "old", [(T[i], E[i]) for i in range(4)])
    new = _round(setup, tmp_path / "new", [(T[i], E[3 - i]) for i in range(4)])
    shutil.copy(old, new)
    with pytest.raises(RoundIntegrityError, match="another round"):
        _resolve(setup, tmp_path, new)


@pytest.mark.parametrize("gone", [MANIFEST_FILE, SIGNATURE_FILE])
def test_round_without_manifest_or_signature_is_refused(setup: Setup, tmp_path: Path, gone: str) -> None:
    write_tokens(tmp_path / "s.tokens", T, ["a", "b", "c", "d"])
    map_path = _round(setup, tmp_path / "round", [(T[i], E[i]) for i in range(4)])
    (map_path.parent / gone).unlink()
    with pytest.raises(RoundIntegrityError, match="missing; the round is incomplete"):
        _resolve(setup, tmp_path, map_path)


def test_manifest_signed_by_another_party_is_refused(setup: Setup, tmp_path: Path) -> None:
    write_tokens(tmp_path / "s.tokens", T, ["a", "b", "c", "d"])
    map_path = _round(setup, tmp_path / "round", [(T[i], E[i]) for i in range(4)], signer="health")
    with pytest.raises(RoundIntegrityError, match="coordinator key"):
        _resolve(setup, tmp_path, map_path)


def test_party_left_out_of_the_round_is_refused(setup: Setup, tmp_path: Path) -> None:
    """A map left over from an earlier round, in a round that went on without this agency."""
    write_tokens(tmp_path / "s.tokens", T, ["a", "b", "c", "d"])
    map_path = _round(setup, tmp_path / "round", [(T[i], E[i]) for i in range(4)], missing=("school",))
    with pytest.raises(RoundIntegrityError, match="not part of this round"):
        _resolve(setup, tmp_path, map_path)


def test_tokens_of_another_encode_are_refused(setup: Setup, tmp_path: Path) -> None:
    """An .enc published without its tokens: the round's map cannot fit the tokens left on disk."""
    write_tokens(tmp_path / "s.tokens", [f"{i + 7:032x}" for i in range(4)], ["a", "b", "c", "d"])
    map_path = _round(setup, tmp_path / "round", [(T[i], E[i]) for i in range(4)])
    with pytest.raises(LinkageMapError, match="does not fit the token file"):
        _resolve(setup, tmp_path, map_path)
    (tmp_path / "s.tokens").unlink()
    with pytest.raises(EncodingFileError, match="cannot read the token file"):
        _resolve(setup, tmp_path, map_path)


def test_map_from_another_file_is_refused() -> None:
    tokens = dict(zip(T, "abcd", strict=True))
    with pytest.raises(LinkageMapError, match="1 of this node's rows missing, 1 unknown"):
        resolve_entities(tokens, {**{t: E[0] for t in T[:3]}, "f" * 32: E[1]})


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("token,entity\n", "row 1: header must be"),
        (f"row_token,entity_id\n{T[0]},{E[0]}\n{T[0]},{E[1]}\n", "row 3: row_token appears twice"),
        (f"row_token,entity_id\n{T[0]},nothex\n", "row 2, field entity_id"),
        (f"row_token,entity_id\n{T[0]}\n", "row 2: expected 2 fields"),
    ],
)
def test_malformed_maps_name_the_row(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "m.csv"
    path.write_text(content)
    with pytest.raises(LinkageMapError, match=message):
        read_entity_map(path)

"""Resolving pseudonyms: the map must cover exactly the node's rows."""

from __future__ import annotations

from pathlib import Path

import pytest

from nodes.resolve import resolve_entities, resolve_files
from nodes.tokens import write_tokens
from pplink.entity_map import read_entity_map, write_entity_map
from pplink.errors import LinkageMapError

T = [f"{i:032x}" for i in range(4)]
E = [f"{i + 100:032x}" for i in range(4)]


def test_resolve_joins_record_ids_to_entities(tmp_path: Path) -> None:
    write_tokens(tmp_path / "s.tokens", T, ["a", "b", "c", "d"])
    write_entity_map(tmp_path / "s.map.csv", [(T[i], E[i % 2]) for i in range(4)])
    summary = resolve_files(tmp_path / "s.tokens", tmp_path / "s.map.csv", tmp_path / "s.entities.csv")
    lines = (tmp_path / "s.entities.csv").read_text().splitlines()
    assert lines[0] == "record_id,entity_id"
    assert lines[1:] == [f"a,{E[0]}", f"b,{E[1]}", f"c,{E[0]}", f"d,{E[1]}"]
    assert summary.rows == 4 and summary.entities == 2


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

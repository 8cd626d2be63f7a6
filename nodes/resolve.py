"""``pplink node resolve``: join the coordinator's pseudonym map back to the agency's own ids."""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

from nodes.tokens import read_tokens
from pplink.entity_map import read_entity_map
from pplink.errors import LinkageMapError

__all__ = ["ResolveSummary", "resolve_entities", "resolve_files", "write_entities"]

ENTITIES_HEADER = ("record_id", "entity_id")


@dataclass(frozen=True)
class ResolveSummary:
    """What ``resolve_entities`` wrote."""

    output: Path
    rows: int
    entities: int


def resolve_entities(tokens: dict[str, str], entity_map: dict[str, str], *,
                     map_name: str = "map") -> list[tuple[str, str]]:
    """Pair each record id with its entity pseudonym.

    The map must cover exactly the node's tokens: a missing or extra token means the map belongs
    to another encodings file (or was truncated), and is refused rather than half-applied.

    Raises:
        LinkageMapError: the map and token file do not cover the same rows.
    """
    missing = len(tokens.keys() - entity_map.keys())
    extra = len(entity_map.keys() - tokens.keys())
    if missing or extra:
        raise LinkageMapError(
            f"{map_name}: does not fit the token file ({missing} of this node's rows missing, "
            f"{extra} unknown tokens); was it made from another encodings file?"
        )
    return [(record_id, entity_map[token]) for token, record_id in tokens.items()]


def write_entities(path: Path, rows: list[tuple[str, str]]) -> None:
    """Write ``record_id,entity_id`` (node-local; owner-only permissions)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".partial")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(ENTITIES_HEADER)
        writer.writerows(rows)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def resolve_files(tokens_path: Path, map_path: Path, output: Path) -> ResolveSummary:
    """Read the token file and the pseudonym map, write ``record_id,entity_id``."""
    rows = resolve_entities(read_tokens(tokens_path), read_entity_map(map_path), map_name=str(map_path))
    write_entities(output, rows)
    return ResolveSummary(output=Path(output), rows=len(rows), entities=len({e for _, e in rows}))

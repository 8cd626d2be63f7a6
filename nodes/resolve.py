"""``pplink node resolve``: join the coordinator's pseudonym map back to the agency's own ids.

Nothing is joined until the map is proven to be this round's, unedited: the round's
``manifest.json`` must verify against the coordinator key in the agreement and name the map's
exact SHA-256 (:mod:`pplink.round_manifest`), and the map must cover exactly the rows of the
node's token file (random 128-bit tokens, fresh at every encode, so a map made from any other
``.enc`` than the one these tokens came with cannot fit).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pplink.agreement import AgreementConfig
from pplink.atomic import remove_partials
from pplink.entity_files import map_file_name, read_entity_map, read_tokens, write_entities
from pplink.errors import LinkageMapError, RoundIntegrityError
from pplink.round_manifest import MANIFEST_FILE, verify_round_file

__all__ = ["ResolveSummary", "read_withdrawn", "resolve_entities", "resolve_files", "write_entities"]


@dataclass(frozen=True)
class ResolveSummary:
    """What ``resolve_entities`` wrote."""

    output: Path
    rows: int
    entities: int
    round_id: str = ""


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


def read_withdrawn(agreement: AgreementConfig, party: str, path: Path) -> set[str]:
    """Tokens an incremental round's ``<party>.withdrawn.csv`` lists, once its round's manifest vouches for it.

    Raises:
        RoundIntegrityError: the manifest beside it does not name the file's exact bytes.
        LinkageMapError: unreadable, or not that file's header.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise LinkageMapError(f"{path}: cannot read the withdrawn rows ({exc.strerror})") from None
    verify_round_file(agreement, path.with_name(MANIFEST_FILE), f"{party}.withdrawn.csv", data)
    try:
        rows = list(csv.reader(io.StringIO(data.decode("ascii"))))
    except (UnicodeDecodeError, csv.Error) as exc:
        raise LinkageMapError(f"{path}: cannot read the withdrawn rows ({type(exc).__name__})") from None
    if not rows or tuple(rows[0]) != ("row_token", "reason"):
        raise LinkageMapError(f"{path}: row 1: header must be row_token,reason")
    return {row[0] for row in rows[1:] if row}


def resolve_files(agreement: AgreementConfig, party: str, tokens_path: Path, map_path: Path, output: Path, *,
                  manifest_path: Path | None = None, withdrawn: Sequence[Path] = ()) -> ResolveSummary:
    """Verify the map against the round's signed manifest, join it to the tokens, write ``record_id,entity_id``.

    Args:
        agreement: the agreement (its coordinator key verifies the manifest).
        party: this agency.
        tokens_path: the ``.tokens`` file ``node encode`` wrote with the ``.enc`` the round used.
        map_path: this agency's ``<party>.map.csv`` from the round.
        output: the entities file to write (atomically, 0600).
        manifest_path: the round's ``manifest.json`` (default: beside the map), with its
            ``manifest.json.sig`` beside it.
        withdrawn: incremental rounds' ``<party>.withdrawn.csv`` files (each checked against the
            manifest beside it); the rows they list are left out first, since the coordinator
            may have expired them after this node's last file.

    Raises:
        RoundIntegrityError: the manifest is missing, unsigned, for another agreement, or does not
            name this map's exact bytes (stale or mixed round, or a map edited by hand).
        LinkageMapError: the map is malformed or does not fit the token file.
        EncodingFileError: the token file is missing or malformed.
    """
    agreement.agency(party)
    map_path = Path(map_path)
    manifest_path = Path(manifest_path) if manifest_path else map_path.with_name(MANIFEST_FILE)
    try:
        data = map_path.read_bytes()
    except OSError as exc:
        raise LinkageMapError(f"{map_path}: cannot read the pseudonym map ({exc.strerror})") from None
    manifest = verify_round_file(agreement, manifest_path, map_file_name(party), data)
    if party in manifest.get("missing", []):
        raise RoundIntegrityError(f"{manifest_path}: {party} was not part of this round")
    tokens = read_tokens(tokens_path)
    for path in withdrawn:
        for token in read_withdrawn(agreement, party, path):
            tokens.pop(token, None)
    rows = resolve_entities(tokens, read_entity_map(map_path, data=data), map_name=str(map_path))
    remove_partials(Path(output).parent, of=Path(output).name)  # what an earlier, killed resolve left
    write_entities(output, rows)
    return ResolveSummary(output=Path(output), rows=len(rows), entities=len({e for _, e in rows}),
                          round_id=str(manifest.get("round_id", "")))

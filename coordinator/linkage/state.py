"""The coordinator's linkage state: who is linked to whom, and the declared release attributes.

Written by ``pplink coordinator match`` into ``<out>/coordinator/linkage.npz`` and read by the
release engine. It holds no identifiers and no encodings: per agency, the cluster index of each
row, the random entity pseudonym of each cluster, and the release attributes the agencies sent.
"""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from coordinator.linkage.direct_writes import direct_atomic_file
from pplink.errors import AgreementMismatchError, MatchError

__all__ = ["LinkageState", "load_linkage_state", "save_linkage_state", "STATE_FILE"]

STATE_FILE = "coordinator/linkage.npz"


@dataclass(frozen=True)
class LinkageState:
    """The linkage structure the coordinator curates.

    Attributes:
        agreement_id: the agreement the linkage was made under.
        parties: agency ids in the order their files were matched.
        cluster_of: per party, an ``int64`` array giving each row's cluster index (0..n_clusters-1).
        pseudonyms: ``(n_clusters, 16)`` ``uint8`` random entity ids (hex in the maps).
        attributes: per party, ``{column: [value or None per row]}`` as the agency declared.
        threshold: the Dice threshold used.
        meta: free-form run facts (timings, candidate counts) for reports.
    """

    agreement_id: str
    parties: tuple[str, ...]
    cluster_of: dict[str, np.ndarray]
    pseudonyms: np.ndarray
    attributes: dict[str, dict[str, list[str | None]]]
    threshold: float
    meta: dict[str, object] = field(default_factory=dict)

    @property
    def n_clusters(self) -> int:
        """Number of entities (clusters, singletons included)."""
        return int(self.pseudonyms.shape[0])

    def membership(self) -> np.ndarray:
        """``(n_clusters, n_parties)`` boolean: does entity i have a row at party j."""
        out = np.zeros((self.n_clusters, len(self.parties)), dtype=bool)
        for j, party in enumerate(self.parties):
            out[self.cluster_of[party], j] = True
        return out

    def entity_hex(self) -> list[str]:
        """Entity pseudonyms as 32-character hex strings, by cluster index."""
        raw = self.pseudonyms.tobytes()
        return [raw[i : i + 16].hex() for i in range(0, len(raw), 16)]


def save_linkage_state(path: Path, state: LinkageState) -> None:
    """Write the state atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "agreement_id": state.agreement_id,
        "parties": list(state.parties),
        "attributes": state.attributes,
        "threshold": state.threshold,
        "meta": state.meta,
    }
    arrays = {f"cluster_of/{p}": state.cluster_of[p] for p in state.parties}
    arrays["pseudonyms"] = state.pseudonyms
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    with zipfile.ZipFile(buf, "a") as zf:
        zf.writestr("state.json", json.dumps(meta, sort_keys=True))
    with direct_atomic_file(path) as fh:  # ~8 bytes a row: around the page cache where allowed
        fh.write(buf.getbuffer())


def load_linkage_state(path: Path, agreement_id: str | None = None) -> LinkageState:
    """Read the state, optionally checking it belongs to ``agreement_id``.

    Raises:
        MatchError: missing or malformed.
        AgreementMismatchError: made under another agreement.
    """
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as zf:
            meta = json.loads(zf.read("state.json"))
        with np.load(path, allow_pickle=False) as data:
            parties = tuple(meta["parties"])
            cluster_of = {p: np.asarray(data[f"cluster_of/{p}"], dtype=np.int64) for p in parties}
            pseudonyms = np.asarray(data["pseudonyms"], dtype=np.uint8)
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as exc:
        raise MatchError(f"{path}: not a readable linkage state ({type(exc).__name__})") from None
    if agreement_id is not None and meta["agreement_id"] != agreement_id:
        raise AgreementMismatchError(f"{path}: linkage state is from another agreement")
    return LinkageState(
        agreement_id=meta["agreement_id"], parties=parties, cluster_of=cluster_of, pseudonyms=pseudonyms,
        attributes=meta["attributes"], threshold=float(meta["threshold"]), meta=meta.get("meta", {}),
    )

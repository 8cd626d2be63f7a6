"""Encodings in memory (sent over Flower) are checked exactly as encodings files are."""

from __future__ import annotations

import tomllib
from pathlib import Path

import numpy as np
import pytest

from pplink.agreement import parse_agreement
from pplink.encfile import encodings_from_bytes, encodings_to_bytes, read_encodings, write_encodings
from pplink.errors import AgreementMismatchError, EncodingFileError, SignatureError
from tests.support import Setup


def _parts(n: int = 4) -> dict:  # type: ignore[type-arg]
    rng = np.random.default_rng(9)
    return {"tokens": rng.integers(0, 256, (n, 16), dtype=np.uint8),
            "clks": rng.integers(0, 256, (n, 128), dtype=np.uint8),
            "attributes": {"area": ["E06000001"] * n}}


def test_bytes_roundtrip_and_match_the_file_layout(setup: Setup, tmp_path: Path) -> None:
    """Invariant: from_bytes(to_bytes(x)) == x, and the bytes are a valid .enc file on disk."""
    parts = _parts()
    header, data = encodings_to_bytes(agreement=setup.agreement, party="school", key=setup.key("school"), **parts)
    enc = encodings_from_bytes(data, setup.agreement, expected_party="school")
    assert enc.header == header and enc.path is None
    assert np.array_equal(enc.clks, parts["clks"]) and np.array_equal(enc.tokens, parts["tokens"])
    (tmp_path / "s.enc").write_bytes(data)
    assert read_encodings(tmp_path / "s.enc", setup.agreement).header == header
    written = write_encodings(tmp_path / "w.enc", agreement=setup.agreement, party="school",
                              key=setup.key("school"), **parts)
    assert len((tmp_path / "w.enc").read_bytes()) == len(data) and written.party == "school"


def test_bytes_are_verified_like_files(setup: Setup, tmp_path: Path) -> None:
    """Invariant: a flipped byte, the wrong party, or another agreement is refused, naming the source."""
    _, data = encodings_to_bytes(agreement=setup.agreement, party="school", key=setup.key("school"), **_parts())
    bad = bytearray(data)
    bad[-70] ^= 1
    with pytest.raises((SignatureError, EncodingFileError), match="reply from node 7"):
        encodings_from_bytes(bytes(bad), setup.agreement, source="reply from node 7")
    with pytest.raises(EncodingFileError, match="expected 'health'"):
        encodings_from_bytes(data, setup.agreement, expected_party="health")
    # Same parties and keys, one setting changed: another agreement id.
    other = parse_agreement(tomllib.loads(setup.agreement_path.read_text().replace('threshold = "auto"',
                                                                                  "threshold = 0.85")))
    _, foreign = encodings_to_bytes(agreement=other, party="school", key=setup.key("school"), **_parts())
    with pytest.raises(AgreementMismatchError, match="made under agreement"):
        encodings_from_bytes(foreign, setup.agreement)

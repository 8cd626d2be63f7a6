"""Encodings files: what is written is read back; any tampering, truncation or foreign origin is refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pplink.encfile import read_encodings, write_encodings
from pplink.errors import AgreementMismatchError, EncodingFileError, SignatureError
from tests.support import Setup, make_setup


def _write(setup: Setup, path: Path, party: str = "school", n: int = 5, signer: str | None = None) -> np.ndarray:
    rng = np.random.default_rng(7)
    clks = rng.integers(0, 256, size=(n, 128), dtype=np.uint8)
    tokens = rng.integers(0, 256, size=(n, 16), dtype=np.uint8)
    attrs = {"area": ["E06000001"] * n, "deprivation_quintile": ["1"] * n, "age_band": [None] * n}
    write_encodings(path, agreement=setup.agreement, party=party, tokens=tokens, clks=clks, attributes=attrs,
                    key=setup.key(signer or party))
    return clks


def test_roundtrip(setup: Setup, tmp_path: Path) -> None:
    clks = _write(setup, tmp_path / "s.enc")
    f = read_encodings(tmp_path / "s.enc", setup.agreement)
    assert f.header.party == "school" and f.header.n_records == 5
    assert np.array_equal(f.clks, clks)
    assert f.attributes["age_band"] == [None] * 5
    assert len(set(f.token_hex())) == 5


def test_every_flipped_byte_is_refused(setup: Setup, tmp_path: Path) -> None:
    # Invariant: flipping any single byte anywhere in the file makes it unreadable or unverifiable.
    path = tmp_path / "s.enc"
    _write(setup, path, n=2)
    raw = path.read_bytes()
    for i in range(0, len(raw), 7):
        bad = bytearray(raw)
        bad[i] ^= 0x01
        path.write_bytes(bytes(bad))
        with pytest.raises((EncodingFileError, SignatureError)):
            read_encodings(path, setup.agreement)


@pytest.mark.parametrize("cut", [0, 5, 20, 200, -1, -64])
def test_truncated_file_is_refused(setup: Setup, tmp_path: Path, cut: int) -> None:
    path = tmp_path / "s.enc"
    _write(setup, path)
    raw = path.read_bytes()
    path.write_bytes(raw[:cut])
    with pytest.raises((EncodingFileError, SignatureError), match=str(path).replace(".", r"\.")):
        read_encodings(path, setup.agreement)


def test_forged_party_is_refused(setup: Setup, tmp_path: Path) -> None:
    # The health agency signs a file that claims to be the school's.
    path = tmp_path / "s.enc"
    _write(setup, path, party="school", signer="health")
    with pytest.raises(SignatureError, match="school's key"):
        read_encodings(path, setup.agreement)


def test_foreign_agreement_is_refused(setup: Setup, tmp_path: Path) -> None:
    path = tmp_path / "s.enc"
    _write(setup, path)
    # Same keys, one changed setting: a different agreement id.
    other_text = setup.agreement_path.read_text().replace('threshold = "auto"', "threshold = 0.85")
    other = make_setup(tmp_path / "o", edit=lambda _: other_text).agreement
    with pytest.raises(AgreementMismatchError, match="made under agreement"):
        read_encodings(path, other)


def test_not_an_encodings_file(setup: Setup, tmp_path: Path) -> None:
    path = tmp_path / "x.enc"
    path.write_bytes(b"record_id,given_name\n1,ann\n")
    with pytest.raises(EncodingFileError, match="bad magic"):
        read_encodings(path, setup.agreement)


def test_expected_party_mismatch(setup: Setup, tmp_path: Path) -> None:
    path = tmp_path / "s.enc"
    _write(setup, path)
    with pytest.raises(EncodingFileError, match="expected 'health'"):
        read_encodings(path, setup.agreement, expected_party="health")

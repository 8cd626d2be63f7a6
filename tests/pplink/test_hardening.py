"""Encoder hardening beyond clkhash: salting and keyed bit flipping behave as documented."""

from __future__ import annotations

import numpy as np
import pytest
from clkhash import clk
from clkhash.schema import from_json_dict
from pydantic import ValidationError

from pplink.agreement import Hardening, IdentifierField, IdentifierSchema, Salt
from pplink.encoding import ClkEncoder, clkhash_schema_dict
from pplink.errors import AgreementError

KEY = bytes(range(32))
FIELDS = (
    IdentifierField(column="given_name", kind="name", bits_per_token=15, required=False),
    IdentifierField(column="surname", kind="name", bits_per_token=15, required=False),
    IdentifierField(column="date_of_birth", kind="date", bits_per_token=10, ngram=1, positional=True, required=False),
)
SALT = Salt(source="date_of_birth", fields=("given_name", "surname"), prefix=4)


def schema(**hardening: object) -> IdentifierSchema:
    return IdentifierSchema(fields=FIELDS, hardening=Hardening.model_validate(hardening))


def ones(a: np.ndarray) -> int:
    return int(np.unpackbits(a).sum())


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * int(np.unpackbits(a & b).sum()) / (ones(a) + ones(b))


ROWS = [("oliver", "smith", "20120304"), ("oliver", "smith", "20121111"), ("oliver", "smith", "20130304"),
        ("amelia", "khan", "")]


def test_unhardened_schema_is_still_bit_for_bit_clkhash() -> None:
    # The new hardening fields default to off, and off means clkhash's exact output.
    ids = schema()
    ours = ClkEncoder(ids, KEY).encode(ROWS)
    theirs = clk.generate_clks(ROWS, from_json_dict(clkhash_schema_dict(ids)), KEY, validate=False, max_workers=1)
    assert ours.tobytes() == b"".join(t.tobytes() for t in theirs)


def test_salt_splits_names_by_year_and_leaves_other_fields_alone() -> None:
    encoder = ClkEncoder(schema(salt=SALT), KEY)
    salted = encoder.encode(ROWS)
    dates = encoder.encode([("", "", date) for _, _, date in ROWS])  # the date field alone
    # Same year of birth: every differing bit is a date bit, so the names set the same bits.
    differ = salted[0] ^ salted[1]
    assert not (differ & ~(dates[0] | dates[1])).any()
    # Another year: the names set unrelated bits, so many differing bits are not date bits.
    differ = salted[0] ^ salted[2]
    assert ones(differ & ~(dates[0] | dates[2])) > 100
    # Unsalted, the names agree across years and the pair scores far higher.
    plain = ClkEncoder(schema(), KEY).encode(ROWS)
    assert dice(salted[0], salted[2]) < dice(plain[0], plain[2]) - 0.3
    # The date itself is not salted: alone, it encodes exactly as without the salt.
    assert dates.tobytes() == ClkEncoder(schema(), KEY).encode([("", "", d) for _, _, d in ROWS]).tobytes()


def test_salt_must_name_identifier_fields() -> None:
    bad = Salt(source="year", fields=("surname",), prefix=4)
    with pytest.raises(AgreementError, match="identifiers.hardening.salt names year"):
        ClkEncoder(schema(salt=bad), KEY)
    with pytest.raises(ValidationError, match="cannot salt itself"):
        Salt(source="surname", fields=("surname",))
    with pytest.raises(ValidationError, match="appear twice"):
        Salt(source="date_of_birth", fields=("surname", "surname"))


def test_flips_are_keyed_deterministic_and_at_the_stated_rate() -> None:
    rows = [(f"name{i}", "smith", "20120304") for i in range(400)]
    plain = ClkEncoder(schema(), KEY).encode(rows)
    flipped = ClkEncoder(schema(flip_probability=0.05), KEY).encode(rows)
    again = ClkEncoder(schema(flip_probability=0.05), KEY).encode(list(reversed(rows)))[::-1]
    other_key = ClkEncoder(schema(flip_probability=0.05), bytes(32)).encode(rows)
    # Deterministic per record, whatever the row order or batch: repeated uploads cannot be averaged.
    assert flipped.tobytes() == again.tobytes()
    # The flip rate is p: 400 x 1024 bits at p = 0.05 gives 20,480 flips, sd about 140.
    rate = np.unpackbits(flipped ^ plain).mean()
    assert 0.047 < rate < 0.053
    # Keyed: another key flips other bits (the masks agree on about p^2 + (1 - p)^2 of positions).
    other_rate = np.unpackbits(other_key ^ ClkEncoder(schema(), bytes(32)).encode(rows)).mean()
    assert 0.047 < other_rate < 0.053
    mask_a = np.unpackbits(flipped ^ plain)
    mask_b = np.unpackbits(other_key ^ ClkEncoder(schema(), bytes(32)).encode(rows))
    assert (mask_a & mask_b).mean() < 0.005


def test_identical_records_flip_identically_so_true_matches_keep_dice_one() -> None:
    encoder = ClkEncoder(schema(flip_probability=0.05), KEY)
    a, b = encoder.encode([ROWS[0]]), encoder.encode([ROWS[0]])
    assert a.tobytes() == b.tobytes()
    # A one-letter difference changes the whole mask: the pair loses about 2p of its Dice.
    typo = encoder.encode([("olivr", "smith", "20120304")])
    plain = ClkEncoder(schema(), KEY).encode([ROWS[0], ("olivr", "smith", "20120304")])
    assert dice(plain[0], plain[1]) - 0.2 < dice(a[0], typo[0]) < dice(plain[0], plain[1])


def test_flip_probability_is_bounded() -> None:
    with pytest.raises(ValidationError):
        Hardening(flip_probability=0.3)
    with pytest.raises(ValidationError):
        Hardening(flip_probability=-0.01)


def test_salted_compiled_assembly_matches_the_python_integer_path(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    # Salted tokens go through the compiled tables keyed by (n-gram, salt id); they must set
    # exactly the bits of the Python path, which appends the salt to each token string itself.
    # Small batches and a small cache make salt ids restart between batches.
    import random

    import pplink.encoding as encoding

    rng = random.Random(3)
    rows = [(rng.choice(["oliver", "olivia", "amelia", "", "zoë"]), rng.choice(["smith", "khan", "o'neil"]),
             rng.choice(["", f"{rng.randrange(1990, 2020)}{rng.randrange(1, 13):02d}01"])) for _ in range(300)]
    for hardening in ({"salt": SALT}, {"salt": Salt(source="surname", fields=("given_name", "date_of_birth"))}):
        encoder = ClkEncoder(schema(**hardening), KEY)
        compiled = encoder.encode(rows)
        assert encoder._tables is not None
        assert compiled.tobytes() == encoder._assemble_python(rows).tobytes()
        monkeypatch.setattr(encoding, "_TOKEN_CACHE_SIZE", 20)
        monkeypatch.setattr(encoding, "_BATCH_ROWS", 9)
        assert ClkEncoder(schema(**hardening), KEY).encode(rows).tobytes() == compiled.tobytes()
        monkeypatch.undo()

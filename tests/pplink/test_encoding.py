"""Encodings: bit-for-bit clkhash, similar people score high, different people low, hardening bites."""

from __future__ import annotations

import random
import string

import numpy as np
from clkhash import clk
from clkhash.schema import from_json_dict

from pplink.crypto import SecretBytes, derive_linkage_key
from pplink.encoding import ClkEncoder, clkhash_schema_dict
from tests.support import make_setup

SECRET = SecretBytes(bytes(range(32)))


def dice(a: np.ndarray, b: np.ndarray) -> float:
    ones = int(np.unpackbits(a).sum() + np.unpackbits(b).sum())
    return 2 * int(np.unpackbits(a & b).sum()) / ones


ROWS = [
    ("oliver", "smith", "20120304", "m", "SW1A 1AA"),
    ("olivr", "smith", "20120304", "m", "SW1A 1AA"),  # one typo
    ("amelia", "khan", "20151120", "f", "LS6 2AB"),
    ("", "khan", "20151120", "", ""),  # missing optional values
]


def test_bit_for_bit_equal_to_clkhash(tmp_path) -> None:  # type: ignore[no-untyped-def]
    # pplink bypasses clkhash's own validation but must produce exactly clkhash's filters.
    config = make_setup(tmp_path).agreement
    key = derive_linkage_key(SECRET, config.agreement_id)
    ours = ClkEncoder(config.identifiers, key).encode(ROWS)
    schema = from_json_dict(clkhash_schema_dict(config.identifiers))
    theirs = clk.generate_clks(ROWS, schema, key, validate=True, max_workers=1)
    assert ours.tobytes() == b"".join(t.tobytes() for t in theirs)
    assert ours.shape == (4, 128)


def test_node_encodings_are_clkhash_of_the_hashed_forms(tmp_path) -> None:  # type: ignore[no-untyped-def]
    # The template's given_name and birth_date kinds change only the strings hashed: the node's
    # encodings must be clkhash's encodings of hashed_form(kind) of every value, bit for bit.
    from nodes.encode import encode_records
    from pplink.normalise import hashed_form
    from tests.support import write_records

    setup = make_setup(tmp_path)
    ids = setup.agreement.identifiers
    assert {f.column: f.kind.value for f in ids.fields}["given_name"] == "given_name"
    assert {f.column: f.kind.value for f in ids.fields}["date_of_birth"] == "birth_date"
    raw = [("R1", "Liz", "Smith", "03/11/2012", "F", "sw1a1aa"), ("R2", "Elizabeth", "SMITH", "2012-03-11", "f", ""),
           ("R3", "Bob Tom", "O'Brien", "", "M", "LS6 2AB"), ("R4", "Sam", "Khan", "25/02/2010", "", "M1 1AA")]
    columns = ("record_id", "given_name", "surname", "date_of_birth", "sex", "postcode")
    rows = [{**dict(zip(columns, r, strict=True)), "opt_out": "N"} for r in raw]
    records = write_records(tmp_path / "r.csv", rows, columns=(*columns, "opt_out"))
    ours = encode_records(setup.agreement, "social_care", setup.secret, records)
    forms = [hashed_form(f.kind.value, ids.date_formats) for f in ids.fields]
    hashed = [[form(v) for form, v in zip(forms, r[1:], strict=True)] for r in raw]
    assert hashed[0][0] == hashed[1][0] == "elizabeth" and hashed[2][0] == "robert thomas"
    assert hashed[0][2][8:] == hashed[1][2][8:] == "0311"  # a day/month swap keeps the sorted pair
    key = derive_linkage_key(setup.secret, setup.agreement.agreement_id)
    theirs = clk.generate_clks(hashed, from_json_dict(clkhash_schema_dict(ids)), key, validate=True, max_workers=1)
    assert ours.record_ids == ["R1", "R2", "R3", "R4"]
    assert ours.clks.tobytes() == b"".join(t.tobytes() for t in theirs)


def test_bit_for_bit_with_folding_and_other_settings(tmp_path) -> None:  # type: ignore[no-untyped-def]
    # The fast assembly must match clkhash for folds, other lengths and n-gram settings too.
    def edit(t: str) -> str:
        t = t.replace("xor_folds = 1\n", "xor_folds = 2\n").replace("filter_bits = 1024", "filter_bits = 2048")
        return t.replace('kind = "postcode"\nbits_per_token = 8', 'kind = "postcode"\nbits_per_token = 8\nngram = 3')

    config = make_setup(tmp_path, edit=edit).agreement
    key = derive_linkage_key(SECRET, config.agreement_id)
    rows = ROWS * 3  # repeats exercise the per-value caches
    ours = ClkEncoder(config.identifiers, key).encode(rows)
    schema = from_json_dict(clkhash_schema_dict(config.identifiers))
    assert schema.xor_folds == 2 and schema.l == 2048
    theirs = clk.generate_clks(rows, schema, key, validate=True, max_workers=1)
    assert ours.tobytes() == b"".join(t.tobytes() for t in theirs)
    assert ours.shape == (12, 256)


def test_token_cache_eviction_keeps_filters_exact(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    # The per-field token cache is cleared when full; a cleared cache must only cost time, never
    # change a filter. A cache of 3 entries clears several times within one name.
    import pplink.encoding as encoding

    config = make_setup(tmp_path).agreement
    key = derive_linkage_key(SECRET, config.agreement_id)
    rng = random.Random(5)
    rows = [("".join(rng.choices(string.ascii_lowercase, k=9)), "smith", "20120304", "m", "SW1A 1AA")
            for _ in range(20)]
    monkeypatch.setattr(encoding, "_TOKEN_CACHE_SIZE", 3)
    ours = ClkEncoder(config.identifiers, key).encode(rows + ROWS)
    schema = from_json_dict(clkhash_schema_dict(config.identifiers))
    theirs = clk.generate_clks(rows + ROWS, schema, key, validate=True, max_workers=1)
    assert ours.tobytes() == b"".join(t.tobytes() for t in theirs)


def test_compiled_assembly_matches_clkhash_on_awkward_values(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    # The compiled path packs n-grams into integer keys and rebuilds token strings from them; any
    # key collision, lost code point or wrong padding would change a filter. Values here carry
    # non-ASCII and astral code points, NUL and spaces; tiny batches and a tiny token cache make
    # the tables reset between batches, and thousands of distinct tokens make them grow.
    import pplink.encoding as encoding

    def edit(t: str) -> str:
        return t.replace('kind = "postcode"\nbits_per_token = 8',
                         'kind = "postcode"\nbits_per_token = 8\nngram = 3\npositional = true')

    config = make_setup(tmp_path, edit=edit).agreement
    key = derive_linkage_key(SECRET, config.agreement_id)
    rng = random.Random(11)
    alphabet = string.ascii_lowercase + " \x00éß中\U0001f600"
    rows = [tuple("".join(rng.choices(alphabet, k=rng.randrange(0, 30))) for _ in range(5)) for _ in range(400)]
    rows += [tuple(chr(0x4E00 + i * 7 + j) * (j + 1) for j in range(5)) for i in range(300)] + ROWS
    schema = from_json_dict(clkhash_schema_dict(config.identifiers))
    theirs = b"".join(t.tobytes() for t in clk.generate_clks(rows, schema, key, validate=True, max_workers=1))
    assert ClkEncoder(config.identifiers, key).encode(rows).tobytes() == theirs
    monkeypatch.setattr(encoding, "_TOKEN_CACHE_SIZE", 50)
    monkeypatch.setattr(encoding, "_BATCH_ROWS", 7)
    assert ClkEncoder(config.identifiers, key).encode(rows).tobytes() == theirs


def test_typo_scores_high_and_strangers_low(tmp_path) -> None:  # type: ignore[no-untyped-def]
    config = make_setup(tmp_path).agreement
    enc = ClkEncoder(config.identifiers, derive_linkage_key(SECRET, config.agreement_id)).encode(ROWS)
    assert dice(enc[0], enc[1]) > 0.8
    assert dice(enc[0], enc[2]) < 0.45
    # Across many pairs of random strangers the Dice score sits far below the 0.8 threshold.
    rng = random.Random(727)

    def word() -> str:
        return "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(4, 8)))

    strangers = [(word(), word(), f"{rng.randint(1950, 2020)}{rng.randint(1, 12):02d}{rng.randint(1, 28):02d}",
                  rng.choice("mf"), f"M{rng.randint(1, 20)} {rng.randint(1, 9)}AB") for _ in range(60)]
    e = ClkEncoder(config.identifiers, derive_linkage_key(SECRET, config.agreement_id)).encode(strangers)
    scores = [dice(e[i], e[j]) for i in range(len(e)) for j in range(i + 1, len(e))]
    assert max(scores) < 0.7 and sum(scores) / len(scores) < 0.45


def test_key_depends_on_agreement(tmp_path) -> None:  # type: ignore[no-untyped-def]
    # Same secret, two agreements: encodings of the same person must be unrelated.
    a = make_setup(tmp_path / "a").agreement
    b = make_setup(tmp_path / "b").agreement
    ea = ClkEncoder(a.identifiers, derive_linkage_key(SECRET, a.agreement_id)).encode(ROWS[:1])
    eb = ClkEncoder(b.identifiers, derive_linkage_key(SECRET, b.agreement_id)).encode(ROWS[:1])
    assert dice(ea[0], eb[0]) < 0.6


def test_xor_folding_really_changes_the_output(tmp_path) -> None:  # type: ignore[no-untyped-def]
    # clkhash ignores `xorFolds`; pplink writes `xor_folds`, so folding must change the bits.
    folded = make_setup(tmp_path / "f").agreement  # the default folds once
    plain = make_setup(tmp_path / "p", edit=lambda t: t.replace("xor_folds = 1\n", "xor_folds = 0\n")).agreement
    assert clkhash_schema_dict(folded.identifiers)["clkConfig"]["xor_folds"] == 1
    assert "xor_folds" not in clkhash_schema_dict(plain.identifiers)["clkConfig"]
    key = derive_linkage_key(SECRET, plain.agreement_id)
    e_plain = ClkEncoder(plain.identifiers, key).encode(ROWS)
    e_fold = ClkEncoder(folded.identifiers, key).encode(ROWS)
    assert e_fold.shape == e_plain.shape == (4, 128)
    # Folding 2048 hashed bits into 1024 is not the unfolded filter.
    assert e_fold.tobytes() != e_plain.tobytes()
    assert dice(e_fold[0], e_fold[1]) > 0.7


def test_empty_input_gives_empty_array(tmp_path) -> None:  # type: ignore[no-untyped-def]
    config = make_setup(tmp_path).agreement
    assert ClkEncoder(config.identifiers, bytes(32)).encode([]).shape == (0, 128)

"""Hostile input: every parser turns arbitrary or mutated bytes into a clear pplink error.

For each file format a node, the coordinator or the auditor reads, Hypothesis feeds random bytes
and single-byte mutations of a valid file. The invariant: the parser returns normally or raises a
:class:`~pplink.errors.PplinkError` (never another exception, never a hang), and an error
message never echoes a sentinel value planted in the input.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coordinator.linkage.state_store import IncrementalState, derive_state_key, load_state, save_state
from nodes.delta import encode_delta, load_snapshot
from nodes.encode import encode_records
from pplink.agreement import load_agreement
from pplink.deltafile import read_delta
from pplink.encfile import read_encodings
from pplink.entity_files import read_entity_map, read_tokens
from pplink.errors import PplinkError
from pplink.ledger import read_ledger
from tests.support import make_setup, person, write_records

SENTINEL = "Quxsentinelname"
FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """A valid example of every format, made once."""
    import random

    root = tmp_path_factory.mktemp("hostile")
    setup = make_setup(root)
    rng = random.Random(5)
    rows = [person(rng, i) for i in range(6)]
    rows[2]["given_name"] = SENTINEL
    records = write_records(root / "school.csv", rows)
    from nodes.encode import encode_file

    summary = encode_file(setup.agreement, "school", setup.secret, setup.key("school"), records, root / "school.enc")
    (root / "map.csv").write_text("row_token,entity_id\n" + "".join(
        f"{t},{'ab' * 16}\n" for t in read_tokens(summary.tokens)))
    # Incremental linkage: a delta (one row dropped), its snapshot, and a sealed coordinator state.
    delta = encode_delta(setup.agreement, "school", setup.secret, setup.key("school"),
                         write_records(root / "school-now.csv", rows[1:]), root / "school.d1", root / "school.enc",
                         workers=1)
    state_key = derive_state_key(setup.key("coordinator"), setup.agreement.agreement_id)
    save_state(root / "linkage.state", IncrementalState(
        agreement_id=setup.agreement.agreement_id, parties=["school"], threshold=0.8, mode="all-pairs",
        positions=np.zeros((0, 0), dtype=np.int64), skip=np.zeros((0, 2), dtype=np.uint64), width=128), state_key)
    return {"setup": setup, "root": root, "records": records.read_bytes(), "enc": (root / "school.enc").read_bytes(),
            "tokens": summary.tokens.read_bytes(), "map": (root / "map.csv").read_bytes(),
            "agreement": setup.agreement_path.read_bytes(), "delta": (root / "school.d1").read_bytes(),
            "snapshot": delta.snapshot.read_bytes(), "state": (root / "linkage.state").read_bytes(),
            "state_key": state_key}


#: (byte position, non-zero XOR mask): one flipped byte anywhere in a valid file.
MUTATIONS = st.tuples(st.integers(min_value=0, max_value=10**6), st.integers(min_value=1, max_value=255))


def _mutate(data: bytes, where: int, xor: int) -> bytes:
    if not data:
        return data
    out = bytearray(data)
    out[where % len(out)] ^= xor
    return bytes(out)


def _check(call, path: Path) -> None:  # type: ignore[no-untyped-def]
    try:
        call(path)
    except PplinkError as err:
        assert SENTINEL.lower() not in str(err).lower()


def _parsers(world: dict[str, object]) -> dict[str, tuple[bytes, object]]:
    setup = world["setup"]
    agreement = setup.agreement  # type: ignore[attr-defined]
    return {
        "records": (world["records"], lambda p: encode_records(agreement, "school", setup.secret, p, workers=1)),  # type: ignore[attr-defined]
        "enc": (world["enc"], lambda p: read_encodings(p, agreement)),
        "tokens": (world["tokens"], read_tokens),
        "map": (world["map"], read_entity_map),
        "agreement": (world["agreement"], load_agreement),
        "delta": (world["delta"], lambda p: read_delta(p, agreement)),
        "snapshot": (world["snapshot"], load_snapshot),
        "state": (world["state"], lambda p: load_state(p, world["state_key"], agreement.agreement_id)),  # type: ignore[arg-type]
    }


KINDS = ["records", "enc", "tokens", "map", "agreement", "delta", "snapshot", "state"]


@pytest.mark.parametrize("kind", KINDS)
@FUZZ
@given(mutation=MUTATIONS)
def test_mutated_files_fail_cleanly(world: dict[str, object], kind: str, mutation: tuple[int, int],
                                    tmp_path_factory: pytest.TempPathFactory) -> None:
    valid, parse = _parsers(world)[kind]
    path = tmp_path_factory.mktemp("m") / (f"x.{kind}" if kind != "records" else "x.csv")
    path.write_bytes(_mutate(valid, *mutation))  # type: ignore[arg-type]
    _check(parse, path)


@pytest.mark.parametrize("kind", KINDS)
@FUZZ
@given(data=st.binary(max_size=2048) | st.text(max_size=400).map(lambda t: t.encode("utf-8")))
def test_random_bytes_fail_cleanly(world: dict[str, object], kind: str, data: bytes,
                                   tmp_path_factory: pytest.TempPathFactory) -> None:
    _, parse = _parsers(world)[kind]
    path = tmp_path_factory.mktemp("r") / (f"x.{kind}" if kind != "records" else "x.csv")
    path.write_bytes(data)
    _check(parse, path)


@FUZZ
@given(cut=st.integers(min_value=0, max_value=10**6))
def test_truncated_files_fail_cleanly(world: dict[str, object], cut: int,
                                      tmp_path_factory: pytest.TempPathFactory) -> None:
    for kind, (valid, parse) in _parsers(world).items():
        path = tmp_path_factory.mktemp("t") / (f"x.{kind}" if kind != "records" else "x.csv")
        path.write_bytes(valid[: cut % (len(valid) + 1)])  # type: ignore[index, arg-type]
        _check(parse, path)


def test_ledger_random_lines_fail_cleanly(world: dict[str, object], tmp_path: Path) -> None:
    # The ledger's own byte-flip property test lives in tests/pplink/test_ledger.py; here: junk.
    agreement = world["setup"].agreement  # type: ignore[attr-defined]
    for junk in (b"", b"{}", b"{}\n", b"not json\n", b'{"seq": 1}\n', b"\xff\xfe\n", b"[]\n" * 3):
        path = tmp_path / "ledger.jsonl"
        path.write_bytes(junk)
        _check(lambda p: read_ledger(p, agreement), path)


def test_agreement_fuzz_keeps_toml_valid_errors(world: dict[str, object], tmp_path: Path) -> None:
    # Structurally valid TOML with wrong types everywhere: one AgreementError listing problems.
    from pplink.errors import AgreementError

    data = tomllib.loads(world["agreement"].decode())  # type: ignore[attr-defined]
    data["budget"]["epsilon"] = "lots"
    data["identifiers"]["fields"][0]["kind"] = 7
    data["parties"][0]["id"] = "Not A Valid Id!"
    import tomli_w

    path = tmp_path / "a.toml"
    path.write_bytes(tomli_w.dumps(data).encode())
    with pytest.raises(AgreementError, match="3 problem"):
        load_agreement(path)

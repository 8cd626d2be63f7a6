"""The compiled band scan finds exactly the edges, and scores exactly the pairs, of the numpy join it replaced."""

from __future__ import annotations

import numpy as np
import pytest

from coordinator.linkage import edge_kernels
from coordinator.linkage.edges import _band_edges_few, band_keys, find_edges
from coordinator.linkage.similarity import as_words, compute_dice, popcounts


def _world(seed: int, n: int, width: int, bands: int, key_bits: int) -> tuple[np.ndarray, ...]:
    """Rows of 3 agencies, near-copies of a few people, keyed by few bits so that buckets hold many rows."""
    rng = np.random.default_rng(seed)
    people = rng.random((n // 3, width * 8)) < 0.3
    who = rng.integers(0, len(people), n)
    clks = np.packbits(people[who] ^ (rng.random((n, width * 8)) < 0.05), axis=1)
    party = np.sort(rng.integers(0, 3, n)).astype(np.uint16)
    sentinel = 1 << key_bits
    keys = band_keys(clks, rng.integers(0, width * 8, (bands, key_bits)))  # LSH: near-copies share keys
    keys[rng.random((bands, n)) < 0.05] = sentinel  # frozen-out buckets
    new_rows = np.sort(rng.choice(n, n // 20, replace=False))
    return clks, party, keys, new_rows, np.int64(sentinel)


def _reference(clks: np.ndarray, party: np.ndarray, keys: np.ndarray, new_rows: np.ndarray, threshold: float,
               sentinel: int) -> tuple[set[tuple[int, int, float]], int]:
    """Every pair (new row, other agency's row) sharing a live key in some band, scored by anonlink's Dice."""
    is_new = np.zeros(len(party), dtype=bool)
    is_new[new_rows] = True
    edges, compared = set(), 0
    for b in range(keys.shape[0]):
        for x in new_rows:
            if keys[b, x] == sentinel:
                continue
            ys = np.flatnonzero((keys[b] == keys[b, x]) & (party != party[x]) & (~is_new | (np.arange(len(party)) > x)))
            compared += len(ys)
            sims = compute_dice(clks, clks, np.full(len(ys), x), ys)
            edges |= {(min(int(x), int(y)), max(int(x), int(y)), float(s)) for y, s in zip(ys, sims, strict=True)
                      if s >= threshold}
    return edges, compared


@pytest.mark.parametrize(("width", "threshold"), [(128, 0.6), (16, 0.5), (128, 0.0)])
def test_scan_finds_the_edges_and_count_of_the_per_band_join(width: int, threshold: float,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    # 1024-bit rows take the vector popcount where the CPU has it, 128-bit rows the scalar loop; with
    # small outputs, a block finds more edges than one holds and resumes where it stopped; with small
    # gather buffers, a pass finds more pairs than they hold and is gathered again; with small passes and
    # blocks (the last ones partial), each thread's rows take several of each.
    monkeypatch.setattr(edge_kernels, "_FIRST_CAPACITY", 16)
    monkeypatch.setattr(edge_kernels, "_FIRST_PAIRS", 16)
    monkeypatch.setattr(edge_kernels, "_PASS_ROWS", 700)
    monkeypatch.setattr(edge_kernels, "_BLOCK_ROWS", 64)
    clks, party, keys, new_rows, sentinel = _world(5, 3_000, width, 6, 7)
    (a, b, sim), compared = find_edges(clks, party, keys, new_rows, threshold, sentinel=int(sentinel), workers=2)
    expected, expected_compared = _reference(clks, party, keys, new_rows, threshold, int(sentinel))
    assert len(expected) > 50
    assert {(int(x), int(y), float(s)) for x, y, s in zip(a, b, sim, strict=True)} == expected
    assert compared == expected_compared
    assert (party[a] < party[b]).all() and (np.diff(a * len(party) + b) > 0).all()  # each pair once, sorted
    # The scan itself keeps a pair found in several bands once.
    (x, y, _), scanned = edge_kernels.scan_edges(keys, party, new_rows, as_words(clks), threshold, int(sentinel))
    assert scanned == compared and len(x) == len(a) == len(np.unique(x * len(party) + y))

    # The numpy join the scan replaced scores the same pairs, band by band.
    is_new = np.zeros(len(party), dtype=bool)
    is_new[new_rows] = True
    words = as_words(clks)
    ctx = (party, is_new, words, popcounts(words), threshold, int(sentinel))
    assert sum(_band_edges_few(band, keys, new_rows, ctx)[1] for band in range(keys.shape[0])) == compared


def test_scalar_and_vector_popcounts_agree(monkeypatch: pytest.MonkeyPatch) -> None:
    clks, party, keys, new_rows, sentinel = _world(8, 2_000, 128, 4, 6)
    first = find_edges(clks, party, keys, new_rows, 0.5, sentinel=int(sentinel))
    monkeypatch.setattr(edge_kernels, "VECTOR_POPCOUNT", False)
    second = find_edges(clks, party, keys, new_rows, 0.5, sentinel=int(sentinel))
    assert first[1] == second[1] > 0
    for mine, theirs in zip(first[0], second[0], strict=True):
        assert np.array_equal(mine, theirs)


def test_many_parties_take_wider_row_tags() -> None:
    # Party numbers of 128 and above do not fit the scan's one-byte tags: it uses two bytes.
    clks, party, keys, new_rows, sentinel = _world(6, 2_000, 128, 4, 6)
    expected = find_edges(clks, party, keys, new_rows, 0.5, sentinel=int(sentinel))
    wide = find_edges(clks, (party + 300).astype(np.uint16), keys, new_rows, 0.5, sentinel=int(sentinel))
    assert wide[1] == expected[1] > 0
    for mine, theirs in zip(wide[0], expected[0], strict=True):
        assert np.array_equal(mine, theirs)


def test_no_new_rows_or_only_frozen_keys_find_nothing() -> None:
    clks, party, keys, _, sentinel = _world(9, 500, 128, 3, 6)
    none = find_edges(clks, party, keys, np.zeros(0, dtype=np.int64), 0.5, sentinel=int(sentinel))
    assert none[1] == 0 and len(none[0][0]) == 0
    keys[:, :10] = sentinel
    frozen = find_edges(clks, party, keys, np.arange(10), 0.0, sentinel=int(sentinel))
    assert frozen[1] == 0 and len(frozen[0][0]) == 0

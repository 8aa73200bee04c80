"""Line charts as standalone SVG files, written directly: a run's plots, with no plotting
library to import.

A run plots a few points per series: writing them as SVG text takes about a millisecond,
where matplotlib took about 0.5 s to import and 60 ms a figure. A chart is a box of axes
with a light grid, tick labels on both axes, a polyline with markers per series (circles,
then dashed with squares) and a legend. The y axis is linear, or *symlog*: linear between
-1 and 1 and a decade a unit beyond, so that a bound that ends at exactly 0 still shows.

Examples
--------
>>> import tempfile, xml.etree.ElementTree as ET
>>> path = line_chart(Path(tempfile.mkdtemp()) / "bound.svg",
...                   [("bound", [1, 2, 3], [3e6, 40.0, 0.0]), ("error", [1, 2], [None, 5.0])],
...                   "resolution", "|error|", y_scale="symlog", integer_x=True)
>>> svg = ET.parse(path).getroot()
>>> [len(p.get("points").split()) for p in svg.iter(f"{{{SVG}}}polyline")]
[3, 1]
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

__all__ = ["SVG", "Chart", "Series", "line_chart", "write_charts"]

SVG = "http://www.w3.org/2000/svg"
Scale = Literal["linear", "symlog"]
#: A series: its legend label ("": none), its x values and its y values (None: no point).
Series = tuple[str, Sequence[float | None], Sequence[float | None]]
#: Space around the axes box, in pixels: left, right, top, bottom.
MARGINS = (72, 16, 16, 48)
COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728")  # matplotlib's first four
FONTS = "DejaVu Sans, Arial, Helvetica, sans-serif"  # named: some renderers map no generic
CHAR_WIDTH = 7.0  # an estimate of a character's width at 12 px, to size the legend


@dataclass(frozen=True)
class Chart:
    """One panel: its series, axis labels, y scale, whether x ticks are whole numbers, a title."""

    series: Sequence[Series]
    x_label: str
    y_label: str
    y_scale: Scale = "linear"
    integer_x: bool = False
    title: str | None = None

    def __post_init__(self) -> None:
        if self.y_scale not in ("linear", "symlog"):
            raise ValueError(f"y_scale must be 'linear' or 'symlog', not {self.y_scale!r}")


def line_chart(
    path: Path, series: Sequence[Series], x_label: str, y_label: str, *,
    y_scale: Scale = "linear", integer_x: bool = False, title: str | None = None,
) -> Path:
    """Write one chart of ``series`` to ``path`` as SVG (600 x 400 pixels); ``path``."""
    return write_charts(path, [Chart(series, x_label, y_label, y_scale, integer_x, title)])


def write_charts(
    path: Path, charts: Sequence[Chart], width: int = 600, height: int = 400
) -> Path:
    """Write ``charts`` side by side, each ``width`` x ``height`` pixels, to ``path`` as one
    SVG; ``path``."""
    total = width * len(charts)
    parts = ['<?xml version="1.0" encoding="UTF-8"?>',
             f'<svg xmlns="{SVG}" width="{total}" height="{height}" '
             f'viewBox="0 0 {total} {height}" font-family="{FONTS}" font-size="12">',
             '<rect width="100%" height="100%" fill="white"/>']
    for i, chart in enumerate(charts):
        parts += _panel(chart, i * width, width, height)
    parts.append("</svg>\n")
    path = Path(path)
    path.write_text("\n".join(parts), encoding="utf-8")
    return path


def _panel(chart: Chart, left: int, width: int, height: int) -> list[str]:
    """The SVG elements of ``chart`` drawn in the ``width`` x ``height`` panel at ``left``."""
    series = [(label, _points(xs, ys, chart.y_scale)) for label, xs, ys in chart.series]
    x_ticks, (x0, x1) = _ticks([x for _, ps in series for x, _ in ps], "linear", chart.integer_x)
    y_ticks, (y0, y1) = _ticks([y for _, ps in series for _, y in ps], chart.y_scale)
    m_left, m_right, m_top, m_bottom = MARGINS
    top = m_top + (20 if chart.title else 0)
    bx, by, bw, bh = left + m_left, top, width - m_left - m_right, height - top - m_bottom

    def px(x: float) -> float:
        return bx + (x - x0) / (x1 - x0) * bw

    def py(y: float) -> float:
        return by + bh - (y - y0) / (y1 - y0) * bh

    grid = "".join(f"M{px(x):.1f} {by}V{by + bh}" for x, _ in x_ticks)
    grid += "".join(f"M{bx} {py(y):.1f}H{bx + bw}" for y, _ in y_ticks)
    out = [f'<path d="{grid}" stroke="#e4e4e4" fill="none"/>',
           f'<rect x="{bx}" y="{by}" width="{bw}" height="{bh}" fill="none" stroke="#333"/>']
    out += [_text(px(x), by + bh + 16, label) for x, label in x_ticks]
    out += [_text(bx - 6, py(y) + 4, label, "end") for y, label in y_ticks]
    out.append(_text(bx + bw / 2, by + bh + 38, chart.x_label))
    out.append(_text(left + 16, by + bh / 2, chart.y_label, rotate=True))
    if chart.title:
        out.append(_text(bx + bw / 2, m_top + 10, chart.title, size=14))
    pixels = [[(px(x), py(y)) for x, y in ps] for _, ps in series]
    for i, line in enumerate(pixels):
        if line:
            points = " ".join(f"{x:.1f},{y:.1f}" for x, y in line)
            out.append(f'<polyline points="{points}" {_stroke(i)}/>')
            out += [_marker(i, x, y) for x, y in line]
    labelled = [(i, label) for i, (label, ps) in enumerate(series) if label and ps]
    if labelled:
        out += _legend(labelled, (bx, by, bw, bh), [p for line in pixels for p in line])
    return out


def _points(
    xs: Sequence[float | None], ys: Sequence[float | None], scale: Scale
) -> list[tuple[float, float]]:
    """The finite (x, y) pairs, y in the scale's units (None, NaN and inf left out)."""
    pairs = [(float(x), float(y)) for x, y in zip(xs, ys, strict=True)
             if x is not None and y is not None]
    return [(x, _symlog(y) if scale == "symlog" else y) for x, y in pairs
            if math.isfinite(x) and math.isfinite(y)]


def _symlog(y: float) -> float:
    """``y`` between -1 and 1, else its sign times 1 + its decade: 1000 is 4, -10 is -2."""
    return y if abs(y) <= 1 else math.copysign(1 + math.log10(abs(y)), y)


def _ticks(
    values: Sequence[float], scale: Scale, integer: bool = False
) -> tuple[list[tuple[float, str]], tuple[float, float]]:
    """Ticks (position in the scale's units, label) for ``values``, and the axis range: a
    1, 2 or 5 times a power of ten step on a linear axis, decades on a symlog one.

    >>> [label for _, label in _ticks([0.0, _symlog(3e6)], "symlog")[0]]
    ['0', '1', '10', '100', '1000', '1e4', '1e5', '1e6', '1e7']
    >>> [label for _, label in _ticks([_symlog(-500.0), 0.5], "symlog")[0]]
    ['-1000', '-100', '-10', '-1', '0', '1']
    >>> [label for _, label in _ticks([0.12, 0.52], "linear")[0]]
    ['0.1', '0.2', '0.3', '0.4', '0.5', '0.6']
    >>> [label for _, label in _ticks([3.0], "linear", integer=True)[0]]
    ['2', '3', '4']
    """
    lo, hi = (min(values), max(values)) if values else (0.0, 1.0)
    if lo == hi:  # one value: a unit around it (a tenth of it on a linear axis)
        pad = 1.0 if scale == "symlog" or lo == 0 else abs(lo) / 10
        lo, hi = lo - pad, hi + pad
    if scale == "symlog":
        step = float(max(1, math.ceil((hi - lo) / 10)))
    else:
        step = _nice_step((hi - lo) / 5)
        step = max(step, 1.0) if integer else step
    first, last = math.floor(lo / step + 1e-9), math.ceil(hi / step - 1e-9)
    decimals = max(0, -math.floor(math.log10(step) + 1e-9))
    ticks = [(k * step, _tick_label(k * step, scale, decimals)) for k in range(first, last + 1)]
    margin = 0.03 * (last - first) * step
    return ticks, (first * step - margin, last * step + margin)


def _nice_step(raw: float) -> float:
    """The smallest 1, 2 or 5 times a power of ten at least ``raw``.

    >>> _nice_step(0.08), _nice_step(2.4), _nice_step(10.0)
    (0.1, 5.0, 10.0)
    """
    power = 10.0 ** math.floor(math.log10(raw))
    return next(m * power for m in (1, 2, 5, 10) if raw <= m * power * (1 + 1e-9))


def _tick_label(position: float, scale: Scale, decimals: int) -> str:
    """``0``, ``0.25``, ``1000``, ``1e4``, ``-1e9``: a plain tick label (a symlog axis's
    positions are decades: 3 is 100).

    >>> [_tick_label(v, "linear", 1) for v in (0.30000000000000004, -0.0, 2.5e7)]
    ['0.3', '0.0', '2.5e7']
    >>> [_tick_label(u, "symlog", 0) for u in (0.0, 1.0, 2.0, 5.0, -10.0)]
    ['0', '1', '10', '1e4', '-1e9']
    """
    value = position
    if scale == "symlog" and position:
        value = math.copysign(10 ** (abs(position) - 1), position)
    if abs(value) < 1e4:
        return f"{value + 0.0:.{decimals}f}"  # + 0.0: -0.0 reads 0
    mantissa, exponent = f"{value:.3g}".split("e")
    return f"{mantissa}e{int(exponent)}"


def _legend(
    entries: Sequence[tuple[int, str]], box: tuple[float, float, float, float],
    pixels: Sequence[tuple[float, float]],
) -> list[str]:
    """A legend of ``entries`` (series index, label) in the corner of ``box`` that covers the
    fewest of the data's ``pixels`` (the top right first)."""
    bx, by, bw, bh = box
    w, h = 44 + CHAR_WIDTH * max(len(label) for _, label in entries), 8 + 20 * len(entries)
    corners = [(bx + bw - w - 8, by + 8), (bx + 8, by + 8),
               (bx + bw - w - 8, by + bh - h - 8), (bx + 8, by + bh - h - 8)]
    x, y = min(corners, key=lambda c: sum(c[0] <= px <= c[0] + w and c[1] <= py <= c[1] + h
                                          for px, py in pixels))
    out = [f'<rect x="{x:.1f}" y="{y:.1f}" width="{w:.1f}" height="{h}" fill="white" '
           'fill-opacity="0.85" stroke="#ccc"/>']
    for row, (i, label) in enumerate(entries):
        cy = y + 14 + 20 * row
        out.append(f'<line x1="{x + 8:.1f}" y1="{cy:.1f}" x2="{x + 32:.1f}" y2="{cy:.1f}" '
                   f'{_stroke(i)}/>')
        out += [_marker(i, x + 20, cy), _text(x + 40, cy + 4, label, "start")]
    return out


def _stroke(i: int) -> str:
    """Series ``i``'s line: its color, dashed for the second (and fourth) series."""
    dash = ' stroke-dasharray="6 4"' if i % 2 else ""
    return f'fill="none" stroke="{COLORS[i % len(COLORS)]}" stroke-width="1.8"{dash}'


def _marker(i: int, x: float, y: float) -> str:
    """Series ``i``'s marker at (``x``, ``y``): a circle, a square for the second series."""
    color = COLORS[i % len(COLORS)]
    if i % 2 == 0:
        return f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3.5" fill="{color}"/>'
    return f'<rect x="{x - 3:.1f}" y="{y - 3:.1f}" width="6" height="6" fill="{color}"/>'


def _text(
    x: float, y: float, content: str, anchor: str = "middle", *, rotate: bool = False,
    size: int | None = None,
) -> str:
    """A text element at (``x``, ``y``), escaped for XML, turned upright if ``rotate``, in
    ``size`` pixels (None: the chart's 12).

    >>> _text(5, 10, "a < b & c")
    '<text x="5.0" y="10.0" text-anchor="middle">a &lt; b &amp; c</text>'
    """
    extra = f' transform="rotate(-90 {x:.1f} {y:.1f})"' if rotate else ""
    extra += f' font-size="{size}"' if size else ""
    return (f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}"{extra}>'
            f"{html.escape(content)}</text>")

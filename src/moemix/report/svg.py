"""Small inline-SVG charts for the run report, drawn in Python: no JavaScript, no CDN, no matplotlib.

Every chart is one ``<svg class="plot">`` element whose data marks (bars, dots, lines, heatmap cells)
carry ``class="mark"`` and whose ``data-marks`` attribute says how many it drew. The page stays
viewable offline and in any browser, and a test can check in a real renderer that each chart drew what
it was given (tests/report/test_report_html.py). A chart with nothing finite to draw returns a one-line
note instead of an empty frame, so an empty plot is never mistaken for a drawn one.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from html import escape

# one colour per compared mixture, the same in every chart of the page
PALETTE = {
    "chosen": "#1f77b4",
    "uniform": "#7f7f7f",
    "natural": "#ff7f0e",
}
_CYCLE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf")

FONT = 'font-family="system-ui, sans-serif"'


def colour(name: str, i: int) -> str:
    """The page's colour for a named mixture, else the i-th of a fixed cycle."""
    return PALETTE.get(name, _CYCLE[i % len(_CYCLE)])


def _fmt(v: float) -> str:
    """A coordinate: two decimals are sub-pixel at these sizes and keep the page small."""
    return f"{v:.2f}".rstrip("0").rstrip(".")


def _label(v: float) -> str:
    """A tick label: up to 4 significant digits, no trailing zeros."""
    if v == 0:
        return "0"
    return f"{v:.4g}"


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About ``n`` round tick values covering [lo, hi] (1, 2, 2.5 or 5 times a power of ten apart)."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return []
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / max(n, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    ticks, t = [], first
    while t <= hi + step * 1e-9:
        ticks.append(round(t, 12))
        t += step
    return ticks


def _finite(values: Sequence[float]) -> list[float]:
    return [float(v) for v in values if v is not None and math.isfinite(float(v))]


def _padded(values: Sequence[float], zero: bool = False) -> tuple[float, float]:
    """The data range with 5% room on each side (or from 0 for bars)."""
    vals = _finite(values)
    lo, hi = min(vals), max(vals)
    if zero:
        lo = min(0.0, lo)
    if hi == lo:  # one value: a unit-wide window around it
        span = abs(hi) * 0.1 or 1.0
        return lo - span, hi + span
    pad = 0.05 * (hi - lo)
    return (lo if zero and lo == 0 else lo - pad), hi + pad


@dataclass
class _Frame:
    """Plot area inside the svg, with linear scales from data to pixels."""

    width: float
    height: float
    left: float
    right: float
    top: float
    bottom: float
    x_lo: float = 0.0
    x_hi: float = 1.0
    y_lo: float = 0.0
    y_hi: float = 1.0

    @property
    def x0(self) -> float:
        return self.left

    @property
    def x1(self) -> float:
        return self.width - self.right

    @property
    def y0(self) -> float:
        return self.height - self.bottom

    @property
    def y1(self) -> float:
        return self.top

    def x(self, v: float) -> float:
        return self.x0 + (v - self.x_lo) / (self.x_hi - self.x_lo) * (self.x1 - self.x0)

    def y(self, v: float) -> float:
        return self.y0 - (v - self.y_lo) / (self.y_hi - self.y_lo) * (self.y0 - self.y1)


def no_data(message: str) -> str:
    """What a chart section shows instead of an empty plot."""
    return f'<p class="absent">{escape(message)}</p>'


def _open(kind: str, f: _Frame, title: str, marks: int, plot_id: str) -> list[str]:
    pid = f' id="{escape(plot_id)}"' if plot_id else ""
    return [
        f'<svg class="plot" data-kind="{kind}" data-marks="{marks}"{pid} xmlns="http://www.w3.org/2000/svg" '
        f'width="{_fmt(f.width)}" height="{_fmt(f.height)}" viewBox="0 0 {_fmt(f.width)} {_fmt(f.height)}" '
        f'role="img" aria-label="{escape(title)}">',
        f"<title>{escape(title)}</title>",
        f'<text x="{_fmt(f.width / 2)}" y="14" text-anchor="middle" font-size="12" {FONT} '
        f'font-weight="600">{escape(title)}</text>',
    ]


def _y_axis(f: _Frame, label: str) -> list[str]:
    out = [f'<g class="axis" font-size="10" {FONT} fill="#444">']
    for t in nice_ticks(f.y_lo, f.y_hi):
        y = f.y(t)
        out.append(
            f'<line x1="{_fmt(f.x0)}" x2="{_fmt(f.x1)}" y1="{_fmt(y)}" y2="{_fmt(y)}" stroke="#e6e6e6"/>'
            f'<text x="{_fmt(f.x0 - 4)}" y="{_fmt(y + 3)}" text-anchor="end">{_label(t)}</text>'
        )
    if label:
        cy = (f.y0 + f.y1) / 2
        out.append(
            f'<text transform="translate(11 {_fmt(cy)}) rotate(-90)" text-anchor="middle">'
            f"{escape(label)}</text>"
        )
    out.append("</g>")
    return out


def _x_axis(f: _Frame, label: str) -> list[str]:
    out = [f'<g class="axis" font-size="10" {FONT} fill="#444">']
    for t in nice_ticks(f.x_lo, f.x_hi):
        x = f.x(t)
        out.append(
            f'<line x1="{_fmt(x)}" x2="{_fmt(x)}" y1="{_fmt(f.y0)}" y2="{_fmt(f.y1)}" stroke="#f0f0f0"/>'
            f'<text x="{_fmt(x)}" y="{_fmt(f.y0 + 13)}" text-anchor="middle">{_label(t)}</text>'
        )
    if label:
        out.append(
            f'<text x="{_fmt((f.x0 + f.x1) / 2)}" y="{_fmt(f.height - 4)}" text-anchor="middle">'
            f"{escape(label)}</text>"
        )
    out.append("</g>")
    return out


def _border(f: _Frame) -> str:
    return (
        f'<rect x="{_fmt(f.x0)}" y="{_fmt(f.y1)}" width="{_fmt(f.x1 - f.x0)}" height="{_fmt(f.y0 - f.y1)}" '
        'fill="none" stroke="#999" stroke-width="0.8"/>'
    )


def _legend(names: Sequence[str], colours: Sequence[str], x: float, y: float) -> list[str]:
    out = [f'<g class="legend" font-size="10" {FONT}>']
    for i, (name, c) in enumerate(zip(names, colours)):
        yy = y + 13 * i
        out.append(
            f'<rect x="{_fmt(x)}" y="{_fmt(yy - 8)}" width="10" height="10" fill="{c}"/>'
            f'<text x="{_fmt(x + 14)}" y="{_fmt(yy + 1)}">{escape(name)}</text>'
        )
    out.append("</g>")
    return out


def bar_chart(
    categories: Sequence[str],
    groups: Mapping[str, Sequence[float]],
    *,
    title: str,
    y_label: str = "",
    plot_id: str = "",
    height: float = 260,
) -> str:
    """Grouped bars: one group per category, one bar per series of ``groups`` (in its order)."""
    names = list(groups)
    values = [v for n in names for v in groups[n]]
    if not categories or not _finite(values):
        return no_data(f"{title}: nothing to draw")
    slot = max(14.0 * len(names) + 10, 30.0)
    longest = max(len(c) for c in categories)
    bottom = 14 + min(longest, 24) * 5.0  # rotated category labels
    f = _Frame(
        width=64 + slot * len(categories) + 110,
        height=height + bottom,
        left=52,
        right=110,
        top=24,
        bottom=bottom,
    )
    f.x_lo, f.x_hi = 0.0, float(len(categories))
    f.y_lo, f.y_hi = _padded(values, zero=True)
    marks: list[str] = []
    bar_w = (slot - 10) / len(names)
    for ci, cat in enumerate(categories):
        for si, name in enumerate(names):
            v = groups[name][ci]
            if v is None or not math.isfinite(v):
                continue
            x = f.x(ci) + 5 + si * bar_w
            y_top, y_base = f.y(max(v, 0.0)), f.y(min(v, 0.0))
            marks.append(
                f'<rect class="mark" x="{_fmt(x)}" y="{_fmt(y_top)}" width="{_fmt(bar_w - 1)}" '
                f'height="{_fmt(max(y_base - y_top, 0.5))}" fill="{colour(name, si)}">'
                f"<title>{escape(cat)} · {escape(name)}: {v:.4f}</title></rect>"
            )
    out = _open("bar", f, title, len(marks), plot_id) + _y_axis(f, y_label)
    out.append(f'<g font-size="10" {FONT} fill="#333">')
    for ci, cat in enumerate(categories):
        x, y = f.x(ci + 0.5), f.y0 + 10
        out.append(
            f'<text transform="translate({_fmt(x)} {_fmt(y)}) rotate(-40)" text-anchor="end">'
            f"{escape(cat[:24])}</text>"
        )
    out.append("</g>")
    out += marks
    out.append(_border(f))
    out += _legend(names, [colour(n, i) for i, n in enumerate(names)], f.x1 + 12, f.y1 + 10)
    out.append("</svg>")
    return "".join(out)


def scatter(
    xs: Sequence[float],
    ys: Sequence[float],
    *,
    title: str,
    x_label: str = "",
    y_label: str = "",
    diagonal: bool = False,
    labels: Sequence[str] | None = None,
    plot_id: str = "",
    size: tuple[float, float] = (340, 300),
    fill: str = "#1f77b4",
) -> str:
    """Dots at (x, y) for every finite pair; ``diagonal`` draws y = x across the shared range."""
    pts = [
        (float(x), float(y), labels[i] if labels else "")
        for i, (x, y) in enumerate(zip(xs, ys))
        if x is not None and y is not None and math.isfinite(float(x)) and math.isfinite(float(y))
    ]
    if not pts:
        return no_data(f"{title}: no finite points")
    f = _Frame(width=size[0], height=size[1], left=52, right=12, top=24, bottom=34)
    px, py = [p[0] for p in pts], [p[1] for p in pts]
    if diagonal:  # one range on both axes, so y = x is the 45-degree line
        f.x_lo, f.x_hi = _padded(px + py)
        f.y_lo, f.y_hi = f.x_lo, f.x_hi
    else:
        f.x_lo, f.x_hi = _padded(px)
        f.y_lo, f.y_hi = _padded(py)
    out = _open("scatter", f, title, len(pts), plot_id) + _y_axis(f, y_label) + _x_axis(f, x_label)
    if diagonal:
        out.append(
            f'<line x1="{_fmt(f.x(f.x_lo))}" y1="{_fmt(f.y(f.x_lo))}" x2="{_fmt(f.x(f.x_hi))}" '
            f'y2="{_fmt(f.y(f.x_hi))}" stroke="#333" stroke-dasharray="4 3" stroke-width="0.8"/>'
        )
    for x, y, lab in pts:
        tip = f"{escape(lab)}: " if lab else ""
        out.append(
            f'<circle class="mark" cx="{_fmt(f.x(x))}" cy="{_fmt(f.y(y))}" r="3.2" fill="{fill}" '
            f'fill-opacity="0.75"><title>{tip}({x:.4f}, {y:.4f})</title></circle>'
        )
    out.append(_border(f))
    out.append("</svg>")
    return "".join(out)


def line_chart(
    series: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    *,
    title: str,
    x_label: str = "",
    y_label: str = "",
    plot_id: str = "",
    size: tuple[float, float] = (620, 300),
) -> str:
    """One polyline per named series of (xs, ys); a series with fewer than 2 finite points is a dot."""
    clean: dict[str, list[tuple[float, float]]] = {}
    for name, (xs, ys) in series.items():
        pts = [
            (float(x), float(y))
            for x, y in zip(xs, ys)
            if x is not None and y is not None and math.isfinite(float(x)) and math.isfinite(float(y))
        ]
        if pts:
            clean[name] = pts
    if not clean:
        return no_data(f"{title}: no finite points")
    f = _Frame(width=size[0], height=size[1], left=52, right=150, top=24, bottom=34)
    f.x_lo, f.x_hi = _padded([p[0] for pts in clean.values() for p in pts])
    f.y_lo, f.y_hi = _padded([p[1] for pts in clean.values() for p in pts])
    names = list(clean)
    out = _open("line", f, title, len(names), plot_id) + _y_axis(f, y_label) + _x_axis(f, x_label)
    for i, name in enumerate(names):
        c = colour(name, i)
        pts = clean[name]
        d = "M" + " L".join(f"{_fmt(f.x(x))} {_fmt(f.y(y))}" for x, y in pts)
        if len(pts) == 1:  # a zero-length path draws nothing: show the lone point as a dot
            x, y = pts[0]
            out.append(
                f'<circle class="mark" cx="{_fmt(f.x(x))}" cy="{_fmt(f.y(y))}" r="3" fill="{c}">'
                f"<title>{escape(name)}</title></circle>"
            )
            continue
        out.append(
            f'<path class="mark" d="{d}" fill="none" stroke="{c}" stroke-width="1.8">'
            f"<title>{escape(name)}: last {pts[-1][1]:.4f} at {pts[-1][0]:g}</title></path>"
        )
    out.append(_border(f))
    out += _legend(names, [colour(n, i) for i, n in enumerate(names)], f.x1 + 12, f.y1 + 10)
    out.append("</svg>")
    return "".join(out)


def _blue(t: float) -> str:
    """White (0) to dark blue (1)."""
    t = min(max(t, 0.0), 1.0)
    lo, hi = (255, 255, 255), (8, 48, 107)
    r, g, b = (round(a + (c - a) * t) for a, c in zip(lo, hi))
    return f"#{r:02x}{g:02x}{b:02x}"


def heatmap(
    rows: Sequence[str],
    cols: Sequence[str],
    values: Sequence[Sequence[float]],
    *,
    title: str,
    plot_id: str = "",
    cell: float = 18.0,
    v_max: float | None = None,
) -> str:
    """A rows x cols grid of cells shaded by value (0 white, ``v_max`` or the largest value darkest)."""
    flat = _finite([v for row in values for v in row])
    if not rows or not cols or not flat:
        return no_data(f"{title}: nothing to draw")
    top_v = v_max if v_max is not None else max(flat)
    left = 14 + min(max(len(r) for r in rows), 24) * 6.0
    f = _Frame(
        width=left + cell * len(cols) + 12,
        height=30 + cell * len(rows) + 22,
        left=left,
        right=12,
        top=30,
        bottom=22,
    )
    marks = []
    for ri, row in enumerate(values):
        for ci, v in enumerate(row):
            if v is None or not math.isfinite(v):
                continue
            x, y = f.x0 + ci * cell, f.y1 + ri * cell
            marks.append(
                f'<rect class="mark" x="{_fmt(x)}" y="{_fmt(y)}" width="{_fmt(cell - 1)}" '
                f'height="{_fmt(cell - 1)}" fill="{_blue(v / top_v if top_v > 0 else 0.0)}">'
                f"<title>{escape(rows[ri])} · {escape(cols[ci])}: {v:.3f}</title></rect>"
            )
    out = _open("heatmap", f, title, len(marks), plot_id)
    out.append(f'<g font-size="10" {FONT} fill="#333">')
    for ri, r in enumerate(rows):
        out.append(
            f'<text x="{_fmt(f.x0 - 4)}" y="{_fmt(f.y1 + ri * cell + cell / 2 + 3)}" text-anchor="end">'
            f"{escape(r[:24])}</text>"
        )
    step = max(1, math.ceil(len(cols) / 16))  # at most 16 column labels
    for ci in range(0, len(cols), step):
        out.append(
            f'<text x="{_fmt(f.x0 + ci * cell + cell / 2)}" y="{_fmt(f.y0 + 14)}" text-anchor="middle">'
            f"{escape(cols[ci])}</text>"
        )
    out.append("</g>")
    out += marks
    out.append("</svg>")
    return "".join(out)

"""Inline SVG line charts for ``report.html``: no script, no library, no network — the page draws them even
with JavaScript off, and they cost O(points) whatever the class count."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from html import escape

PALETTE = ("#1f77b4", "#ff7f0e", "#d62728", "#2ca02c", "#9467bd", "#8c564b", "#17becf", "#7f7f7f")


@dataclass
class Series:
    """One line: ``ys`` may hold None (a gap); ``band`` = (low, high) lists draw a shaded interval."""

    name: str
    xs: list
    ys: list
    color: str = ""
    band: tuple[list, list] | None = None
    markers: bool = False


@dataclass
class Chart:
    title: str
    xlabel: str
    ylabel: str
    series: list[Series] = field(default_factory=list)
    xlog: bool = False
    y_range: tuple[float, float] | None = None
    vlines: tuple[float, ...] = ()  # dashed verticals (e.g. the many/medium/few boundaries)
    width: int = 560
    height: int = 240


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About ``n`` round tick values covering [lo, hi]."""
    if hi <= lo:
        hi = lo + 1.0
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    return [round(first + i * step, 10) for i in range(int((hi - first) / step + 1e-9) + 1)]


def _fmt(v: float) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 1000:
        return f"{v:,.0f}" if v == int(v) else f"{v:,.1f}"
    return f"{v:g}"


def render(chart: Chart) -> str:
    """The chart as an ``<svg>`` element (with a ``<title>`` for screen readers)."""
    W, H, L, R, T, B = chart.width, chart.height, 56, 12, 40, 40
    pts = [(x, y) for s in chart.series for x, y in zip(s.xs, s.ys) if y is not None and x is not None]
    bands = [v for s in chart.series if s.band for part in s.band for v in part if v is not None]
    if not pts:
        return f'<p class="empty">{escape(chart.title)}: no data</p>'
    fx = (lambda x: math.log10(max(x, 1e-12))) if chart.xlog else float
    xs = [fx(x) for x, _ in pts]
    x0, x1 = min(xs), max(xs)
    if x1 == x0:
        x0, x1 = x0 - 0.5, x1 + 0.5
    ys = [y for _, y in pts] + bands
    y0, y1 = chart.y_range or (min(ys), max(ys))
    if y1 == y0:  # a flat line: a band around it wide enough for distinct round ticks
        pad = max(1.0, abs(y0) * 0.05)
        y0, y1 = y0 - pad, y1 + pad

    def px(x):
        return L + (fx(x) - x0) / (x1 - x0) * (W - L - R)

    def py(y):
        return H - B - (y - y0) / (y1 - y0) * (H - T - B)

    out = [f'<svg class="chart" viewBox="0 0 {W} {H}" width="{W}" height="{H}" role="img">',
           f"<title>{escape(chart.title)}</title>",
           f'<text x="{L}" y="16" class="ct">{escape(chart.title)}</text>']
    for t in nice_ticks(y0, y1):
        out.append(f'<line x1="{L}" x2="{W - R}" y1="{py(t):.1f}" y2="{py(t):.1f}" class="grid"/>'
                   f'<text x="{L - 6}" y="{py(t) + 4:.1f}" class="tl" text-anchor="end">{_fmt(t)}</text>')
    out += _x_ticks(chart, x0, x1, px, H - B)
    for v in chart.vlines:
        if x0 <= fx(v) <= x1:
            out.append(f'<line x1="{px(v):.1f}" x2="{px(v):.1f}" y1="{T}" y2="{H - B}" class="vline"/>')
    for i, s in enumerate(chart.series):
        out += _series(s, s.color or PALETTE[i % len(PALETTE)], px, py)
    out.append(f'<text x="{(L + W - R) / 2}" y="{H - 6}" class="al" text-anchor="middle">'
               f"{escape(chart.xlabel)}</text>")
    out.append(f'<text x="12" y="{(T + H - B) / 2}" class="al" text-anchor="middle" '
               f'transform="rotate(-90 12 {(T + H - B) / 2})">{escape(chart.ylabel)}</text>')
    out += _legend(chart, W - R)
    out.append("</svg>")
    return "".join(out)


def _x_ticks(chart: Chart, x0: float, x1: float, px, base: float) -> list[str]:
    if chart.xlog:
        ticks = [10**e for e in range(math.floor(x0), math.ceil(x1) + 1) if x0 - 1e-9 <= e <= x1 + 1e-9]
    else:
        ticks = [t for t in nice_ticks(x0, x1, 6) if x0 - 1e-9 <= t <= x1 + 1e-9]
    return [f'<text x="{px(t):.1f}" y="{base + 16}" class="tl" text-anchor="middle">{_fmt(t)}</text>'
            f'<line x1="{px(t):.1f}" x2="{px(t):.1f}" y1="{base}" y2="{base + 4}" class="axis"/>'
            for t in ticks]


def _series(s: Series, color: str, px, py) -> list[str]:
    out = []
    if s.band:
        lo, hi = s.band
        keep = [(x, a, b) for x, a, b in zip(s.xs, lo, hi) if a is not None and b is not None]
        if keep:
            poly = [(px(x), py(b)) for x, _, b in keep] + [(px(x), py(a)) for x, a, _ in reversed(keep)]
            pts = " ".join(f"{x:.1f},{y:.1f}" for x, y in poly)
            out.append(f'<polygon points="{pts}" fill="{color}" opacity="0.18"/>')
    run: list[str] = []
    for x, y in [*zip(s.xs, s.ys), (None, None)]:  # a None ends a segment
        if y is None or x is None:
            if len(run) > 1:
                out.append(f'<polyline points="{" ".join(run)}" fill="none" stroke="{color}" '
                           f'stroke-width="1.8"/>')
            elif run:
                cx, cy = run[0].split(",")
                out.append(f'<circle cx="{cx}" cy="{cy}" r="2.5" fill="{color}"/>')
            run = []
            continue
        run.append(f"{px(x):.1f},{py(y):.1f}")
        if s.markers:
            out.append(f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="2.5" fill="{color}"/>')
    return out


def _legend(chart: Chart, right: float) -> list[str]:
    out, x = [], right
    for i, s in reversed(list(enumerate(chart.series))):
        color = s.color or PALETTE[i % len(PALETTE)]
        x -= 20 + 7 * len(s.name)  # ~7 px a character at 11 px, box and gap
        out.append(f'<rect x="{x:.0f}" y="22" width="10" height="10" fill="{color}"/>'
                   f'<text x="{x + 13:.0f}" y="31" class="tl">{escape(s.name)}</text>')
    return out

"""Line plots as inline SVG for the HTML reports (no plotting library, nothing loaded from outside):
``svg_plot`` draws one series with tick labels on both axes and an optional marker line."""

from __future__ import annotations

import html
import math
from typing import Sequence


def _ticks(lo: float, hi: float, integer: bool = False, n: int = 5) -> list[float]:
    """Round tick values covering ``[lo, hi]`` (the first at or below ``lo``, the last at or above ``hi``)."""
    if not (hi - lo) / n > 0:  # one value, or a span too small to divide (denormal numbers): pad it
        pad = abs(lo) * 0.1
        pad = pad if pad / n > 0 else 1.0
        lo, hi = lo - pad, hi + pad
    step = 10.0 ** math.floor(math.log10((hi - lo) / n))
    for m in (1, 2, 5, 10):
        if (hi - lo) / (step * m) <= n:
            step *= m
            break
    if integer:
        step = max(1.0, round(step))
    first, last = math.floor(lo / step + 1e-9), math.ceil(hi / step - 1e-9)
    return [i * step for i in range(first, last + 1)]


def _label(value: float, ticks: Sequence[float]) -> str:
    step = abs(ticks[1] - ticks[0]) if len(ticks) > 1 else 1.0
    if abs(value) < step * 1e-9:
        return "0"
    decimals = max(0, -math.floor(math.log10(step) + 1e-9))
    if decimals > 4 or abs(value) >= 1e6:  # scientific, with as many digits as the tick spacing needs
        top = max(abs(t) for t in ticks)
        return f"{value:.{max(1, math.floor(math.log10(top)) - math.floor(math.log10(step) + 1e-9))}e}"
    return f"{value:.{decimals}f}"


def svg_plot(name: str, points: Sequence[Sequence[float]], x_label: str, marker: float | None = None,
             width: int = 520, height: int = 230) -> str:
    """One series as an inline SVG line plot with labelled axes; ``marker`` draws a dashed vertical
    line (the best epoch). The polyline carries ``data-series`` and every point of the series."""
    left, right, top, bottom = 66, 14, 30, 40
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    xt, yt = _ticks(min(xs), max(xs), integer=x_label == "epoch"), _ticks(min(ys), max(ys))
    pw, ph = width - left - right, height - top - bottom

    def px(x: float) -> float:
        return left + (x - xt[0]) / (xt[-1] - xt[0]) * pw

    def py(y: float) -> float:
        return top + ph - (y - yt[0]) / (yt[-1] - yt[0]) * ph

    e = html.escape
    parts = [f'<svg class="plot" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" '
             f'aria-label="{e(name)} by {x_label}"><title>{e(name)} by {x_label}</title>',
             f'<text class="ptitle" x="{left}" y="18">{e(name)}</text>']
    for y in yt:
        parts.append(f'<line class="grid" x1="{left}" x2="{left + pw}" y1="{py(y):.1f}" y2="{py(y):.1f}"/>'
                     f'<text class="tick" x="{left - 6}" y="{py(y) + 4:.1f}" text-anchor="end">{_label(y, yt)}</text>')
    for x in xt:
        parts.append(f'<line class="axis" x1="{px(x):.1f}" x2="{px(x):.1f}" y1="{top + ph}" y2="{top + ph + 4}"/>'
                     f'<text class="tick" x="{px(x):.1f}" y="{top + ph + 17}" text-anchor="middle">{_label(x, xt)}</text>')
    parts.append(f'<line class="axis" x1="{left}" x2="{left + pw}" y1="{top + ph}" y2="{top + ph}"/>'
                 f'<line class="axis" x1="{left}" x2="{left}" y1="{top}" y2="{top + ph}"/>'
                 f'<text class="tick" x="{left + pw / 2}" y="{height - 4}" text-anchor="middle">{x_label}</text>')
    if marker is not None and xt[0] <= marker <= xt[-1]:
        parts.append(f'<line class="best" x1="{px(marker):.1f}" x2="{px(marker):.1f}" y1="{top}" y2="{top + ph}"/>'
                     f'<text class="tick best-label" x="{px(marker) - 4:.1f}" y="{top + 10}" '
                     f'text-anchor="end">best epoch</text>')
    coords = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in zip(xs, ys))
    parts.append(f'<polyline class="series" data-series="{e(name)}" points="{coords}"/>')
    if len(points) <= 60:
        parts.extend(f'<circle class="dot" cx="{px(x):.1f}" cy="{py(y):.1f}" r="3"/>' for x, y in zip(xs, ys))
    parts.append("</svg>")
    return "".join(parts)

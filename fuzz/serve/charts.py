"""Time-series charts of the dashboard as server-rendered SVG: no script, no external file, one
line per kernel.  Styling is by presentation attributes, which the pages' Content-Security-Policy
allows (it forbids inline style)."""

from __future__ import annotations

import html
import time

COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf")
WIDTH, HEIGHT, PAD = 460, 170, 38
GAP_SECONDS = 180          # no point for longer than this: the line breaks


def line_chart(title: str, series: dict[str, list[tuple[int, float]]]) -> str:
    """An SVG chart of ``series`` (name -> [(epoch seconds, value)], oldest first)."""
    points = [p for values in series.values() for p in values]
    head = (f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
            f'viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{html.escape(title)}">'
            f'<text x="{PAD}" y="14" font-size="13" font-family="sans-serif">{html.escape(title)}</text>')
    if not points:
        return head + f'<text x="{PAD}" y="{HEIGHT // 2}" font-size="12" fill="#888">no data yet</text></svg>'
    t0, t1 = min(t for t, _ in points), max(t for t, _ in points)
    top = max(v for _, v in points) or 1.0
    x = lambda t: PAD + (WIDTH - PAD - 10) * ((t - t0) / (t1 - t0) if t1 > t0 else 1.0)  # noqa: E731
    y = lambda v: HEIGHT - 24 - (HEIGHT - 50) * v / top                                 # noqa: E731
    parts = [head, _axes(t0, t1, top)]
    for index, (name, values) in enumerate(sorted(series.items())):
        colour = COLOURS[index % len(COLOURS)]
        for run in _runs(values):
            path = " ".join(f"{x(t):.1f},{y(v):.1f}" for t, v in run)
            parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{path}"/>')
            if len(run) == 1:
                parts.append(f'<circle cx="{x(run[0][0]):.1f}" cy="{y(run[0][1]):.1f}" r="3" fill="{colour}"/>')
        parts.append(f'<text x="{WIDTH - 10}" y="{14 + 13 * (index + 1)}" font-size="11" text-anchor="end" '
                     f'font-family="sans-serif" fill="{colour}">{html.escape(name)}</text>')
    return "".join(parts) + "</svg>"


def _runs(values: list[tuple[int, float]], gap: int = GAP_SECONDS) -> list[list[tuple[int, float]]]:
    """The series cut where it has no point for a while (the kernel was not fuzzed then): a
    line across the gap would show counters nobody measured."""
    runs: list[list[tuple[int, float]]] = []
    for point in values:
        if not runs or point[0] - runs[-1][-1][0] > gap:
            runs.append([])
        runs[-1].append(point)
    return runs


def _axes(t0: int, t1: int, top: float) -> str:
    bottom, right = HEIGHT - 24, WIDTH - 10
    clock = lambda t: time.strftime("%H:%M", time.gmtime(t))  # noqa: E731
    return (f'<line x1="{PAD}" y1="{bottom}" x2="{right}" y2="{bottom}" stroke="#999"/>'
            f'<line x1="{PAD}" y1="26" x2="{PAD}" y2="{bottom}" stroke="#999"/>'
            f'<text x="{PAD - 4}" y="30" font-size="10" text-anchor="end" font-family="sans-serif">{_short(top)}</text>'
            f'<text x="{PAD - 4}" y="{bottom}" font-size="10" text-anchor="end" font-family="sans-serif">0</text>'
            f'<text x="{PAD}" y="{HEIGHT - 8}" font-size="10" font-family="sans-serif">{clock(t0)}</text>'
            f'<text x="{right}" y="{HEIGHT - 8}" font-size="10" text-anchor="end" '
            f'font-family="sans-serif">{clock(t1)} UTC</text>')


def _short(value: float) -> str:
    if value >= 10_000:
        return f"{value / 1000:.0f}k"
    return f"{value:.0f}" if value >= 10 else f"{value:.1f}"


def series_of(points: list[dict], metric: str) -> dict[str, list[tuple[int, float]]]:
    """Stat point rows (records.stat_points) as one series per kernel; several campaigns of
    a kernel in one bucket (a restart) count once, the latest."""
    per_kernel: dict[str, dict[int, float]] = {}
    for row in points:
        per_kernel.setdefault(row["kernel"], {})[int(row["minute"])] = float(row[metric])
    return {kernel: sorted(values.items()) for kernel, values in per_kernel.items()}

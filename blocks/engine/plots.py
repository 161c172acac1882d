"""Plots written into a run directory as standalone SVG files (no plotting library needed).

:func:`plot_teacher_weights` draws the mean weight each teacher received between evaluations, as
logged by the multi-teacher loss blocks in ``metrics.jsonl``: one line per teacher over the steps.
"""
from __future__ import annotations

import json
from html import escape
from pathlib import Path

from blocks.engine.checkpoint import atomic_write_text

COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")
WIDTH, HEIGHT = 640, 360
LEFT, RIGHT, TOP, BOTTOM = 56, 150, 36, 44


def read_series(metrics_file: Path, stage: str, key: str = "teacher_weights") -> dict[str, list[tuple[int, float]]]:
    """``{teacher: [(step, value), ...]}`` from the stage's evaluation records."""
    series: dict[str, list[tuple[int, float]]] = {}
    if not metrics_file.is_file():
        return series
    for line in metrics_file.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if record.get("event") != "eval" or record.get("stage") != stage or key not in record:
            continue
        for name, value in record[key].items():
            series.setdefault(name, []).append((int(record["step"]), float(value)))
    return series


def line_chart_svg(series: dict[str, list[tuple[int, float]]], title: str, y_label: str,
                   y_range: tuple[float, float] = (0.0, 1.0)) -> str:
    steps = [step for points in series.values() for step, _ in points]
    x_min, x_max = min(steps), max(steps)
    x_span = (x_max - x_min) or 1
    y_min, y_max = y_range
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def x(step: float) -> float:
        return LEFT + (step - x_min) / x_span * plot_w

    def y(value: float) -> float:
        return TOP + (1 - (min(max(value, y_min), y_max) - y_min) / (y_max - y_min)) * plot_h

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" font-family="sans-serif" '
             f'font-size="12">', f'<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>',
             f'<text x="{WIDTH / 2}" y="20" text-anchor="middle" font-size="14">{escape(title)}</text>']
    for i in range(5):  # horizontal grid lines and y ticks
        value = y_min + (y_max - y_min) * i / 4
        parts.append(f'<line x1="{LEFT}" x2="{LEFT + plot_w}" y1="{y(value):.1f}" y2="{y(value):.1f}" stroke="#ddd"/>')
        parts.append(f'<text x="{LEFT - 6}" y="{y(value) + 4:.1f}" text-anchor="end">{value:.2f}</text>')
    for step in sorted({x_min, x_max, (x_min + x_max) // 2}):
        parts.append(f'<text x="{x(step):.1f}" y="{TOP + plot_h + 16}" text-anchor="middle">{step:,}</text>')
    parts.append(f'<text x="{LEFT + plot_w / 2}" y="{HEIGHT - 8}" text-anchor="middle">optimizer step</text>')
    parts.append(f'<text x="14" y="{TOP + plot_h / 2}" text-anchor="middle" '
                 f'transform="rotate(-90 14 {TOP + plot_h / 2})">{escape(y_label)}</text>')
    parts.append(f'<rect x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#333"/>')
    for i, (name, points) in enumerate(sorted(series.items())):
        colour = COLOURS[i % len(COLOURS)]
        path = " ".join(f"{x(step):.1f},{y(value):.1f}" for step, value in points)
        parts.append(f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="2"/>')
        for step, value in points:
            parts.append(f'<circle cx="{x(step):.1f}" cy="{y(value):.1f}" r="2.5" fill="{colour}"/>')
        legend_y = TOP + 14 + 18 * i
        parts.append(f'<line x1="{LEFT + plot_w + 12}" x2="{LEFT + plot_w + 32}" y1="{legend_y - 4}" '
                     f'y2="{legend_y - 4}" stroke="{colour}" stroke-width="2"/>')
        parts.append(f'<text x="{LEFT + plot_w + 38}" y="{legend_y}">{escape(name)}</text>')
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def plot_teacher_weights(metrics_file: Path, stage: str, folder: Path) -> Path | None:
    """Write ``folder/<stage>-teacher-weights.svg`` when the stage logged teacher weights."""
    series = read_series(metrics_file, stage)
    if not series:
        return None
    path = folder / f"{stage}-teacher-weights.svg"
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, line_chart_svg(series, f"stage '{stage}': mean weight per teacher",
                                           "mean teacher weight"))
    return path

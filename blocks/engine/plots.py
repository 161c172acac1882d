"""Plots of a stage written into the run directory (``RUN/plots/``) when the stage ends, with matplotlib.

* ``<stage>-learning-curves.png``: one panel per quantity of ``metrics.jsonl`` over the optimizer
  steps: the training loss, the learning rate, the dev metrics, and any other number a loss block
  reports at evaluations (an annealing temperature, the RL selector's probabilities);
* ``<stage>-teacher-weights.png``: the mean weight each teacher received between evaluations, as
  logged by the multi-teacher loss blocks (only for stages that log it).

The values are those TensorBoard shows (:func:`blocks.engine.tensorboard.record_scalars`).
matplotlib is imported when a plot is drawn, with its non-interactive Agg canvas (no display and no
global pyplot state).
"""
from __future__ import annotations

import io
import json
from pathlib import Path

from blocks.engine.checkpoint import atomic_write_bytes
from blocks.engine.tensorboard import record_scalars

Series = dict[str, list[tuple[int, float]]]  # line name -> [(step, value), ...]

PANEL_TITLES = {"train/loss": "training loss", "train/lr": "learning rate", "dev": "dev metrics",
                "teacher_weights": "mean weight per teacher"}


def read_records(metrics_file: Path, stage: str) -> list[dict]:
    """The stage's records of ``metrics.jsonl``, in order (lines that are not JSON objects are skipped)."""
    records = []
    if not Path(metrics_file).is_file():
        return records
    for line in Path(metrics_file).read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and record.get("stage") == stage and isinstance(record.get("step"), int):
            records.append(record)
    return records


def stage_panels(records: list[dict]) -> dict[str, Series]:
    """``{panel: {line: points}}``: ``train/loss`` and ``train/lr`` alone, the scalars sharing a
    prefix (``dev/accuracy``, ``dev/f1``; ``teacher_weights/<teacher>``) in one panel."""
    panels: dict[str, Series] = {}
    for record in records:
        for tag, value in record_scalars(record).items():
            if tag.startswith("train/"):
                panel, line = tag, tag.split("/", 1)[1]
            else:
                panel, _, line = tag.partition("/")
                line = line or tag
            panels.setdefault(panel, {}).setdefault(line, []).append((record["step"], value))
    return panels


def panels_figure(panels: dict[str, Series], title: str):
    """A matplotlib ``Figure`` with one panel per entry of ``panels`` (at most three in a row)."""
    from matplotlib.figure import Figure

    columns = min(len(panels), 3)
    rows = (len(panels) + columns - 1) // columns
    height = 3.0 * rows + 0.5  # inches: the panels and the title above them
    figure = Figure(figsize=(4.2 * columns, height))
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    for ax, (panel, series) in zip(axes, panels.items()):
        for line, points in sorted(series.items()):
            steps, values = zip(*points)
            ax.plot(steps, values, marker="o" if len(points) < 30 else None, markersize=3, label=line)
        ax.set_title(PANEL_TITLES.get(panel, panel.replace("_", " ")), fontsize=10)
        ax.set_xlabel("optimizer step")
        ax.grid(True, alpha=0.3)
        if panel == "train/lr":
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
        if len(series) > 1 or not panel.startswith("train/"):
            ax.legend(fontsize=8)
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    figure.suptitle(title, fontsize=11)
    figure.subplots_adjust(left=0.6 / (4.2 * columns), right=1 - 0.15 / (4.2 * columns), bottom=0.5 / height, top=1 - 0.75 / height,
                           wspace=0.3, hspace=0.55)
    return figure


def _save(figure, path: Path) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, buffer.getvalue())
    return path


def write_stage_plots(metrics_file: Path, stage: str, folder: Path) -> list[Path]:
    """Write the stage's plots into ``folder`` (see the module doc); the paths written."""
    panels = stage_panels(read_records(metrics_file, stage))
    written = []
    teacher_weights = panels.pop("teacher_weights", None)
    if panels:
        written.append(_save(panels_figure(panels, f"stage '{stage}'"), folder / f"{stage}-learning-curves.png"))
    if teacher_weights:
        figure = panels_figure({"teacher_weights": teacher_weights}, f"stage '{stage}'")
        figure.axes[0].set_ylim(0, 1)
        written.append(_save(figure, folder / f"{stage}-teacher-weights.png"))
    return written

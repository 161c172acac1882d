"""The score matrix of a task stream and what it says about forgetting.

``R[i][j]`` is task j's dev score (its first metric) after the i-th stage that trains the tracked
model (in a stream: after learning the i-th task), for the tasks trained so far (``None`` for the
others). With T rows and the tasks in training order (Lopez-Paz & Ranzato 2017; Chaudhry et al.
2018):

* **final average**: the mean of the last row, ``mean_j R[T-1][j]``;
* **forgetting**: for each task but the last, its best score before the end minus its final
  score, averaged: ``mean_{j<T-1} (max_{i<T-1} R[i][j] - R[T-1][j])`` (0 without forgetting);
* **backward transfer**: ``mean_{j<T-1} (R[T-1][j] - R[j][j])``: how training on later tasks
  changed each task's score since it was learnt (negative: forgetting).

A multi-task run has one row, so only its final average is defined.
"""
from __future__ import annotations

import statistics
from pathlib import Path


def stream_measures(matrix: list[list[float | None]]) -> dict[str, float | None]:
    """Final average, forgetting and backward transfer of a score matrix (see the module docstring)."""
    if not matrix:
        return {"final_average": None, "forgetting": None, "backward_transfer": None}
    last = [value for value in matrix[-1] if value is not None]
    result = {"final_average": sum(last) / len(last) if last else None, "forgetting": None,
              "backward_transfer": None}
    rows = len(matrix)
    square = rows > 1 and all(len(row) >= rows for row in matrix)
    if square and all(matrix[j][j] is not None for j in range(rows)):
        earlier = range(rows - 1)
        result["forgetting"] = sum(max(matrix[i][j] for i in range(j, rows - 1)) - matrix[-1][j]
                                   for j in earlier) / (rows - 1)
        result["backward_transfer"] = sum(matrix[-1][j] - matrix[j][j] for j in earlier) / (rows - 1)
    return result


def mean_and_std(values: list[float]) -> dict[str, float | None]:
    values = [v for v in values if v is not None]
    if not values:
        return {"mean": None, "std": None, "n": 0}
    return {"mean": sum(values) / len(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "n": len(values)}


def plot_score_matrix(matrix: list[list[float | None]], tasks: list[str], rows: list[str], metrics: list[str],
                      path: Path, title: str) -> Path | None:
    """A heat map of the score matrix (rows: after which stage; columns: tasks), values written in
    the cells; None when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    import math

    values = [[math.nan if v is None else v for v in row] for row in matrix]
    figure, axes = plt.subplots(figsize=(1.6 + 1.3 * len(tasks), 1.2 + 0.55 * len(rows)))
    image = axes.imshow(values, cmap="viridis", aspect="auto")
    axes.set_xticks(range(len(tasks)), [f"{t}\n({m})" for t, m in zip(tasks, metrics)], fontsize=8)
    axes.set_yticks(range(len(rows)), [f"after {r}" for r in rows], fontsize=8)
    low, high = image.get_clim()
    for i, row in enumerate(matrix):
        for j, value in enumerate(row):
            if value is not None:  # dark text on the bright end of the colour map
                bright = high > low and (value - low) / (high - low) > 0.6
                axes.text(j, i, f"{value:.3f}", ha="center", va="center", fontsize=8,
                          color="black" if bright else "white")
    axes.set_title(title, fontsize=9)
    figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".partial.png")
    figure.savefig(temporary, dpi=110)
    plt.close(figure)
    temporary.replace(path)
    return path

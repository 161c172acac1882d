"""TensorBoard event files for the scalars a run writes to ``metrics.jsonl``.

Each stage gets its own folder, ``RUN/tensorboard/<stage>/``, so TensorBoard shows the stages as
runs side by side with the same tags::

    train/loss, train/lr                      every ``log_every`` steps
    dev/<metric>                              every evaluation (accuracy, f1, ...)
    teacher_weights/<teacher>                 mean weight per teacher (multi-teacher losses)
    selection_probability/<teacher>           the RL teacher selector's mean probabilities
    annealing_temperature, ...                any other number a loss block reports

View them with ``tensorboard --logdir RUN/tensorboard`` (or a folder holding several runs).

Written when the ``tensorboard`` package is installed (``pip install distilblocks[tensorboard]``);
without it nothing is written and nothing fails. ``metrics.jsonl`` stays the record of the run:
the events are a view of it. On ``--resume`` the steps after the checkpoint are written again, and
the new event file tells TensorBoard to drop the old ones from that step on (``purge_step``).
"""
from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path
from typing import Any

_RESERVED = ("event", "stage", "model", "split", "step", "epoch", "time")


def tensorboard_installed() -> bool:
    return importlib.util.find_spec("tensorboard") is not None


def record_scalars(record: dict) -> dict[str, float]:
    """The numbers of one ``metrics.jsonl`` record under their TensorBoard tags (see the module doc)."""
    scalars: dict[str, float] = {}
    event = record.get("event")
    if event == "train":
        for key in ("loss", "lr"):
            if _is_number(record.get(key)):
                scalars[f"train/{key}"] = float(record[key])
        return scalars
    if event != "eval":
        return scalars
    split = record.get("split", "dev")
    for name, value in (record.get("metrics") or {}).items():
        if _is_number(value):
            scalars[f"{split}/{name}"] = float(value)
    for key, value in record.items():
        if key in _RESERVED or key == "metrics":
            continue
        if _is_number(value):
            scalars[key] = float(value)
        elif isinstance(value, dict):
            for name, inner in value.items():
                if _is_number(inner):
                    scalars[f"{key}/{name}"] = float(inner)
    return scalars


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class TensorBoardLog:
    """One event writer per stage under ``folder``, opened at the stage's first record."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.enabled = tensorboard_installed()
        self._writers: dict[str, Any] = {}
        self._purge: dict[str, int] = {}

    def write(self, record: dict) -> None:
        """Add the record's scalars at its step; evaluations are flushed to disk at once."""
        stage = record.get("stage")
        if not self.enabled or not isinstance(stage, str) or not _is_number(record.get("step")):
            return
        scalars = record_scalars(record)
        if not scalars:
            return
        writer = self._writer(stage)
        if writer is None:
            return
        for tag, value in scalars.items():
            writer.add_scalar(tag, value, global_step=int(record["step"]), walltime=record.get("time"))
        if record.get("event") == "eval":
            writer.flush()

    def forget_after(self, stage: str, step: int) -> None:
        """On resume from ``step``: TensorBoard drops this stage's events after it (they are written again)."""
        self.close(stage)
        self._purge[stage] = step + 1

    def restart(self, completed: list[str], restored: dict[str, int]) -> None:
        """On resume: the stages not ``completed`` are written again after their checkpoint's step
        (``restored``) or from the start; TensorBoard drops their old events from there."""
        folders = [path.name for path in self.folder.iterdir() if path.is_dir()] if self.folder.is_dir() else []
        for stage in folders:
            if stage not in completed:
                self.forget_after(stage, restored.get(stage, -1))

    def close(self, stage: str | None = None) -> None:
        """Flush and close the writer of ``stage`` (of every stage when None)."""
        for name in [stage] if stage is not None else list(self._writers):
            writer = self._writers.pop(name, None)
            if writer is not None:
                writer.close()

    def _writer(self, stage: str) -> Any:
        """The stage's writer, opened on first use; None (and no more tries) when TensorBoard is
        installed but cannot be imported, e.g. a version torch does not support."""
        writer = self._writers.get(stage)
        if writer is None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as error:
                warnings.warn(f"TensorBoard events are not written: {error}", stacklevel=2)
                self.enabled = False
                return None
            writer = SummaryWriter(log_dir=str(self.folder / stage), purge_step=self._purge.pop(stage, None),
                                   flush_secs=30)
            self._writers[stage] = writer
        return writer

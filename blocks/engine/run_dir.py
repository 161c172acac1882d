"""The layout of a run directory: everything ``test``, ``predict`` and ``--resume`` need.

::

    RUN/
      config.json            the resolved config (defaults filled, paths absolute)
      environment.json       versions, device, command line, start time
      task.json              label set and task type
      vocab/<name>.txt       vocabularies
      stages/<stage>/last.safetensors   resumable state: weights, optimizer, schedule, RNG, position
                                        (with best.safetensors, deleted once the stage is completed
                                        unless "keep_checkpoints": see blocks.engine.clean)
      stages/<stage>/state.json         the same state, readable
      models/<model>.safetensors        final weights of each trained model (best dev checkpoint); a
                                        model from another run is a hard link to its file there
      progress.json          which stages are finished
      metrics.jsonl          one line per log step and per evaluation
      summary.json           per-model results, parameter counts and speed
      cache/<key>/           teacher outputs computed once (see blocks.engine.teacher_cache);
                             safe to delete: rebuilt when needed

With several processes (torchrun) only rank 0 writes here; the others read (checkpoints on
resume, the teacher cache), so a multi-node run needs this folder on a shared file system.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from blocks.engine.checkpoint import atomic_write_json, atomic_write_text
from blocks.errors import CheckpointError


class RunDir:
    def __init__(self, root: str | Path):
        self.root = Path(root)

    config = property(lambda self: self.root / "config.json")
    environment = property(lambda self: self.root / "environment.json")
    task = property(lambda self: self.root / "task.json")
    vocab = property(lambda self: self.root / "vocab")
    progress_file = property(lambda self: self.root / "progress.json")
    metrics = property(lambda self: self.root / "metrics.jsonl")
    summary = property(lambda self: self.root / "summary.json")
    cache = property(lambda self: self.root / "cache")

    def stage_dir(self, stage: str) -> Path:
        return self.root / "stages" / stage

    def stage_checkpoint(self, stage: str) -> Path:
        return self.stage_dir(stage) / "last.safetensors"

    def model_weights(self, model: str) -> Path:
        return self.root / "models" / f"{model}.safetensors"

    def exists(self) -> bool:
        return self.config.is_file()

    def read_json(self, path: Path) -> dict:
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise CheckpointError("missing from the run directory", str(path)) from None
        except json.JSONDecodeError as error:
            raise CheckpointError(f"is corrupt (line {error.lineno}, column {error.colno}: {error.msg})",
                                  str(path)) from None

    def progress(self) -> dict:
        if not self.progress_file.is_file():
            return {"completed_stages": [], "models": {}}
        return self.read_json(self.progress_file)

    def write_progress(self, progress: dict) -> None:
        atomic_write_json(self.progress_file, progress)

    def append_metrics(self, record: dict) -> None:
        record = {"time": round(time.time(), 3), **record}
        with open(self.metrics, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")

    def drop_metrics_after(self, stage: str, step: int) -> None:
        """On resume: forget log lines of ``stage`` written after its checkpoint at ``step``
        (they are written again as the run replays those steps)."""
        if not self.metrics.is_file():
            return
        kept = []
        for line in self.metrics.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by the interruption
            if record.get("stage") == stage and record.get("step", 0) > step:
                continue
            kept.append(line)
        atomic_write_text(self.metrics, "".join(f"{line}\n" for line in kept))

"""Disk space of run directories: what a finished run no longer needs, and teacher weights shared.

A run keeps ``stages/<stage>/last.safetensors`` (weights, optimizer state, RNG) so that an
interrupted stage can resume, and ``best.safetensors`` until the stage publishes its best weights
to ``models/``. Once the stage is in ``progress.json``'s completed stages, ``--resume`` skips it and
``test``/``predict``/``export`` read ``models/``, so both files are dead weight: with Adam they are
three to four times the model's size. The engine deletes them when a stage completes (unless the
config says ``"keep_checkpoints": true``); :func:`clean_runs` does the same for runs written before,
or with the option on.

A model taken from a finished run (``{"run": ...}``) is stored in the new run's ``models/`` so the
run stands on its own. :func:`share_weights` makes that a hard link to the source file where both
are on one file system: no second copy on disk, and the link keeps the bytes even if the source
run is deleted or re-trained later (the engine replaces files, it never writes into them).

Cleaning also deletes what interrupted writes left (temporary files of atomic writes, unfinished
teacher-cache folders: :func:`blocks.engine.run_dir.partial_files`). A run that another process is
training (it holds the run's lock) is skipped.
"""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from blocks.config.run_models import run_weights
from blocks.engine.checkpoint import load_checkpoint, save_checkpoint
from blocks.engine.run_dir import RunDir, partial_files
from blocks.errors import CheckpointError

STAGE_CHECKPOINTS = ("last.safetensors", "best.safetensors")


def stage_checkpoints(run_dir: RunDir, stage: str) -> list[Path]:
    """A stage's resumable-state files that exist (``state.json``, the readable copy, is not one)."""
    return [path for path in (run_dir.stage_dir(stage) / name for name in STAGE_CHECKPOINTS) if path.is_file()]


def drop_stage_checkpoints(run_dir: RunDir, stage: str) -> None:
    """Delete a completed stage's resumable state."""
    for path in stage_checkpoints(run_dir, stage):
        path.unlink(missing_ok=True)


def share_weights(source: Path, target: Path, tensors: dict, state: dict) -> bool:
    """Put ``source``'s weights at ``target``: a hard link where possible (True), else a copy."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".link")
    try:
        partial.unlink(missing_ok=True)
        os.link(source, partial)
        os.replace(partial, target)  # atomic, like every other file the engine writes
        return True
    except OSError:  # another file system, or one without hard links
        partial.unlink(missing_ok=True)
        save_checkpoint(target, tensors, state)
        return False


@dataclass
class CleanReport:
    runs: int = 0
    freed: int = 0
    linked: int = 0
    actions: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # runs in use by another process


def find_runs(paths: list[str | Path]) -> list[RunDir]:
    """Run directories at or below ``paths`` (a run has config.json and progress.json)."""
    found = []
    for path in map(Path, paths):
        if not path.exists():
            raise CheckpointError("no such file or directory", str(path))
        if (path / "config.json").is_file() and (path / "progress.json").is_file():
            found.append(RunDir(path))
            continue
        for config in sorted(path.rglob("progress.json")):
            if (config.parent / "config.json").is_file():
                found.append(RunDir(config.parent))
    return found


def _equal(first: dict, second: dict) -> bool:
    return first.keys() == second.keys() and all(
        first[k].dtype == second[k].dtype and first[k].shape == second[k].shape and bool((first[k] == second[k]).all())
        for k in first)


def clean_run(run_dir: RunDir, report: CleanReport, dry_run: bool = False, cache: bool = False) -> None:
    if dry_run:
        _clean_run(run_dir, report, dry_run, cache)
        return
    try:
        with run_dir.lock():
            _clean_run(run_dir, report, dry_run, cache)
    except CheckpointError as error:
        if not run_dir.lock_file.is_file() or "in use by" not in error.message:
            raise
        report.skipped.append(f"skipped {run_dir.root}: {error.message}")


def _clean_run(run_dir: RunDir, report: CleanReport, dry_run: bool, cache: bool) -> None:
    for path in partial_files(run_dir.root):
        report.freed += sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() \
            else path.stat().st_size
        report.actions.append(f"delete {path}")
        if not dry_run:
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    progress = run_dir.progress()
    config = run_dir.read_json(run_dir.config)
    for stage in progress.get("completed_stages", []):
        for path in stage_checkpoints(run_dir, stage):
            report.freed += path.stat().st_size
            report.actions.append(f"delete {path}")
            if not dry_run:
                path.unlink()
    for name, model in config.get("models", {}).items():
        target = run_dir.model_weights(name)
        if "run" not in model or not target.is_file():
            continue
        source = run_weights(model["run"], model["model"])
        if not source.is_file() or os.path.samefile(source, target):
            continue
        tensors, state = load_checkpoint(source)
        if not _equal(tensors, load_checkpoint(target)[0]):
            continue  # the source run was re-trained: this copy is the only one left
        report.freed += target.stat().st_size
        report.linked += 1
        report.actions.append(f"link {target} -> {source}")
        if not dry_run:
            share_weights(source, target, tensors, state)
    if cache and run_dir.cache.is_dir():
        size = sum(f.stat().st_size for f in run_dir.cache.rglob("*") if f.is_file())
        report.freed += size
        report.actions.append(f"delete {run_dir.cache}")
        if not dry_run:
            shutil.rmtree(run_dir.cache)
    report.runs += 1


def clean_runs(paths: list[str | Path], dry_run: bool = False, cache: bool = False) -> CleanReport:
    report = CleanReport()
    for run_dir in find_runs(paths):
        clean_run(run_dir, report, dry_run=dry_run, cache=cache)
    return report


def format_size(size: int) -> str:
    if size < 1024:
        return f"{size} B"
    for unit in ("KB", "MB", "GB"):
        size /= 1024
        if size < 1024 or unit == "GB":
            return f"{size:.1f} {unit}"

"""The layout of a run directory: everything ``test``, ``predict`` and ``--resume`` need.

::

    RUN/
      config.json            the resolved config (defaults filled, paths absolute)
      environment.json       versions, device, command line, start time
      task.json              label set and task type
      vocab/<name>.txt       vocabularies (pretrained/<tokenizer>/ for pretrained inputs)
      setup.json             SHA-256 of task.json and of every vocabulary and tokenizer file;
                             written last, so its absence means the set-up did not finish
      stages/<stage>/last.safetensors   resumable state: weights, optimizer, schedule, RNG, position
                                        (with best.safetensors, deleted once the stage is completed
                                        unless "keep_checkpoints": see blocks.engine.clean)
      stages/<stage>/state.json         the same state, readable
      models/<model>.safetensors        final weights of each trained model (best dev checkpoint); a
                                        model from another run is a hard link to its file there
      progress.json          which stages are finished
      metrics.jsonl          one line per log step and per evaluation
      tensorboard/<stage>/   the same scalars as TensorBoard events (when tensorboard is installed;
                             see blocks.engine.tensorboard)
      plots/                 learning curves and teacher weights of each stage (blocks.engine.plots)
      summary.json           per-model results, parameter counts and speed
      cache/<key>/           teacher outputs computed once (see blocks.engine.teacher_cache);
                             safe to delete: rebuilt when needed
      .lock                  held (flock) by the process training the run; names its process id

Every file is written atomically (a hidden ``.<name>.<random>.tmp`` renamed over it); those an
interruption leaves, like unfinished ``cache/.building-*`` folders, are removed on ``--resume``
and by ``blocks clean`` (:meth:`RunDir.remove_partial_files`).

With several processes (torchrun) only rank 0 writes here; the others read (checkpoints on
resume, the teacher cache), so a multi-node run needs this folder on a shared file system.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import time
from contextlib import contextmanager
from pathlib import Path

from blocks.engine.checkpoint import atomic_write_json, atomic_write_text
from blocks.engine.tensorboard import TensorBoardLog
from blocks.errors import CheckpointError

LOCK_FILE = ".lock"
_BUILDING = re.compile(r"^\.building-.*-(\d+)$")  # a teacher cache being built by process <pid>


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def process_alive(pid: int) -> bool:
    """Whether a process ``pid`` runs on this machine."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # it exists (another user's), or we cannot tell: keep its files
    return True


def partial_files(folder: Path) -> list[Path]:
    """What interrupted writes left under ``folder``: temporary files of atomic writes, hard links
    not yet renamed into place, and teacher-cache folders being built by processes that are gone."""
    if not folder.is_dir():
        return []
    found = []
    for path in sorted(folder.rglob(".*")):
        if path.is_file() and path.name.endswith(".tmp"):
            found.append(path)
        elif path.is_dir() and (match := _BUILDING.match(path.name)) and not process_alive(int(match.group(1))):
            found.append(path)
    found += [path for path in sorted(folder.rglob("*.safetensors.link")) if path.is_file()]
    return [p for p in found if not any(parent in found for parent in p.parents)]


class RunDir:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.tensorboard = TensorBoardLog(self.root / "tensorboard")

    config = property(lambda self: self.root / "config.json")
    environment = property(lambda self: self.root / "environment.json")
    task = property(lambda self: self.root / "task.json")
    vocab = property(lambda self: self.root / "vocab")
    progress_file = property(lambda self: self.root / "progress.json")
    metrics = property(lambda self: self.root / "metrics.jsonl")
    summary = property(lambda self: self.root / "summary.json")
    cache = property(lambda self: self.root / "cache")
    setup = property(lambda self: self.root / "setup.json")
    lock_file = property(lambda self: self.root / LOCK_FILE)

    def stage_dir(self, stage: str) -> Path:
        return self.root / "stages" / stage

    def stage_checkpoint(self, stage: str) -> Path:
        return self.stage_dir(stage) / "last.safetensors"

    def model_weights(self, model: str) -> Path:
        return self.root / "models" / f"{model}.safetensors"

    def exists(self) -> bool:
        return self.config.is_file()

    def is_empty(self) -> bool:
        """No run here: the folder is missing, or holds nothing but a lock and temporary files."""
        if not self.root.is_dir():
            return True
        return all(p.name == LOCK_FILE or (p.name.startswith(".") and p.name.endswith(".tmp"))
                   for p in self.root.iterdir())

    @contextmanager
    def lock(self):
        """Hold the run for this process (created if needed): another process that tries gets a
        CheckpointError naming the holder's process id. The lock is an ``flock`` on ``.lock``,
        which the system releases when the holder exits however it ends, so the lock of a killed
        process is taken over. Where ``fcntl`` is missing (Windows) there is no lock."""
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not on Linux or macOS
            yield
            return
        self.root.mkdir(parents=True, exist_ok=True)
        handle = open(self.lock_file, "a+", encoding="utf-8")
        try:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                handle.seek(0)
                holder = handle.read().strip() or "a process that did not say its id"
                raise CheckpointError(f"the run is in use by {holder}; wait for it to end (or stop it), "
                                      f"then continue with --resume", str(self.root)) from None
            handle.seek(0)
            handle.truncate()
            handle.write(f"process {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
            handle.flush()
            yield
        finally:
            handle.close()  # releases the lock

    def remove_partial_files(self, extra_folders=()) -> list[Path]:
        """Delete what interrupted writes left here (see :func:`partial_files`); returns the paths."""
        found = partial_files(self.root) + [p for folder in extra_folders for p in partial_files(Path(folder))]
        for path in found:
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        return found

    # -- the set-up record ----------------------------------------------------------------------
    def setup_files(self) -> list[Path]:
        """The files a run writes before training whose bytes must not change afterwards: the
        task and the vocabularies and tokenizers the weights were trained with. (config.json is
        not among them: it is meant to be read and may be edited, e.g. its device; a resume
        compares it with the config given.)"""
        files = [self.task]
        for folder in (self.vocab, self.root / "pretrained"):
            if folder.is_dir():
                files += sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
        return files

    def write_setup_record(self) -> None:
        """Record the checksum of every set-up file; written last, it marks the set-up finished."""
        files = {p.relative_to(self.root).as_posix(): file_sha256(p) for p in self.setup_files()}
        atomic_write_json(self.setup, {"files": files})

    def setup_finished(self) -> bool:
        return self.setup.is_file()

    def check_setup(self) -> None:
        """Every set-up file is there with the bytes the run wrote (a no-op for runs written before
        the record existed); a CheckpointError names the first file that is not."""
        if not self.setup.is_file():
            return
        record = self.read_json(self.setup)
        files = record.get("files") if isinstance(record, dict) else None
        if not isinstance(files, dict):
            raise CheckpointError("is corrupt (no \"files\" object)", str(self.setup))
        for name, expected in files.items():
            path = self.root / name
            if not path.is_file():
                raise CheckpointError("missing from the run directory", str(path))
            if file_sha256(path) != expected:
                kind = "vocabulary " if name.startswith("vocab/") else ""
                raise CheckpointError(f"the {kind}file is truncated or was changed since the run wrote it (its "
                                      f"SHA-256 differs from the one in {self.setup.name})", str(path))

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
        progress = self.read_json(self.progress_file)
        where = str(self.progress_file)
        if not isinstance(progress, dict):
            raise CheckpointError(f"is corrupt: a {type(progress).__name__} instead of an object", where)
        completed, models = progress.get("completed_stages"), progress.get("models")
        if not isinstance(completed, list) or not all(isinstance(s, str) for s in completed):
            raise CheckpointError("is corrupt: \"completed_stages\" is not a list of stage names", where)
        if not isinstance(models, dict) or not all(isinstance(v, str) for v in models.values()):
            raise CheckpointError("is corrupt: \"models\" is not an object of model -> stage", where)
        if not isinstance(progress.get("stage_results", {}), dict):
            raise CheckpointError("is corrupt: \"stage_results\" is not an object", where)
        return progress

    def write_progress(self, progress: dict) -> None:
        atomic_write_json(self.progress_file, progress)

    def append_metrics(self, record: dict) -> None:
        record = {"time": round(time.time(), 3), **record}
        with open(self.metrics, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
        self.tensorboard.write(record)

    def drop_metrics_after(self, stage: str, step: int) -> None:
        """On resume: forget log lines of ``stage`` written after its checkpoint at ``step``
        (they are written again as the run replays those steps)."""
        self.cut_metrics(lambda record: not (record.get("stage") == stage and record.get("step", 0) > step))
        self.tensorboard.forget_after(stage, step)

    def cut_metrics_to(self, completed: list[str], restored: dict[str, int]) -> None:
        """On resume: keep the log of the ``completed`` stages and of each stage in ``restored`` up to
        the step of its checkpoint; every other line (a stage killed before its first checkpoint,
        steps after the last one, a line cut short) is written again as the run replays them."""
        def kept(record: dict) -> bool:
            stage = record.get("stage")
            if stage in completed:
                return True
            step = record.get("step")
            return stage in restored and isinstance(step, int) and step <= restored[stage]

        self.cut_metrics(kept)
        self.tensorboard.restart(completed, restored)

    def cut_metrics(self, keep) -> None:
        """Rewrite the log (atomically) with the records ``keep(record)`` accepts; lines that are not
        JSON objects (cut short by an interruption or a full disk) go too."""
        if not self.metrics.is_file():
            return
        lines = []
        for line in self.metrics.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict) and keep(record):
                lines.append(line)
        atomic_write_text(self.metrics, "".join(f"{line}\n" for line in lines))

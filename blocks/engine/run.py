"""A run: the config's stages in order, everything written to one run directory.

Under ``torchrun`` (several processes) :func:`train` joins the process group itself (see
:mod:`blocks.engine.distributed`): every rank reads the data and trains; rank 0 alone logs and
writes the run directory, the others wait for it at barriers.
"""
from __future__ import annotations

import copy
import json
import platform
import sys
import time
from pathlib import Path

import torch

from blocks.config.loader import Config
from blocks.data.vocabulary import Vocabulary
from blocks.engine import distributed
from blocks.config.run_models import check_run_task, run_weights
from blocks.engine.checkpoint import atomic_write_json, load_checkpoint
from blocks.engine.clean import drop_stage_checkpoints, share_weights
from blocks.engine.evaluation import evaluate, throughput
from blocks.engine.host_memory import keep_freed_memory
from blocks.engine.run_dir import RunDir
from blocks.engine.trainer import StageTrainer
from blocks.errors import CheckpointError, ConfigError
from blocks.experiment import Experiment, resolve_device


def default_run_dir(config: Config, resume: bool) -> Path:
    """``run_dir`` from the config, else ``runs/<config name>``.

    Without an explicit directory a new run never overwrites an old one: it takes the first free
    name of ``runs/<name>``, ``runs/<name>-2``, ...; ``--resume`` takes the newest of them.
    """
    if config["run_dir"]:
        return Path(config["run_dir"])
    base = Path("runs") / Path(config.file).stem
    candidates = [base] + [base.with_name(f"{base.name}-{n}") for n in range(2, 1000)]
    taken = [c for c in candidates if c.exists() and any(c.iterdir())]
    if resume:
        return taken[-1] if taken else base
    return next(c for c in candidates if c not in taken)


def _first_difference(a, b, path: str = "") -> str | None:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            found = _first_difference(a.get(key), b.get(key), f"{path}/{key}")
            if found:
                return found
        return None
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b)):
            found = _first_difference(x, y, f"{path}/{i}")
            if found:
                return found
        return None
    return None if a == b else (path or "/")


def load_model_weights(experiment: Experiment, run_dir: RunDir, model: str) -> None:
    path = run_dir.model_weights(model)
    tensors, _ = load_checkpoint(path)
    try:
        experiment.models[model].load_state_dict(tensors)
    except RuntimeError as error:
        raise CheckpointError(f"does not fit model '{model}' of this config: {error}", str(path)) from None


def load_run_model(experiment: Experiment, name: str) -> dict:
    """Load model ``name`` (``{"run": ...}`` in the config) with its weights from that run; returns them."""
    model = experiment.config["models"][name]
    source = run_weights(model["run"], model["model"])
    tensors, _ = load_checkpoint(source)
    try:
        experiment.models[name].load_state_dict(tensors)
    except RuntimeError as error:
        raise CheckpointError(f"does not fit model '{name}': {error}", str(source)) from None
    return tensors


def adopt_run_models(experiment: Experiment, directory: RunDir, state: dict,
                     dist: distributed.Distributed, log=print) -> None:
    """Models from finished runs: their weights loaded and copied into this run (once)."""
    for name, model in experiment.config["models"].items():
        if "run" not in model or name in state["models"]:
            continue
        tensors = load_run_model(experiment, name)
        state["models"][name] = f"run {model['run']}"
        if dist.is_main:
            share_weights(run_weights(model["run"], model["model"]), directory.model_weights(name), tensors,
                          {"from_run": model["run"], "model": model["model"]})
            directory.write_progress(state)
        log(f"model '{name}': {model['model']} from {model['run']}")


def _with_current_defaults(saved: dict) -> dict:
    """A saved config with the defaults of keys added to the schema since it was written."""
    from blocks.config.loader import _fill_defaults
    from blocks.config.schema import CONFIG_SCHEMA

    filled = copy.deepcopy(saved)
    try:
        _fill_defaults(CONFIG_SCHEMA, filled, CONFIG_SCHEMA["$defs"])
    except (KeyError, TypeError, AttributeError):
        return saved
    return filled


def _quiet(*args, **kwargs) -> None:
    pass


def train(config: Config, run_dir: str | Path | None = None, resume: bool = False, log=print,
          progress: bool = True) -> dict:
    """Run every stage of ``config`` into a run directory; returns the summary.

    Started by ``torchrun`` (``WORLD_SIZE`` > 1 in the environment), every process calls this:
    it joins the process group, trains its share of each batch, and leaves the group at the end.
    """
    dist, device = distributed.setup(resolve_device(config["device"]))
    if device.type == "cpu":  # big per-step tensors reuse freed memory: see blocks.engine.host_memory
        keep_freed_memory()
    try:
        summary = _train(config, run_dir, resume, log if dist.is_main else _quiet, progress and dist.is_main,
                         dist, device)
    except BaseException:
        distributed.teardown(dist)
        raise
    distributed.teardown(dist, finished=True)
    return summary


def _train(config: Config, run_dir, resume: bool, log, progress: bool, dist: distributed.Distributed,
           device: torch.device) -> dict:
    # Every rank checks the directory before rank 0 writes anything (then a barrier), so all of
    # them see the same directory and take the same decisions.
    root = Path(run_dir) if run_dir else default_run_dir(config, resume)
    directory = RunDir(root)
    if resume:
        if not directory.exists():
            raise CheckpointError("there is no run here to resume (config.json is missing)", str(root))
        saved = _with_current_defaults(directory.read_json(directory.config))
        comparable = {k: v for k, v in config.values.items() if k != "run_dir"}
        difference = _first_difference({k: v for k, v in saved.items() if k != "run_dir"}, comparable)
        if difference:
            raise ConfigError(f"the config differs from the one the run in {root} started with (at {difference}); "
                              f"resume with the same config and --set values", config.file, difference)
    elif directory.exists() or (root.exists() and any(root.iterdir())):
        raise ConfigError(f"the run directory {root} is not empty; continue that run with --resume, or choose "
                          f"another directory with --run-dir", config.file, "/run_dir")

    experiment = Experiment.prepare(config, log=log)
    check_run_task(config.values, experiment.task.to_json(), config.file)
    if resume:
        for name, vocab in experiment.vocabularies.items():
            if isinstance(vocab, Vocabulary) and Vocabulary.load(directory.vocab / f"{name}.txt") != vocab:
                raise CheckpointError("the training data changed since the run started (vocabulary differs)",
                                      str(directory.vocab / f"{name}.txt"))
    dist.barrier()
    if not resume and dist.is_main:
        root.mkdir(parents=True, exist_ok=True)
        atomic_write_json(directory.config, {**config.values, "run_dir": str(root)})
        atomic_write_json(directory.task, experiment.task.to_json())
        experiment.save_vocabularies(directory.vocab)
        atomic_write_json(directory.environment, environment_record(device, dist))
    log(f"run directory: {root}  device: {device}"
        + (f"  processes: {dist.world_size} ({dist.backend})" if dist.enabled else ""))
    experiment.load_pretrained(log)

    state = directory.progress()
    for model in state["models"]:
        load_model_weights(experiment, directory, model)
    adopt_run_models(experiment, directory, state, dist, log)
    stage_results = state.get("stage_results", {})
    for index, stage in enumerate(config["stages"]):
        if stage["name"] in state["completed_stages"]:
            continue
        if stage["train"] not in state["models"]:  # its first stage (a resumed one reloads its checkpoint)
            experiment.init_from_models(stage["train"], log)
        trainer = StageTrainer(experiment, index, directory, device, log=log, progress=progress, dist=dist)
        result = trainer.run(resume=resume)
        del trainer  # with several processes: drops the DistributedDataParallel wrapper and its hooks
        result.pop("history", None)
        stage_results[stage["name"]] = result
        state["completed_stages"].append(stage["name"])
        state["models"][stage["train"]] = stage["name"]
        state["stage_results"] = stage_results
        if dist.is_main:
            directory.write_progress(state)
            if not config["keep_checkpoints"]:  # resume skips a completed stage; its weights are in models/
                drop_stage_checkpoints(directory, stage["name"])
        log(f"stage '{stage['name']}' done: best dev {result['select']} = {_fmt(result['best'])} "
            f"at step {result['best_step']:,}")
    summary = None
    if dist.is_main:  # the others wait: the summary evaluates and times the models
        summary = summarize(experiment, directory, device, state)
        atomic_write_json(directory.summary, summary)
        log(format_summary(summary))
    return dist.broadcast(summary)


def environment_record(device: torch.device, dist: distributed.Distributed = distributed.SINGLE) -> dict:
    import transformers

    record = {"started": time.strftime("%Y-%m-%d %H:%M:%S"), "python": platform.python_version(),
              "torch": torch.__version__, "transformers": transformers.__version__,
              "platform": platform.platform(), "device": str(device),
              "cuda_device": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
              "command": sys.argv, "host_memory": keep_freed_memory() if device.type == "cpu" else None}
    if dist.enabled:
        record["processes"] = dist.world_size
        record["backend"] = dist.backend
    return record


def final_model(config: Config) -> str:
    """The model a run delivers: the one trained by the last stage (the student, when distilling)."""
    return config["stages"][-1]["train"]


def roles(config: Config) -> dict[str, str]:
    """student = the model trained by the last stage; teachers = models that teach in any stage."""
    stages = config["stages"]
    student = stages[-1]["train"]
    teachers = {t for s in stages for t in s["teachers"]}
    taken = [name for name, model in config["models"].items() if "run" in model and name in teachers]
    trained = taken + [s["train"] for s in stages]  # models from other runs first: they are the teachers
    result = {}
    for name in dict.fromkeys(trained):
        if not teachers:
            result[name] = "model"  # no distillation in this run
        else:
            result[name] = "student" if name == student else ("teacher" if name in teachers else "model")
    return result


def _scores_from_run(config: Config, name: str) -> dict | None:
    """Dev/test scores and speed of a model taken from a finished run, from that run's summary,
    when both runs read the same data and ask the same metrics (else None: evaluate it here)."""
    model = config["models"][name]
    if "run" not in model:
        return None
    root = Path(model["run"])
    try:
        theirs = json.loads((root / "config.json").read_text(encoding="utf-8"))
        summary = json.loads((root / "summary.json").read_text(encoding="utf-8"))
        entry = summary["models"][model["model"]]
    except (OSError, ValueError, KeyError):
        return None
    if theirs.get("data") != config["data"] or theirs.get("task") != config["task"]:
        return None
    kept = {k: entry[k] for k in ("dev", "test", "examples_per_second_batch64") if k in entry}
    return {**kept, "scores_from": str(root / "summary.json")} if "examples_per_second_batch64" in kept else None


def summarize(experiment: Experiment, directory: RunDir, device: torch.device, state: dict) -> dict:
    config = experiment.config
    batch_size = config["stages"][-1]["eval_batch_size"]
    speed_split = experiment.splits.get("dev") or experiment.splits["train"]
    models = {}
    role_of = roles(config)
    student = final_model(config)
    teachers = [n for n, r in role_of.items() if r == "teacher"]
    for name, role in role_of.items():
        entry = {"role": role, "parameters": experiment.models[name].parameter_count(),
                 "stage": state["models"].get(name)}
        models[name] = entry
        reused = _scores_from_run(config, name)
        if reused is not None:  # a model from a finished run, on the same data: its scores are known
            entry.update(reused)
            if not teachers or name != teachers[0]:  # the speedup divides by teachers[0]'s speed: timed here
                entry["examples_per_second_batch64_from"] = reused["scores_from"]
                continue
        else:
            for split in ("dev", "test"):
                if split in experiment.splits and experiment.splits[split].labels is not None:
                    entry[split] = evaluate(experiment, name, experiment.splits[split], batch_size, device,
                                            config["precision"])
        entry["examples_per_second_batch64"] = round(throughput(experiment, name, speed_split, 64, device), 1)
    if teachers:
        teacher_speed = models[teachers[0]]["examples_per_second_batch64"]
        models[student]["speedup_vs_" + teachers[0]] = round(
            models[student]["examples_per_second_batch64"] / teacher_speed, 2)
        models[student]["compression_vs_" + teachers[0]] = round(
            models[teachers[0]]["parameters"] / models[student]["parameters"], 2)
    return {"run_dir": str(directory.root), "device": str(device), "models": models,
            "stages": state.get("stage_results", {}), "finished": time.strftime("%Y-%m-%d %H:%M:%S")}


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def format_summary(summary: dict) -> str:
    lines = ["", f"results ({summary['device']}):"]
    for name, entry in summary["models"].items():
        scores = []
        for split in ("dev", "test"):
            if split in entry:
                scores.append(f"{split} " + ", ".join(f"{k} {v:.4f}" for k, v in entry[split].items()))
        speed = f"{entry['examples_per_second_batch64']:,.0f} ex/s at batch 64"
        if "examples_per_second_batch64_from" in entry:
            speed += " (timed in its own run)"
        extra = "".join(f"; {k.replace('_vs_', ' vs ')} {v}x" for k, v in entry.items()
                        if k.startswith(("speedup", "compression")))
        lines.append(f"  {name} ({entry['role']}): {entry['parameters']:,} parameters; "
                     f"{'; '.join(scores)}; {speed}{extra}")
    return "\n".join(lines)


def open_run(run_dir: str | Path) -> tuple[RunDir, Config]:
    """A finished or partial run's directory and its resolved config."""
    directory = RunDir(run_dir)
    if not directory.root.is_dir():
        raise CheckpointError("run directory not found", str(run_dir))
    values = directory.read_json(directory.config)
    return directory, Config(values=values, file=str(directory.config), base_dir=directory.root)


def load_run(run_dir: str | Path, log=print) -> tuple[RunDir, Experiment, dict]:
    """Rebuild a run's experiment with every finished model's weights loaded."""
    directory, config = open_run(run_dir)
    experiment = Experiment.from_run_dir(directory.root, config, log=log)
    state = directory.progress()
    if not state["models"]:
        raise CheckpointError("no model has finished training in this run", str(directory.root))
    for model in state["models"]:
        load_model_weights(experiment, directory, model)
    return directory, experiment, state


def dumps(record: dict) -> str:
    return json.dumps(record, ensure_ascii=False)

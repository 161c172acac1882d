"""Training a multi-task config into a run directory; a stream's orders one after another.

A run of one order holds what a single-task run holds (config.json, metrics.jsonl, stages/,
models/, plots/, progress.json for ``--resume``), per task its ``tasks/<task>/task.json`` and
vocabularies, and ``scores.json``: the score matrix of the tracked model (the stream's ``model``,
else the model the last stage trains) with the final average, forgetting and backward transfer
(:mod:`blocks.multitask.scores`), plotted in ``plots/score_matrix.png``. A stream with several
orders writes ``order1/``, ``order2/``... and, at the top, ``summary.json`` with every order's
measures and their mean and standard deviation.
"""
from __future__ import annotations

import copy
import os
import time
from pathlib import Path

import torch

from blocks.engine.checkpoint import atomic_write_json, load_checkpoint
from blocks.engine.evaluation import evaluate
from blocks.engine.host_memory import keep_freed_memory
from blocks.engine.run import _differences, check_run_dir_path, environment_record
from blocks.engine.run_dir import RunDir
from blocks.errors import CheckpointError, ConfigError
from blocks.experiment import resolve_device
from blocks.multitask.config import MultiTaskConfig, resolve_multitask
from blocks.multitask.experiment import MultiTaskExperiment
from blocks.multitask.scores import mean_and_std, plot_score_matrix, stream_measures
from blocks.multitask.trainer import MEAN, MixtureTrainer
from blocks.threads import use_threads

SCORES_FILE = "scores.json"
#: in RUN/tasks/: the tasks and which of the models' nodes they share (read by load_task_run)
SHARING_FILE = "sharing.json"


def tracked_model(config: MultiTaskConfig) -> str:
    stream = config.values.get("stream")
    return stream["model"] if stream else config.values["stages"][-1]["train"]


def check_multitask_stages(multi: MultiTaskExperiment) -> None:
    """Build every stage's losses for each of its tasks (and replayed tasks): a loss that does not
    fit a task is a ConfigError before anything is trained."""
    config = multi.config
    for index, plan in enumerate(config.plans):
        for task in plan.tasks:
            multi.experiments[task].build_losses(index)
        for task in plan.replay_tasks:
            multi.experiments[task].build_losses(index, plan.replay_losses, where=f"/stages/{index}/replay/losses")
        for task in plan.tasks:
            if "dev" not in multi.experiments[task].splits and not plan.keep_last:
                raise ConfigError(f"task '{task}' has no dev split to choose the best weights by; give it one "
                                  f"(tasks.{task}.data.dev) or set \"keep\": \"last\"", config.file,
                                  f"/stages/{index}")


def train_multitask(config: MultiTaskConfig, run_dir: str | Path | None = None, resume: bool = False, log=print,
                    progress: bool = True) -> dict:
    """Train every order of the config (one, unless the stream lists several); returns the summary."""
    root = Path(run_dir) if run_dir else Path("runs") / Path(config.file).stem
    check_run_dir_path(root, config.file)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError("a multi-task config trains in one process; start it with `blocks train`, not torchrun",
                          config.file)
    use_threads(config.first["threads"])
    device = resolve_device(config.first["device"])
    if device.type == "cpu":
        keep_freed_memory()
    orders = config.orders
    if config.values.get("stream", {}).get("multitask"):  # one stage over every task: the order is moot
        orders = orders[:1]
    if len(orders) <= 1:
        return train_order(config, root, resume, log, progress, device)
    summaries = {}
    for number, order in enumerate(orders, start=1):
        log(f"order {number} of {len(orders)}: {' -> '.join(order)}")
        ordered = resolve_multitask(copy.deepcopy(config.raw), Path(config.file), order=order)
        folder = root / f"order{number}"
        # resuming: an order the interrupted run had not started yet starts now
        summaries[f"order{number}"] = train_order(ordered, folder, resume and RunDir(folder).exists(), log,
                                                  progress, device)
    summary = {"orders": {name: {"order": s["order"], **s["measures"]} for name, s in summaries.items()}}
    summary["mean"] = {key: mean_and_std([s["measures"][key] for s in summaries.values()])
                       for key in ("final_average", "forgetting", "backward_transfer")}
    atomic_write_json(root / "summary.json", summary)
    log(format_orders(summary))
    return summary


def train_order(config: MultiTaskConfig, root: Path, resume: bool, log, progress: bool,
                device: torch.device) -> dict:
    directory = RunDir(root)
    if resume and not directory.exists():
        raise CheckpointError("there is no run here to resume (config.json is missing)", str(root))
    if not resume and not directory.is_empty():
        raise ConfigError(f"the run directory {root} is not empty; give another --run-dir, or --resume to continue "
                          f"it", config.file)
    if resume:
        check_same_config(config, directory)
    multi = MultiTaskExperiment.prepare(config, log=log)
    check_multitask_stages(multi)
    with directory.lock():
        if not directory.exists():
            root.mkdir(parents=True, exist_ok=True)
            for task, experiment in multi.experiments.items():
                folder = root / "tasks" / task
                folder.mkdir(parents=True, exist_ok=True)
                atomic_write_json(folder / "task.json", experiment.task.to_json())
                experiment.save_vocabularies(folder / "vocab")
                atomic_write_json(folder / "config.json", {**experiment.config.values, "run_dir": str(folder)})
            atomic_write_json(root / "tasks" / SHARING_FILE, {"tasks": list(multi.experiments),
                                                              "shared_models": config.shared_models,
                                                              "head_owner": config.head_owner})
            atomic_write_json(directory.environment, environment_record(device))
            atomic_write_json(directory.config, {**config.values, "order": config.order, "run_dir": str(root)})
        log(f"run directory: {root}  device: {device}  tasks: {', '.join(config.order)}")
        multi.load_pretrained(log)
        for name, folder in config.run_models.items():
            load_run_model(multi, name, folder, log)
        return _train_stages(multi, directory, log, progress, device, resume)


def check_same_config(config: MultiTaskConfig, directory: RunDir) -> None:
    """A resumed multi-task run continues with the config it started with (settings that only
    change how it runs, such as threads and device, may differ)."""
    saved = directory.read_json(directory.config)
    current = {**config.values, "order": config.order, "run_dir": saved.get("run_dir")}
    changed = [path for path in _differences(saved, current)
               if path.split("/")[1] not in ("threads", "device", "run_dir")]
    changed.sort(key=lambda path: path.startswith("/stages/") and "stream" in current)  # a stream's own key first
    if changed:
        raise ConfigError(f"the config differs from the one the run started with at {changed[0]}"
                          + (f" (and {len(changed) - 1} more)" if len(changed) > 1 else "")
                          + f"; resume with the run's config ({directory.config}) or train into a new run directory",
                          config.file, changed[0])


def load_run_model(multi: MultiTaskExperiment, name: str, folder: Path, log=print) -> None:
    """Every task's weights of model ``name`` from a finished multi-task run (a run trained on more
    tasks brings those too; they are left out)."""
    path = Path(folder) / "models" / f"{name}.safetensors"
    if not path.is_file():
        raise CheckpointError(f"the run has no trained '{name}' (its stages did not finish)", str(path))
    tensors, _ = load_checkpoint(path)
    model = multi.models[name]
    wanted = model.state_dict()
    missing = [key for key in wanted if key not in tensors]
    if missing:
        raise CheckpointError(f"does not hold model '{name}' as this config builds it (missing {missing[0]}"
                              + (f" and {len(missing) - 1} more" if len(missing) > 1 else "") + ")", str(path))
    try:
        model.load_state_dict({key: tensors[key] for key in wanted})
    except RuntimeError as error:
        raise CheckpointError(f"does not match model '{name}' of this config ({error})", str(path)) from None
    log(f"model '{name}': every task's weights from {folder}")


def _train_stages(multi: MultiTaskExperiment, directory: RunDir, log, progress: bool, device: torch.device,
                  resume: bool) -> dict:
    config = multi.config
    state = directory.progress()
    for model, stage in state["models"].items():  # the weights of finished stages
        tensors, _ = load_checkpoint(directory.model_weights(model))
        multi.models[model].load_state_dict(tensors)
    tracked = tracked_model(config)
    scores = state.get("scores", {"rows": [], "matrix": []})
    results = state.get("stage_results", {})
    started = time.perf_counter()
    for index, (stage, plan) in enumerate(zip(config.values["stages"], config.plans)):
        if stage["name"] in state["completed_stages"]:
            continue
        trainer = MixtureTrainer(multi, plan, index, directory, device, log=log, progress=progress)
        result = trainer.run(resume=resume)
        result.pop("history", None)
        results[stage["name"]] = result
        if stage["train"] == tracked:
            row = score_row(multi, tracked, config.order, scores, plan.tasks, device, progress)
            scores["rows"].append(stage["name"])
            scores["matrix"].append(row)
            shown = ", ".join(f"{task} {value:.4f}" for task, value in zip(config.order, row) if value is not None)
            log(f"after stage '{stage['name']}': dev {shown}")
        state["completed_stages"].append(stage["name"])
        state["models"][stage["train"]] = stage["name"]
        state["stage_results"], state["scores"] = results, scores
        directory.write_progress(state)
    metrics = [multi.experiments[task].config["task"]["metrics"][0] for task in config.order]
    measures = stream_measures(scores["matrix"])
    if tracked not in config.shared_models:  # separate weights per task: nothing to forget
        measures.update(forgetting=None, backward_transfer=None)
    record = {"tasks": config.order, "metrics": metrics, "split": "dev", "model": tracked, "rows": scores["rows"],
              "matrix": scores["matrix"], **measures}
    atomic_write_json(directory.root / SCORES_FILE, record)
    plot = plot_score_matrix(scores["matrix"], config.order, scores["rows"], metrics,
                             directory.root / "plots" / "score_matrix.png",
                             f"{tracked}: dev score after each stage")
    summary = {"order": config.order, "model": tracked, "measures": measures, "scores": record,
               "stages": results, "train_seconds": round(time.perf_counter() - started, 1),
               "plot": str(plot) if plot else None}
    atomic_write_json(directory.summary, summary)
    log(format_measures(measures, config.order))
    return summary


def score_row(multi: MultiTaskExperiment, model: str, order: list[str], scores: dict, stage_tasks: list[str],
              device: torch.device, progress: bool) -> list[float | None]:
    """The tracked model's dev score (first metric) on every task trained so far, in task order."""
    seen = {task for row in scores["matrix"] for task, value in zip(order, row) if value is not None}
    seen |= set(stage_tasks)
    row = []
    for task in order:
        if task not in seen:
            row.append(None)
            continue
        experiment = multi.experiments[task]
        metric = experiment.config["task"]["metrics"][0]
        split = experiment.splits.get("dev") or experiment.splits.get("test")
        if split is None:
            row.append(None)
            continue
        row.append(evaluate(experiment, model, split, 256, device, metrics=[metric], progress=progress)[metric])
    return row


def _fmt(value) -> str:
    return "—" if value is None else f"{value:.4f}"


def format_measures(measures: dict, order: list[str]) -> str:
    return (f"tasks {' -> '.join(order)}: final average {_fmt(measures['final_average'])}, forgetting "
            f"{_fmt(measures['forgetting'])}, backward transfer {_fmt(measures['backward_transfer'])}")


def format_orders(summary: dict) -> str:
    lines = [format_measures(s, s["order"]) for s in summary["orders"].values()]
    mean = summary["mean"]
    lines.append("over the orders: " + ", ".join(
        f"{key.replace('_', ' ')} {_fmt(v['mean'])} ± {_fmt(v['std'])}" for key, v in mean.items()))
    return "\n".join(lines)


__all__ = ["train_multitask", "check_multitask_stages", "MEAN"]


def is_task_of_multitask_run(folder: Path) -> bool:
    """Whether ``folder`` is ``RUN/tasks/<task>`` of a multi-task run."""
    folder = Path(folder)
    return (folder.parent / SHARING_FILE).is_file() and (folder / "task.json").is_file()


def load_task_run(folder: Path, log=print):
    """One task's view of a multi-task run (``RUN/tasks/<task>``): that task's experiment, its
    models holding the run's weights (the shared trunk and the task's head), and the run's
    progress — what ``blocks test``, ``predict``, ``bench`` and ``export`` read from a run."""
    from blocks.config.loader import Config
    from blocks.experiment import Experiment

    folder = Path(folder)
    root = RunDir(folder.parent.parent)
    sharing = root.read_json(folder.parent / SHARING_FILE)
    experiments, configs = {}, {}
    for task in sharing["tasks"]:
        task_folder = folder.parent / task
        values = root.read_json(task_folder / "config.json")
        configs[task] = Config(values=values, file=str(task_folder / "config.json"), base_dir=task_folder)
        experiments[task] = Experiment.from_run_dir(task_folder, configs[task], log=log)
    config = MultiTaskConfig(str(root.config), root.root, {}, configs, [], sharing["shared_models"],
                             sharing["head_owner"], list(sharing["tasks"]))
    multi = MultiTaskExperiment(config, experiments)
    state = root.progress()
    if not state["models"]:
        raise CheckpointError("no model has finished training in this run", str(root.root))
    for model in state["models"]:
        tensors, _ = load_checkpoint(root.model_weights(model))
        try:
            multi.models[model].load_state_dict(tensors)
        except RuntimeError as error:
            raise CheckpointError(f"does not match model '{model}' of the run's config ({error})",
                                  str(root.model_weights(model))) from None
    return RunDir(folder), experiments[folder.name], state

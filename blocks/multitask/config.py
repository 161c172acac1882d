"""Multi-task configs: several named tasks, one model head per task, stages over tasks, streams.

A config with a ``tasks`` object (instead of ``data`` and ``task``) is a multi-task config::

    "tasks": {
      "sst2": {"extends": "../../configs/data/sst2.json", "data": {"fields": {"a": "sentence", "b": null}}},
      "snli": {"extends": "../../configs/data/snli.json"}
    }

Each task is what a single-task config's ``data`` and ``task`` say (``extends`` reads them from a
data fragment; paths are relative to the file that states them). Field names are shared by the
models: map each task's columns onto the fields the models read (``null`` marks a pair input's
second text as absent, for a task of single sentences).

**Models.** A model with ``heads`` is shared by the tasks: its ``graph`` is the shared trunk and
``heads`` gives each task the nodes appended after it (``"*"``: every task not named; a task may
name another task's head instead, which it then shares, when their label sets are equal). A model
without ``heads`` gets separate weights per task (a per-task teacher).

**Stages** name what they train on: ``"task": "sst2"``, or a mixture ``"tasks": ["sst2", "snli"]``
(or ``"all"``) drawn ``"mixing": "proportional"`` to the tasks' sizes or ``{"temperature": T}``
(task k's share of the batches proportional to n_k^(1/T)). ``"replay": {"tasks": [...],
"share": 0.2, "losses": [...]}`` adds a stored share of other tasks' training examples, trained
with their own losses (default cross-entropy on the gold labels). ``"keep": "last"`` keeps the
weights after the last step instead of the best dev score (the mean of the stage's tasks' first
metrics). A stage's teachers teach each task with that task's own weights; ``"teachers": {"sst2":
["minilm"], "cola": ["bilstm"]}`` gives each task its own teacher models.

**Streams** (``stream``) write the stages of lifelong learning (L2KD, Chuang et al. 2020): for each
task in order, train its teacher (``teacher``, ``teacher_stage``), then the lifelong model
(``model``, ``stage``) on the task with the teacher, replaying ``replay`` of every finished task;
``"multitask": true`` trains on all tasks at once instead (the upper bound). ``orders`` lists the
task orders to run (one run each, ``order1/``, ``order2/``... in the run directory).
"""
from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import jsonschema

from blocks.config.loader import (Config, _load_with_extends, apply_stage_defaults, complete_config, deep_merge,
                                  read_config_values)
from blocks.errors import ConfigError, did_you_mean

#: the stage keys of multi-task configs (removed from the per-task configs the engine reads)
STAGE_KEYS = ("task", "tasks", "mixing", "replay", "keep")
ALL = "all"
ANY_TASK = "*"
DEFAULT_REPLAY_LOSSES = [{"block": "CrossEntropy"}]

_STAGE_SETTINGS = {"type": "object", "description": "stage settings (as in a config's stages)"}
_TASK_NAME = {"type": "string", "pattern": "^[A-Za-z0-9_-]+$"}

MULTITASK_SCHEMA = {
    "type": "object",
    "required": ["tasks", "models"],
    "properties": {
        "tasks": {"type": "object", "minProperties": 1, "propertyNames": _TASK_NAME,
                  "additionalProperties": {
                      "type": "object", "additionalProperties": False,
                      "properties": {"extends": {"type": "string"}, "description": {"type": "string"},
                                     "data": {"type": "object"}, "task": {"type": "object"}}}},
        "stream": {
            "type": "object", "additionalProperties": False, "required": ["model"],
            "properties": {
                "order": {"type": "array", "items": {"type": "string"}, "minItems": 1},
                "orders": {"type": "array", "minItems": 1,
                           "items": {"type": "array", "items": {"type": "string"}, "minItems": 1}},
                "model": {"type": "string", "description": "the lifelong model (a model with heads)"},
                "teacher": {"type": "string", "description": "a disposable teacher trained on each task first"},
                "replay": {"type": "number", "description": "share of each finished task's training examples "
                                                            "replayed, in (0, 1]; 0: none"},
                "multitask": {"type": "boolean", "description": "train on every task at once (one stage)"},
                "mixing": {},
                "teacher_stage": _STAGE_SETTINGS,
                "stage": _STAGE_SETTINGS,
                "replay_losses": {"type": "array", "minItems": 1, "items": {"type": "object"}},
            }},
        "models": {"type": "object"},
        "stages": {"type": "array", "items": {"type": "object"}},
    },
}


@dataclass
class StagePlan:
    """What a stage of a multi-task config trains on."""

    tasks: list[str]  # the stage's tasks (the current task of a stream stage)
    mixing: str | float = "proportional"  # or a temperature
    replay_tasks: list[str] = field(default_factory=list)
    replay_share: float = 0.0
    replay_losses: list[dict] = field(default_factory=list)
    keep_last: bool = False


@dataclass
class MultiTaskConfig:
    """A multi-task config resolved into one single-task :class:`Config` per task (same models,
    stages and settings; that task's data, task and heads) and a plan per stage."""

    file: str
    base_dir: Path
    values: dict  # the multi-task values, stream expanded into stages
    tasks: dict[str, Config]
    plans: list[StagePlan]
    shared_models: dict[str, list[str]]  # model -> its trunk node names (models with heads)
    head_owner: dict[str, dict[str, str]]  # model -> task -> the task whose head it uses
    order: list[str]  # the tasks in stream order (or as declared)
    orders: list[list[str]] = field(default_factory=list)  # every order asked for (streams)
    raw: dict = field(default_factory=dict)  # the values as read (to resolve another order)
    run_models: dict[str, Path] = field(default_factory=dict)  # model -> the multi-task run it comes from

    def __getitem__(self, key: str):
        return self.values[key]

    @property
    def first(self) -> Config:
        return next(iter(self.tasks.values()))


def is_multitask(values: dict) -> bool:
    return isinstance(values, dict) and "tasks" in values


def load_multitask_config(path: str | Path, overrides: Iterable[str] = (), environ: dict | None = None,
                          planned_runs: bool = False, order: list[str] | None = None) -> MultiTaskConfig:
    """Read a multi-task config (see the module docstring); ``order`` picks one of the stream's
    orders (default: the first)."""
    path = Path(path)
    values = read_config_values(path, overrides, environ)
    return resolve_multitask(values, path, planned_runs, order)


def resolve_multitask(values: dict, path: Path, planned_runs: bool = False,
                      order: list[str] | None = None) -> MultiTaskConfig:
    file = str(path)
    raw = copy.deepcopy(values)
    root_override = values.pop("data", None)  # DISTILBLOCKS_DATA: the root of every task's data
    if root_override is not None and set(root_override) != {"root"}:
        raise ConfigError("a multi-task config gives each task its data under tasks.<name>.data, not in a "
                          "top-level \"data\"", file, "/data")
    if "task" in values:
        raise ConfigError("a multi-task config states each task under tasks.<name>.task, not in a top-level "
                          "\"task\"", file, "/task")
    _validate(values, file)
    run_models = _adopt_run_models(values, file, planned_runs)
    tasks = _read_tasks(values, path, root_override)
    names = list(tasks)
    orders = _orders(values, names, file)
    chosen = order or (orders[0] if orders else names)
    if "stream" in values:
        if "stages" in values:
            raise ConfigError("a config with a stream gets its stages from the stream; remove \"stages\"", file,
                              "/stages")
        values["stages"] = expand_stream(values, chosen, file, set(run_models))
    if not values.get("stages"):
        raise ConfigError("a multi-task config needs \"stages\" or a \"stream\"", file, "")
    apply_stage_defaults(values, file, extra_keys=("mixing", "keep"))
    shared, head_owner = _check_models(values, names, tasks, file)
    used = {stage.get("train") for stage in values["stages"]} | {t for stage in values["stages"]
                                                                 for task in names
                                                                 for t in stage_teachers(stage, task)}
    shared = {model: trunk for model, trunk in shared.items() if model in used}
    head_owner = {model: owner for model, owner in head_owner.items() if model in used}
    plans = [_stage_plan(stage, i, names, values, file) for i, stage in enumerate(values["stages"])]
    _check_teachers_trained(values, plans, run_models, file)
    configs = {}
    for name in names:
        single = {key: copy.deepcopy(value) for key, value in values.items() if key not in ("tasks", "stream")}
        single["data"] = copy.deepcopy(tasks[name]["data"])
        single["task"] = copy.deepcopy(tasks[name].get("task", {}))
        single["models"] = {model: _models_for(definition, name, head_owner.get(model))
                            for model, definition in values["models"].items() if model in used}
        single["stages"] = [{**{k: v for k, v in stage.items() if k not in STAGE_KEYS},
                             "teachers": stage_teachers(stage, name)} for stage in values["stages"]]
        try:
            configs[name] = complete_config(single, path, planned_runs)
        except ConfigError as error:
            raise ConfigError(f"task '{name}': {error.message}", file, _task_path(error.path, name)) from None
        configs[name].external_models = frozenset(run_models)
    return MultiTaskConfig(file, path.resolve().parent, values, configs, plans, shared, head_owner, chosen, orders,
                           raw, run_models)


def _adopt_run_models(values: dict, file: str, planned_runs: bool) -> dict[str, Path]:
    """Models taken from a finished multi-task run (``"run": "runs/..."``, e.g. per-task teachers
    trained once and shared by several streams): their definition is the run's, their weights
    (every task's) are loaded from it before the first stage."""
    runs = {}
    for name, model in values["models"].items():
        if not isinstance(model, dict) or "run" not in model:
            continue
        where = f"/models/{name}/run"
        folder = Path(model["run"])
        saved_file = folder / "config.json"
        if not saved_file.is_file():
            if planned_runs and "recipe" in model:
                saved_file = Path(model["recipe"])
            else:
                raise ConfigError(f"no finished run at {folder} (its config.json is missing); train it first"
                                  + (f": blocks train {model['recipe']} --run-dir {folder}" if "recipe" in model
                                     else ""), file, where)
        saved = read_saved_values(saved_file, file, where)
        if "tasks" not in saved:
            raise ConfigError(f"{saved_file} is a single-task config; a multi-task config takes models from "
                              f"multi-task runs", file, where)
        if name not in saved.get("models", {}):
            raise ConfigError(f"the run has no model '{name}'{did_you_mean(name, saved.get('models', {}))}", file,
                              where)
        missing = [task for task in values["tasks"] if task not in saved["tasks"]]
        if missing:
            raise ConfigError(f"the run's model '{name}' was not trained on task(s) {', '.join(missing)} (its "
                              f"tasks: {', '.join(saved['tasks'])})", file, where)
        values["models"][name] = {k: v for k, v in saved["models"][name].items() if k not in ("run", "recipe")}
        runs[name] = folder
    return runs


def read_saved_values(path: Path, file: str, where: str) -> dict:
    """A run's config.json (or a recipe, with its extends merged)."""
    if path.name != "config.json":
        return _load_with_extends(path, ())
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise ConfigError(f"cannot read {path}: {error}", file, where) from None


def _task_path(path: str | None, task: str) -> str | None:
    """The JSON path of a per-task config's error in the multi-task file."""
    if path and (path.startswith("/data") or path.startswith("/task")):
        return f"/tasks/{task}{path}"
    return path


def _validate(values: dict, file: str) -> None:
    validator = jsonschema.Draft202012Validator(MULTITASK_SCHEMA)
    errors = list(validator.iter_errors(values))
    if errors:
        error = max(errors, key=lambda e: len(list(e.absolute_path)))
        where = "/" + "/".join(str(p) for p in error.absolute_path)
        raise ConfigError(error.message, file, where if where != "/" else "")


def _read_tasks(values: dict, path: Path, root_override: dict | None) -> dict[str, dict]:
    """Each task's data and task objects, its ``extends`` merged under it."""
    file, folder = str(path), path.resolve().parent
    tasks = {}
    for name, entry in values["tasks"].items():
        entry = copy.deepcopy(entry)
        data = entry.get("data", {})
        if isinstance(data.get("root"), str) and not os.path.isabs(data["root"]):
            data["root"] = os.path.normpath(folder / data["root"])
        merged: dict = {}
        if "extends" in entry:
            parent = folder / entry.pop("extends")
            if not parent.is_file():
                raise ConfigError(f"extended file not found: {parent}", file, f"/tasks/{name}/extends")
            fragment = _load_with_extends(parent, ())
            merged = {key: fragment[key] for key in ("data", "task") if key in fragment}
        merged = deep_merge(merged, {k: v for k, v in entry.items() if k in ("data", "task")}, file, f"/tasks/{name}")
        if not merged.get("data", {}).get("train"):
            raise ConfigError(f"task '{name}' has no training data (tasks.{name}.data.train, or a data fragment "
                              f"in tasks.{name}.extends)", file, f"/tasks/{name}")
        if root_override is not None:
            merged["data"]["root"] = root_override["root"]
        tasks[name] = merged
    return tasks


def _orders(values: dict, names: list[str], file: str) -> list[list[str]]:
    stream = values.get("stream")
    if stream is None:
        return []
    if "order" in stream and "orders" in stream:
        raise ConfigError("give \"order\" or \"orders\", not both", file, "/stream")
    orders = stream.get("orders") or [stream.get("order") or names]
    for i, order in enumerate(orders):
        where = f"/stream/orders/{i}" if "orders" in stream else "/stream/order"
        for j, task in enumerate(order):
            if task not in names:
                raise ConfigError(f"unknown task '{task}'{did_you_mean(task, names)} (tasks: {', '.join(names)})",
                                  file, f"{where}/{j}")
        if len(set(order)) != len(order):
            raise ConfigError("a task appears twice in the order", file, where)
    return orders


def expand_stream(values: dict, order: list[str], file: str, from_runs: set[str] = frozenset()) -> list[dict]:
    """The stages of a stream: per task, its teacher's stage and the lifelong model's stage."""
    stream = values["stream"]
    model, teacher = stream["model"], stream.get("teacher")
    for key, name in (("model", model), ("teacher", teacher)):
        if name is not None and name not in values["models"]:
            raise ConfigError(f"model '{name}' is not defined{did_you_mean(name, values['models'])}", file,
                              f"/stream/{key}")
    share = stream.get("replay", 0)
    if not 0 <= share <= 1:
        raise ConfigError(f"replay is a share of each finished task's training examples, in (0, 1] (0: no "
                          f"replay); got {share}", file, "/stream/replay")
    teacher_settings = stream.get("teacher_stage", {})
    settings = stream.get("stage", {})
    for key, given in (("teacher_stage", teacher_settings), ("stage", settings)):
        for banned in ("name", "train", "teachers", "task", "tasks", "replay"):
            if banned in given:
                raise ConfigError(f"'{banned}' is set by the stream", file, f"/stream/{key}/{banned}")
    stages = []
    trains_teacher = teacher is not None and teacher not in from_runs
    if stream.get("multitask"):
        if trains_teacher:
            stages += [{"name": f"teach_{task}", "train": teacher, "task": task, **copy.deepcopy(teacher_settings)}
                       for task in order]
        stage = {"name": "multitask", "train": model, "tasks": list(order), **copy.deepcopy(settings)}
        if teacher:
            stage["teachers"] = [teacher]
        if "mixing" in stream:
            stage["mixing"] = stream["mixing"]
        return stages + [stage]
    for index, task in enumerate(order):
        if trains_teacher:
            stages.append({"name": f"teach_{task}", "train": teacher, "task": task, **copy.deepcopy(teacher_settings)})
        stage = {"name": f"learn_{task}", "train": model, "task": task, **copy.deepcopy(settings)}
        if teacher:
            stage["teachers"] = [teacher]
        if share > 0 and index > 0:
            stage["replay"] = {"tasks": list(order[:index]), "share": share,
                               "losses": copy.deepcopy(stream.get("replay_losses", DEFAULT_REPLAY_LOSSES))}
        stages.append(stage)
    return stages


def _check_models(values: dict, names: list[str], tasks: dict, file: str):
    """The trunk of each model with heads, and which task's head each task uses."""
    shared, owners = {}, {}
    for model, definition in values["models"].items():
        heads = definition.get("heads") if isinstance(definition, dict) else None
        if heads is None:
            continue
        where = f"/models/{model}/heads"
        if not isinstance(heads, dict) or not heads:
            raise ConfigError("heads maps task names (or \"*\") to the nodes after the shared graph", file, where)
        for key in heads:
            if key != ANY_TASK and key not in names:
                raise ConfigError(f"unknown task '{key}'{did_you_mean(key, names)} (tasks: {', '.join(names)})",
                                  file, f"{where}/{key}")
        owner = {}
        for task in names:
            head = heads.get(task, heads.get(ANY_TASK))
            if head is None:
                raise ConfigError(f"model '{model}' has no head for task '{task}' (add heads.{task}, or heads.\"*\" "
                                  f"for every task)", file, where)
            if isinstance(head, str):  # the head of another task, shared
                if head not in names or not isinstance(heads.get(head), list):
                    raise ConfigError(f"heads.{task} names '{head}', which is not a task with its own head", file,
                                      f"{where}/{task}")
                mine, theirs = tasks[task].get("task", {}), tasks[head].get("task", {})
                if (mine.get("type", "classification"), mine.get("labels")) != \
                        (theirs.get("type", "classification"), theirs.get("labels")) or not mine.get("labels"):
                    raise ConfigError(f"tasks '{task}' and '{head}' share a head, so their label sets must be the "
                                      f"same and stated (task.labels): {mine.get('labels')} vs {theirs.get('labels')}",
                                      file, f"{where}/{task}")
                owner[task] = head
            elif isinstance(head, list) and head and all(isinstance(n, dict) for n in head):
                owner[task] = task
            else:
                raise ConfigError("a head is a list of graph nodes, or the name of a task whose head it shares",
                                  file, f"{where}/{task if task in heads else ANY_TASK}")
        trunk = [node.get("name") for node in definition.get("graph", [])]
        for task, head_task in owner.items():
            for node in heads.get(head_task, heads.get(ANY_TASK)):
                if node.get("name") in trunk:
                    raise ConfigError(f"head node '{node.get('name')}' has the name of a node of the shared graph",
                                      file, where)
        shared[model], owners[model] = trunk, owner
    return shared, owners


def _check_teachers_trained(values: dict, plans: list[StagePlan], run_models: dict, file: str) -> None:
    """A stage's teacher teaches each of the stage's tasks with that task's weights: an earlier
    stage must have trained it on each of them."""
    trained: set[tuple[str, str]] = set()
    for index, (stage, plan) in enumerate(zip(values["stages"], plans)):
        per_task = isinstance(stage.get("teachers"), dict)
        if per_task:
            for task in stage["teachers"]:
                if task not in plan.tasks:
                    raise ConfigError(f"teachers names task '{task}', which the stage does not train on (its tasks: "
                                      f"{', '.join(plan.tasks)})", file, f"/stages/{index}/teachers/{task}")
        for task in plan.tasks:
            for j, teacher in enumerate(stage_teachers(stage, task)):
                if teacher in run_models or (teacher, task) in trained:
                    continue
                where = f"/stages/{index}/teachers/{task}/{j}" if per_task else f"/stages/{index}/teachers/{j}"
                if teacher not in values["models"]:
                    raise ConfigError(f"teacher '{teacher}' is not a model{did_you_mean(teacher, values['models'])}",
                                      file, where)
                raise ConfigError(f"teacher '{teacher}' teaches task '{task}' but no earlier stage trains it on "
                                  f"that task", file, where)
        for task in plan.tasks:
            trained.add((stage.get("train"), task))


def stage_teachers(stage: dict, task: str) -> list[str]:
    """The teachers of a stage for one of its tasks: the stage's list (each task taught by that
    task's weights of those models), or its entry for the task when ``teachers`` maps tasks to
    lists (different teacher models per task; a task not named has none)."""
    teachers = stage.get("teachers", [])
    if isinstance(teachers, dict):
        return list(teachers.get(task, []))
    return list(teachers)


def _models_for(definition: dict, task: str, owner: dict | None) -> dict:
    """A model as task ``task`` sees it: the shared graph with the task's head appended."""
    definition = copy.deepcopy(definition)
    heads = definition.pop("heads", None)
    if heads is None:
        return definition
    head = heads.get(owner[task], heads.get(ANY_TASK))
    definition["graph"] = definition.get("graph", []) + copy.deepcopy(head)
    return definition


def _stage_plan(stage: dict, index: int, names: list[str], values: dict, file: str) -> StagePlan:
    where = f"/stages/{index}"
    if not isinstance(stage, dict):
        raise ConfigError("a stage is an object", file, where)
    if "task" in stage and "tasks" in stage:
        raise ConfigError("give \"task\" or \"tasks\", not both", file, where)
    if "task" not in stage and "tasks" not in stage:
        raise ConfigError("a stage of a multi-task config names its \"task\" (or a mixture of \"tasks\")", file,
                          where)
    wanted = [stage["task"]] if "task" in stage else (names if stage["tasks"] == ALL else stage["tasks"])
    key = "task" if "task" in stage else "tasks"
    if not isinstance(wanted, list) or not wanted:
        raise ConfigError("tasks is a list of task names, or \"all\"", file, f"{where}/tasks")
    for j, task in enumerate(wanted):
        if task not in names:
            raise ConfigError(f"unknown task '{task}'{did_you_mean(task, names)} (tasks: {', '.join(names)})", file,
                              f"{where}/{key}" + ("" if key == "task" else f"/{j}"))
    mixing = stage.get("mixing", "proportional")
    if isinstance(mixing, dict):
        temperature = mixing.get("temperature")
        if set(mixing) != {"temperature"} or not isinstance(temperature, (int, float)) or temperature <= 0:
            raise ConfigError("mixing is \"proportional\" or {\"temperature\": T} with T > 0", file,
                              f"{where}/mixing")
        mixing = float(temperature)
    elif mixing != "proportional":
        raise ConfigError("mixing is \"proportional\" or {\"temperature\": T} with T > 0", file, f"{where}/mixing")
    replay = stage.get("replay") or {}
    replay_tasks = replay.get("tasks", [])
    share = replay.get("share", 0.2) if replay else 0.0
    if replay:
        unknown = set(replay) - {"tasks", "share", "losses"}
        if unknown:
            raise ConfigError(f"unknown replay setting '{sorted(unknown)[0]}' (replay: tasks, share, losses)", file,
                              f"{where}/replay")
        if not isinstance(share, (int, float)) or not 0 < share <= 1:
            raise ConfigError(f"replay.share is the stored share of each replayed task's training examples, in "
                              f"(0, 1]; got {share}", file, f"{where}/replay/share")
        for j, task in enumerate(replay_tasks):
            if task not in names:
                raise ConfigError(f"unknown task '{task}'{did_you_mean(task, names)}", file,
                                  f"{where}/replay/tasks/{j}")
            if task in wanted:
                raise ConfigError(f"task '{task}' is trained by the stage and replayed", file,
                                  f"{where}/replay/tasks/{j}")
    keep = stage.get("keep", "best")
    if keep not in ("best", "last"):
        raise ConfigError("keep is \"best\" (the best dev score) or \"last\" (the weights after the last step)",
                          file, f"{where}/keep")
    model = values["models"].get(stage.get("train"), {})
    if len(wanted) + len(replay_tasks) > 1 and "heads" not in model:
        raise ConfigError(f"stage '{stage.get('name')}' trains model '{stage.get('train')}' on several tasks, but the "
                          f"model has no heads (a model without heads has separate weights per task)", file,
                          f"{where}/train")
    if stage.get("transfer"):
        raise ConfigError("transfer sets are not available in multi-task stages", file, f"{where}/transfer")
    return StagePlan(wanted, mixing, list(replay_tasks), float(share),
                     copy.deepcopy(replay.get("losses", DEFAULT_REPLAY_LOSSES)), keep == "last")

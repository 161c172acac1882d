"""Models taken from finished run directories: ``{"run": "runs/teacher", "model": "teacher"}``.

A model entry with ``run`` is expanded when the config is loaded: its inputs and graph are copied
from the run's resolved config, its pretrained tokenizers point at the run's own copies
(``RUN/pretrained/``), and its word vocabularies are read from ``RUN/vocab/`` under the name
``<model>.<vocab>`` (so they never clash with the new run's vocabularies). The weights are loaded
from ``RUN/models/<model>.safetensors`` when the new run starts, and copied into it, so the new
run directory stays self-contained.

A model from a run that no stage names (as the model it trains, a teacher, or anywhere else in
its settings) and no graph node starts from (``"init_from"``) is left out of the config before
that: a shared base config can list every teacher of a comparison, and a recipe that uses one of
them runs without the others' run directories. A model taken from a run drops its nodes'
``"init_from"``: that told its own run where training started.

``"recipe"`` names the config that makes the run (relative to the file that states it). While the
run does not exist yet, ``blocks validate`` (``load_config(..., planned_runs=True)``) takes the
model's inputs and graph from that recipe instead, so a recipe can be checked before its teachers
are trained, and reports the runs still needed; training refuses with the command that makes the
run. The key is consumed when the config is loaded: a resolved config has no ``recipe``.

``"node_options"`` changes block parameters of the run's nodes, e.g. ``{"encoder":
{"hidden_states": true}}`` so that a teacher offers named outputs its own run did not need; the
weights are loaded as they are, so options that change them fail when the run starts.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from blocks.errors import ConfigError, did_you_mean
from blocks.graph import RESERVED_NODE_KEYS

RUN_WEIGHTS = "models"
INIT_SEPARATOR = "/"  # a node's "init_from": "<model>" or "<model>/<node>"
RECIPE = "recipe"
_RECIPES_LOADING: list[Path] = []  # recipes being expanded, outermost first (to refuse a cycle)


@dataclass(frozen=True)
class PlannedRun:
    """A run directory that does not exist yet, and the recipe that makes it."""

    run: str
    recipe: str

    def command(self) -> str:
        """The command that makes the run; a run named ``<recipe>-seed<S>`` (as ``tools/zoo_measure.py``
        names them) is made with that seed."""
        seed = re.search(r"-seed(\d+)$", self.run)
        return (f"blocks train {os.path.relpath(self.recipe)} --run-dir {os.path.relpath(self.run)}"
                + (f" --set seed={seed.group(1)}" if seed else ""))


def init_source(node: dict) -> tuple[str, str]:
    """The (model, node) that a node's ``"init_from"`` names ("<model>" means the same node name)."""
    model, _, source = node["init_from"].partition(INIT_SEPARATOR)
    return model, source or node["name"]


def _read(path: Path, file: str, where: str) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path} is missing: is this a run directory?", file, where) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path} is corrupt ({error})", file, where) from None


def run_weights(root: str | Path, model: str) -> Path:
    return Path(root) / RUN_WEIGHTS / f"{model}.safetensors"


def _strings(value) -> set[str]:
    """Every string anywhere inside a JSON value."""
    if isinstance(value, str):
        return {value}
    items = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
    return set().union(*(_strings(v) for v in items))


def drop_unused_run_models(values: dict) -> None:
    """Remove the ``{"run": ...}`` models that no stage names and no node starts from (in place)."""
    named = _strings(values.get("stages", []))
    for model in values["models"].values():
        for node in model.get("graph", []) if isinstance(model, dict) else ():
            if isinstance(node, dict) and isinstance(node.get("init_from"), str):
                named.add(init_source(node)[0])
    for name in [name for name, model in values["models"].items()
                 if isinstance(model, dict) and "run" in model and name not in named]:
        del values["models"][name]


def take_run_recipes(values: dict, file: str) -> dict[str, str]:
    """Remove each model's ``"recipe"`` (in place) and return them by model name."""
    recipes = {}
    models = values.get("models")
    for name, model in (models.items() if isinstance(models, dict) else ()):
        if not isinstance(model, dict) or RECIPE not in model:
            continue
        recipe = model.pop(RECIPE)
        if not isinstance(recipe, str):
            raise ConfigError(f"'recipe' is the path of a config file, got {type(recipe).__name__}", file,
                              f"/models/{name}/{RECIPE}")
        if "run" not in model:
            raise ConfigError("'recipe' names the config that makes a model's run: give it beside \"run\"", file,
                              f"/models/{name}/{RECIPE}")
        recipes[name] = recipe
    return recipes


def expand_run_models(values: dict, base_dir: Path, file: str, recipes: dict[str, str] | None = None,
                      planned_runs: bool = False) -> list[PlannedRun]:
    """Replace every ``{"run": ...}`` model by the definition it had in that run (in place).

    With ``planned_runs``, a model whose run directory does not exist yet is taken from its recipe
    (see the module docstring); the runs still needed are returned, those of the recipes included."""
    recipes = recipes or {}
    planned: list[PlannedRun] = []
    for name, model in values["models"].items():
        if "run" not in model:
            continue
        where = f"/models/{name}/run"
        root = Path(os.path.normpath(model["run"] if os.path.isabs(model["run"]) else base_dir / model["run"]))
        recipe = recipes.get(name)
        if recipe is not None:
            recipe = os.path.normpath(recipe if os.path.isabs(recipe) else base_dir / recipe)
        if not root.is_dir() and recipe is not None and planned_runs:
            values["models"][name], needed = _expand_from_recipe(values, name, model, root, Path(recipe), file)
            planned += [run for run in [PlannedRun(str(root), recipe), *needed] if run not in planned]
            continue
        if not root.is_dir():
            made_by = f"; {PlannedRun(str(root), recipe).command()} makes it" if recipe else ""
            raise ConfigError(f"run directory not found: {root}{made_by}", file, where)
        saved = _read(root / "config.json", file, where)
        progress = _read(root / "progress.json", file, where) if (root / "progress.json").is_file() else {}
        finished = progress.get("models", {})
        source_name = model.get("model") or saved["stages"][-1]["train"]
        if source_name not in saved["models"]:
            raise ConfigError(f"the run in {root} has no model '{source_name}'"
                              f"{did_you_mean(source_name, saved['models'])} (models: {', '.join(saved['models'])})",
                              file, f"/models/{name}/model")
        if source_name not in finished or not run_weights(root, source_name).is_file():
            raise ConfigError(f"model '{source_name}' has not finished training in the run in {root} "
                              f"(finished: {', '.join(finished) or 'none'})", file, where)
        source = saved["models"][source_name]
        index_file = root / "pretrained" / "index.json"
        copies = _read(index_file, file, where) if index_file.is_file() else {}
        inputs = {}
        for input_name, definition in source["inputs"].items():
            definition = dict(definition)
            if definition.get("type") == "pretrained":
                if definition["tokenizer"] in copies:
                    definition["tokenizer"] = str(root / "pretrained" / copies[definition["tokenizer"]])
            elif definition.get("type") not in ("source", "target"):  # seq2seq inputs read the task's subwords
                vocab = f"{name}.{definition['vocab']}"
                values.setdefault("vocabularies", {})[vocab] = {
                    "file": str(root / "vocab" / f"{definition['vocab']}.txt")}
                definition["vocab"] = vocab
            inputs[input_name] = definition
        values["models"][name] = _expanded(model, source, source_name, inputs, root, file, name)
    return planned


def _expanded(model: dict, source: dict, source_name: str, inputs: dict, root: Path, file: str, name: str) -> dict:
    """The model entry for ``source`` (a model of the run in ``root``) with these inputs."""
    # "init_from" told that run where its training started; here the weights come from the run
    graph = [{k: v for k, v in node.items() if k != "init_from"} for node in source["graph"]]
    _apply_node_options(graph, model.get("node_options", {}), source_name, root, file, name)
    expanded = {"run": str(root), "model": source_name, "inputs": inputs, "graph": graph}
    if "node_options" in model:  # kept: a run's saved config expands again when it is reloaded
        expanded["node_options"] = model["node_options"]
    for key in ("description", "output"):
        if key in model or key in source:
            expanded[key] = model.get(key, source.get(key))
    return expanded


def _expand_from_recipe(values: dict, name: str, model: dict, root: Path, recipe: Path,
                        file: str) -> tuple[dict, list[PlannedRun]]:
    """The model a run not made yet will hold, from the recipe that makes it: its inputs and graph
    as that recipe resolves them; word vocabularies are built from this config's training data."""
    from blocks.config.loader import load_config  # the loader imports this module

    where = f"/models/{name}/{RECIPE}"
    if not recipe.is_file():
        raise ConfigError(f"recipe not found: {recipe}", file, where)
    if recipe.resolve() in _RECIPES_LOADING:
        cycle = " -> ".join(str(p) for p in [*_RECIPES_LOADING, recipe.resolve()])
        raise ConfigError(f"recipes that need each other's runs form a cycle: {cycle}", file, where)
    _RECIPES_LOADING.append(recipe.resolve())
    try:
        made = load_config(recipe, planned_runs=True)
    finally:
        _RECIPES_LOADING.pop()
    source_name = model.get("model") or made["stages"][-1]["train"]
    if source_name not in made["models"]:
        raise ConfigError(f"the recipe {recipe} has no model '{source_name}'{did_you_mean(source_name, made['models'])} "
                          f"(models: {', '.join(made['models'])})", file, f"/models/{name}/model")
    source = made["models"][source_name]
    inputs = {}
    for input_name, definition in source["inputs"].items():
        definition = dict(definition)
        if definition.get("type") == "pretrained":
            folder = made.base_dir / definition["tokenizer"]
            if not definition["tokenizer"].startswith("pkg://") and folder.is_dir():
                definition["tokenizer"] = str(folder)  # a folder relative to the recipe
        else:
            vocab = f"{name}.{definition['vocab']}"
            options = {k: v for k, v in made["vocabularies"].get(definition["vocab"], {}).items() if k != "file"}
            if options:
                values.setdefault("vocabularies", {})[vocab] = options
            definition["vocab"] = vocab
        inputs[input_name] = definition
    return _expanded(model, source, source_name, inputs, root, file, name), made.planned_runs


def _apply_node_options(graph: list[dict], options: dict, source_name: str, root: Path, file: str,
                        name: str) -> None:
    nodes = {node["name"]: node for node in graph}
    for node_name, changes in options.items():
        where = f"/models/{name}/node_options/{node_name}"
        node = nodes.get(node_name)
        if node is None:
            raise ConfigError(f"model '{source_name}' of the run in {root} has no node '{node_name}'"
                              f"{did_you_mean(node_name, nodes)} (nodes: {', '.join(nodes)})", file, where)
        if "block" not in node:
            raise ConfigError(f"node '{node_name}' shares the block of '{node['share']}': give the options there",
                              file, where)
        for key in changes:
            if key in RESERVED_NODE_KEYS:
                raise ConfigError(f"'{key}' is part of the run's graph, not a block parameter: node_options "
                                  f"change block parameters only", file, f"{where}/{key}")
        node.update(changes)


def check_run_task(values: dict, task_json: dict, file: str) -> None:
    """A model from another run must predict the same labels, in the same order, as this task."""
    for name, model in values["models"].items():
        if "run" not in model:
            continue
        theirs = _read(Path(model["run"]) / "task.json", file, f"/models/{name}/run")
        if theirs.get("type") != task_json["type"]:
            raise ConfigError(f"model '{name}' from {model['run']} was trained for a {theirs.get('type')} task, "
                              f"this is a {task_json['type']} task", file, f"/models/{name}/run")
        if theirs.get("labels") != task_json["labels"]:
            raise ConfigError(f"model '{name}' from {model['run']} predicts the labels {theirs.get('labels')}, "
                              f"this task has {task_json['labels']}; give the task the same label set "
                              f"(task.labels)", file, f"/models/{name}/run")
